r"""Piecewise-linear (P1) density on a triangle (2D) or tetrahedron (3D) mesh.

The density is $\rho(x) = \sum_e \mathbf 1_{T_e}(x) \sum_{k=0}^{d} v_{e_k} \lambda^e_k(x)$: on
element $T_e$ (nodes $e_0..e_d$) it interpolates the node values linearly, with $\lambda^e$ the
barycentric coordinates of $T_e$; outside every element it is zero.  Elements are independent, so
the domain may be non-convex or multiply connected (and overlapping elements add up).

**Exact integration.**  For a query simplex $S$ and each element, $S \cap T_e$ is clipped
exactly: $S$ is cut by the $d + 1$ half-spaces $\lambda^e_k \ge 0$.

- 2D: Sutherland--Hodgman on a padded polygon (a triangle cut by 3 lines has at most 6
  vertices), then a fan of triangles from its first vertex.
- 3D: a tetrahedron cut by a plane is empty, a tetrahedron, or a triangular prism (planar side
  quads), split into 3 tetrahedra; so 4 cuts leave at most $3^4 = 81$ (mostly degenerate)
  tetrahedra.  No combinatorics can go wrong: a vertex within rounding of a plane may fall on
  either side, which moves the pieces by rounding only.

On each piece (a simplex with vertices $p_k$, volume $|P|$) the density is linear, with values
$r_k = \rho(p_k)$, and the moments are exact (integrals of products of linear functions over a
simplex, $\int_P \lambda_i\lambda_j\lambda_l = |P|\, d!\, \mu_{ijl} / (d+3)!$):

$$ \int_P \rho = \frac{|P|}{d+1} R,\qquad
   \int_P z\rho = \frac{|P|}{(d+1)(d+2)} \Big(\sum_k r_k p_k + R\, Q\Big), $$
$$ \int_P z z^T \rho = \frac{|P|}{(d+1)(d+2)(d+3)} \Big(R (Q Q^T + \textstyle\sum_k p_k p_k^T)
   + W Q^T + Q W^T + 2 \sum_k r_k p_k p_k^T\Big), $$

with $R = \sum_k r_k$, $Q = \sum_k p_k$, $W = \sum_k r_k p_k$.

**Facet integrals** clip the facet's own parametrisation: a segment's parameter interval (2D), or
the facet triangle's reference coordinates $(u, w)$ by Sutherland--Hodgman (3D).  A facet lying
in the plane of an element face (within rounding) takes half of that element's contribution, so
that a facet on an interior face of a conforming mesh is counted once, and one on the mesh
boundary gets the mean of the one-sided limits.  (Facet integrals only enter the Newton Hessian.)

**Cost.** Every simplex is clipped against every element: O(E) per simplex, so one power diagram
costs O(n · simplices per cell · E) -- about 1e3 flops per (triangle, element) pair in 2D and
2e4 per (tetrahedron, element) pair in 3D.  Meant for meshes of up to a few thousand elements in
2D and a few hundred in 3D.  Elements are processed in chunks by a ``lax.scan`` to bound memory.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._checks import _is_tracer, as_float_array, check_finite, check_values, concrete_when_given_concrete
from ._density import AbstractDensity, det
from ._grid_integrals import clip_polygon

_CHUNK = {2: 64, 3: 8}  # elements per scan step (vmapped inside a step)


# ---------------------------------------------------------------------------------------------
# Exact moments of a linear function over one simplex.


def _linear_moments(points, r, volume):
    """Moments (m0, m1, m2) of the linear function with values ``r (d+1,)`` at the simplex
    vertices ``points (d+1, d)`` of volume ``volume`` (see the module docstring)."""
    d = points.shape[-1]
    big_r = jnp.sum(r)
    q = jnp.sum(points, 0)
    w = r @ points
    m0 = volume * big_r / (d + 1)
    m1 = volume / ((d + 1) * (d + 2)) * (w + big_r * q)
    pp = points.T @ points
    rpp = (points * r[:, None]).T @ points
    m2 = volume / ((d + 1) * (d + 2) * (d + 3)) * (
        big_r * (jnp.outer(q, q) + pp) + jnp.outer(w, q) + jnp.outer(q, w) + 2 * rpp
    )
    return m0, m1, m2


# ---------------------------------------------------------------------------------------------
# Elements: barycentric coordinates as affine functions.


def _element_maps(nodes, simplices):
    """Per element: first node ``x0 (E, d)``, ``dinv (E, d, d)`` with
    $\\lambda_{1..d}(x) = (x - x_0)\\, D^{-1}$, volume ``(E,)`` and a ``regular`` flag."""
    d = nodes.shape[1]
    x = nodes[simplices]  # (E, d+1, d)
    x0 = x[:, 0]
    edges = x[:, 1:] - x0[:, None]  # (E, d, d), rows X_k - X_0
    dets = jax.vmap(det)(edges)
    scale = jnp.max(jnp.abs(edges), axis=(1, 2)) ** d
    regular = jnp.abs(dets) > 1e3 * jnp.finfo(nodes.dtype).eps * scale
    safe_edges = jnp.where(regular[:, None, None], edges, jnp.eye(d, dtype=nodes.dtype))
    dinv = jnp.linalg.inv(safe_edges)
    volume = jnp.where(regular, jnp.abs(dets), 0.0) / math.factorial(d)
    return x0, dinv, volume, regular


def _local_planes(origin, x0, dinv, values_e):
    r"""Barycentric coordinates in coordinates $z = x - origin$: $\lambda_k(z) = g_k \cdot z + c_k$
    (``g (E, d+1, d)``, ``c (E, d+1)``) and the density $\rho(z) = \alpha + \beta \cdot z$ per
    element."""
    c_rest = jnp.einsum("ei,eij->ej", origin - x0, dinv)  # (E, d)
    g_rest = jnp.swapaxes(dinv, 1, 2)  # (E, d, d): row j = gradient of lambda_{j+1}
    c = jnp.concatenate([1 - jnp.sum(c_rest, 1, keepdims=True), c_rest], 1)
    g = jnp.concatenate([-jnp.sum(g_rest, 1, keepdims=True), g_rest], 1)
    alpha = jnp.sum(values_e * c, 1)
    beta = jnp.einsum("ek,ekj->ej", values_e, g)
    return g, c, alpha, beta


# ---------------------------------------------------------------------------------------------
# 2D: triangle ∩ triangle.

_CAP2 = 8  # clip_polygon's buffer: a triangle cut by 3 lines keeps at most 6 vertices


def _triangle_element_moments(tri, g, c, alpha, beta, volume_ok):
    """Moments of one element's linear density over ``tri ∩ element`` (coordinates z)."""
    verts = jnp.zeros((_CAP2, 2), tri.dtype).at[:3].set(tri)
    count = jnp.array(3)
    for k in range(3):
        verts, count = clip_polygon(verts, count, -g[k], c[k])
    a = verts[1:-1] - verts[0]
    b = verts[2:] - verts[0]
    area = 0.5 * jnp.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    live = jnp.arange(1, _CAP2 - 1) + 1 < count
    area = jnp.where(live & volume_ok, area, 0.0)
    pts = jnp.stack([jnp.broadcast_to(verts[0], a.shape), verts[1:-1], verts[2:]], 1)  # (F, 3, 2)
    r = alpha + pts @ beta  # (F, 3)
    m0, m1, m2 = jax.vmap(_linear_moments)(pts, r, area)
    return m0.sum(0), m1.sum(0), m2.sum(0)


