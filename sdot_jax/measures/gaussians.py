r"""Isotropic Gaussian mixtures in 2D and 3D, integrated semi-analytically over power cells.

**Method** (each component in its standard coordinates $z = (x - \mu_k) / \sigma_k$, density
$\varphi_d(z) = (2\pi)^{-d/2} e^{-|z|^2/2}$):

- *Mass of a simplex* $S$: a signed sum over its facets $F$ of cones $(0, F)$.  In 2D the cone over
  an edge is $\frac1{2\pi}\int c\,(1 - e^{-P^2/2}) / P^2\, du$ along the edge's line (signed
  distance $c$ to the centre, $P^2 = c^2 + u^2$); in 3D the cone over a triangle, after the radial
  integral in closed form and an in-plane polar decomposition about the foot of the
  perpendicular (distance $h$), is a sum over the triangle's edges of
  $\frac{h}{4\pi}\int c\,(K(R) - K(|h|)) / P^2\, du$, $R^2 = h^2 + P^2$,
  $K(r) = -\mathrm{erf}(r/\sqrt2)/r$ (an antiderivative of $P_3(r)/r^2$, $P_3$ the $\chi_3$
  distribution function).
  Both integrands are entire functions of $u$ (the $1/P^2$ pole cancels), so Gauss--Legendre on
  $|u| \le U_0 = 8.5$ converges fast and uniformly in $c, h$; for $|u| > U_0$ the integrands equal
  closed-form arctangents up to terms below $e^{-U_0^2/2} < 2.2\cdot 10^{-16}$.  (The previous
  angular quadrature lost accuracy -- 2e-5 relative -- when an edge passed near a centre, which
  is where the gradient errors of issue 5 came from.)
- *Moments from masses*, by exact identities ($\nabla\varphi = -z\varphi$, divergence theorem):
  $\int_S z\varphi = -\sum_F n_F M_F$ and
  $\int_S z z^T\varphi = M_0 I - \sum_F \big(\int_F z\varphi\big) n_F^T$ with
  $\int_F z\varphi = h_F n_F M_F - \sum_{E \subset F} \nu_{E} M_E$
  ($M_F$, $M_E$ the masses of the facets and of their boundary pieces, $n$, $\nu$ outward normals).
  Segment masses are closed forms (erf); in 3D the triangle masses come from the same edge
  integrals as the cones.
- *Facet masses* (Newton's Hessian): closed form in 2D, the in-plane triangle mass in 3D.

**Truncation.** The support is unbounded; the measure is the mixture restricted to the box
$[\min_k(\mu_k - R\sigma_k), \max_k(\mu_k + R\sigma_k)]$ with $d\,\mathrm{erfc}(R/\sqrt2) \le
10^{-12}$, so the mass left outside is at most $10^{-12} \sum_k w_k$.  The total mass is that of
the box, in closed form: were it $\sum_k w_k$, the cells' masses would sum short of it by up to
$10^{-12}$ and no tolerance below that could be reached.

**Measured error** (tests/test_gaussians.py, against independent tensor Gauss rules on
subdivided simplices): below 1e-14 of the component mass for masses, moments and facet masses
over random triangles and tetrahedra of sizes 1e-3 to 20 sigma.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf, erfc
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values
from .._extremes import largest, smallest
from ._density import AbstractDensity

TRUNCATION = 1e-12  # mass left outside the bounding box, relative to the total mass (at most)
_U0 = 8.5  # along an edge line, |u| > U0 (in sigmas) is integrated in closed form
_PIECES = 6  # Gauss--Legendre pieces on [-U0, U0] clipped to the edge
_NODES = 10  # nodes per piece
_TINY = 1e-14  # edges shorter than this (in sigmas) are dropped: at most 1e-14 of the mass each
_SQRT2 = math.sqrt(2.0)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)


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
    r"""$\rho(x) = \sum_k w_k\, (2\pi\sigma_k^2)^{-d/2} \exp(-|x - \mu_k|^2 / 2\sigma_k^2)$, d = 2 or 3.

    **Arguments:**

    - `positions`: centres $\mu_k$, shape ``(m, d)`` with d = 2 or 3.
    - `sigmas`: standard deviations, shape ``(m,)`` or a scalar.
    - `weights`: masses $w_k \ge 0$ (not heights), shape ``(m,)``; equal when omitted.

    The measure is the mixture restricted to a box that holds all but at most $10^{-12}$ of
    $\sum_k w_k$ (`bounding_box`); ``total_mass`` is the mass in that box, in closed form, so that
    the cells' masses sum to it and Newton can reach any tolerance the arithmetic resolves.
    Integrals over simplices and facets are exact up to a stated quadrature error below
    $10^{-14}$ of each component's mass (see the module docstring), and differentiable with
    respect to `positions`, `sigmas` and `weights`.
    """

    positions: Float[Array, "m d"]
    sigmas: Float[Array, " m"]
    weights: Float[Array, " m"]

    def __init__(self, positions: Any, sigmas: Any, weights: Any = None):
        positions = as_float_array(positions, "positions")
        if positions.ndim != 2 or positions.shape[1] not in (2, 3):
            raise NotImplementedError(
                "SumOfGaussians supports 2D and 3D: `positions` must have shape (m, 2) or (m, 3), "
                f"got {positions.shape}."
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
        return smallest(self.positions - r * s, 0), largest(self.positions + r * s, 0)

    def total_mass(self):
        r"""$\sum_k w_k \prod_a [\Phi((hi_a - \mu_{k,a})/\sigma_k) - \Phi((lo_a - \mu_{k,a})/\sigma_k)]$,
        the mixture's mass in `bounding_box` (at least $(1 - 10^{-12}) \sum_k w_k$)."""
        lo, hi = self.bounding_box()
        s = self.sigmas[:, None]
        inside = _phi_interval((lo - self.positions) / s, (hi - self.positions) / s)
        return jnp.sum(self.weights * jnp.prod(inside, -1))

    def interior_point(self):
        return self.positions[jnp.argmax(self.weights)]

    def mean_and_spread(self):
        """The rms radius is the norm of the per-axis standard deviations (`axis_spread`)."""
        mean, spread = self.axis_spread()
        return mean, jnp.linalg.norm(spread)

    def axis_spread(self):
        r"""Closed form: $m = \sum_k w_k \mu_k / W$, variance$_a = \sum_k w_k (\sigma_k^2 + (\mu_{k,a} - m_a)^2) / W$."""
        w = self.weights / jnp.sum(self.weights)
        mean = w @ self.positions
        variance = w @ (self.sigmas[:, None] ** 2 + (self.positions - mean) ** 2)
        return mean, jnp.sqrt(variance)

    def density_at(self, x):
        """$\\rho$ at points ``x (..., d)``."""
        r2 = jnp.sum((x[..., None, :] - self.positions) ** 2, -1)
        s2 = self.sigmas**2
        return jnp.sum(self.weights * (2 * jnp.pi * s2) ** (-self.dim / 2) * jnp.exp(-r2 / (2 * s2)), -1)

    def smoothed(self, amount: float) -> "SumOfGaussians":
        r"""A blurred copy: the density convolved with a Gaussian of standard deviation ``amount``
        times the bounding box's largest side ($\sigma_k \to \sqrt{\sigma_k^2 + s^2}$), any d."""
        lo, hi = self.bounding_box()
        s = amount * largest(hi - lo, 0)
        return SumOfGaussians(self.positions, jnp.sqrt(self.sigmas**2 + s**2), self.weights)

    def facet_mass(self, origin, facet):
        d = self.dim

        def component(mu, s, w):
            z = (origin + facet - mu) / s
            if d == 2:
                std = _segment_mass_2d(z)
            else:
                std = _triangle_3d(z, with_cone=False)[1]
            return w * std / s

        return jnp.sum(jax.vmap(component)(self.positions, self.sigmas, self.weights))

    def simplex_moments(self, origin, simplex):
        d = self.dim
        standard = _triangle_moments if d == 2 else _tetrahedron_moments

        def component(mu, s, w):
            z = (origin + simplex - mu) / s
            m0, m1, m2 = standard(z)
            a0, a1, a2 = w * m0, w * s * m1, w * s**2 * m2  # about mu, physical units
            delta = mu - origin
            return (a0, a1 + delta * a0,
                    a2 + jnp.outer(delta, a1) + jnp.outer(a1, delta) + jnp.outer(delta, delta) * a0)

        m0, m1, m2 = jax.vmap(component)(self.positions, self.sigmas, self.weights)
        return m0.sum(0), m1.sum(0), m2.sum(0)


