r"""Exact integrals of a piecewise polynomial on a rectilinear 2D grid over triangles and segments,
and on a 3D grid over tetrahedra and triangles (second half of this module).

The density lives in *grid coordinates* $t \in [0, 1]^2$ (the box ``origin + t @ frame``); the
square is split into pieces $[b^x_k, b^x_{k+1}] \times [b^y_l, b^y_{l+1}]$, and on each piece the
density is the tensor-product polynomial $\sum_{a,b} C_{klab}\, u^a v^b$ in the local coordinates
$u, v \in [0, 1]$ of the piece.  It is zero outside the square.

**Polygon moments** (2D): one boundary pass by Green's theorem (`polygon_moments_grid`): each
edge of the polygon is split where it crosses the grid lines of a static ``window`` x ``window``
block of pieces covering the polygon, and exact Gauss--Legendre rules integrate the primitive of
the density along each sub-edge.  The same pass gives each edge's line integral (the facet masses
of the Newton Hessian).  A polygon whose bounding box needs more pieces than the window returns
NaN moments (so a solve fails, or grows the window, instead of using a truncated integral; see
``_WINDOW_MESSAGE``).  Triangles are polygons of three vertices.

**Segment integrals** (`facet_mass`) are the same pass on a segment taken as a two-vertex polygon.
"""

from __future__ import annotations

import abc
import copy
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import roots_jacobi, roots_legendre

from ._density import AbstractDensity
from .box import Box

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
        """Moments about ``origin`` of the triangle ``origin + simplex`` (`polygon_moments`)."""
        m0, m1, m2, _ = self.polygon_moments(origin, simplex, jnp.roll(simplex, -1, 0), jnp.ones(3, bool))
        return m0, m1, m2

    def polygon_moments(self, origin, vertices, following, live):
        """Moments about ``origin`` of the polygon ``origin + vertices[live]`` (in order; edge k
        runs from ``vertices[k]`` to ``following[k]``) and the density's line integral along each
        edge, in one boundary pass (`polygon_moments_grid`)."""
        finv = jnp.linalg.inv(self.frame)
        jac = jnp.abs(jnp.linalg.det(self.frame))
        t0 = (origin - self.origin) @ finv
        m0, m1, m2, mean, ok = polygon_moments_grid(
            self.breaks_x, self.breaks_y, self.coeffs, t0, vertices @ finv, following @ finv, live, self.window)
        # Overflow gives NaN (a dead, padded cell of the kernel may be huge and is discarded by a
        # `where`; a live one makes the solve fail loudly instead of returning a wrong mass).
        m0 = jnp.where(ok, m0, jnp.nan)
        f = self.frame
        length = jnp.sqrt(jnp.sum((following - vertices) ** 2, -1))
        return jac * m0, jac * (m1 @ f), jac * (f.T @ m2 @ f), length * mean

    def facet_mass(self, origin, facet):
        """The line integral over the segment ``origin + facet``: the edge pass of
        `polygon_moments` on the segment taken as a two-vertex polygon (NaN, like the moments,
        when it spans more pieces than the window)."""
        m0, _, _, edges = self.polygon_moments(origin, facet, facet[::-1], jnp.ones(2, bool))
        return jnp.where(jnp.isnan(m0), jnp.nan, edges[0])

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


# Default windows (pieces per axis a cell may span).  2D: the Green pass costs O(window) per edge
# (plus a window x window prefix table), so the whole grid up to 64; a window too small makes Newton
# reject legitimate large trial cells (NaN masses).  3D: clipping costs O(window**3) per tetrahedron.
WINDOW_2D = 64
WINDOW_3D = 4


def blur(values, amount: float):
    """Blur an array of per-cell values (or coefficients, trailing axes kept) over its first
    ``d`` axes, ``d = 2`` or ``3`` as many as the grid has, by `blur_matrix` along each."""
    out = values
    d = 3 if values.ndim in (3, 6) else 2
    for axis in range(d):
        n = values.shape[axis]
        m = jnp.asarray(blur_matrix(n, float(amount) * n), values.dtype)
        out = jnp.moveaxis(jnp.tensordot(m, out, axes=([1], [axis])), 0, axis)
    return out


