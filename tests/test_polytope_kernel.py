"""The 3D polyhedron kernel and the d-D polytope kernel: exact volumes and moments, degenerate
configurations, facet masses against the Hessian of the cell masses, capacity overflow."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from scipy.spatial import ConvexHull, Delaunay

from sdot_jax import Box
from sdot_jax.geometry import polygon, polyhedron, polytope
from sdot_jax.geometry.diagram import Capacities, power_diagram
from sdot_jax.geometry.kernels import kernel_for

CUBE = Box().with_dim(3)


def _clipped(kernel, normals, offsets, capacity, lo=-1.0, hi=1.0):
    d = normals.shape[-1]
    m = offsets.shape[0]
    poly = kernel.box(jnp.full(d, lo), jnp.full(d, hi), capacity, m)

    def step(poly, plane):
        return kernel.clip(poly, *plane), None

    poly, _ = jax.lax.scan(step, poly, (normals, offsets, jnp.arange(m, dtype=jnp.int32)))
    return poly


@jax.jit
def _random_cells(normals, offsets):
    """Clip [-1, 1]^3 by each row's planes; the moments about the origin and per-plane areas."""

    def one(nrm, off):
        poly = _clipped(polyhedron, nrm, off, 64)
        return poly, polyhedron.integrate(poly, CUBE, jnp.zeros(3), off.shape[0] + 6)

    return jax.vmap(one)(normals, offsets)


def _hull_moments(points):
    """Exact moments of conv(points) from scipy's Delaunay tetrahedra (independent of sdot_jax)."""
    tets = points[Delaunay(points).simplices]  # (t, 4, 3)
    vol = np.abs(np.linalg.det(tets[:, 1:] - tets[:, :1])) / 6
    total = tets.sum(1)
    first = (vol[:, None] * total / 4).sum(0)
    outer = np.einsum("tki,tkj->tij", tets, tets) + np.einsum("ti,tj->tij", total, total)
    second = (vol[:, None, None] * outer / 20).sum(0)
    return vol.sum(), first, second