# ---------------------------------------------------------------------------------------------
# 3D: tetrahedron ∩ tetrahedron by splitting into tetrahedra.


# Each case k (number of vertices inside, after sorting them first) as a prism A B C A' B' C'
# over the points [p0, p1, p2, p3, x01, x02, x03, x12, x13, x23] (x_ij on edge ij), split into
# the tetrahedra [A B C A'], [B C A' B'], [C A' B' C'].
_PRISMS = np.array([
    [0, 0, 0, 0, 0, 0],  # k = 0: empty
    [0, 4, 5, 6, 6, 6],  # k = 1: the tetrahedron p0 x01 x02 x03
    [0, 5, 6, 1, 7, 8],  # k = 2: a wedge
    [0, 1, 2, 6, 8, 9],  # k = 3: the tetrahedron minus its corner at p3
    [0, 1, 2, 3, 3, 3],  # k = 4: whole
])
_EDGE_I = np.array([0, 0, 0, 1, 1, 2])
_EDGE_J = np.array([1, 2, 3, 2, 3, 3])
_SPLIT = np.array([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]])


def _cut_tets(p, normal, offset):
    """Tetrahedra ``p (4, 3, *B)`` (vertex, coordinate, batch) cut by ``normal . z <= offset``
    (``normal (3, *B)``, ``offset (*B)``, broadcast): ``(4, 3, 3, *B)``, 3 pieces per input.

    Written on whole arrays of coordinates (structure of arrays) so that XLA fuses it into a
    few elementwise loops over the batch."""
    s = sum(p[:, c] * normal[c] for c in range(3)) - offset  # (4, *B)
    inside = s <= 0
    ins = inside.astype(jnp.int32)
    k = ins.sum(0)
    # Stable order with the inside vertices first (no sort): position of each vertex.
    pos = jnp.where(inside, jnp.cumsum(ins, 0) - ins, k + jnp.cumsum(1 - ins, 0) - (1 - ins))
    q, sq = [], []
    for j in range(4):
        hit = [pos[i] == j for i in range(4)]
        q.append(sum(jnp.where(hit[i], p[i], 0.0) for i in range(4)))
        sq.append(sum(jnp.where(hit[i], s[i], 0.0) for i in range(4)))
    points = list(q)
    for i, j in zip(_EDGE_I, _EDGE_J):
        den = sq[i] - sq[j]
        t = jnp.where(den != 0, sq[i] / jnp.where(den != 0, den, 1.0), 0.0)
        points.append(q[i] + t * (q[j] - q[i]))
    prism = []
    for slot in range(6):
        v = points[_PRISMS[0, slot]]
        for case in range(1, 5):
            v = jnp.where(k == case, points[_PRISMS[case, slot]], v)
        prism.append(v)
    return jnp.stack([jnp.stack([prism[i] for i in row]) for row in _SPLIT], 2)