# ---- standard-normal integrals (centre 0, sigma 1) ------------------------------------------


def _rule(dtype):
    """Gauss--Legendre nodes t in [0, 1] (``_PIECES`` equal pieces) and weights summing to 1."""
    x, w = np.polynomial.legendre.leggauss(_NODES)
    j = np.arange(_PIECES)[:, None]
    t = (j + (x[None] + 1) / 2) / _PIECES
    wt = np.broadcast_to(w[None] / (2 * _PIECES), t.shape)
    return jnp.asarray(t.ravel(), dtype), jnp.asarray(wt.ravel(), dtype)


def _phi_interval(ua, ub):
    r"""$\Phi(u_b) - \Phi(u_a)$ (standard normal), with erfc in the tails for relative accuracy."""
    pos = 0.5 * (erfc(ua / _SQRT2) - erfc(ub / _SQRT2))
    neg = 0.5 * (erfc(-ub / _SQRT2) - erfc(-ua / _SQRT2))
    mid = 0.5 * (erf(ub / _SQRT2) - erf(ua / _SQRT2))
    return jnp.where(ua > 0, pos, jnp.where(ub < 0, neg, mid))


def _datan(c, a, b):
    r"""$\arctan(b/c) - \arctan(a/c)$ for a, b of the same sign (|a|, |b| >= U0): smooth in c at 0."""
    return jnp.arctan2(c * (b - a), c * c + a * b)


