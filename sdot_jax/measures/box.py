"""Uniform density on a box or a parallelotope."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values
from .._extremes import largest, smallest
from ._density import AbstractDensity, box_spread, det, simplex_measure, uniform_simplex_moments


class Box(AbstractDensity):
    r"""Uniform density on the parallelotope $\{origin + F^T t : t \in [0, 1]^d\}$.

    **Arguments:**

    - `origin`: a corner, shape ``(d,)``; zero when omitted.
    - `frame`: either edge lengths, shape ``(d,)`` (an axis-aligned box), or a ``(d, d)`` matrix
      whose rows are the edge vectors (a parallelotope); the unit cube when omitted.

    ``Box()`` is the unit cube of whatever dimension the Diracs have.  The density is 1 on the
    box (the solver normalises the total mass).
    """

    origin: Float[Array, " d"] | None
    frame: Float[Array, "d d"] | None
    axis_aligned: bool = eqx.field(static=True)

    def __init__(self, origin: Any = None, frame: Any = None):
        self.axis_aligned = True
        if frame is not None:
            frame = as_float_array(frame, "frame")
            if frame.ndim == 1:
                frame = jnp.diag(frame)
            elif frame.ndim == 2 and frame.shape[0] == frame.shape[1]:
                self.axis_aligned = False
            else:
                raise ValueError(f"`frame` must have shape (d,) or (d, d), got {frame.shape}.")
            frame = check_finite(frame, "frame")
        if origin is not None:
            origin = as_float_array(origin, "origin")
            if origin.ndim != 1:
                raise ValueError(f"`origin` must have shape (d,), got {origin.shape}.")
            origin = check_finite(origin, "origin")
        if origin is not None and frame is not None and origin.shape[0] != frame.shape[0]:
            raise ValueError(
                f"`origin` has dimension {origin.shape[0]} but `frame` has {frame.shape[0]}."
            )
        if frame is not None:
            volume = jnp.abs(det(frame)) if frame.shape[0] > 1 else jnp.abs(frame[0, 0])
            scale = jnp.prod(jnp.linalg.norm(frame, axis=1))
            frame = check_values(
                frame, volume > 1e-12 * scale, "`frame` is degenerate: the box has zero volume."
            )
        if origin is not None and frame is None:
            frame = jnp.eye(origin.shape[0], dtype=origin.dtype)
        if frame is not None and origin is None:
            origin = jnp.zeros(frame.shape[0], frame.dtype)
        if origin is not None:
            dtype = jnp.result_type(origin, frame)
            origin, frame = origin.astype(dtype), frame.astype(dtype)
        self.origin = origin
        self.frame = frame

    def with_dim(self, dim: int) -> "Box":
        if self.origin is None:
            return Box(jnp.zeros(dim), jnp.ones(dim))
        return super().with_dim(dim)

    @property
    def dim(self) -> int:
        if self.origin is None:
            raise ValueError("Box() has no dimension until it is paired with Diracs.")
        return self.origin.shape[0]

    def corners(self) -> Float[Array, "2**d d"]:
        d = self.dim
        bits = jnp.array([[(k >> i) & 1 for i in range(d)] for k in range(2**d)], self.frame.dtype)
        return self.origin + bits @ self.frame

    def bounding_box(self):
        corners = self.corners()
        return smallest(corners, 0), largest(corners, 0)

    def half_spaces(self):
        if self.axis_aligned:
            return super().half_spaces()
        # Rows of inv(frame)^T are the dual basis: t = inv(F)^T (x - origin) in [0, 1]^d.
        dual = jnp.linalg.inv(self.frame).T
        t0 = dual @ self.origin
        return jnp.concatenate([dual, -dual]), jnp.concatenate([1 + t0, -t0])

    def total_mass(self):
        return jnp.abs(det(self.frame)) if self.dim > 1 else jnp.abs(self.frame[0, 0])

    def simplex_moments(self, origin, simplex):
        return uniform_simplex_moments(simplex)

    def facet_mass(self, origin, facet):
        return simplex_measure(facet)

    def interior_point(self):
        return self.origin + 0.5 * self.frame.sum(0)

    def axis_spread(self):
        return box_spread(self)
