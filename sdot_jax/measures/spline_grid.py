r"""Tensor-product B-spline density on a grid of cells (degrees 0 to 3)."""

from __future__ import annotations

import functools
import math
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values, concrete_when_given_concrete
from ._grid_integrals import (AbstractGridDensity, GridMoments, GridMoments3D, WINDOW_2D, WINDOW_3D, blur,
                              frame_of, grid_interior_point)


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

    $\rho(x) = \sum_{i,j} v_{ij}\, B_p(n_x t_x - i - \tfrac12)\, B_p(n_y t_y - j - \tfrac12)$ in 2D
    (one more factor $B_p(n_z t_z - k - \tfrac12)$ in 3D) with $t$ the box coordinates of $x$, $B_p$ the centred cardinal B-spline of degree $p$: one
    coefficient per grid cell, each basis function centred on its cell.  Beyond the border the
    coefficients extend by their edge values (so constant values give a constant density).

    **Arguments:**

    - `values`: coefficients, shape ``(n_x, n_y)`` or ``(n_x, n_y, n_z)``, indexed ``[i_x, i_y]``
      / ``[i_x, i_y, i_z]``, non-negative.
    - `degree`: 0 (piecewise constant), 1 (C0, piecewise bilinear, default), 2 (C1), 3 (C2).
    - `origin`, `frame`: the box, as for `Box` (unit square by default).
    - `window`: how many grid pieces per axis one power cell (2D) / tetrahedron of a cell (3D)
      may overlap (a static buffer size; a larger one gets NaN moments, so the solve fails
      instead of being wrong).  Default: all of them up to 64 in 2D, up to 4 in 3D.
      Outside ``jax.jit`` the solver sizes it from the number of Diracs and doubles it
      whenever a cell spans more (`Capacities.window`).

    Integrals are exact: in 2D one boundary pass per cell by Green's theorem, split at the grid
    lines; in 3D tetrahedra clipped against the grid.  The density is normalised by the solver
    (``total_mass``).  Cost in 3D: every tetrahedron is clipped
    against all ``window**3`` pieces of its window (see
    `sdot_jax.measures._grid_integrals.tetrahedron_moments` for the measured cost).
    """

    values: Float[Array, "nx ny"] | Float[Array, "nx ny nz"]
    origin: Float[Array, " d"]
    frame: Float[Array, "d d"]
    degree: int = eqx.field(static=True)
    window: int = eqx.field(static=True)

    @concrete_when_given_concrete
    def __init__(self, values: Any, degree: int = 1, origin: Any = None, frame: Any = None,
                 window: int | None = None):
        values = as_float_array(values, "values")
        if values.ndim not in (2, 3):
            raise NotImplementedError(
                f"SplineGrid supports 2D and 3D grids; `values` has shape {values.shape}."
            )
        if degree not in (0, 1, 2, 3):
            raise ValueError(f"`degree` must be 0, 1, 2 or 3, got {degree}.")
        values = check_finite(values, "values")
        values = check_values(values, jnp.all(values >= 0), "`values` must be non-negative.")
        values = check_values(values, jnp.sum(values) > 0, "`values` are all zero: no mass.")
        self.origin, self.frame = frame_of(origin, frame, values.ndim)
        self.values = values.astype(jnp.result_type(values, self.origin))
        self.degree = int(degree)
        if window is not None:
            self.window = int(window)
        elif values.ndim == 2:
            self.window = min(max(values.shape) + 1, WINDOW_2D)
        else:  # odd degrees have breaks at the cell centres: one more piece per axis
            self.window = min(max(values.shape) + degree % 2, WINDOW_3D)

    @property
    def dim(self) -> int:
        return self.values.ndim

    def _grid(self) -> GridMoments | GridMoments3D:
        dtype = self.values.dtype
        pieces = [spline_pieces(n, self.degree) for n in self.values.shape]
        maps = [jnp.asarray(m, dtype) for _, m in pieces]
        breaks = [jnp.asarray(b, dtype) for b, _ in pieces]
        if self.values.ndim == 2:
            coeffs = jnp.einsum("kai,lbj,ij->klab", *maps, self.values)
            return GridMoments(*breaks, coeffs, self.origin, self.frame, self.window)
        coeffs = jnp.einsum("Kai,Lbj,Mck,ijk->KLMabc", *maps, self.values)
        return GridMoments3D(tuple(breaks), coeffs, self.origin, self.frame, self.window)

    def interior_point(self):
        # The centre of the largest coefficient's cell (where the density is positive).
        return grid_interior_point(self.values, self.origin, self.frame)

    def smoothed(self, amount: float) -> "SplineGrid":
        """A blurred copy: coefficients convolved with a Gaussian of standard deviation
        ``amount`` (in units of the box side), edge-extended so that the mass stays spread."""
        return SplineGrid(blur(self.values, amount), self.degree, self.origin, self.frame, self.window)