@pytest.fixture(scope="module")
def random_cells():
    rng = np.random.default_rng(0)
    trials, m = 8, 24
    normals = rng.standard_normal((trials, m, 3))
    offsets = rng.uniform(0.1, 1.0, (trials, m)) * np.linalg.norm(normals, axis=-1)
    # Make some planes pass exactly through corners and edges of the cube: x + y + z = 1 passes
    # through three corners, x = 1 is a face (coincident planes), x + y = 0 through an edge.
    normals[0, :3] = [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    offsets[0, :3] = [1.0, 1.0, 0.0]
    normals[1, :2] = [[1, 1, 1], [1, 1, 1]]  # the same plane twice
    offsets[1, :2] = [1.5, 1.5]
    poly, res = _random_cells(jnp.asarray(normals), jnp.asarray(offsets))
    return normals, offsets, poly, res


def test_random_cells_match_convex_hull(random_cells):
    normals, offsets, poly, (mass, first, second, facets) = random_cells
    assert not np.any(np.asarray(poly.overflow))
    for t in range(normals.shape[0]):
        pts = np.asarray(poly.vertices[t])[np.asarray(poly.valid[t])]
        hull = ConvexHull(pts)
        vol, m1, m2 = _hull_moments(pts)
        np.testing.assert_allclose(float(mass[t]), hull.volume, rtol=1e-13)
        np.testing.assert_allclose(float(mass[t]), vol, rtol=1e-13)
        np.testing.assert_allclose(np.asarray(first[t]), m1, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(np.asarray(second[t]), m2, rtol=1e-12, atol=1e-15)
        # Facet areas (clipping planes and the box faces, ids m .. m + 5) add up to the hull's.
        np.testing.assert_allclose(float(facets[t].sum()), hull.area, rtol=1e-12)
        if t < 2:
            continue
        # Generic trials: each plane's facet against the 2D hull of the vertices on it.
        planes = np.asarray(poly.planes[t])[np.asarray(poly.valid[t])]
        for j in range(normals.shape[1]):
            on = np.any(planes == j, axis=1)
            if not on.any():
                assert float(facets[t, j]) == 0.0
                continue
            basis = np.linalg.svd(normals[t, j][None])[2][1:]  # orthonormal basis of the plane
            area = ConvexHull(pts[on] @ basis.T).volume
            np.testing.assert_allclose(float(facets[t, j]), area, rtol=1e-11)


def test_random_cells_match_monte_carlo(random_cells):
    normals, offsets, _, (mass, first, _, _) = random_cells
    rng = np.random.default_rng(1)
    samples = 200_000
    x = rng.uniform(-1, 1, (samples, 3))
    for t in range(3):
        inside = np.all(x @ normals[t].T <= offsets[t], axis=1)
        p = inside.mean()
        # Binomial standard error of the volume estimate (box volume 8): test at 5 sigma.
        sigma = 8 * np.sqrt(p * (1 - p) / samples)
        assert abs(8 * p - float(mass[t])) < 5 * sigma + 1e-12
        est = 8 * (x * inside[:, None]).mean(0)
        sig = 8 * (x * inside[:, None]).std(0) / np.sqrt(samples)
        assert np.all(np.abs(est - np.asarray(first[t])) < 5 * sig + 1e-12)


def test_degenerate_planes_keep_exact_volumes(random_cells):
    # Trial 0 starts with x + y + z <= 1, x <= 1 and x + y <= 0 on [-1, 1]^3; trial 1 with the
    # same plane twice.  Checked above against the hull; here the half-space test on every vertex.
    normals, offsets, poly, _ = random_cells
    for t in range(2):
        pts = np.asarray(poly.vertices[t])[np.asarray(poly.valid[t])]
        assert np.all(pts @ normals[t].T <= offsets[t] + 1e-12)
    # A plane through a single corner, and the cube cut by its own diagonal plane.
    @jax.jit
    def diagonal_cut(offsets):
        cube = polyhedron.box(jnp.zeros(3), jnp.ones(3), 16, 10)
        cut = jax.vmap(lambda b: polyhedron.clip(cube, jnp.ones(3), b, 0))(offsets)
        return cut, jax.vmap(lambda p: polyhedron.integrate(p, CUBE, jnp.zeros(3), 1)[0])(cut)

    # Through the far corner (nothing cut), the hexagon through 6 edge midpoints, the plane
    # through three corners (six new vertices coincide with kept corners).
    cut, mass = diagonal_cut(jnp.array([3.0, 1.5, 1.0]))
    assert int(cut.valid[0].sum()) == 8
    np.testing.assert_allclose(mass, [1.0, 0.5, 1 / 6], rtol=0, atol=1e-15)


@pytest.mark.parametrize("g", [4])
def test_regular_grid_gives_unit_cubes(g):
    axis = (np.arange(g) + 0.5) / g
    y = jnp.asarray(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    n = y.shape[0]
    cap = Capacities(32, n - 1, n, None)
    diag = jax.jit(lambda y: power_diagram(y, jnp.zeros(n), CUBE, cap))(y)
    assert bool(jnp.all(diag.certified)) and not bool(jnp.any(diag.overflow))
    h = 1.0 / g
    np.testing.assert_allclose(diag.mass, h**3, rtol=1e-14)
    np.testing.assert_allclose(diag.first_moment, 0.0, atol=1e-16)
    np.testing.assert_allclose(diag.second_moment, np.broadcast_to(np.eye(3) * h**5 / 12, (n, 3, 3)), rtol=1e-13, atol=1e-18)
    # Facets: h^2 towards each face neighbour, nothing towards edge/corner neighbours.
    cand = np.asarray(diag.candidates)
    dist = np.linalg.norm(np.asarray(y)[np.minimum(cand, n - 1)] - np.asarray(y)[:, None], axis=-1)
    face = (cand < n) & np.isclose(dist, h)
    np.testing.assert_allclose(np.asarray(diag.facet_mass)[face], h**2, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(diag.facet_mass)[~face], 0.0, atol=1e-16)


def _laplacian_from_facets(diag, y):
    n = y.shape[0]
    cand = np.asarray(diag.candidates)
    fac = np.asarray(diag.facet_mass)
    y = np.asarray(y)
    L = np.zeros((n, n))
    for i in range(n):
        for slot, j in enumerate(cand[i]):
            if j < n:
                L[i, j] -= fac[i, slot] / (2 * np.linalg.norm(y[j] - y[i]))
    L -= np.diag(L.sum(1))
    return L


@pytest.mark.parametrize("d, n, capacity", [(3, 20, 64), (4, 10, 96)])
def test_facet_masses_are_the_mass_hessian(d, n, capacity):
    rng = np.random.default_rng(d)
    y = jnp.asarray(rng.random((n, d)))
    psi = jnp.asarray(0.01 * rng.standard_normal(n))
    box = Box().with_dim(d)
    cap = Capacities(capacity, n - 1, n, None)

    @jax.jit
    def run(p):
        return power_diagram(y, p, box, cap), jax.jacfwd(lambda q: power_diagram(y, q, box, cap).mass)(p)

    diag, jac = run(psi)
    assert bool(jnp.all(diag.certified)) and not bool(jnp.any(diag.overflow))
    L = _laplacian_from_facets(diag, y)
    # dm_i/dpsi_j = -facet_ij / (2 |y_i - y_j|) = L_ij (j != i), dm_i/dpsi_i = -sum_j L_ij.
    np.testing.assert_allclose(np.asarray(jac), L, atol=1e-12 * np.abs(L).max())
    np.testing.assert_allclose(float(diag.mass.sum()), 1.0, atol=1e-13)


@pytest.mark.parametrize("d, n, capacity", [(4, 12, 128), (5, 7, 256)])
def test_high_dimensional_diagram_partitions_the_box(d, n, capacity):
    rng = np.random.default_rng(10 + d)
    y = jnp.asarray(rng.random((n, d)))
    box = Box().with_dim(d)
    cap = Capacities(capacity, n - 1, n, None)
    run = jax.jit(lambda p: power_diagram(y, p, box, cap))
    for psi in [jnp.zeros(n), jnp.asarray(0.05 * rng.standard_normal(n))]:
        diag = run(psi)
        assert bool(jnp.all(diag.certified)) and not bool(jnp.any(diag.overflow))
        assert abs(float(diag.mass.sum()) - 1.0) < 1e-12
        # Moments about each seed: the centroid of the box from all cells together.
        centroid = jnp.sum(diag.first_moment + diag.mass[:, None] * y, 0)
        np.testing.assert_allclose(centroid, 0.5, atol=1e-12)


def test_kernel_for_dimension():
    assert kernel_for(3) is polyhedron
    assert kernel_for(4) is polytope and kernel_for(5) is polytope


@jax.jit
def _clip_both_ways(poly, normal, offset, plane_id):
    return polyhedron.clip(poly, normal, offset, plane_id), polyhedron.clip(poly, normal, offset, plane_id, walk=True)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([-1.0, 0.0, 1.0]), st.sampled_from([-1.0, 0.0, 1.0]),
                          st.sampled_from([-1.0, 0.0, 1.0]), st.sampled_from([0.0, 0.5, 1.0])),
                min_size=4, max_size=16),
       st.sampled_from([1, polyhedron.FACET_BINS]))
