r"""Piecewise-polynomial densities on a grid: `PolynomialGrid` and its piecewise-constant case `Image`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values, concrete_when_given_concrete
from ._grid_integrals import (AbstractGridDensity, GridMoments, GridMoments3D, WINDOW_2D, WINDOW_3D, blur,
                              frame_of, grid_interior_point)


def _uniform_grid(coeffs, origin, frame, window):
    """`GridMoments` (2D) or `GridMoments3D` for per-cell polynomials ``coeffs (n.., p..)``."""
    d = coeffs.ndim // 2
    dtype = coeffs.dtype
    breaks = [jnp.linspace(0, 1, n + 1, dtype=dtype) for n in coeffs.shape[:d]]
    if d == 2:
        return GridMoments(*breaks, coeffs, origin, frame, window)
    return GridMoments3D(tuple(breaks), coeffs, origin, frame, window)


class PolynomialGrid(AbstractGridDensity):
    r"""A polynomial per grid cell on the box ``origin + frame^T [0, 1]^d`` (d = 2 or 3), zero
    outside.

    On cell $(i, j)$ the density is $\sum_{a,b} c_{ijab}\, u^a v^b$ where $u, v \in [0, 1]$ are the
    local coordinates of the cell (``u = n_x t_x - i``, ``v = n_y t_y - j``, with $t$ the box
    coordinates); in 3D $\sum_{a,b,c} c_{ijkabc}\, u^a v^b w^c$ on cell $(i, j, k)$.  The
    polynomials must be non-negative on their cells (not checked beyond the cell averages).

    **Arguments:**

    - `coefficients`: shape ``(n_x, n_y, p+1, q+1)`` (2D) or ``(n_x, n_y, n_z, p+1, q+1, r+1)``
      (3D).
    - `origin`, `frame`: the box, as for `Box` (unit square / cube by default).
    - `window`: grid cells per axis one power cell (2D) / tetrahedron of a cell (3D) may
      overlap (static buffer size; a larger one gets NaN moments, so the solve fails rather than
      being wrong).  Default: all of them up to 64 in 2D (one boundary pass by Green's theorem,
      O(window) per edge), up to 4 in 3D (clipping, O(window^3) per tetrahedron).
      Outside ``jax.jit`` the solver sizes it from the number of Diracs and doubles it
      whenever a cell spans more (`Capacities.window`).

    Integrals are exact (2D: Green's theorem along each cell's boundary, split at the grid
    lines; 3D: tetrahedra clipped against the grid cells; exact quadrature per piece).
    """

    coefficients: Float[Array, "nx ny p q"] | Float[Array, "nx ny nz p q r"]
    origin: Float[Array, " d"]
    frame: Float[Array, "d d"]
    window: int = eqx.field(static=True)

    @concrete_when_given_concrete
    def __init__(self, coefficients: Any, origin: Any = None, frame: Any = None,
                 window: int | None = None):
        c = as_float_array(coefficients, "coefficients")
        if c.ndim not in (4, 6):
            raise NotImplementedError(
                "PolynomialGrid supports 2D and 3D grids: `coefficients` must have shape "
                f"(n_x, n_y, p+1, q+1) or (n_x, n_y, n_z, p+1, q+1, r+1), got {c.shape}."
            )
        c = check_finite(c, "coefficients")
        d = c.ndim // 2
        self.origin, self.frame = frame_of(origin, frame, d)
        self.coefficients = c.astype(jnp.result_type(c, self.origin))
        mean = self._cell_means()
        self.coefficients = check_values(
            self.coefficients, jnp.all(mean >= 0) & (jnp.sum(mean) > 0),
            "the cell averages of `coefficients` must be non-negative and not all zero.",
        )
        cap = WINDOW_2D if d == 2 else WINDOW_3D
        self.window = int(window) if window is not None else min(max(c.shape[:d]), cap)

    def _cell_means(self):
        d = self.coefficients.ndim // 2
        out = self.coefficients
        for p in reversed(self.coefficients.shape[d:]):
            out = out @ jnp.asarray(1.0 / np.arange(1, p + 1), out.dtype)  # contracts the last axis
        return out

    @property
    def dim(self) -> int:
        return self.coefficients.ndim // 2

    def _grid(self) -> GridMoments | GridMoments3D:
        return _uniform_grid(self.coefficients, self.origin, self.frame, self.window)

    def interior_point(self):
        return grid_interior_point(self._cell_means(), self.origin, self.frame)

    def smoothed(self, amount: float) -> "PolynomialGrid":
        """A blurred copy: every coefficient array convolved across cells with a Gaussian of
        standard deviation ``amount`` (units of the box side), edges extended."""
        return PolynomialGrid(blur(self.coefficients, amount), self.origin, self.frame, self.window)


class Image(AbstractGridDensity):
    r"""Piecewise-constant density: ``values[i_x, i_y]`` on pixel $(i_x, i_y)$ of the box
    ``origin + frame^T [0, 1]^2`` (unit square by default), zero outside; in 3D
    ``values[i_x, i_y, i_z]`` on voxel $(i_x, i_y, i_z)$ of ``origin + frame^T [0, 1]^3``.

    Same placement as `SplineGrid` (pixel $(i, j)$ covers $t \in [i/n_x, (i+1)/n_x] \times
    [j/n_y, (j+1)/n_y]$); equal to ``SplineGrid(values, degree=0)`` and to a `PolynomialGrid` of
    degree 0.  ``window``: see `PolynomialGrid`; in 2D a cell's integrals are one boundary
    (Green) pass costing O(window) per edge, and the default is the whole grid up to 64 pixels
    per axis; in 3D every tetrahedron is clipped against O(window^3) voxels, default up to 4 per
    axis.  Outside ``jax.jit`` the solver sizes the window from the number of Diracs and doubles
    it when a cell spans more (`Capacities.window`).  Integrals are exact.
    """

    values: Float[Array, "nx ny"] | Float[Array, "nx ny nz"]
    origin: Float[Array, " d"]
    frame: Float[Array, "d d"]
    window: int = eqx.field(static=True)

    @concrete_when_given_concrete
    def __init__(self, values: Any, origin: Any = None, frame: Any = None, window: int | None = None):
        values = as_float_array(values, "values")
        if values.ndim not in (2, 3):
            raise NotImplementedError(f"Image supports 2D and 3D; `values` has shape {values.shape}.")
        values = check_finite(values, "values")
        values = check_values(values, jnp.all(values >= 0), "`values` must be non-negative.")
        values = check_values(values, jnp.sum(values) > 0, "`values` are all zero: no mass.")
        self.origin, self.frame = frame_of(origin, frame, values.ndim)
        self.values = values.astype(jnp.result_type(values, self.origin))
        cap = WINDOW_2D if values.ndim == 2 else WINDOW_3D
        self.window = int(window) if window is not None else min(max(values.shape), cap)

    @property
    def dim(self) -> int:
        return self.values.ndim

    def _grid(self) -> GridMoments | GridMoments3D:
        d = self.values.ndim
        return _uniform_grid(self.values[(...,) + (None,) * d], self.origin, self.frame, self.window)

    def interior_point(self):
        return grid_interior_point(self.values, self.origin, self.frame)

    def smoothed(self, amount: float) -> "Image":
        """A blurred copy: pixels convolved with a Gaussian of standard deviation ``amount``
        (units of the box side), edges extended."""
        return Image(blur(self.values, amount), self.origin, self.frame, self.window)
