"""Minima and maxima whose gradient goes to the one entry that attains them.

``jnp.min``'s gradient is ``g * (x == min) / count(x == min)``, and XLA may compute ``x`` more
than once, in different fusions with differently fused multiply-adds: the count can then be 0,
and the gradient inf or NaN (a Gaussian mixture's bounding box at XLA's CPU optimisation level
0; silently 0 at level 1).  These gather the extreme at ``argmin``/``argmax`` instead: the value
is the same, and its gradient (a valid subgradient where entries tie) needs no equality test.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def smallest(x: Float[Array, "..."], axis: int) -> Float[Array, "..."]:
    """``jnp.min(x, axis)``, gathered at ``jnp.argmin(x, axis)``."""
    return jnp.take_along_axis(x, jnp.expand_dims(jnp.argmin(x, axis), axis), axis).squeeze(axis)


def largest(x: Float[Array, "..."], axis: int) -> Float[Array, "..."]:
    """``jnp.max(x, axis)``, gathered at ``jnp.argmax(x, axis)``."""
    return jnp.take_along_axis(x, jnp.expand_dims(jnp.argmax(x, axis), axis), axis).squeeze(axis)
