r"""Exact integrals of a piecewise polynomial on a rectilinear 2D grid over triangles and segments.

The density lives in *grid coordinates* $t \in [0, 1]^2$ (the box ``origin + t @ frame``); the
square is split into pieces $[b^x_k, b^x_{k+1}] \times [b^y_l, b^y_{l+1}]$, and on each piece the
density is the tensor-product polynomial $\sum_{a,b} C_{klab}\, u^a v^b$ in the local coordinates
$u, v \in [0, 1]$ of the piece.  It is zero outside the square.

**Triangle moments.**  The triangle is clipped against every piece of a static ``window`` x
``window`` block of pieces covering its bounding box (Sutherland--Hodgman on an 8-slot buffer:
a triangle cut by four lines has at most 7 vertices), each piece polygon is fanned into triangles
and integrated with a collapsed (Duffy) Gauss--Jacobi x Gauss--Legendre rule that is exact for
polynomials of the total degree involved (density degree + 2 for the second moments).  The
result is exact up to rounding.  A triangle whose bounding box needs more pieces than the window
returns NaN moments (so a solve fails instead of using a truncated integral; see
``_WINDOW_MESSAGE``).

**Segment integrals** (facet masses) are split at every grid line crossed inside the window and
integrated with Gauss--Legendre, exact for the degree.
"""

from __future__ import annotations

import abc

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import roots_jacobi, roots_legendre

from ._density import AbstractDensity
from .box import Box

_CAP = 8  # vertex slots of a clipped triangle (a triangle cut by 4 lines has <= 7 vertices)


