"""Input conversion and validation shared by the measures and the public functions.

Shapes and types are checked with ``raise`` at trace time; values (finite, non-negative) are
checked eagerly when the array is concrete, and with ``eqx.error_if`` when it is traced, so that a
jitted call still fails loudly instead of returning a wrong plan.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def concrete_when_given_concrete(init: Callable) -> Callable:
    """A density's ``__init__`` that, given only concrete arguments, runs at once also under
    ``jax.jit`` (``jax.ensure_compile_time_eval``): its checks raise at once instead of staging
    an ``eqx.error_if``, which made every array it touched a tracer, and its arrays stay concrete
    for what the solve decides from them (`continuation.wanted`, `Mesh.wants_continuation`)."""

    @functools.wraps(init)
    def wrapped(self, *args, **kwargs):
        if any(_is_tracer(leaf) for leaf in jax.tree.leaves((args, kwargs))):
            return init(self, *args, **kwargs)
        with jax.ensure_compile_time_eval():
            return init(self, *args, **kwargs)

    return wrapped


def as_float_array(x: Any, name: str) -> jax.Array:
    """Convert numpy / JAX / torch / nested lists to a floating JAX array, keeping float dtypes."""
    if x is None:
        raise TypeError(f"`{name}` must be an array, got None.")
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if isinstance(x, jax.Array) or _is_tracer(x):
        arr = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        if not (jnp.issubdtype(arr.dtype, jnp.integer) or arr.dtype == bool):
            raise TypeError(f"`{name}` must be a real numeric array, got dtype {arr.dtype}.")
        arr = arr.astype(jnp.result_type(float))
    return jnp.asarray(arr)


def check_values(x: jax.Array, ok: jax.Array, message: str) -> jax.Array:
    """Raise ``ValueError(message)`` when ``ok`` is False (eagerly), or attach an ``eqx.error_if``."""
    if _is_tracer(x) or _is_tracer(ok):
        return eqx.error_if(x, jnp.logical_not(ok), message)
    if not bool(ok):
        raise ValueError(message)
    return x


def check_finite(x: jax.Array, name: str) -> jax.Array:
    return check_values(x, jnp.all(jnp.isfinite(x)), f"`{name}` contains NaN or inf values.")