def _tet_element_moments(tet, g, c, alpha, beta, volume_ok):
    """Moments over ``tet ∩ element`` for a batch of elements (leading axis of g, c, ...)."""
    e = g.shape[0]
    tets = jnp.broadcast_to(tet[:, :, None, None], (4, 3, 1, e))  # (vertex, coord, slot, elem)
    for k in range(4):
        normal = -jnp.swapaxes(g[:, k, :], 0, 1)[:, None, :]  # (3, 1, E)
        out = _cut_tets(tets, normal, c[None, :, k])  # (4, 3, 3, S, E)
        tets = out.reshape(4, 3, -1, e)
    v = tets  # (4, 3, 81, E)
    e1, e2, e3 = v[1] - v[0], v[2] - v[0], v[3] - v[0]
    det3 = (e1[0] * (e2[1] * e3[2] - e2[2] * e3[1]) - e1[1] * (e2[0] * e3[2] - e2[2] * e3[0])
            + e1[2] * (e2[0] * e3[1] - e2[1] * e3[0]))
    vol = jnp.where(volume_ok, jnp.abs(det3) / 6, 0.0)
    r = alpha + sum(v[:, a] * beta[:, a] for a in range(3))  # (4, 81, E)
    big_r = r.sum(0)
    q = v.sum(0)  # (3, 81, E)
    w = jnp.sum(r[:, None] * v, 0)
    m0 = jnp.sum(vol * big_r) / 4
    m1 = jnp.sum(vol * (w + big_r * q), (1, 2)) / 20
    pp = jnp.einsum("kasb,kcsb->acsb", v, v)
    rpp = jnp.einsum("ksb,kasb,kcsb->acsb", r, v, v)
    m2 = vol * (big_r * (q[:, None] * q[None] + pp) + w[:, None] * q[None] + q[:, None] * w[None] + 2 * rpp)
    return m0, m1, jnp.sum(m2, (2, 3)) / 120