@functools.lru_cache(maxsize=None)
def triangle_rule(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(m, 2)`` in the reference triangle (0,0),(1,0),(0,1) and weights summing to 1,
    exact for polynomials of total degree ``degree``."""
    m = max(1, math.ceil((degree + 1) / 2))
    xj, wj = roots_jacobi(m, 1.0, 0.0)  # weight (1 - x) on [-1, 1]
    u, wu = (xj + 1) / 2, wj / 4  # int_0^1 g(u) (1 - u) du
    xl, wl = roots_legendre(m)
    v, wv = (xl + 1) / 2, wl / 2
    pu, pv = np.meshgrid(u, v, indexing="ij")
    points = np.stack([pu.ravel(), ((1 - pu) * pv).ravel()], -1)
    weights = (wu[:, None] * wv[None, :]).ravel() * 2  # reference area 1/2 -> weights sum to 1
    return points, weights


@functools.lru_cache(maxsize=None)
def line_rule(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss--Legendre points on [0, 1] and weights summing to 1, exact for ``degree``."""
    m = max(1, math.ceil((degree + 1) / 2))
    x, w = roots_legendre(m)
    return (x + 1) / 2, w / 2


def clip_polygon(verts, count, normal, offset):
    """Sutherland--Hodgman: keep ``normal . x <= offset`` of the convex polygon ``verts[:count]``."""
    cap = verts.shape[0]
    idx = jnp.arange(cap)
    live = idx < count
    nxt = (idx + 1) % jnp.maximum(count, 1)
    s = verts @ normal - offset
    inside = s <= 0
    s_next, v_next = s[nxt], verts[nxt]
    keep = live & inside
    crosses = live & (inside != inside[nxt])
    denom = jnp.where(crosses, s - s_next, 1.0)
    t = jnp.where(crosses, s / denom, 0.0)
    point = verts + t[:, None] * (v_next - verts)
    pts = jnp.stack([verts, point], 1).reshape(2 * cap, 2)
    flags = jnp.stack([keep, crosses], 1).reshape(2 * cap)
    # Compact by a gather (faster than a scatter under vmap): output slot j takes the (j+1)-th
    # flagged entry, whose index is the number of entries with fewer than j+1 flags up to them.
    rank = jnp.cumsum(flags)
    src = jnp.sum(rank[None, :] < jnp.arange(1, cap + 1)[:, None], axis=1)
    out = pts[jnp.minimum(src, 2 * cap - 1)]
    return out, jnp.minimum(rank[-1], cap)


def _powers(u, degree: int):
    out = [jnp.ones_like(u)]
    for _ in range(degree):
        out.append(out[-1] * u)
    return jnp.stack(out, -1)


def _window_start(breaks, lo, hi, window):
    """First piece index of a window covering [lo, hi] along one axis, and whether it fits."""
    n = breaks.shape[0] - 1
    i_lo = jnp.clip(jnp.searchsorted(breaks, lo, side="right") - 1, 0, n - 1)
    i_hi = jnp.clip(jnp.searchsorted(breaks, hi, side="right") - 1, 0, n - 1)
    start = jnp.minimum(i_lo, n - window)
    return start, (i_hi - i_lo) < window


_WINDOW_MESSAGE = (
    "a power cell spans more grid pieces than the density's `window` (pieces per axis that one "
    "triangle of a cell may overlap): rebuild the density with a larger `window=`."
)


def triangle_moments(breaks_x, breaks_y, coeffs, t0, tri, window: int):
    """Moments of the grid polynomial over the triangle ``t0 + conv(tri)`` in grid coordinates.

    ``coeffs``: ``(Kx, Ky, p+1, q+1)``.  Returns ``(m0, m1 (2,), m2 (2, 2))`` about ``t0`` and an
    ``ok`` flag (False when the triangle overflows the window).
    """
    kx, ky, px, py = coeffs.shape
    wx, wy = min(window, kx), min(window, ky)
    degree = (px - 1) + (py - 1) + 2
    points, weights = triangle_rule(degree)
    points = jnp.asarray(points, tri.dtype)
    weights = jnp.asarray(weights, tri.dtype)
    tmin = t0 + tri.min(0)
    tmax = t0 + tri.max(0)
    sx, okx = _window_start(breaks_x, tmin[0], tmax[0], wx)
    sy, oky = _window_start(breaks_y, tmin[1], tmax[1], wy)
    verts0 = jnp.zeros((_CAP, 2), tri.dtype).at[:3].set(tri)

    def piece(i, j):
        ix, iy = sx + i, sy + j
        x0, x1 = breaks_x[ix], breaks_x[ix + 1]
        y0, y1 = breaks_y[iy], breaks_y[iy + 1]
        v, c = verts0, jnp.array(3)
        one = jnp.ones((), tri.dtype)
        zero = jnp.zeros((), tri.dtype)
        v, c = clip_polygon(v, c, jnp.stack([-one, zero]), t0[0] - x0)
        v, c = clip_polygon(v, c, jnp.stack([one, zero]), x1 - t0[0])
        v, c = clip_polygon(v, c, jnp.stack([zero, -one]), t0[1] - y0)
        v, c = clip_polygon(v, c, jnp.stack([zero, one]), y1 - t0[1])
        # Fan from vertex 0: triangles (v0, v_j, v_{j+1}), j = 1 .. c-2.
        a = v[1:-1] - v[0]
        b = v[2:] - v[0]
        area = 0.5 * jnp.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
        area = jnp.where(jnp.arange(1, _CAP - 1) + 1 < c, area, 0.0)
        s = v[0] + points[None, :, 0:1] * a[:, None] + points[None, :, 1:2] * b[:, None]  # (F, Q, 2)
        w = area[:, None] * weights[None, :]
        u = (t0[0] + s[..., 0] - x0) / (x1 - x0)
        uy = (t0[1] + s[..., 1] - y0) / (y1 - y0)
        rho = jnp.einsum("fqa,ab,fqb->fq", _powers(u, px - 1), coeffs[ix, iy], _powers(uy, py - 1))
        wr = w * rho
        m0 = jnp.sum(wr)
        m1 = jnp.einsum("fq,fqi->i", wr, s)
        m2 = jnp.einsum("fq,fqi,fqj->ij", wr, s, s)
        return m0, m1, m2

    ii, jj = jnp.meshgrid(jnp.arange(wx), jnp.arange(wy), indexing="ij")
    m0, m1, m2 = jax.vmap(piece)(ii.ravel(), jj.ravel())
    return m0.sum(0), m1.sum(0), m2.sum(0), okx & oky


def evaluate(breaks_x, breaks_y, coeffs, t):
    """The grid polynomial at points ``t (..., 2)`` (zero outside the unit square)."""
    kx, ky, px, py = coeffs.shape
    ix = jnp.clip(jnp.searchsorted(breaks_x, t[..., 0], side="right") - 1, 0, kx - 1)
    iy = jnp.clip(jnp.searchsorted(breaks_y, t[..., 1], side="right") - 1, 0, ky - 1)
    u = (t[..., 0] - breaks_x[ix]) / (breaks_x[ix + 1] - breaks_x[ix])
    v = (t[..., 1] - breaks_y[iy]) / (breaks_y[iy + 1] - breaks_y[iy])
    val = jnp.einsum("...a,...ab,...b->...", _powers(u, px - 1), coeffs[ix, iy], _powers(v, py - 1))
    inside = jnp.all((t >= 0) & (t <= 1), -1)
    return jnp.where(inside, val, 0.0)


def segment_integral(breaks_x, breaks_y, coeffs, t0, seg, window: int):
    r"""$\int_0^1 f(t_0 + s_0 + \lambda (s_1 - s_0))\, d\lambda$, split at the grid lines crossed."""
    kx, ky, px, py = coeffs.shape
    wx, wy = min(window, kx), min(window, ky)
    xs, ws = line_rule((px - 1) + (py - 1))
    xs, ws = jnp.asarray(xs, seg.dtype), jnp.asarray(ws, seg.dtype)
    p0, p1 = t0 + seg[0], t0 + seg[1]
    lo, hi = jnp.minimum(p0, p1), jnp.maximum(p0, p1)
    sx, _ = _window_start(breaks_x, lo[0], hi[0], wx)
    sy, _ = _window_start(breaks_y, lo[1], hi[1], wy)
    bx = jax.lax.dynamic_slice(breaks_x, (sx,), (wx + 1,))
    by = jax.lax.dynamic_slice(breaks_y, (sy,), (wy + 1,))
    delta = p1 - p0

    def crossing(b, k):
        dk = delta[k]
        safe = jnp.where(dk != 0, dk, 1.0)
        lam = jnp.where(dk != 0, (b - p0[k]) / safe, 0.0)
        return jnp.clip(lam, 0.0, 1.0)

    lams = jnp.sort(jnp.concatenate([
        jnp.zeros(1, seg.dtype), jnp.ones(1, seg.dtype), crossing(bx, 0), crossing(by, 1)
    ]))
    a, b = lams[:-1], lams[1:]
    lam = a[:, None] + (b - a)[:, None] * xs[None, :]
    pts = p0 + lam[..., None] * delta
    mid = p0 + ((a + b) / 2)[:, None] * delta
    # Evaluate each sub-segment on the piece of its midpoint (the polynomial of that piece).
    ix = jnp.clip(jnp.searchsorted(breaks_x, mid[:, 0], side="right") - 1, 0, kx - 1)
    iy = jnp.clip(jnp.searchsorted(breaks_y, mid[:, 1], side="right") - 1, 0, ky - 1)
    u = (pts[..., 0] - breaks_x[ix][:, None]) / (breaks_x[ix + 1] - breaks_x[ix])[:, None]
    v = (pts[..., 1] - breaks_y[iy][:, None]) / (breaks_y[iy + 1] - breaks_y[iy])[:, None]
    val = jnp.einsum("sqa,sab,sqb->sq", _powers(u, px - 1), coeffs[ix, iy], _powers(v, py - 1))
    inside = jnp.all((mid >= 0) & (mid <= 1), -1)
    return jnp.sum(jnp.where(inside, (b - a) * (val @ ws), 0.0))


def total_integral(breaks_x, breaks_y, coeffs):
    r"""$\int_{[0,1]^2} f\,dt$, exact."""
    kx, ky, px, py = coeffs.shape
    ia = 1.0 / np.arange(1, px + 1)
    ib = 1.0 / np.arange(1, py + 1)
    per_piece = jnp.einsum("klab,a,b->kl", coeffs, ia, ib)
    widths = jnp.outer(jnp.diff(breaks_x), jnp.diff(breaks_y))
    return jnp.sum(per_piece * widths)


# ---------------------------------------------------------------------------------------------
# Mapping between grid coordinates t and world coordinates x = origin + t @ frame.


def frame_of(origin, frame, dim):
    """Normalise ``origin`` / ``frame`` (None, edge lengths (d,) or a (d, d) matrix)."""
    from .._checks import as_float_array

    if frame is None:
        frame = jnp.eye(dim)
    else:
        frame = as_float_array(frame, "frame")
        if frame.ndim == 1:
            frame = jnp.diag(frame)
        if frame.shape != (dim, dim):
            raise ValueError(f"`frame` must have shape ({dim},) or ({dim}, {dim}), got {frame.shape}.")
    if origin is None:
        origin = jnp.zeros(dim, frame.dtype)
    else:
        origin = as_float_array(origin, "origin")
        if origin.shape != (dim,):
            raise ValueError(f"`origin` must have shape ({dim},), got {origin.shape}.")
    dtype = jnp.result_type(origin, frame)
    return origin.astype(dtype), frame.astype(dtype)


class GridMoments(eqx.Module):
    """Shared machinery: a piecewise polynomial in grid coordinates, mapped to the world."""

    breaks_x: jax.Array
    breaks_y: jax.Array
    coeffs: jax.Array
    origin: jax.Array
    frame: jax.Array
    window: int = eqx.field(static=True)

    def simplex_moments(self, origin, simplex):
        finv = jnp.linalg.inv(self.frame)
        jac = jnp.abs(jnp.linalg.det(self.frame))
        t0 = (origin - self.origin) @ finv
        tri = simplex @ finv
        if self.coeffs.shape[2:] == (1, 1):
            m0, m1, m2, ok = triangle_moments_constant(
                self.breaks_x, self.breaks_y, self.coeffs[:, :, 0, 0], t0, tri, self.window)
        else:
            m0, m1, m2, ok = triangle_moments(
                self.breaks_x, self.breaks_y, self.coeffs, t0, tri, self.window)
        # Overflow gives NaN (a dead, padded triangle of the kernel may be huge and is discarded
        # by a `where`; a live one makes the solve fail loudly instead of returning a wrong mass).
        m0 = jnp.where(ok, m0, jnp.nan)
        f = self.frame
        return jac * m0, jac * (m1 @ f), jac * (f.T @ m2 @ f)

    def facet_mass(self, origin, facet):
        finv = jnp.linalg.inv(self.frame)
        t0 = (origin - self.origin) @ finv
        seg = facet @ finv
        diff = facet[1] - facet[0]
        length2 = jnp.sum(diff**2)
        length = jnp.where(length2 > 0, jnp.sqrt(jnp.where(length2 > 0, length2, 1.0)), 0.0)
        return length * segment_integral(self.breaks_x, self.breaks_y, self.coeffs, t0, seg, self.window)

    def total_mass(self):
        return jnp.abs(jnp.linalg.det(self.frame)) * total_integral(self.breaks_x, self.breaks_y, self.coeffs)

    def density_at(self, x):
        """The density at world points ``x (..., 2)``."""
        t = (x - self.origin) @ jnp.linalg.inv(self.frame)
        return evaluate(self.breaks_x, self.breaks_y, self.coeffs, t)


def blur_matrix(n: int, sigma_cells: float) -> np.ndarray:
    """Row-stochastic Gaussian blur of width ``sigma_cells`` (in cells) with edge extension
    (clamped indices), so that constant values stay constant."""
    if sigma_cells <= 0:
        return np.eye(n)
    r = int(math.ceil(4 * sigma_cells)) + 1
    offsets = np.arange(-r, r + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_cells) ** 2)
    kernel /= kernel.sum()
    m = np.zeros((n, n))
    for i in range(n):
        for o, k in zip(offsets, kernel):
            m[i, min(max(i + o, 0), n - 1)] += k
    return m