def test_matching_new_edges_agrees_with_walking_the_facets(planes, id_step):
    # Lattice planes through corners, edges and each other's vertices: coincident vertices and
    # facets cut in several places, where the matching must hand over to the walk.  With plane
    # ids FACET_BINS apart, every clipping plane's facet shares one bin of the matching's table.
    poly = polyhedron.box(-jnp.ones(3), jnp.ones(3), 64, id_step * len(planes))
    for t, (*normal, offset) in enumerate(planes):
        if not any(normal):
            continue
        matched, walked = _clip_both_ways(poly, jnp.array(normal), jnp.array(offset), jnp.int32(id_step * t))
        for a, b in zip(matched, walked):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        poly = matched
    assert not bool(poly.overflow)
    vertices = np.asarray(poly.vertices)[np.asarray(poly.valid)]
    volume = polyhedron.integrate(poly, CUBE, jnp.zeros(3), id_step * len(planes))[0]
    flat = np.linalg.matrix_rank(vertices - vertices.mean(0), tol=1e-9) < 3 if len(vertices) else True
    hull = 0.0 if flat else ConvexHull(vertices).volume
    np.testing.assert_allclose(float(volume), hull, atol=1e-12)


def test_a_facet_cut_twice_falls_back_to_the_walk():
    # Rounding can leave a facet with two runs of outside vertices; forced here by moving the
    # corner (-1, -1, 1) of the cube to (2, 2, 1): the top facet's corners are then out, kept,
    # out, kept for x + y <= 1, four new vertices on one facet, which the matching cannot pair.
    cube = polyhedron.box(-jnp.ones(3), jnp.ones(3), 32, 1)
    corner = int(np.flatnonzero((np.asarray(cube.vertices) == [-1, -1, 1]).all(1))[0])
    bent = cube._replace(vertices=cube.vertices.at[corner].set(jnp.array([2.0, 2.0, 1.0])))
    matched, walked = _clip_both_ways(bent, jnp.array([1.0, 1.0, 0.0]), jnp.array(1.0), jnp.int32(0))
    for a, b in zip(matched, walked):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    top = np.asarray(matched.valid) & (np.asarray(matched.planes) == 1 + 5).any(1)  # on z <= 1
    new = np.asarray(matched.valid) & (np.asarray(matched.planes) == 0).any(1)
    assert (top & new).sum() == 4


