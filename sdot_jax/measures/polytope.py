r"""Uniform densities on convex polytopes: ``Polytope`` (half-spaces) and ``ConvexHull`` (points)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import _is_tracer, as_float_array, check_finite, check_values
from ._density import AbstractDensity, box_spread, simplex_measure, uniform_simplex_moments

# Vertex enumeration tries every d-subset of the half-spaces: refuse beyond this many subsets.
_MAX_SUBSETS = 4_000_000


def _subsets(p: int, d: int) -> np.ndarray:
    count = math.comb(p, d)
    if count > _MAX_SUBSETS:
        raise ValueError(
            f"{p} half-spaces in {d}D give {count} vertex candidates: too many to enumerate. "
            "Pass `box=(lo, hi)` (a box containing the polytope) to skip the enumeration."
        )
    if count == 0:
        return np.zeros((0, d), np.int64)
    return np.array(list(itertools.combinations(range(p), d)), np.int64)


def _vertices(a, b, xp):
    """Every intersection of d of the planes ``a x = b`` that satisfies all ``a x <= b``.

    Returns ``(points (C, d), feasible (C,))`` over all d-subsets C (static count), in numpy or
    JAX (``xp``) so that it runs on concrete and traced inputs alike.
    """
    p, d = a.shape
    combos = _subsets(p, d)
    if combos.shape[0] == 0:
        return xp.zeros((0, d), a.dtype), xp.zeros((0,), bool)
    sub_a, sub_b = a[combos], b[combos]  # (C, d, d), (C, d)
    # Rows of a are unit vectors: |det| is the volume spanned by the d normals.
    dets = xp.linalg.det(sub_a)
    regular = xp.abs(dets) > 1e-10
    eye = xp.eye(d, dtype=a.dtype)
    safe_a = xp.where(regular[:, None, None], sub_a, eye)
    safe_b = xp.where(regular[:, None], sub_b, 0.0)
    points = xp.linalg.solve(safe_a, safe_b[..., None])[..., 0]
    scale = 1.0 + xp.max(xp.abs(b)) + xp.max(xp.abs(points), axis=1)
    slack = points @ a.T - b[None]
    feasible = regular & xp.all(slack <= 1e-9 * scale[:, None], axis=1)
    return points, feasible


def _normalise(directions, offsets, xp):
    norms = xp.linalg.norm(directions, axis=1)
    safe = xp.where(norms > 0, norms, 1.0)
    return directions / safe[:, None], offsets / safe, norms


def _geometry(directions, offsets, xp):
    """Bounding box, vertex mean and the three validity flags (bounded, non-empty, solid)."""
    p, d = directions.shape
    a, b, _ = _normalise(directions, offsets, xp)
    # Bounded iff the recession cone {a x <= 0} is {0}: enumerate the cone inside [-1, 1]^d.
    eye = xp.eye(d, dtype=a.dtype)
    cone_a = xp.concatenate([a, eye, -eye])
    cone_b = xp.concatenate([xp.zeros((p,), a.dtype), xp.ones((2 * d,), a.dtype)])
    cone_points, cone_ok = _vertices(cone_a, cone_b, xp)
    bounded = ~xp.any(cone_ok & (xp.max(xp.abs(cone_points), axis=1) > 1e-7))
    points, ok = _vertices(a, b, xp)
    nonempty = xp.any(ok)
    count = xp.maximum(xp.sum(ok), 1)
    w = ok.astype(a.dtype)[:, None]
    mean = xp.sum(w * points, 0) / count
    big = xp.max(xp.abs(xp.where(ok[:, None], points, 0.0))) + 1.0
    lo = xp.min(xp.where(ok[:, None], points, big), 0)
    hi = xp.max(xp.where(ok[:, None], points, -big), 0)
    # Solid (full-dimensional) iff the vertices span d dimensions.
    centred = xp.where(ok[:, None], points - mean, 0.0)
    if centred.shape[0] >= d:
        sv = xp.linalg.svd(centred, compute_uv=False)
        solid = sv[d - 1] > 1e-9 * (1.0 + sv[0])
    else:
        solid = xp.asarray(False)
    return lo, hi, mean, bounded, nonempty, solid


def _volume_capacity(d: int, p: int) -> int:
    if d == 2:
        return p + 4
    return max(2 ** (d + 2), 8 * p)


class Polytope(AbstractDensity):
    r"""Uniform density on the convex polytope $P = \{x : A x \le b\}$.

    **Arguments:**

    - `directions`: the outer normals $A$, shape ``(p, d)`` (any non-zero length).
    - `offsets`: $b$, shape ``(p,)``.
    - `box`: optional ``(lo, hi)``, an axis-aligned box containing $P$.  By default the box is
      found by enumerating the vertices of $P$ (every d-subset of the half-spaces), which also
      checks that $P$ is bounded, non-empty and full-dimensional; pass `box` when $p$ is large
      (then nothing is checked).
    - `centre`: optional point strictly inside $P$, towards which Diracs outside the support are
      pulled at the start.  Default: the mean of the vertices, or the centre of `box` when `box`
      is given (pass `centre` if that point is outside $P$).

    Construction works on traced arrays too (inside ``jax.jit``): the enumeration then runs in
    JAX and its checks become ``eqx.error_if``.

    The density is 1 on $P$ (the solver normalises the total mass); `total_mass` is the volume
    of $P$, computed by clipping the box with the cell kernel, and differentiable with respect
    to `directions` and `offsets`.
    """

    directions: Float[Array, "p d"]
    offsets: Float[Array, " p"]
    lo: Float[Array, " d"]
    hi: Float[Array, " d"]
    centre: Float[Array, " d"]
    capacity: int = eqx.field(static=True)

    def __init__(self, directions: Any, offsets: Any, box: Any = None, *, centre: Any = None):
        directions = as_float_array(directions, "directions")
        offsets = as_float_array(offsets, "offsets")
        if directions.ndim != 2 or directions.shape[0] == 0 or directions.shape[1] == 0:
            raise ValueError(
                f"`directions` must have shape (p, d) with p, d >= 1, got {directions.shape}."
            )
        p, d = directions.shape
        if offsets.shape != (p,):
            raise ValueError(
                f"`offsets` must have shape ({p},) to match `directions` {directions.shape}, "
                f"got {offsets.shape}."
            )
        dtype = jnp.result_type(directions, offsets)
        directions, offsets = directions.astype(dtype), offsets.astype(dtype)
        directions = check_finite(directions, "directions")
        offsets = check_finite(offsets, "offsets")
        norms = jnp.linalg.norm(directions, axis=1) if _is_tracer(directions) else np.linalg.norm(
            np.asarray(directions), axis=1
        )
        directions = check_values(
            directions, jnp.all(norms > 0), "`directions` has a zero row: every normal must be non-zero."
        )
        if box is not None:
            lo, hi = (as_float_array(v, "box").astype(dtype) for v in box)
            if lo.shape != (d,) or hi.shape != (d,):
                raise ValueError(f"`box` must be a pair (lo, hi) of shape ({d},) arrays.")
            lo = check_values(lo, jnp.all(hi > lo), "`box` must have lo < hi on every axis.")
            if centre is None:
                centre = (lo + hi) / 2
            centre = as_float_array(centre, "centre").astype(dtype)
        else:
            concrete = not (_is_tracer(directions) or _is_tracer(offsets))
            xp = np if concrete else jnp
            args = (np.asarray(directions), np.asarray(offsets)) if concrete else (directions, offsets)
            lo, hi, mean, bounded, nonempty, solid = _geometry(*args, xp)
            # Order matters: an unbounded set has no vertices to speak of.
            directions = check_values(
                directions,
                bounded,
                "`directions` do not bound a region: some non-zero x has `directions @ x <= 0`, so "
                "the polytope is unbounded (or empty). Add half-spaces that close it.",
            )
            offsets = check_values(
                offsets,
                nonempty,
                "the polytope is empty: no point satisfies `directions @ x <= offsets`.",
            )
            offsets = check_values(
                offsets,
                solid,
                "the polytope has zero volume (it is flat): `offsets` pin it to a lower-dimensional "
                "set.",
            )
            lo, hi = jnp.asarray(lo, dtype), jnp.asarray(hi, dtype)
            # A margin keeps the box's faces off the polytope: only the half-spaces cut cells.
            margin = 0.01 * (hi - lo) + 1e-12
            lo, hi = lo - margin, hi + margin
            centre = jnp.asarray(mean, dtype) if centre is None else as_float_array(centre, "centre")
        self.directions = directions
        self.offsets = offsets
        self.lo = jax.lax.stop_gradient(lo)
        self.hi = jax.lax.stop_gradient(hi)
        self.centre = jax.lax.stop_gradient(centre.astype(dtype))
        self.capacity = _volume_capacity(d, p)
        if not (_is_tracer(directions) or _is_tracer(offsets) or _is_tracer(lo)):
            # Find a vertex capacity that holds the clipped box (the d-D kernel splits degenerate
            # vertices, so the count is not known in advance).
            while True:
                _, overflow = _clipped_volume(self, self.capacity)
                if not bool(overflow):
                    break
                if self.capacity > 2**16:
                    raise ValueError("`directions`: the polytope has too many vertices to integrate.")
                self.capacity *= 2

    @property
    def dim(self) -> int:
        return self.directions.shape[1]

    def bounding_box(self):
        return self.lo, self.hi

    def half_spaces(self):
        return self.directions, self.offsets

    def total_mass(self):
        volume, overflow = _clipped_volume(self, self.capacity)
        if _is_tracer(overflow):
            return eqx.error_if(
                volume, overflow, "Polytope: vertex capacity overflow while computing its volume."
            )
        return volume

    def simplex_moments(self, origin, simplex):
        return uniform_simplex_moments(simplex)

    def facet_mass(self, origin, facet):
        return simplex_measure(facet)

    def interior_point(self):
        return self.centre

    def axis_spread(self):
        return box_spread(self)


@eqx.filter_jit
def _clipped_volume(polytope: Polytope, capacity: int):
    """Volume of the bounding box clipped by the half-spaces, by the cell kernel (differentiable)."""
    from ..geometry.kernels import kernel_for

    d = polytope.dim
    kernel = kernel_for(d)
    a, b = polytope.directions, polytope.offsets
    p = a.shape[0]
    c = polytope.centre
    poly = kernel.box(polytope.lo - c, polytope.hi - c, capacity, p)

    def step(poly, plane):
        normal, offset, plane_id = plane
        return kernel.clip(poly, normal, offset, plane_id), None

    poly, _ = jax.lax.scan(step, poly, (a, b - a @ c, jnp.arange(p, dtype=jnp.int32)))
    mass, _, _, _ = kernel.integrate(poly, polytope, jnp.zeros((d,), a.dtype), p)
    return mass, poly.overflow


class ConvexHull(Polytope):
    r"""Uniform density on the convex hull of a set of points.

    **Arguments:**

    - `points`: shape ``(N, d)``, at least d + 1 affinely independent points.

    The hull's facets are found once, in numpy, when the points are concrete (brute force over
    d-subsets in 3D and above: fine for a few hundred points; use `Polytope` with your own
    half-spaces beyond).  The half-spaces are then fixed: gradients flow to the points through
    the offsets only when the points are passed to `Polytope` directly.
    """

    def __init__(self, points: Any):
        points = as_float_array(points, "points")
        if points.ndim != 2 or points.shape[1] == 0:
            raise ValueError(f"`points` must have shape (N, d), got {points.shape}.")
        if _is_tracer(points):
            raise TypeError(
                "ConvexHull needs concrete `points` (its facets are found in numpy): build it "
                "outside jax.jit, or use Polytope(directions, offsets)."
            )
        points = check_finite(points, "points")
        pts = np.asarray(points, np.float64)
        n, d = pts.shape
        if n < d + 1:
            raise ValueError(f"`points` must hold at least d + 1 = {d + 1} points, got {n}.")
        centred = pts - pts.mean(0)
        sv = np.linalg.svd(centred, compute_uv=False)
        if sv[d - 1] <= 1e-10 * (1.0 + sv[0]):
            raise ValueError("`points` are affinely dependent: their convex hull has zero volume.")
        normals, offsets = _hull_facets(pts)
        lo, hi = pts.min(0), pts.max(0)
        margin = 0.01 * (hi - lo)
        dtype = points.dtype
        super().__init__(
            jnp.asarray(normals, dtype),
            jnp.asarray(offsets, dtype),
            box=(lo - margin, hi + margin),
            centre=pts.mean(0),
        )


def _hull_facets(pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit outer normals and offsets of the facets of conv(pts), duplicates merged."""
    n, d = pts.shape
    scale = np.max(np.abs(pts - pts.mean(0)))
    tol = 1e-10 * scale
    if d == 1:
        return np.array([[1.0], [-1.0]]), np.array([pts.max(), -pts.min()])
    if d == 2:
        hull = _monotone_chain(pts, tol)
        nxt = np.roll(hull, -1, axis=0)
        edge = nxt - hull
        normals = np.stack([edge[:, 1], -edge[:, 0]], 1)  # counter-clockwise: outward is right
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return _unique_planes(normals, np.sum(normals * hull, 1), tol)
    combos = _subsets(n, d)
    normals, offsets = [], []
    for start in range(0, combos.shape[0], 20000):
        chunk = pts[combos[start : start + 20000]]  # (C, d, d)
        edges = chunk[:, 1:] - chunk[:, :1]  # (C, d-1, d)
        # Normal = generalised cross product: cofactors of the (d-1) x d edge matrix.
        normal = np.stack(
            [
                (-1) ** k * np.linalg.det(np.delete(edges, k, axis=2))
                for k in range(d)
            ],
            axis=1,
        )
        length = np.linalg.norm(normal, axis=1)
        good = length > 1e-12 * scale ** (d - 1)
        normal = normal[good] / length[good, None]
        offset = np.sum(normal * chunk[good, 0], 1)
        side = pts @ normal.T - offset  # (n, C)
        above = np.all(side <= tol, axis=0)
        below = np.all(side >= -tol, axis=0)
        normals += [normal[above], -normal[below & ~above]]
        offsets += [offset[above], -offset[below & ~above]]
    return _unique_planes(np.concatenate(normals), np.concatenate(offsets), tol)


def _monotone_chain(pts: np.ndarray, tol: float) -> np.ndarray:
    """Vertices of the 2D hull in counter-clockwise order (Andrew's monotone chain)."""
    order = np.lexsort((pts[:, 1], pts[:, 0]))
    p = pts[order]

    def half(seq):
        out = []
        for q in seq:
            while len(out) >= 2:
                o, a = out[-2], out[-1]
                cross = (a[0] - o[0]) * (q[1] - o[1]) - (a[1] - o[1]) * (q[0] - o[0])
                if cross > tol * np.linalg.norm(q - o):
                    break
                out.pop()
            out.append(q)
        return out

    lower, upper = half(p), half(p[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _unique_planes(normals, offsets, tol):
    keep = []
    for i in range(normals.shape[0]):
        if not any(
            np.allclose(normals[i], normals[j], atol=1e-9) and abs(offsets[i] - offsets[j]) <= 10 * tol
            for j in keep
        ):
            keep.append(i)
    return normals[keep], offsets[keep]