# ---------------------------------------------------------------------------------------------
# Facets.


def _coplanar(lam, dtype):
    """Whether the facet (barycentric values ``lam`` at its vertices) lies in this face's plane."""
    tol = 1e3 * jnp.finfo(dtype).eps * (1.0 + jnp.max(jnp.abs(lam)))
    return jnp.all(jnp.abs(lam) <= tol)


def _segment_element_mass(seg, g, c, alpha, beta, volume_ok):
    """$\\int_{seg \\cap T} \\rho\\, d\\sigma / |seg|$ for one element."""
    lam = seg @ g.T + c  # (2, 3): lambda_k at both ends
    lo = jnp.zeros((), seg.dtype)
    hi = jnp.ones((), seg.dtype)
    weight = jnp.ones((), seg.dtype)
    for k in range(3):
        l0, l1 = lam[0, k], lam[1, k]
        on_plane = _coplanar(lam[:, k], seg.dtype)
        weight = jnp.where(on_plane, 0.5 * weight, weight)
        den = l0 - l1
        safe = jnp.where(den != 0, den, 1.0)
        tau = l0 / safe  # where lambda_k = 0
        # lambda_k(tau') = l0 + tau' (l1 - l0) >= 0
        lo = jnp.where(~on_plane & (l1 > l0), jnp.maximum(lo, tau), lo)
        hi = jnp.where(~on_plane & (l1 < l0), jnp.minimum(hi, tau), hi)
        empty = ~on_plane & (l1 == l0) & (l0 < 0)
        hi = jnp.where(empty, lo, hi)
    span = jnp.maximum(hi - lo, 0.0)
    mid = seg[0] + 0.5 * (lo + hi) * (seg[1] - seg[0])
    return jnp.where(volume_ok, weight * span * (alpha + mid @ beta), 0.0)


_REF_TRI = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])


def _triangle_facet_element_mass(tri, g, c, alpha, beta, volume_ok):
    r"""$\int_{tri \cap T} \rho\, d\sigma / (2\,|tri|)$: clipped in the triangle's reference
    coordinates $(u, w)$, $x = t_0 + u (t_1 - t_0) + w (t_2 - t_0)$."""
    e1, e2 = tri[1] - tri[0], tri[2] - tri[0]
    lam = tri @ g.T + c  # (3, 4)
    verts = jnp.zeros((_CAP2, 2), tri.dtype).at[:3].set(jnp.asarray(_REF_TRI, tri.dtype))
    count = jnp.array(3)
    weight = jnp.ones((), tri.dtype)
    for k in range(4):
        on_plane = _coplanar(lam[:, k], tri.dtype)
        weight = jnp.where(on_plane, 0.5 * weight, weight)
        # lambda_k = lam0 + u (lam1 - lam0) + w (lam2 - lam0) >= 0; on the plane: keep all.
        grad = jnp.stack([lam[1, k] - lam[0, k], lam[2, k] - lam[0, k]])
        normal = jnp.where(on_plane, 0.0, -grad)
        offset = jnp.where(on_plane, 1.0, lam[0, k])
        verts, count = clip_polygon(verts, count, normal, offset)
    a = verts[1:-1] - verts[0]
    b = verts[2:] - verts[0]
    area = 0.5 * jnp.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    live = jnp.arange(1, _CAP2 - 1) + 1 < count
    area = jnp.where(live, area, 0.0)
    centroid = (3 * verts[0] + (verts[1:-1] - verts[0]) + (verts[2:] - verts[0])) / 3  # (F, 2)
    x = tri[0] + centroid[:, :1] * e1 + centroid[:, 1:] * e2
    rho = alpha + x @ beta
    return jnp.where(volume_ok, weight * jnp.sum(area * rho), 0.0)