def _e2(q):
    r"""$(1 - e^{-q/2}) / q$, entire in q (series near 0)."""
    small = q < 1e-6
    safe = jnp.where(small, 1.0, q)
    return jnp.where(small, 0.5 - q / 8 + q * q / 48, -jnp.expm1(-safe / 2) / safe)


def _k(r):
    r"""$K(r) = -\mathrm{erf}(r/\sqrt2)/r = -P_3(r)/r - \sqrt{2/\pi}\, e^{-r^2/2}$, so that
    $K'(r) = P_3(r)/r^2$ ($P_3$ the $\chi_3$ distribution function); series below r = 1e-4."""
    small = r < 1e-4
    safe = jnp.where(small, 1.0, r)
    return jnp.where(small, -_SQRT_2_PI * (1 - r * r / 6), -erf(safe / _SQRT2) / safe)


def _line(c, ua, ub, h=None):
    r"""Edge integrals along a line at signed distance c from the foot, from u = ua to ub.

    Returns the signed 2D cone $\frac1{2\pi}\int c (1 - e^{-P^2/2})/P^2 du$ and, when h is given,
    the 3D cone part $\frac{h}{4\pi}\int c (K(R) - K(|h|))/P^2 du$ ($P^2 = c^2+u^2$, $R^2 = h^2+P^2$).
    """
    t, wt = _rule(c.dtype)
    u1, u2 = jnp.clip(ua, -_U0, _U0), jnp.clip(ub, -_U0, _U0)
    u = u1 + (u2 - u1) * t
    w = (u2 - u1) * wt
    q = c * c + u * u
    left = jnp.minimum(ua, -_U0), jnp.minimum(ub, -_U0)
    right = jnp.maximum(ua, _U0), jnp.maximum(ub, _U0)
    plane = (jnp.sum(w * c * _e2(q)) + _datan(c, *left) + _datan(c, *right)) / (2 * jnp.pi)
    if h is None:
        return plane
    ah = jnp.abs(h)
    kh = _k(ah)
    r2 = h * h + q
    r = jnp.sqrt(jnp.where(r2 > 0, r2, 1.0))  # r2 = 0 only where the integrand is masked
    safe_q = jnp.where(q > 0, q, 1.0)
    inner = h * jnp.sum(w * jnp.where(q > 0, c * (_k(r) - kh) / safe_q, 0.0))

    def atan_hr(a, b):  # arctan(b h / (c R_b)) - arctan(a h / (c R_a)), a b > 0
        ra, rb = jnp.sqrt(h * h + c * c + a * a), jnp.sqrt(h * h + c * c + b * b)
        xa, xb, ya, yb = a * h, b * h, c * ra, c * rb
        num, den = xb * ya - xa * yb, ya * yb + xa * xb
        ok = den > 0
        return jnp.where(ok, jnp.arctan2(jnp.where(ok, num, 0.0), jnp.where(ok, den, 1.0)), 0.0)

    outer = -(atan_hr(*left) + atan_hr(*right)) - h * kh * (_datan(c, *left) + _datan(c, *right))
    return plane, (inner + outer) / (4 * jnp.pi)


def _edges(v):
    """(p, q, t, length ok) for the closed polygon v (k, d): edges v_i -> v_{i+1}."""
    p, q = v, jnp.roll(v, -1, axis=0)
    e = q - p
    l2 = jnp.sum(e * e, -1)
    ok = l2 > _TINY**2  # (1-ulp edges would give O(1) garbage derivatives through t = e / |e|)
    t = e / jnp.sqrt(jnp.where(ok, l2, 1.0))[:, None]
    return p, q, t, ok


