r"""Tensor-product B-spline density on a grid of cells (degrees 0 to 3)."""

from __future__ import annotations

import functools
import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values
from ._grid_integrals import AbstractGridDensity, GridMoments, blur_matrix, frame_of


def _cardinal_bspline(x: np.ndarray, p: int) -> np.ndarray:
    """Centred cardinal B-spline of degree p (support [-(p+1)/2, (p+1)/2])."""
    out = np.zeros_like(x)
    for k in range(p + 2):
        y = x + (p + 1) / 2 - k
        pos = np.where(y > 0, y, 0.0) ** p if p > 0 else (y > 0).astype(float)
        out += (-1) ** k * math.comb(p + 1, k) * pos
    return out / math.factorial(p)

@functools.lru_cache(maxsize=None)
def spline_pieces(n: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Breakpoints (K+1,) in [0, 1] and the linear map M (K, p+1, n) from the n coefficients
    (extended by their edge values) to the monomial coefficients of each piece in its local
    coordinate u in [0, 1]."""
    h = 1.0 / n
    if p % 2 == 0:
        breaks = np.linspace(0.0, 1.0, n + 1)
    else:
        breaks = np.concatenate([[0.0], (np.arange(n) + 0.5) * h, [1.0]])
    k = breaks.shape[0] - 1
    u = 0.5 - 0.5 * np.cos(np.pi * (np.arange(p + 1) + 0.5) / (p + 1))  # Chebyshev nodes
    vander = u[:, None] ** np.arange(p + 1)[None, :]
    inv = np.linalg.inv(vander)
    m = np.zeros((k, p + 1, n))
    for piece in range(k):
        t = breaks[piece] + u * (breaks[piece + 1] - breaks[piece])
        for i in range(-p - 2, n + p + 2):
            vals = _cardinal_bspline((t - (i + 0.5) * h) / h, p)
            m[piece, :, min(max(i, 0), n - 1)] += inv @ vals
    return breaks, m


class SplineGrid(AbstractGridDensity):
    r"""Tensor-product B-spline density on the box ``origin + frame^T [0, 1]^d``, zero outside.

    $\rho(x) = \sum_{i,j} v_{ij}\, B_p(n_x t_x - i - \tfrac12)\, B_p(n_y t_y - j - \tfrac12)$ with
    $t$ the box coordinates of $x$, $B_p$ the centred cardinal B-spline of degree $p$: one
    coefficient per grid cell, each basis function centred on its cell.  Beyond the border the
    coefficients extend by their edge values (so constant values give a constant density).

    **Arguments:**

    - `values`: coefficients, shape ``(n_x, n_y)``, indexed ``[i_x, i_y]``, non-negative.
    - `degree`: 0 (piecewise constant), 1 (C0, piecewise bilinear, default), 2 (C1), 3 (C2).
    - `origin`, `frame`: the box, as for `Box` (unit square by default).
    - `window`: how many grid pieces per axis one triangle of a power cell may overlap (a static
      buffer size; a larger cell raises an error that says so).  Default: all of them up to 8.

    Integrals are exact (piecewise polynomials clipped against the grid).  Only 2D for now.
    The density is normalised by the solver (``total_mass``).
    """

    values: Float[Array, "nx ny"]
    origin: Float[Array, " d"]
    frame: Float[Array, "d d"]
    degree: int = eqx.field(static=True)
    window: int = eqx.field(static=True)

    def __init__(self, values: Any, degree: int = 1, origin: Any = None, frame: Any = None,
                 window: int | None = None):
        values = as_float_array(values, "values")
        if values.ndim != 2:
            raise NotImplementedError(
                f"SplineGrid supports 2D grids only for now; `values` has shape {values.shape}."
            )
        if degree not in (0, 1, 2, 3):
            raise ValueError(f"`degree` must be 0, 1, 2 or 3, got {degree}.")
        values = check_finite(values, "values")
        values = check_values(values, jnp.all(values >= 0), "`values` must be non-negative.")
        values = check_values(values, jnp.sum(values) > 0, "`values` are all zero: no mass.")
        self.origin, self.frame = frame_of(origin, frame, values.ndim)
        self.values = values.astype(jnp.result_type(values, self.origin))
        self.degree = int(degree)
        pieces = max(values.shape) + 1
        self.window = int(window) if window is not None else min(pieces, 8)

    @property
    def dim(self) -> int:
        return self.values.ndim

    def _grid(self) -> GridMoments:
        nx, ny = self.values.shape
        bx, mx = spline_pieces(nx, self.degree)
        by, my = spline_pieces(ny, self.degree)
        dtype = self.values.dtype
        coeffs = jnp.einsum("kai,lbj,ij->klab", jnp.asarray(mx, dtype), jnp.asarray(my, dtype), self.values)
        return GridMoments(jnp.asarray(bx, dtype), jnp.asarray(by, dtype), coeffs, self.origin,
                           self.frame, self.window)

    def interior_point(self):
        # The centre of the largest coefficient's cell (where the density is positive).
        nx, ny = self.values.shape
        k = jnp.argmax(self.values)
        t = jnp.stack([(k // ny + 0.5) / nx, (k % ny + 0.5) / ny]).astype(self.values.dtype)
        return self.origin + t @ self.frame

    def smoothed(self, amount: float) -> "SplineGrid":
        """A blurred copy: coefficients convolved with a Gaussian of standard deviation
        ``amount`` (in units of the box side), edge-extended so that the mass stays spread."""
        nx, ny = self.values.shape
        bx = jnp.asarray(blur_matrix(nx, float(amount) * nx), self.values.dtype)
        by = jnp.asarray(blur_matrix(ny, float(amount) * ny), self.values.dtype)
        return SplineGrid(bx @ self.values @ by.T, self.degree, self.origin, self.frame, self.window)
