r"""Isotropic Gaussian mixtures on the plane, integrated semi-analytically over power cells."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import erf
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values
from ._density import AbstractDensity
from ._grid_integrals import line_rule

TRUNCATION = 1e-12  # mass left outside the bounding box, relative to the total mass (at most)
_RADIAL_SPLITS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # the angular range is split where R = k sigma
_NODES = 10  # Gauss--Legendre nodes per angular sub-interval


def _truncation_radius(d: int) -> float:
    """Smallest R (in sigmas) with d * erfc(R / sqrt 2) <= TRUNCATION (bisection)."""
    lo, hi = 0.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if d * math.erfc(mid / math.sqrt(2)) <= TRUNCATION:
            hi = mid
        else:
            lo = mid
    return hi


class SumOfGaussians(AbstractDensity):
    r"""$\rho(x) = \sum_k w_k\, (2\pi\sigma_k^2)^{-d/2} \exp(-|x - \mu_k|^2 / 2\sigma_k^2)$ on the plane.

    **Arguments:**

    - `positions`: centres $\mu_k$, shape ``(m, 2)``.
    - `sigmas`: standard deviations, shape ``(m,)`` or a scalar.
    - `weights`: masses $w_k \ge 0$ (not heights), shape ``(m,)``; equal when omitted.

    **Truncation.** The support is unbounded; cells are clipped to the box
    $[\min_k(\mu_k - R\sigma_k), \max_k(\mu_k + R\sigma_k)]$ with $d\,\mathrm{erfc}(R/\sqrt2) \le
    10^{-12}$ ($R \approx 7.4$ in 2D), so the mass outside is at most $10^{-12} \sum_k w_k$ (each
    component loses at most $\mathrm{erfc}(R/\sqrt 2)$ per axis).  ``total_mass`` is $\sum_k w_k$.

    **Integrals.** Facet masses are exact (erf along the segment).  Over a triangle T, the
    moments are a signed sum over its edges of integrals over the triangles (mu_k, edge), done in
    polar coordinates about $\mu_k$: the radial integrals are closed forms
    ($\int_0^R e^{-r^2/2\sigma^2} r^{1+j} dr$, j = 0, 1, 2), the angular one is Gauss--Legendre
    on sub-intervals split where the edge's distance $R(\theta)$ crosses
    $\{1/4, \dots, 8\}\sigma$.  Measured error: below 1e-13 of the component mass over random
    triangles of sizes 1e-3 to 10 sigma (tests/test_densities.py).  2D only.
    """

    positions: Float[Array, "m d"]
    sigmas: Float[Array, " m"]
    weights: Float[Array, " m"]

    def __init__(self, positions: Any, sigmas: Any, weights: Any = None):
        positions = as_float_array(positions, "positions")
        if positions.ndim != 2 or positions.shape[1] != 2:
            raise NotImplementedError(
                f"SumOfGaussians supports 2D only: `positions` must have shape (m, 2), got {positions.shape}."
            )
        m = positions.shape[0]
        sigmas = as_float_array(sigmas, "sigmas")
        sigmas = jnp.broadcast_to(sigmas, (m,)) if sigmas.ndim == 0 else sigmas
        if sigmas.shape != (m,):
            raise ValueError(f"`sigmas` must be a scalar or have shape ({m},), got {sigmas.shape}.")
        if weights is None:
            weights = jnp.full((m,), 1.0 / m, positions.dtype)
        weights = as_float_array(weights, "weights")
        if weights.shape != (m,):
            raise ValueError(f"`weights` must have shape ({m},), got {weights.shape}.")
        dtype = jnp.result_type(positions, sigmas, weights)
        self.positions = check_finite(positions, "positions").astype(dtype)
        self.sigmas = check_values(sigmas.astype(dtype), jnp.all(sigmas > 0), "`sigmas` must be positive.")
        weights = check_values(weights.astype(dtype), jnp.all(weights >= 0), "`weights` must be non-negative.")
        self.weights = check_values(weights, jnp.sum(weights) > 0, "`weights` sum to zero.")

    @property
    def dim(self) -> int:
        return self.positions.shape[1]

    def bounding_box(self):
        r = _truncation_radius(self.dim)
        s = self.sigmas[:, None]
        return jnp.min(self.positions - r * s, 0), jnp.max(self.positions + r * s, 0)

    def total_mass(self):
        return jnp.sum(self.weights)

    def interior_point(self):
        return self.positions[jnp.argmax(self.weights)]

    def density_at(self, x):
        """$\\rho$ at points ``x (..., 2)``."""
        r2 = jnp.sum((x[..., None, :] - self.positions) ** 2, -1)
        return jnp.sum(self.weights / (2 * jnp.pi * self.sigmas**2) * jnp.exp(-r2 / (2 * self.sigmas**2)), -1)

    def smoothed(self, amount: float) -> "SumOfGaussians":
        r"""A blurred copy: the density convolved with a Gaussian of standard deviation ``amount``
        times the bounding box's largest side ($\sigma_k \to \sqrt{\sigma_k^2 + s^2}$)."""
        lo, hi = self.bounding_box()
        s = amount * jnp.max(hi - lo)
        return SumOfGaussians(self.positions, jnp.sqrt(self.sigmas**2 + s**2), self.weights)

    def facet_mass(self, origin, facet):
        p0 = facet[0] + origin - self.positions  # (m, 2)
        d = facet[1] - facet[0]
        l2 = jnp.sum(d**2)
        ok = l2 > 0
        length = jnp.sqrt(jnp.where(ok, l2, 1.0))
        lam = -(p0 @ d) / jnp.where(ok, l2, 1.0)  # (m,) foot of the perpendicular
        h2 = jnp.maximum(jnp.sum((p0 + lam[:, None] * d) ** 2, -1), 0.0)
        s = self.sigmas
        c = length / (s * math.sqrt(2))
        line = s * math.sqrt(math.pi / 2) * (erf(c * (1 - lam)) - erf(-c * lam))
        val = jnp.sum(self.weights / (2 * jnp.pi * s**2) * jnp.exp(-h2 / (2 * s**2)) * line)
        return jnp.where(ok, val, 0.0)

    def simplex_moments(self, origin, simplex):
        mu = self.positions - origin  # centres relative to origin
        tri = simplex
        d1, d2 = tri[1] - tri[0], tri[2] - tri[0]
        orient = jnp.sign(d1[0] * d2[1] - d1[1] * d2[0])

        def component(mu_k, s, w):
            def edge(e0, e1):
                return _sector(e0 - mu_k, e1 - mu_k, s)

            j0, j1, j2 = jax.vmap(edge)(tri, jnp.roll(tri, -1, axis=0))
            j0, j1, j2 = j0.sum(0), j1.sum(0), j2.sum(0)
            scale = w / (2 * jnp.pi * s**2)
            m0 = scale * j0
            j1s = scale * j1
            m1 = mu_k * m0 + j1s
            m2 = jnp.outer(mu_k, mu_k) * m0 + jnp.outer(mu_k, j1s) + jnp.outer(j1s, mu_k) + scale * j2
            return m0, m1, m2

        m0, m1, m2 = jax.vmap(component)(mu, self.sigmas, self.weights)
        return orient * m0.sum(0), orient * m1.sum(0), orient * m2.sum(0)