def test_overflow_is_flagged():
    @jax.jit
    def corner_cut():
        # Cutting a corner needs 3 new vertices for 1 freed slot: 10 > 8 slots, not > 16.
        cut = [polyhedron.clip(polyhedron.box(jnp.zeros(3), jnp.ones(3), c, 10), jnp.ones(3), 2.5, 0)
               for c in (8, 16)]
        small = polytope.box(jnp.zeros(4), jnp.ones(4), 16, 10)
        return cut[0].overflow, cut[1].overflow, polytope.clip(small, jnp.ones(4), 3.5, 0).overflow

    assert [bool(b) for b in corner_cut()] == [True, False, True]
    # A sequence of clips: the flag sticks once raised, and a roomy buffer gives the same cell.
    rng = np.random.default_rng(3)
    normals = jnp.asarray(rng.standard_normal((24, 3)))
    offsets = jnp.asarray(rng.uniform(0.5, 1.0, 24)) * jnp.linalg.norm(normals, axis=-1)
    tight = jax.jit(lambda a, b: _clipped(polyhedron, a, b, 12).overflow)(normals, offsets)
    assert bool(tight)


def test_new_facet_larger_than_the_per_clip_budget_is_flagged():
    # A prism over a regular 40-gon, cut by a plane crossing all 40 vertical edges: 40 new
    # vertices in one clip, above the per-clip budget for 96 slots.
    capacity = 96
    m = polyhedron.new_vertex_capacity(capacity)
    sides = 40
    assert sides > m
    angles = 2 * np.pi * np.arange(sides) / sides
    normals = np.stack([np.cos(angles), np.sin(angles), np.zeros(sides)], -1)
    normals = np.concatenate([normals, [[0.1, 0.0, 1.0]]])
    offsets = np.concatenate([np.full(sides, 0.5), [0.2]])

    @jax.jit
    def prism(normals, offsets):
        poly = _clipped(polyhedron, normals, offsets, capacity)
        # A plane that cuts nothing in place of the slanted one.
        ok = _clipped(polyhedron, normals, offsets.at[-1].set(10.0), capacity)
        return poly.overflow, ok.overflow, polyhedron.integrate(ok, CUBE, jnp.zeros(3), sides)[0]

    overflow, ok_overflow, vol = prism(jnp.asarray(normals), jnp.asarray(offsets))
    assert bool(overflow) and not bool(ok_overflow)
    # The prism's volume: 40-gon of apothem 0.5 times height 2.
    area = sides * 0.5**2 * np.tan(np.pi / sides)
    np.testing.assert_allclose(float(vol), 2 * area, rtol=1e-13)