def grid_interior_point(levels, origin, frame):
    """The centre of the grid cell with the largest of ``levels`` (``(n_1, .., n_d)``)."""
    shape = levels.shape
    idx = jnp.unravel_index(jnp.argmax(levels), shape)
    t = jnp.stack([(i + 0.5) / n for i, n in zip(idx, shape)]).astype(frame.dtype)
    return origin + t @ frame


def polygon_moments_grid(breaks_x, breaks_y, coeffs, t0, verts, following, live, window: int):
    r"""Exact moments of a piecewise-polynomial grid function over a convex polygon by Green's
    theorem, and its line integral along each edge.

    ``coeffs (Kx, Ky, P, Q)``: on piece $(c, r)$ the function is $f = \sum_{a,b} C_{crab}\, u^a v^b$
    in the piece's local coordinates $u, v \in [0, 1]$.  ``verts (V, 2)``: the polygon's vertices
    relative to ``t0`` in order (either orientation), ``following`` the end of each edge (the next
    live vertex), ``live (V,)`` the live slots.  With $F_a(x, y) = \int_{X_0}^x s^a f(s, y)\, ds$
    (from the window's left edge $X_0$; any base works since $\oint c(y)\,dy = 0$ on a closed
    curve), and $x, y$ relative to ``t0``:

    $$\int_P x^a y^b f = \oint_{\partial P} y^b F_a(x, y)\, dy \quad (a + b \le 2),$$

    the boundary taken counter-clockwise.  $F_a$ is a prefix over the whole pieces left of $x$
    (a polynomial in $v$, tabulated per window column) plus the integral across the current
    piece, by Gauss--Legendre in $s$ (exact: degree $a + P - 1$).  Each edge is split where it
    crosses the window's grid lines; on each sub-edge $y^b F_a$ is a polynomial of degree at most
    $P + Q + 1$ in the edge parameter, integrated exactly by Gauss--Legendre, and the same points
    give $\int_0^1 f(p_0 + \lambda (p_1 - p_0))\, d\lambda$ per edge.  Cost: O(V x window) per
    polygon, plus a window x window prefix table.

    Returns ``(m0, m1 (2,), m2 (2, 2), edge (V,), ok)``: moments about ``t0``, the mean of $f$
    along edge k -> k+1 (0 on dead slots), and whether the polygon fits the window.
    """
    kx, ky, p, q = coeffs.shape
    wx, wy = min(window, kx), min(window, ky)
    dtype = verts.dtype
    lo = t0 + jnp.min(jnp.where(live[:, None], verts, jnp.inf), 0)
    hi = t0 + jnp.max(jnp.where(live[:, None], verts, -jnp.inf), 0)
    sx, okx = _window_start(breaks_x, lo[0], hi[0], wx)
    sy, oky = _window_start(breaks_y, lo[1], hi[1], wy)
    xs = jax.lax.dynamic_slice(breaks_x, (sx,), (wx + 1,)) - t0[0]
    ys = jax.lax.dynamic_slice(breaks_y, (sy,), (wy + 1,)) - t0[1]
    zero = jnp.zeros((), sx.dtype)
    window_coeffs = jax.lax.dynamic_slice(coeffs, (sx, sy, zero, zero), (wx, wy, p, q))
    widths, heights = xs[1:] - xs[:-1], ys[1:] - ys[:-1]
    across_x, across_w = (jnp.asarray(r, dtype) for r in line_rule(p + 1))
    edge_x, edge_w = (jnp.asarray(r, dtype) for r in line_rule(p + q + 1))

    def across(x_left, x, width):
        r"""$\int_{x_{left}}^x s^a u(s)^k ds$ for a = 0..2, k < P (u local to the piece): (..., 3, P)."""
        length = x - x_left
        s = x_left[..., None] + length[..., None] * across_x  # (..., H)
        u = (s - x_left[..., None]) / width[..., None]
        return length[..., None, None] * jnp.einsum("h,...ha,...hk->...ak", across_w, _powers(s, 2), _powers(u, p - 1))

    # prefix[c, r, a, l]: the v^l coefficient of the integral of s^a f over window columns < c, row r.
    whole = jnp.einsum("cak,crkl->cral", across(xs[:-1], xs[1:], widths), window_coeffs)
    prefix = jnp.concatenate([jnp.zeros((1, wy, 3, q), dtype), jnp.cumsum(whole, 0)])

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
        rc, cc = jnp.clip(r, 0, wy - 1), jnp.clip(c, 0, wx - 1)
        inside = row_ok & (c >= 0) & (c < wx)
        piece = jnp.where(inside[:, None, None], window_coeffs[cc, rc], 0.0)  # (S, P, Q)
        lam = a[:, None] + (b - a)[:, None] * edge_x[None, :]
        x, y = p0[0] + lam * delta[0], p0[1] + lam * delta[1]  # (S, G)
        x_left = jnp.broadcast_to(xs[cc][:, None], x.shape)
        u = (x - x_left) / widths[cc][:, None]
        v_powers = _powers((y - ys[rc][:, None]) / heights[rc][:, None], q - 1)  # (S, G, Q)
        f = jnp.einsum("sgk,skl,sgl->sg", _powers(u, p - 1), piece, v_powers)
        base = prefix[jnp.clip(c, 0, wx), rc]  # c >= wx: the whole row (right of the grid, f = 0)
        base = jnp.where(((c >= 0) & row_ok)[:, None, None], base, 0.0)  # (S, 3, Q)
        partial = across(x_left, x, jnp.broadcast_to(widths[cc][:, None], x.shape))  # (S, G, 3, P)
        big_f = (jnp.einsum("sgl,sal->sga", v_powers, base)
                 + jnp.einsum("sgak,skl,sgl->sga", partial, piece, v_powers))  # F_a at the points
        wdy = (b - a)[:, None] * edge_w[None, :] * delta[1]
        f0, f1, f2 = big_f[..., 0], big_f[..., 1], big_f[..., 2]
        return jnp.stack([
            jnp.sum(wdy * f0), jnp.sum(wdy * f1), jnp.sum(wdy * y * f0),
            jnp.sum(wdy * f2), jnp.sum(wdy * y * f1), jnp.sum(wdy * y * y * f0),
        ]), jnp.sum((b - a)[:, None] * edge_w[None, :] * f)

    green, mean = jax.vmap(edge)(verts, following)
    e = jnp.sum(jnp.where(live[:, None], green, 0.0), 0)
    # Orientation from the shoelace area (f may vanish on the whole polygon).
    area2 = jnp.sum(jnp.where(live, verts[:, 0] * following[:, 1] - verts[:, 1] * following[:, 0], 0.0))
    e = jnp.sign(area2) * e
    m1 = jnp.stack([e[1], e[2]])
    m2 = jnp.stack([jnp.stack([e[3], e[4]]), jnp.stack([e[4], e[5]])])
    return e[0], m1, m2, jnp.where(live, mean, 0.0), okx & oky