def triangle_moments_constant(breaks_x, breaks_y, values, t0, tri, window: int):
    r"""Exact moments of a piecewise-constant grid function over a triangle by Green's theorem.

    With $F_a(x, y) = \int_{X_0}^x s^a f(s, y)\, ds$ (from the window's left edge $X_0$; any
    base works since $\oint c(y)\,dy = 0$ on a closed curve), and $x, y$ relative to ``t0``:

    $$\int_T x^a y^b f = \oint_{\partial T} y^b F_a(x, y)\, dy \quad (a + b \le 2),$$

    the boundary taken counter-clockwise.  Each edge is split where it crosses the window's grid
    lines; on each piece $y^b F_a$ is a cubic in the edge parameter, integrated exactly by
    2-point Gauss--Legendre.  Cost: O(window) per edge instead of O(window^2) clipped pieces.
    """
    kx, ky = values.shape
    wx, wy = min(window, kx), min(window, ky)
    dtype = tri.dtype
    tmin, tmax = t0 + tri.min(0), t0 + tri.max(0)
    sx, okx = _window_start(breaks_x, tmin[0], tmax[0], wx)
    sy, oky = _window_start(breaks_y, tmin[1], tmax[1], wy)
    xs = jax.lax.dynamic_slice(breaks_x, (sx,), (wx + 1,)) - t0[0]
    ys = jax.lax.dynamic_slice(breaks_y, (sy,), (wy + 1,)) - t0[1]
    val = jax.lax.dynamic_slice(values, (sx, sy), (wx, wy))
    # Prefix tables P[a][c, r] = sum_{c' < c} val[c', r] (X_{c'+1}^{a+1} - X_{c'}^{a+1}) / (a+1).
    pw = [(xs[1:] ** (a + 1) - xs[:-1] ** (a + 1)) / (a + 1) for a in range(3)]
    prefix = [jnp.concatenate([jnp.zeros((1, wy), dtype), jnp.cumsum(val * p[:, None], 0)]) for p in pw]
    gl_x, gl_w = line_rule(3)
    gl_x, gl_w = jnp.asarray(gl_x, dtype), jnp.asarray(gl_w, dtype)

    def crossing(b, p0, dk):
        safe = jnp.where(dk != 0, dk, 1.0)
        return jnp.clip(jnp.where(dk != 0, (b - p0) / safe, 0.0), 0.0, 1.0)

    def edge(p0, p1):
        delta = p1 - p0
        lams = jnp.sort(jnp.concatenate([
            jnp.array([0.0, 1.0], dtype), crossing(xs, p0[0], delta[0]), crossing(ys, p0[1], delta[1])
        ]))
        a, b = lams[:-1], lams[1:]
        mid = p0 + ((a + b) / 2)[:, None] * delta
        c = jnp.searchsorted(xs, mid[:, 0], side="right") - 1  # -1 .. wx
        r = jnp.searchsorted(ys, mid[:, 1], side="right") - 1
        row_ok = (r >= 0) & (r < wy)
        rc = jnp.clip(r, 0, wy - 1)
        cc = jnp.clip(c, 0, wx - 1)
        in_col = (c >= 0) & (c < wx)
        f = jnp.where(row_ok & in_col, val[cc, rc], 0.0)
        lam = a[:, None] + (b - a)[:, None] * gl_x[None, :]
        pts = p0 + lam[..., None] * delta  # (S, 2, 2)
        x, y = pts[..., 0], pts[..., 1]
        out = []
        for aa in range(3):
            base = jnp.where(c >= wx, prefix[aa][wx, rc], prefix[aa][jnp.clip(c, 0, wx), rc])
            base = jnp.where((c >= 0) & row_ok, base, 0.0)
            xc = xs[cc]
            fa = base[:, None] + f[:, None] * (x ** (aa + 1) - xc[:, None] ** (aa + 1)) / (aa + 1)
            out.append(fa)
        wdy = (b - a)[:, None] * gl_w[None, :] * delta[1]
        f0, f1, f2 = out
        return jnp.stack([
            jnp.sum(wdy * f0), jnp.sum(wdy * f1), jnp.sum(wdy * y * f0),
            jnp.sum(wdy * f2), jnp.sum(wdy * y * f1), jnp.sum(wdy * y * y * f0),
        ])

    e = jax.vmap(edge)(tri, jnp.roll(tri, -1, axis=0)).sum(0)
    d1, d2 = tri[1] - tri[0], tri[2] - tri[0]
    sign = jnp.sign(d1[0] * d2[1] - d1[1] * d2[0])
    e = sign * e
    m1 = jnp.stack([e[1], e[2]])
    m2 = jnp.stack([jnp.stack([e[3], e[4]]), jnp.stack([e[4], e[5]])])
    return e[0], m1, m2, okx & oky


class AbstractGridDensity(AbstractDensity):
    """A density given per cell of a regular grid on the box ``origin + frame^T [0, 1]^2``: every
    integral is delegated to the `GridMoments` that ``_grid()`` builds."""

    origin: eqx.AbstractVar[jax.Array]
    frame: eqx.AbstractVar[jax.Array]

    @abc.abstractmethod
    def _grid(self) -> GridMoments:
        """The piecewise-polynomial description of the density."""

    def bounding_box(self):
        return Box(self.origin, self.frame).bounding_box()

    def half_spaces(self):
        return Box(self.origin, self.frame).half_spaces()

    def total_mass(self):
        return self._grid().total_mass()

    def simplex_moments(self, origin, simplex):
        return self._grid().simplex_moments(origin, simplex)

    def facet_mass(self, origin, facet):
        return self._grid().facet_mass(origin, facet)

    def density_at(self, x):
        """$\\rho$ at points ``x (..., 2)``."""
        return self._grid().density_at(x)