def test_float32_volumes():
    rng = np.random.default_rng(5)
    normals = jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)
    offsets = jnp.asarray(rng.uniform(0.3, 1.0, 16), jnp.float32) * jnp.linalg.norm(normals, axis=-1)

    @jax.jit
    def run(normals, offsets):
        poly = _clipped(polyhedron, normals, offsets, 64, lo=jnp.float32(-1), hi=jnp.float32(1))
        return poly, polyhedron.integrate(poly, CUBE, jnp.zeros(3, jnp.float32), 16)[0]

    poly, mass = run(normals, offsets)
    assert mass.dtype == jnp.float32
    pts = np.asarray(poly.vertices, np.float64)[np.asarray(poly.valid)]
    np.testing.assert_allclose(float(mass), ConvexHull(pts).volume, rtol=1e-5)


@pytest.mark.parametrize("d, r", [(3, 0.5), (4, 0.5), (5, 0.5)])
def test_cross_polytope_through_box_corners_and_faces(d, r):
    # |x|_1 <= r: 2^d planes, 2^(d-1) of them through every vertex (highly non-simple); with
    # r = 0.5 inside [-1, 1]^d the coincident vertices of the clip must stay on one side.
    kernel = kernel_for(d)
    normals = jnp.asarray(np.array(list(itertools.product([-1.0, 1.0], repeat=d))))
    offsets = jnp.full(2**d, r)
    capacity = {3: 64, 4: 256, 5: 512}[d]

    @jax.jit
    def volume(normals, offsets):
        poly = _clipped(kernel, normals, offsets, capacity)
        return kernel.integrate(poly, Box().with_dim(d), jnp.zeros(d), 2**d)[0], poly.overflow

    vol, overflow = volume(normals, offsets)
    assert not bool(overflow)
    np.testing.assert_allclose(float(vol), (2 * r) ** d / np.prod(np.arange(1, d + 1)), rtol=1e-12)


def _sutherland_hodgman(points, normal, offset):
    """Reference clip of a convex polygon (list of points, counter-clockwise) by normal . x <= offset."""
    out = []
    for p, q in zip(points, points[1:] + points[:1]):
        sp, sq = np.dot(normal, p) - offset, np.dot(normal, q) - offset
        if sp <= 0 and sq <= 0:
            out.append(q)
        elif sp <= 0 < sq or sq <= 0 < sp:
            crossing = p + sp / (sp - sq) * (q - p)
            out += [crossing] if sq > 0 else [crossing, q]
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2 * np.pi), st.floats(-0.2, 0.6)), min_size=1, max_size=8),
       st.sampled_from([5, 6, 8]))
def test_polygon_clip_agrees_with_sutherland_hodgman(cuts, capacity):
    """`polygon.clip` of the unit box by lines at random angles and distances from its centre
    (some cutting through vertex 0, some missing it, some emptying it), in general position,
    against a Sutherland-Hodgman clip in numpy: the same vertices in the same cyclic order, and `overflow` exactly when the
    reference needs more than the polygon's ``capacity`` slots (5 to 8: the exit and entry points
    fall in the last slots)."""
    poly = polygon.box(jnp.zeros(2), jnp.ones(2), capacity, 100)
    reference = [np.array(p, float) for p in [(0, 0), (1, 0), (1, 1), (0, 1)]]
    for t, (angle, distance) in enumerate(cuts):
        normal = np.array([np.cos(angle), np.sin(angle)])
        offset = normal @ np.array([0.5, 0.5]) + distance
        # General position only: a line through a vertex (within rounding) leaves a zero-length
        # edge, on either side of it by rounding (`test_degenerate_planes_keep_exact_volumes`
        # covers those in 3D).
        assume(all(abs(normal @ p - offset) > 1e-9 for p in reference))
        reference = _sutherland_hodgman(reference, normal, offset)
        poly = polygon.clip(poly, jnp.asarray(normal), jnp.asarray(offset), t)
        if len(reference) > capacity:
            assert bool(poly.overflow)
            return
    assert not bool(poly.overflow)
    got = np.asarray(poly.vertices)[: int(poly.count)]
    assert len(got) == len(reference)
    if len(got):
        want = np.array(reference)
        # The same cycle up to where it starts.
        shift = int(np.argmin(np.sum((want - got[0]) ** 2, 1)))
        np.testing.assert_allclose(np.roll(want, -shift, 0), got, atol=1e-12)