class AbstractGridDensity(AbstractDensity):
    """A density given per cell of a regular grid on the box ``origin + frame^T [0, 1]^d``
    (d = 2 or 3): every integral is delegated to the `GridMoments` / `GridMoments3D` that
    ``_grid()`` builds."""

    origin: eqx.AbstractVar[jax.Array]
    frame: eqx.AbstractVar[jax.Array]

    @abc.abstractmethod
    def _grid(self) -> "GridMoments | GridMoments3D":
        """The piecewise-polynomial description of the density."""

    def pieces_per_axis(self) -> int:
        """The most grid pieces along one axis (the largest useful ``window``)."""
        grid = self._grid()
        breaks = grid.breaks if hasattr(grid, "breaks") else (grid.breaks_x, grid.breaks_y)
        return max(b.shape[0] - 1 for b in breaks)

    def with_window(self, window: int) -> "AbstractGridDensity":
        """The same density with another ``window`` (at most `pieces_per_axis`)."""
        out = copy.copy(self)
        object.__setattr__(out, "window", min(int(window), self.pieces_per_axis()))
        return out

    def initial_window(self, n: int) -> int:
        """A window for ``n`` Diracs: 4 x the pieces per axis of an average cell, plus one (the
        solver doubles it whenever a cell spans more)."""
        pieces = self.pieces_per_axis()
        return min(pieces, max(2, math.ceil(4 * pieces / n ** (1 / self.dim)) + 1))

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

    def polygon_moments(self, origin, vertices, following, live):
        """2D: moments and edge integrals of a whole polygon in one pass (`GridMoments`); None in 3D."""
        grid = self._grid()
        return grid.polygon_moments(origin, vertices, following, live) if hasattr(grid, "polygon_moments") else None

    def density_at(self, x):
        """$\\rho$ at points ``x (..., d)``."""
        return self._grid().density_at(x)


