r"""Initial weights under which every cell is non-empty.

With $z_i = c + t (y_i - c)$ for a point $c$ inside the support and one $t \in (0, 1]$, the
weights $\psi_i = (1 - t) |y_i - c|^2$ make the power diagram of the $y_i$ equal to the Voronoi
diagram of the $z_i$ (expand $|x - z_i|^2 / t$).  Choosing t so that every $z_i$ lies in the
support's bounding polytope gives every Dirac a cell of positive volume, even Diracs far outside.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def initial_weights(y: Float[Array, "n d"], density) -> Float[Array, " n"]:
    c = density.interior_point().astype(y.dtype)
    lo, hi = density.bounding_box()
    a_dom, b_dom = density.half_spaces()
    d = y.shape[1]
    normals = jnp.concatenate([-jnp.eye(d, dtype=y.dtype), jnp.eye(d, dtype=y.dtype), a_dom])
    offsets = jnp.concatenate([-lo, hi, b_dom]).astype(y.dtype)
    slack = offsets - normals @ c  # > 0 for an interior c
    reach = (y - c) @ normals.T  # (n, planes)
    limit = jnp.where(reach > 0, slack / jnp.where(reach > 0, reach, 1.0), jnp.inf)
    t_max = jnp.min(limit)
    t = jnp.where(t_max >= 1, 1.0, 0.9 * t_max)
    return (1 - t) * jnp.sum((y - c) ** 2, -1)