# ---------------------------------------------------------------------------------------------


def _scan_elements(fn, element_data, zero, chunk: int, batched: bool = False):
    """Sum ``fn(*element)`` over all elements: a ``lax.scan`` over chunks, ``vmap`` inside (or
    ``fn`` takes a chunk of elements and returns its sums, when ``batched``)."""
    def over_chunk(*data):
        if batched:
            return fn(*data)
        return jax.tree.map(lambda o: o.sum(0), jax.vmap(fn)(*data))

    e = element_data[0].shape[0]
    chunk = max(1, min(chunk, e))
    pad = (-e) % chunk
    padded = []
    for i, arr in enumerate(element_data):
        fill = jnp.zeros((pad,) + arr.shape[1:], arr.dtype)
        padded.append(jnp.concatenate([arr, fill]).reshape((-1, chunk) + arr.shape[1:]))
    # The last field is the per-element `ok` flag: padding is False, so it contributes zero.

    def step(acc, data):
        return jax.tree.map(jnp.add, acc, over_chunk(*data)), None

    if padded[0].shape[0] == 1:
        return over_chunk(*(p[0] for p in padded))
    total, _ = jax.lax.scan(step, zero, tuple(padded))
    return total


def _box_mesh(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Corners of the unit cube and its Kuhn triangulation (d! simplices along the diagonal)."""
    corners = np.array([[(k >> i) & 1 for i in range(d)] for k in range(2**d)], float)
    cells = []
    for perm in itertools.permutations(range(d)):
        k, path = 0, [0]
        for axis in perm:
            k |= 1 << axis
            path.append(k)
        cells.append(path)
    return corners, np.array(cells, np.int64)


class Mesh(AbstractDensity):
    r"""Piecewise-linear density on a triangle (2D) or tetrahedron (3D) mesh, zero outside.

    $\rho(x) = \sum_k v_{e_k} \lambda^e_k(x)$ on element $e$ (barycentric interpolation of the
    node values), $0$ outside the mesh.  Non-convex and multiply-connected domains are fine
    (elements are integrated independently; overlapping elements add up).  Integrals over power
    cells are exact (see the module docstring): every cell simplex is clipped against every
    element, so the cost is O(elements) per simplex.

    **Arguments:**

    - `nodes`: node positions, shape ``(N, d)``, d = 2 or 3.
    - `simplices`: node indices of each element, integer shape ``(E, d + 1)``.
    - `values`: density at each node, shape ``(N,)``, non-negative; 1 everywhere when omitted.

    The density is auto-normalised (the solver divides by `total_mass`, the sum over elements of
    volume times mean node value).  Differentiable with respect to `nodes` and `values`.
    """

    nodes: Float[Array, "N d"]
    simplices: Int[Array, "E d+1"]
    values: Float[Array, " N"]
    convex_support: ClassVar[bool] = False  # the separable start could put a Dirac's cell in a hole

    @concrete_when_given_concrete
    def __init__(self, nodes: Any, simplices: Any, values: Any = None):
        nodes = as_float_array(nodes, "nodes")
        if nodes.ndim != 2 or nodes.shape[1] not in (2, 3):
            raise ValueError(f"`nodes` must have shape (N, 2) or (N, 3), got {nodes.shape}.")
        n_nodes, d = nodes.shape
        if _is_tracer(simplices):
            simplices_arr = simplices
        else:
            simplices_arr = np.asarray(simplices)
            if simplices_arr.dtype.kind not in "iu":
                raise TypeError(f"`simplices` must be an integer array, got dtype {simplices_arr.dtype}.")
        if simplices_arr.ndim != 2 or simplices_arr.shape[1] != d + 1 or simplices_arr.shape[0] == 0:
            raise ValueError(
                f"`simplices` must have shape (E, {d + 1}) with E >= 1 for {d}D nodes, got "
                f"{tuple(simplices_arr.shape)}."
            )
        if not _is_tracer(simplices_arr):
            if simplices_arr.min() < 0 or simplices_arr.max() >= n_nodes:
                raise ValueError(
                    f"`simplices` must index `nodes` (0 <= index < {n_nodes}), got indices in "
                    f"[{simplices_arr.min()}, {simplices_arr.max()}]."
                )
        simplices_arr = jnp.asarray(simplices_arr, jnp.int32)
        nodes = check_finite(nodes, "nodes")
        if values is None:
            values = jnp.ones((n_nodes,), nodes.dtype)
        else:
            values = as_float_array(values, "values")
            if values.shape != (n_nodes,):
                raise ValueError(
                    f"`values` must have shape ({n_nodes},) (one per node), got {values.shape}."
                )
            values = check_finite(values, "values")
            values = check_values(values, jnp.all(values >= 0), "`values` must be non-negative.")
        dtype = jnp.result_type(nodes, values)
        nodes, values = nodes.astype(dtype), values.astype(dtype)
        _, _, volume, regular = _element_maps(nodes, simplices_arr)
        nodes = check_values(
            nodes,
            jnp.all(regular),
            "`simplices` contains a flat element (zero volume): remove degenerate elements.",
        )
        mass = jnp.sum(volume * jnp.mean(values[simplices_arr], 1))
        values = check_values(values, mass > 0, "the mesh carries no mass: `values` are zero on every element.")
        self.nodes = nodes
        self.simplices = simplices_arr
        self.values = values

    @property
    def dim(self) -> int:
        return self.nodes.shape[1]

    def bounding_box(self):
        # A margin keeps the box's faces off the mesh boundary: only the elements cut the cells
        # (and the box, which does not move the integrals, carries no gradient).
        nodes = jax.lax.stop_gradient(self.nodes)
        lo, hi = nodes.min(0), nodes.max(0)
        margin = 0.01 * jnp.max(hi - lo)
        return lo - margin, hi + margin

    def total_mass(self):
        _, _, volume, _ = _element_maps(self.nodes, self.simplices)
        return jnp.sum(volume * jnp.mean(self.values[self.simplices], 1))

    def _local(self, origin):
        x0, dinv, volume, regular = _element_maps(self.nodes, self.simplices)
        g, c, alpha, beta = _local_planes(origin, x0, dinv, self.values[self.simplices])
        return g, c, alpha, beta, regular

    def simplex_moments(self, origin, simplex):
        d = self.dim
        g, c, alpha, beta, ok = self._local(origin)
        dtype = simplex.dtype
        zero = (jnp.zeros((), dtype), jnp.zeros((d,), dtype), jnp.zeros((d, d), dtype))
        if d == 2:
            return _scan_elements(
                lambda *e: _triangle_element_moments(simplex, *e), (g, c, alpha, beta, ok), zero, _CHUNK[d]
            )
        return _scan_elements(
            lambda *e: _tet_element_moments(simplex, *e), (g, c, alpha, beta, ok), zero, _CHUNK[d],
            batched=True,
        )

    def facet_mass(self, origin, facet):
        d = self.dim
        g, c, alpha, beta, ok = self._local(origin)
        zero = jnp.zeros((), facet.dtype)
        if d == 2:
            diff = facet[1] - facet[0]
            l2 = jnp.sum(diff**2)
            measure = jnp.where(l2 > 0, jnp.sqrt(jnp.where(l2 > 0, l2, 1.0)), 0.0)
            fn = _segment_element_mass
        else:
            cross = jnp.cross(facet[1] - facet[0], facet[2] - facet[0])
            a2 = jnp.sum(cross**2)
            measure = jnp.where(a2 > 0, jnp.sqrt(jnp.where(a2 > 0, a2, 1.0)), 0.0)  # 2 |facet|
            fn = _triangle_facet_element_mass
        total = _scan_elements(lambda *e: fn(facet, *e), (g, c, alpha, beta, ok), zero, _CHUNK[d])
        return measure * total

    def interior_point(self):
        """The centroid of the element of largest mass (the density there is its mean node
        value, positive)."""
        _, _, volume, _ = _element_maps(self.nodes, self.simplices)
        mass = volume * jnp.mean(self.values[self.simplices], 1)
        e = jnp.argmax(mass)
        return jax.lax.stop_gradient(jnp.mean(self.nodes[self.simplices[e]], 0))

    def smoothed(self, amount: float) -> "Mesh":
        r"""A blurred copy, itself a `Mesh` with the same total mass: with $w = \min(1, 4\,
        \mathrm{amount})$,

        $$ \rho_w = (1 - w)\big((1 - w)\,\rho + w\, \bar\rho\, \mathbf 1_\Omega\big)
           + w\, \frac{M}{|B|} \mathbf 1_B , $$

        with $\Omega$ the mesh, $\bar\rho = M / |\Omega|$ its mean density, $M$ the total mass and
        $B$ the bounding box, added as extra elements (2 triangles or 6 tetrahedra) over the
        mesh.  The node values move towards their mean (lower contrast, no zeros), and the box
        part makes the support convex and connected, so every start cell has mass and Newton
        converges easily; as ``amount`` shrinks the copy tends to the mesh.  ``amount`` is in
        units of the box side, like the other densities' blur widths."""
        w = min(1.0, 4.0 * float(amount))
        d = self.dim
        dtype = self.values.dtype
        _, _, volume, _ = _element_maps(self.nodes, self.simplices)
        mass = self.total_mass()
        mean = mass / jnp.sum(volume)
        lo, hi = self.bounding_box()
        box_volume = jnp.prod(hi - lo)
        corners, cells = _box_mesh(d)
        box_nodes = lo + jnp.asarray(corners, dtype) * (hi - lo)
        values = (1 - w) * ((1 - w) * self.values + w * mean)
        box_values = jnp.full((corners.shape[0],), w * mass / box_volume, dtype)
        n_nodes = self.nodes.shape[0]
        return Mesh(
            jnp.concatenate([self.nodes, box_nodes]),
            jnp.concatenate([self.simplices, jnp.asarray(cells + n_nodes, jnp.int32)]),
            jnp.concatenate([values, box_values]),
        )

    def wants_continuation(self) -> bool | None:
        """Whether a solve should start from smoothed copies (see `smoothed`): when the values have
        zeros or a max/min contrast above 10, or the domain is not convex (mesh volume below its
        convex hull's: a Dirac may start with an empty cell in a hole or a notch).  Decided from
        what is concrete, also under ``jax.jit``; ``None`` (undecided) when that is not enough."""
        if _is_tracer(self.nodes):
            return None
        import scipy.spatial

        with jax.ensure_compile_time_eval():
            if not _is_tracer(self.values):
                values = np.asarray(self.values)
                if values.min() <= 0 or values.max() > 10 * values.min():
                    return True
            _, _, volume, _ = _element_maps(self.nodes, self.simplices)
            hull = scipy.spatial.ConvexHull(np.asarray(self.nodes[np.unique(np.asarray(self.simplices))]))
            if float(jnp.sum(volume)) < (1 - 1e-9) * hull.volume:
                return True
        return None if _is_tracer(self.values) else False

    def density_at(self, x: Float[Array, "... d"]) -> Float[Array, "..."]:
        """The density at points ``x`` (sum over the elements containing them)."""
        x0, dinv, _, regular = _element_maps(self.nodes, self.simplices)
        lam_rest = jnp.einsum("...ei,eij->...ej", x[..., None, :] - x0, dinv)
        lam = jnp.concatenate([1 - lam_rest.sum(-1, keepdims=True), lam_rest], -1)  # (..., E, d+1)
        inside = jnp.all(lam >= 0, -1) & regular
        val = jnp.sum(lam * self.values[self.simplices], -1)
        return jnp.sum(jnp.where(inside, val, 0.0), -1)