# ---------------------------------------------------------------------------------------------
# 3D: tetrahedra and triangles against a rectilinear grid of polynomial pieces.
#
# A clipped face is kept as a closed chain of directed segments ``a_k -> b_k`` (not a compacted
# vertex list): clipping by a plane moves the outside end of every crossing segment to its
# crossing point, collapses segments wholly outside to a point (a dead, zero-length segment) and
# appends one closing segment from the exit point to the entry point on the plane.  No gather or
# sort is needed, and integrals over the polygon are sums of signed fan triangles
# ``(o, a_k, b_k)`` from any point ``o`` of its plane (signed integrals of a polynomial over
# cones are additive over the oriented boundary).  A face has 4 segment slots (a triangle
# repeats its last vertex) plus one closing slot per cutting plane.

def _chain_fan(a, b, alive, n_cyc, points):
    """Quadrature points ``(S, Q, 3)`` and signed fan areas ``(S,)`` of a clipped chain (areas
    along the unit normal ``n_cyc / |n_cyc|``, positive when the chain turns counter-clockwise)."""
    w = alive.astype(a.dtype)
    count = jnp.sum(w)
    o = jnp.sum(w[:, None] * (a + b), 0) / (2 * jnp.maximum(count, 1.0))  # inside the polygon
    da, db = a - o, b - o
    norm2 = jnp.sum(n_cyc**2)
    inv = jnp.where(norm2 > 0, 1.0 / jnp.sqrt(jnp.where(norm2 > 0, norm2, 1.0)), 0.0)
    area = 0.5 * (jnp.cross(da, db) @ n_cyc) * inv * w
    pts = o + points[None, :, 0:1] * da[:, None] + points[None, :, 1:2] * db[:, None]
    return pts, area, o


def _powers3(u, p):
    """``u (..., 3)`` -> three arrays of powers ``(..., p_k)``."""
    return [_powers(u[..., k], p[k] - 1) for k in range(3)]


def _window_starts(breaks, lo, hi, window):
    starts, ok = [], True
    for k in range(3):
        s, o = _window_start(breaks[k], lo[k], hi[k], window[k])
        starts.append(s)
        ok = ok & o
    return starts, ok


def _degree_weights(shape, dtype):
    """``1 / (a + b + c + j + 3)`` for ``j = 0, 1, 2``: Euler's homogeneity factors."""
    p1, p2, p3 = shape
    deg = (np.arange(p1)[:, None, None] + np.arange(p2)[None, :, None] + np.arange(p3)[None, None, :])
    return jnp.asarray(np.stack([1.0 / (deg + j + 3) for j in range(3)]), dtype)


_SLOTS = 10  # segment slots of a clipped face: 4 initial + 6 closing segments


def _clip_step(a, b, alive, normal, offset, slot):
    """Keep ``normal . x <= offset`` (closed) of the planar convex chain ``a -> b`` ``(S, 3)``:
    crossing segments end at their crossing point, segments wholly outside collapse to a point
    (dead), and the closing segment exit -> entry goes into ``slot`` (dropped when ``slot`` is
    out of range, for an idle step)."""
    sa = a @ normal - offset
    sb = b @ normal - offset
    ina, inb = sa <= 0, sb <= 0
    cross = ina != inb
    denom = jnp.where(cross, sa - sb, 1.0)
    t = jnp.where(cross, sa / denom, 0.0)
    x = a + t[:, None] * (b - a)
    exits = alive & ina & ~inb
    entries = alive & ~ina & inb
    closing = jnp.any(exits) & jnp.any(entries)
    a = jnp.where(ina[:, None], a, x).at[slot].set(x[jnp.argmax(exits)], mode="drop")
    b = jnp.where(inb[:, None], b, x).at[slot].set(x[jnp.argmax(entries)], mode="drop")
    alive = (alive & (ina | inb)).at[slot].set(closing, mode="drop")
    return a, b, alive