def _sector(a, b, s):
    r"""Signed $\int e^{-|z|^2/2s^2} (1, z, z z^T)$ over the triangle (0, a, b), in polar form."""
    dtype = a.dtype
    cross = a[0] * b[1] - a[1] * b[0]
    dot = a @ b
    alpha = jnp.arctan2(cross, dot)
    ab = b - a
    l2 = jnp.sum(ab**2)
    na2 = jnp.sum(a**2)
    ok = (l2 > 0) & (na2 > 0)
    h = jnp.abs(cross) / jnp.sqrt(jnp.where(ok, l2, 1.0))
    t = -(a @ ab) / jnp.where(ok, l2, 1.0)
    foot = a + t * ab
    theta_f = jnp.arctan2(a[0] * foot[1] - a[1] * foot[0], a @ foot)
    ahat = a / jnp.sqrt(jnp.where(ok, na2, 1.0))
    ks = jnp.asarray(_RADIAL_SPLITS, dtype)
    ratio = jnp.clip(h / (ks * s), 0.0, 1.0)
    # arccos has an infinite slope at 1: evaluate it away from there (no NaN in reverse mode).
    off = jnp.where(ratio < 1, jnp.arccos(jnp.where(ratio < 1, ratio, 0.0)), 0.0)
    lo, hi = jnp.minimum(0.0, alpha), jnp.maximum(0.0, alpha)
    cuts = jnp.clip(jnp.concatenate([theta_f - off, theta_f + off, theta_f[None]]), lo, hi)
    nodes = jnp.sort(jnp.concatenate([jnp.stack([lo, hi]), cuts]))
    x, w = line_rule(2 * _NODES - 1)
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
    left, right = nodes[:-1], nodes[1:]
    theta = left[:, None] + (right - left)[:, None] * x[None, :]
    wt = (right - left)[:, None] * w[None, :]
    cos_rel = jnp.cos(theta - theta_f)
    rmax = 40.0 * s
    safe_h = jnp.where(h > 0, h, 1.0)  # keeps the unused branch finite under reverse mode
    r = jnp.where(h > 0, h / jnp.maximum(cos_rel, safe_h / rmax), 0.0)
    e = jnp.exp(-(r**2) / (2 * s**2))
    i0 = s**2 * (1 - e)
    i1 = s**3 * (math.sqrt(math.pi / 2) * erf(r / (s * math.sqrt(2))) - (r / s) * e)
    i2 = s**4 * (2 - (2 + (r / s) ** 2) * e)
    c, sn = jnp.cos(theta), jnp.sin(theta)
    ux = c * ahat[0] - sn * ahat[1]
    uy = sn * ahat[0] + c * ahat[1]
    sign = jnp.where(alpha >= 0, 1.0, -1.0)
    j0 = sign * jnp.sum(wt * i0)
    j1 = sign * jnp.stack([jnp.sum(wt * i1 * ux), jnp.sum(wt * i1 * uy)])
    j2 = sign * jnp.stack([
        jnp.stack([jnp.sum(wt * i2 * ux * ux), jnp.sum(wt * i2 * ux * uy)]),
        jnp.stack([jnp.sum(wt * i2 * ux * uy), jnp.sum(wt * i2 * uy * uy)]),
    ])
    return jnp.where(ok, j0, 0.0), jnp.where(ok, j1, 0.0), jnp.where(ok, j2, 0.0)
