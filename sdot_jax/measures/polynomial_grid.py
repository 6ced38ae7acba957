r"""Piecewise-polynomial densities on a grid: `PolynomialGrid` and its piecewise-constant case `Image`."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values
from ._grid_integrals import AbstractGridDensity, GridMoments, blur_matrix, frame_of


def _interior_point(cell_mass, origin, frame):
    nx, ny = cell_mass.shape
    k = jnp.argmax(cell_mass)
    t = jnp.stack([(k // ny + 0.5) / nx, (k % ny + 0.5) / ny]).astype(frame.dtype)
    return origin + t @ frame


class PolynomialGrid(AbstractGridDensity):
    r"""A polynomial per grid cell on the box ``origin + frame^T [0, 1]^2``, zero outside.

    On cell $(i, j)$ the density is $\sum_{a,b} c_{ijab}\, u^a v^b$ where $u, v \in [0, 1]$ are the
    local coordinates of the cell (``u = n_x t_x - i``, ``v = n_y t_y - j``, with $t$ the box
    coordinates).  The polynomials must be non-negative on their cells (not checked beyond the
    cell averages).

    **Arguments:**

    - `coefficients`: shape ``(n_x, n_y, p+1, q+1)``.
    - `origin`, `frame`: the box, as for `Box` (unit square by default).
    - `window`: grid cells per axis one triangle of a power cell may overlap (static buffer size;
      a larger triangle gets NaN moments, so the solve fails rather than being wrong).  Default:
      all of them up to 8 (clipping costs O(window^2) per triangle).

    Integrals are exact (clipping against the grid cells, exact quadrature per piece).  2D only.
    """

    coefficients: Float[Array, "nx ny p q"]
    origin: Float[Array, " d"]
    frame: Float[Array, "d d"]
    window: int = eqx.field(static=True)

    def __init__(self, coefficients: Any, origin: Any = None, frame: Any = None,
                 window: int | None = None):
        c = as_float_array(coefficients, "coefficients")
        if c.ndim != 4:
            raise NotImplementedError(
                "PolynomialGrid supports 2D grids only: `coefficients` must have shape "
                f"(n_x, n_y, p+1, q+1), got {c.shape}."
            )
        c = check_finite(c, "coefficients")
        self.origin, self.frame = frame_of(origin, frame, 2)
        self.coefficients = c.astype(jnp.result_type(c, self.origin))
        mean = self._cell_means()
        self.coefficients = check_values(
            self.coefficients, jnp.all(mean >= 0) & (jnp.sum(mean) > 0),
            "the cell averages of `coefficients` must be non-negative and not all zero.",
        )
        self.window = int(window) if window is not None else min(max(c.shape[:2]), 8)

    def _cell_means(self):
        p, q = self.coefficients.shape[2:]
        ia = 1.0 / np.arange(1, p + 1)
        ib = 1.0 / np.arange(1, q + 1)
        return jnp.einsum("klab,a,b->kl", self.coefficients, ia, ib)

    @property
    def dim(self) -> int:
        return 2

    def _grid(self) -> GridMoments:
        nx, ny = self.coefficients.shape[:2]
        dtype = self.coefficients.dtype
        return GridMoments(jnp.linspace(0, 1, nx + 1, dtype=dtype), jnp.linspace(0, 1, ny + 1, dtype=dtype),
                           self.coefficients, self.origin, self.frame, self.window)


    def interior_point(self):
        return _interior_point(self._cell_means(), self.origin, self.frame)

    def smoothed(self, amount: float) -> "PolynomialGrid":
        """A blurred copy: every coefficient array convolved across cells with a Gaussian of
        standard deviation ``amount`` (units of the box side), edges extended."""
        nx, ny = self.coefficients.shape[:2]
        dtype = self.coefficients.dtype
        bx = jnp.asarray(blur_matrix(nx, float(amount) * nx), dtype)
        by = jnp.asarray(blur_matrix(ny, float(amount) * ny), dtype)
        c = jnp.einsum("ik,jl,klab->ijab", bx, by, self.coefficients)
        return PolynomialGrid(c, self.origin, self.frame, self.window)


class Image(AbstractGridDensity):
    r"""Piecewise-constant density: ``values[i_x, i_y]`` on pixel $(i_x, i_y)$ of the box
    ``origin + frame^T [0, 1]^2`` (unit square by default), zero outside.

    Same placement as `SplineGrid` (pixel $(i, j)$ covers $t \in [i/n_x, (i+1)/n_x] \times
    [j/n_y, (j+1)/n_y]$); equal to ``SplineGrid(values, degree=0)`` and to a `PolynomialGrid` of
    degree 0.  ``window``: see `PolynomialGrid`; here the integrals are boundary (Green) integrals
    costing O(window) per edge, and the default is the whole grid up to 64 pixels per axis.  Integrals are exact.
    """

    values: Float[Array, "nx ny"]
    origin: Float[Array, " d"]
    frame: Float[Array, "d d"]
    window: int = eqx.field(static=True)

    def __init__(self, values: Any, origin: Any = None, frame: Any = None, window: int | None = None):
        values = as_float_array(values, "values")
        if values.ndim != 2:
            raise NotImplementedError(f"Image supports 2D only; `values` has shape {values.shape}.")
        values = check_finite(values, "values")
        values = check_values(values, jnp.all(values >= 0), "`values` must be non-negative.")
        values = check_values(values, jnp.sum(values) > 0, "`values` are all zero: no mass.")
        self.origin, self.frame = frame_of(origin, frame, 2)
        self.values = values.astype(jnp.result_type(values, self.origin))
        # Green integrals cost O(window) per edge: default to the whole grid (up to 64), since a
        # window too small makes Newton reject legitimate large trial cells (NaN masses).
        self.window = int(window) if window is not None else min(max(values.shape), 64)

    @property
    def dim(self) -> int:
        return 2

    def _grid(self) -> GridMoments:
        nx, ny = self.values.shape
        dtype = self.values.dtype
        return GridMoments(jnp.linspace(0, 1, nx + 1, dtype=dtype), jnp.linspace(0, 1, ny + 1, dtype=dtype),
                           self.values[:, :, None, None], self.origin, self.frame, self.window)


    def interior_point(self):
        return _interior_point(self.values, self.origin, self.frame)

    def smoothed(self, amount: float) -> "Image":
        """A blurred copy: pixels convolved with a Gaussian of standard deviation ``amount``
        (units of the box side), edges extended."""
        nx, ny = self.values.shape
        bx = jnp.asarray(blur_matrix(nx, float(amount) * nx), self.values.dtype)
        by = jnp.asarray(blur_matrix(ny, float(amount) * ny), self.values.dtype)
        return Image(bx @ self.values @ by.T, self.origin, self.frame, self.window)