# Upper faces of a piece: face ax lies in x_ax = hi_ax, its corners take lo/hi in the other two
# axes, counter-clockwise about +e_ax.
_RECT_UPPER = np.zeros((3, 4, 3), bool)
_RECT_CORNER = np.zeros((3, 4, 3), int)
for _ax in range(3):
    _RECT_UPPER[_ax, :, _ax] = True
    for _r, (_u, _v) in enumerate([(0, 0), (1, 0), (1, 1), (0, 1)]):
        _RECT_CORNER[_ax, _r, (_ax + 1) % 3] = _u
        _RECT_CORNER[_ax, _r, (_ax + 2) % 3] = _v
_TET_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])  # outward if det > 0
_INIT_ALIVE = np.zeros((7, _SLOTS), bool)
_INIT_ALIVE[:, :4] = True
_CLOSE = np.array([[4 + q for q in range(6)]] * 4 + [[4 + q if q < 4 else _SLOTS for q in range(6)]] * 3)


def tetrahedron_moments(breaks, coeffs, t0, tet, window: int):
    r"""Moments of the grid polynomial over the tetrahedron ``t0 + conv(tet)`` in grid coordinates.

    ``breaks``: three arrays ``(K_k + 1,)``; ``coeffs``: ``(K_1, K_2, K_3, p_1, p_2, p_3)``.
    Returns ``(m0, m1 (3,), m2 (3, 3))`` about ``t0`` and an ``ok`` flag (False when the
    tetrahedron's bounding box spans more pieces than ``window`` along some axis).

    For every piece $B = [\ell, h]$ of the window, $P = T \cap B$ is integrated by Euler's
    identity for a polynomial $q_k$ homogeneous of degree $k$ about the corner $c = \ell$:
    $\int_P q_k = \frac{1}{k+3} \sum_F h_F \int_F q_k\, dS$ over the faces $F$ of $P$ with
    $h_F = n_F \cdot (x_F - c)$.  The faces through $c$ vanish; the others are the four faces of
    $T$ clipped by $B$ and the three upper faces of $B$ clipped by $T$.  Each face is a signed
    fan of triangles integrated by a collapsed Gauss rule exact for the degree, so the result is
    exact up to rounding.  (A face of $T$ lying in a face plane of $B$ is counted once: the
    face of $B$ is dropped when both have the same outward normal.)

    **Cost** (static shapes: every tetrahedron pays for all ``window**3`` pieces, empty or not):
    per piece 7 faces x 10 segment slots x Q quadrature points, Q = 4, 9, 36 for densities of
    degree 0, 1, 3 per axis.  Measured on the 2-core CPU machine while shared (load ~5, so an
    idle machine is ~2x faster), float64, ``jax.jit(jax.vmap(tetrahedron_moments))`` over 2000
    random tetrahedra of side ~0.1 on an 8^3 grid of random coefficients, first call excluded:

    | degree | window | per tetrahedron | per triangle (facet) |
    |---|---|---|---|
    | 0 (Image) | 2 | 0.32 ms | 0.035 ms |
    | 0 (Image) | 4 | 2.5 ms | 0.24 ms |
    | 1 (SplineGrid default) | 4 | 6.7 ms | 0.32 ms |
    | 3 | 2 | 5.1 ms | 0.16 ms |

    i.e. ~40 us (degree 0), ~100 us (degree 1), ~640 us (degree 3) per piece per tetrahedron.
    A 3D power cell integrates 3 x (vertex slots) tetrahedra (192 with the default 64 slots),
    so fine 3D grids are expensive: keep ``window`` small, or use a boundary (divergence)
    formulation, not implemented yet.  Compile: ~3 s per call site.
    """
    k1, k2, k3, p1, p2, p3 = coeffs.shape
    w = tuple(min(window, k) for k in (k1, k2, k3))
    dtype = tet.dtype
    degree = (p1 - 1) + (p2 - 1) + (p3 - 1) + 2
    points, weights = triangle_rule(degree)
    points = jnp.asarray(points, dtype)
    weights = jnp.asarray(weights, dtype)
    dw = _degree_weights((p1, p2, p3), dtype)
    v = t0 + tet  # absolute grid coordinates
    starts, ok = _window_starts(breaks, v.min(0), v.max(0), w)

    # Faces of T: face f is opposite vertex f, its cycle counter-clockwise seen from outside
    # when T is positively oriented; sigma = the orientation of T.  (One sign for all faces, so
    # a flat T -- e.g. a repeated vertex -- gets faces that cancel: zero, not twice a face.)
    tris = v[jnp.asarray(_TET_FACES)]  # (4, 3, 3)
    n_cyc = jnp.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    sigma = jnp.broadcast_to(jnp.sign(jnp.dot(v[1] - v[0], jnp.cross(v[2] - v[0], v[3] - v[0]))), (4,))
    t_normal = sigma[:, None] * n_cyc  # T = {x : t_normal . x <= t_offset}
    t_offset = jnp.sum(t_normal * tris[:, 0], -1)
    eye = jnp.eye(3, dtype=dtype)
    # The faces of a piece: 4 faces of T (cut by the 6 planes of the piece), then the 3 upper
    # faces of the piece (cut by the 4 planes of T, then 2 idle steps).  Step q of face f
    # writes its closing segment into slot _CLOSE[f, q] (out of range, i.e. dropped, if idle).
    normals = jnp.concatenate([n_cyc, eye])
    n_out = jnp.concatenate([t_normal, eye])
    opposite = t_normal.T < 0  # (3 axes, 4 planes): outward normals of T and of B oppose
    box_n = jnp.concatenate([-eye, eye])
    zero3 = jnp.zeros((2, 3), dtype)
    t_plane_n = jnp.concatenate([t_normal, zero3])  # (6, 3): T's 4 planes, then 2 idle
    t_plane_o = jnp.concatenate([t_offset, jnp.zeros(2, dtype)])
    face_n = jnp.concatenate([jnp.broadcast_to(box_n[:, None], (6, 4, 3)),
                              jnp.broadcast_to(t_plane_n[:, None], (6, 3, 3))], 1)  # (6, 7, 3)
    opposite_q = jnp.concatenate([opposite, jnp.ones((3, 2), bool)], 1)  # (3, 6)
    close = jnp.asarray(_CLOSE.T)  # (6, 7)
    tri_init = jnp.concatenate([tris, tris[:, 2:]], 1)  # (a, b, c, c): a closed 4-segment chain

    def piece(flat):
        i, rem = flat // (w[1] * w[2]), flat % (w[1] * w[2])
        j, k = rem // w[2], rem % w[2]
        ix, iy, iz = starts[0] + i, starts[1] + j, starts[2] + k
        lo = jnp.stack([breaks[0][ix], breaks[1][iy], breaks[2][iz]])
        hi = jnp.stack([breaks[0][ix + 1], breaks[1][iy + 1], breaks[2][iz + 1]])
        width = hi - lo
        c = coeffs[ix, iy, iz]
        lohi = jnp.stack([lo, hi])
        rects = jnp.where(_RECT_UPPER, hi, lohi[_RECT_CORNER, np.arange(3)])  # (3, 4, 3)
        init = jnp.concatenate([tri_init, rects])  # (7, 4, 3)
        pad = jnp.zeros((7, _SLOTS - 4, 3), dtype)
        a = jnp.concatenate([init, pad], 1)
        b = jnp.concatenate([jnp.roll(init, -1, axis=1), pad], 1)
        alive = jnp.asarray(_INIT_ALIVE)
        box_o = jnp.concatenate([-lo, hi])
        t_off = jnp.concatenate([t_offset, jnp.zeros(2, dtype)])
        step_o = jnp.concatenate([jnp.broadcast_to(box_o[:, None], (6, 4)),
                                  jnp.broadcast_to(t_off[:, None], (6, 3))], 1)  # (6, 7)

        def step(q, carry):
            a, b, alive, keep = carry
            # A face of T in the plane of a face of B: keep the face of B only if the outward
            # normals oppose (else the clipped face of T already counts it).
            s_in = jnp.any(alive[4:] & ((a[4:] @ t_plane_n[q] - t_plane_o[q]) < 0), -1)
            keep = keep & (s_in | opposite_q[:, q] | (q >= 4))
            a, b, alive = jax.vmap(_clip_step)(a, b, alive, face_n[q], step_o[q], close[q])
            return a, b, alive, keep

        a, b, alive, keep = jax.lax.fori_loop(0, 6, step, (a, b, alive, jnp.ones(3, bool)))
        alive = alive & jnp.concatenate([jnp.ones(4, bool), keep])[:, None]
        pts, area, o = jax.vmap(_chain_fan, (0, 0, 0, 0, None))(a, b, alive, normals, points)
        # h_F = n_out . (o - lo) / |n_out| (o lies in the face plane).
        nn = jnp.sum(n_out**2, -1)
        h = jnp.where(nn > 0, ((o - lo) * n_out).sum(-1) / jnp.sqrt(jnp.where(nn > 0, nn, 1.0)), 0.0)
        e = pts - lo  # (F, S, Q, 3), homogeneous coordinates about the corner
        pu, pv, pw = _powers3(e / width, (p1, p2, p3))
        r = jnp.einsum("fsqa,fsqb,fsqc,jabc->jfsq", pu, pv, pw, c[None] * dw)
        wt = (h[:, None] * area)[:, :, None] * weights  # (F, S, Q)
        i0 = jnp.sum(wt * r[0])
        i1 = jnp.einsum("fsq,fsqi->i", wt * r[1], e)
        i2 = jnp.einsum("fsq,fsqi,fsqj->ij", wt * r[2], e, e)
        d = lo - t0
        m1 = i1 + d * i0
        m2 = i2 + jnp.outer(i1, d) + jnp.outer(d, i1) + jnp.outer(d, d) * i0
        return i0, m1, m2

    def body(acc, flat):
        out = piece(flat)
        return tuple(x + y for x, y in zip(acc, out)), None

    zero = (jnp.zeros((), dtype), jnp.zeros(3, dtype), jnp.zeros((3, 3), dtype))
    (m0, m1, m2), _ = jax.lax.scan(body, zero, jnp.arange(w[0] * w[1] * w[2]))
    return m0, m1, m2, ok