def _segment_mass_2d(seg):
    r"""$\int_E \varphi_2\, dl$ over the segment E = seg (2, 2)."""
    p, q = seg
    e = q - p
    l2 = e @ e
    ok = l2 > _TINY**2
    t = e / jnp.sqrt(jnp.where(ok, l2, 1.0))
    c = p[0] * t[1] - p[1] * t[0]
    val = jnp.exp(-c * c / 2) / math.sqrt(2 * math.pi) * _phi_interval(p @ t, q @ t)
    return jnp.where(ok, val, 0.0)


def _triangle_moments(v):
    r"""$(\int_T \varphi_2, \int_T z\varphi_2, \int_T zz^T\varphi_2)$ over the triangle v (3, 2)."""
    p, q, t, ok = _edges(v)
    c = p[:, 0] * t[:, 1] - p[:, 1] * t[:, 0]  # signed distance; outward normal n = (t_y, -t_x)
    ua, ub = jnp.sum(p * t, -1), jnp.sum(q * t, -1)
    d1, d2 = v[1] - v[0], v[2] - v[0]
    sigma = jnp.sign(d1[0] * d2[1] - d1[1] * d2[0])
    plane = jax.vmap(_line)(c, ua, ub)
    m0 = sigma * jnp.sum(jnp.where(ok, plane, 0.0))
    seg = jnp.where(ok, jnp.exp(-c * c / 2) / math.sqrt(2 * math.pi) * _phi_interval(ua, ub), 0.0)
    n = jnp.stack([t[:, 1], -t[:, 0]], -1)
    m1 = -sigma * jnp.sum(n * seg[:, None], 0)
    dens = jnp.exp(-jnp.sum(v * v, -1) / 2) / (2 * math.pi)  # phi_2 at the vertices
    dens_p, dens_q = dens, jnp.roll(dens, -1)
    along = jnp.where(ok, dens_p - dens_q, 0.0)
    zf = (c * seg)[:, None] * n + along[:, None] * t  # int_E z phi dl
    m2 = m0 * jnp.eye(2, dtype=v.dtype) - sigma * zf.T @ n
    return m0, m1, (m2 + m2.T) / 2


def _triangle_3d(f, with_cone=True):
    r"""For the triangle f (3, 3) with normal n = (b-a)x(c-a)/|.|: the signed cone
    $\int_{\mathrm{cone}(0, f)} \varphi_3$ (sign of h = a.n), the mass $\int_f \varphi_3$,
    $\int_f z \varphi_3$ and n."""
    a, b, cc = f
    nvec = jnp.cross(b - a, cc - a)
    area2 = nvec @ nvec
    ok_f = area2 > _TINY**4
    n = nvec / jnp.sqrt(jnp.where(ok_f, area2, 1.0))
    h = a @ n
    p, q, t, ok = _edges(f)
    c = jnp.sum(n * jnp.cross(p, t), -1)  # in-plane signed distance from the foot h n
    ua, ub = jnp.sum(p * t, -1), jnp.sum(q * t, -1)
    if with_cone:
        plane, cone = jax.vmap(lambda c_, a_, b_: _line(c_, a_, b_, h))(c, ua, ub)
        cone = jnp.sum(jnp.where(ok, cone, 0.0))
    else:
        plane, cone = jax.vmap(_line)(c, ua, ub), jnp.zeros((), f.dtype)
    mass = jnp.exp(-h * h / 2) / math.sqrt(2 * math.pi) * jnp.sum(jnp.where(ok, plane, 0.0))
    seg = jnp.where(ok, jnp.exp(-(h * h + c * c) / 2) / (2 * math.pi) * _phi_interval(ua, ub), 0.0)
    nu = jnp.cross(t, n)  # outward in-plane normals of the edges
    first = h * mass * n - jnp.sum(nu * seg[:, None], 0)
    zero = jnp.zeros((), f.dtype)
    return (jnp.where(ok_f, cone, zero), jnp.where(ok_f, mass, zero),
            jnp.where(ok_f, first, 0.0), jnp.where(ok_f, n, 0.0))


_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])  # outward for det > 0


def _tetrahedron_moments(v):
    r"""$(\int_S \varphi_3, \int_S z\varphi_3, \int_S zz^T\varphi_3)$ over the tetrahedron v (4, 3)."""
    sigma = jnp.sign(jnp.dot(v[1] - v[0], jnp.cross(v[2] - v[0], v[3] - v[0])))
    cone, mass, first, n = jax.vmap(_triangle_3d)(v[_FACES])
    m0 = sigma * jnp.sum(cone)
    m1 = -sigma * jnp.sum(n * mass[:, None], 0)
    m2 = m0 * jnp.eye(3, dtype=v.dtype) - sigma * first.T @ n
    return m0, m1, (m2 + m2.T) / 2