def triangle_integral(breaks, coeffs, t0, tri, window: int):
    r"""$\int_F f\, dS$ over the triangle ``t0 + conv(tri)`` in grid coordinates, divided by its
    area (so that the caller multiplies by the world area).  The triangle is clipped against
    every piece of the window and integrated exactly per piece."""
    k1, k2, k3, p1, p2, p3 = coeffs.shape
    w = tuple(min(window, k) for k in (k1, k2, k3))
    dtype = tri.dtype
    points, weights = triangle_rule((p1 - 1) + (p2 - 1) + (p3 - 1))
    points = jnp.asarray(points, dtype)
    weights = jnp.asarray(weights, dtype)
    v = t0 + tri
    starts, _ = _window_starts(breaks, v.min(0), v.max(0), w)
    n_cyc = jnp.cross(v[1] - v[0], v[2] - v[0])
    norm2 = jnp.sum(n_cyc**2)
    inv_area = jnp.where(norm2 > 0, 2.0 / jnp.sqrt(jnp.where(norm2 > 0, norm2, 1.0)), 0.0)

    def piece(i, j, k):
        ix, iy, iz = starts[0] + i, starts[1] + j, starts[2] + k
        lo = jnp.stack([breaks[0][ix], breaks[1][iy], breaks[2][iz]])
        hi = jnp.stack([breaks[0][ix + 1], breaks[1][iy + 1], breaks[2][iz + 1]])
        eye = jnp.eye(3, dtype=dtype)
        box_n = jnp.concatenate([-eye, eye])
        box_o = jnp.concatenate([-lo, hi])
        init = jnp.concatenate([v, v[2:]])  # (a, b, c, c): a closed 4-segment chain
        pad = jnp.zeros((_SLOTS - 4, 3), dtype)
        a = jnp.concatenate([init, pad])
        b = jnp.concatenate([jnp.roll(init, -1, axis=0), pad])
        alive = jnp.asarray(_INIT_ALIVE[0])
        a, b, alive = jax.lax.fori_loop(
            0, 6, lambda q, c: _clip_step(*c, box_n[q], box_o[q], 4 + q), (a, b, alive))
        pts, area, _ = _chain_fan(a, b, alive, n_cyc, points)
        pu, pv, pw = _powers3((pts - lo) / (hi - lo), (p1, p2, p3))
        val = jnp.einsum("sqa,sqb,sqc,abc->sq", pu, pv, pw, coeffs[ix, iy, iz])
        return jnp.sum(area[:, None] * weights * val)

    def body(acc, flat):
        i, rem = flat // (w[1] * w[2]), flat % (w[1] * w[2])
        return acc + piece(i, rem // w[2], rem % w[2]), None

    out, _ = jax.lax.scan(body, jnp.zeros((), dtype), jnp.arange(w[0] * w[1] * w[2]))
    return out * inv_area


def evaluate_3d(breaks, coeffs, t):
    """The grid polynomial at points ``t (..., 3)`` (zero outside the unit cube)."""
    shape = coeffs.shape
    idx, loc = [], []
    for k in range(3):
        i = jnp.clip(jnp.searchsorted(breaks[k], t[..., k], side="right") - 1, 0, shape[k] - 1)
        idx.append(i)
        loc.append((t[..., k] - breaks[k][i]) / (breaks[k][i + 1] - breaks[k][i]))
    pu, pv, pw = (_powers(loc[k], shape[3 + k] - 1) for k in range(3))
    val = jnp.einsum("...a,...b,...c,...abc->...", pu, pv, pw, coeffs[idx[0], idx[1], idx[2]])
    inside = jnp.all((t >= 0) & (t <= 1), -1)
    return jnp.where(inside, val, 0.0)


def total_integral_3d(breaks, coeffs):
    r"""$\int_{[0,1]^3} f\,dt$, exact."""
    p = coeffs.shape[3:]
    ia, ib, ic = (1.0 / np.arange(1, q + 1) for q in p)
    per_piece = jnp.einsum("klmabc,a,b,c->klm", coeffs, ia, ib, ic)
    widths = jnp.einsum("k,l,m->klm", *(jnp.diff(b) for b in breaks))
    return jnp.sum(per_piece * widths)


class GridMoments3D(eqx.Module):
    """`GridMoments` for a 3D grid: a piecewise polynomial in grid coordinates, mapped to the world."""

    breaks: tuple[jax.Array, jax.Array, jax.Array]
    coeffs: jax.Array
    origin: jax.Array
    frame: jax.Array
    window: int = eqx.field(static=True)

    def simplex_moments(self, origin, simplex):
        finv = jnp.linalg.inv(self.frame)
        jac = jnp.abs(jnp.linalg.det(self.frame))
        t0 = (origin - self.origin) @ finv
        tet = simplex @ finv
        m0, m1, m2, ok = tetrahedron_moments(self.breaks, self.coeffs, t0, tet, self.window)
        m0 = jnp.where(ok, m0, jnp.nan)  # overflow: fail loudly (see `_WINDOW_MESSAGE`)
        f = self.frame
        return jac * m0, jac * (m1 @ f), jac * (f.T @ m2 @ f)

    def facet_mass(self, origin, facet):
        finv = jnp.linalg.inv(self.frame)
        t0 = (origin - self.origin) @ finv
        tri = facet @ finv
        cr = jnp.cross(facet[1] - facet[0], facet[2] - facet[0])
        a2 = jnp.sum(cr**2)
        area = jnp.where(a2 > 0, 0.5 * jnp.sqrt(jnp.where(a2 > 0, a2, 1.0)), 0.0)
        return area * triangle_integral(self.breaks, self.coeffs, t0, tri, self.window)

    def total_mass(self):
        return jnp.abs(jnp.linalg.det(self.frame)) * total_integral_3d(self.breaks, self.coeffs)

    def density_at(self, x):
        """The density at world points ``x (..., 3)``."""
        t = (x - self.origin) @ jnp.linalg.inv(self.frame)
        return evaluate_3d(self.breaks, self.coeffs, t)
