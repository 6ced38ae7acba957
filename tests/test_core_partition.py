"""The cells partition the support, their vertices are where they should be, and the solution
transforms as it must under translation, permutation and scaling.

Shapes are shared with the rest of the suite (2D n = 16, 3D n = 27) to reuse compilations.
"""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial

from helpers import box_halfspaces, gauge
from sdot_jax import Box, Capacities, SumOfDiracs, optimal_transport_plan
from sdot_jax.measures.polytope import ConvexHull, Polytope
from sdot_jax.geometry.diagram import power_diagram
from sdot_jax.plan import cell_geometry

N2, N3 = 16, 27


def _random_weights(y, rng, spread=0.05):
    return spread * rng.standard_normal(y.shape[0])


# --- volumes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("d,n", [(2, N2), (3, N3), (4, 6), (5, 5)])
def test_cell_volumes_sum_to_the_box_volume_at_random_weights(d, n):
    rng = np.random.default_rng(d)
    y = rng.random((n, d)) * 1.4 - 0.2  # some Diracs outside the box
    psi = _random_weights(y, rng)
    box = Box(origin=np.full(d, -0.5), frame=np.linspace(1.0, 2.0, d))
    diagram = power_diagram(jnp.asarray(y), jnp.asarray(psi), box.with_dim(d), Capacities.default(n, d))
    assert bool(jnp.all(diagram.certified)) and not bool(jnp.any(diagram.overflow))
    volume = np.prod(np.linspace(1.0, 2.0, d))
    np.testing.assert_allclose(float(jnp.sum(diagram.mass)), volume, rtol=1e-12)
    # Independent check of each cell's volume by Monte Carlo (5 sigma).
    samples = rng.random((200_000, d)) * np.linspace(1.0, 2.0, d) - 0.5
    idx = np.argmin(np.sum(y**2, 1) - psi - 2 * samples @ y.T, 1)
    frac = np.bincount(idx, minlength=n) / samples.shape[0]
    se = np.sqrt(frac * (1 - frac) / samples.shape[0]) + 1e-12
    assert np.all(np.abs(np.asarray(diagram.mass) / volume - frac) <= 5 * se)


@pytest.mark.parametrize("d", [2, 3])
def test_cell_volumes_sum_to_the_polytope_volume(d):
    rng = np.random.default_rng(10 + d)
    n = N2 if d == 2 else N3
    points = rng.random((12, d))
    hull = ConvexHull(points)
    y = rng.random((n, d))
    psi = _random_weights(y, rng)
    volume = scipy.spatial.ConvexHull(points).volume
    # The hull's half-spaces cut out the same set as qhull's hull of the points.
    np.testing.assert_allclose(scipy.spatial.ConvexHull(hull_points(hull)).volume, volume, rtol=1e-12)
    caps = Capacities.default(n, d)
    caps = Capacities(4 * caps.vertices, caps.candidates, caps.fallback, caps.grid)
    diagram = power_diagram(jnp.asarray(y), jnp.asarray(psi), hull, caps)
    assert bool(jnp.all(diagram.certified)) and not bool(jnp.any(diagram.overflow))
    np.testing.assert_allclose(float(jnp.sum(diagram.mass)), volume, rtol=1e-12)
    np.testing.assert_allclose(float(hull.total_mass()), volume, rtol=1e-12)


def hull_points(hull):
    """Vertices of a Polytope by brute force (numpy), for an independent volume via qhull."""
    A, b = np.asarray(hull.directions), np.asarray(hull.offsets)
    d = A.shape[1]
    pts = []
    for s in itertools.combinations(range(A.shape[0]), d):
        M = A[list(s)]
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        x = np.linalg.solve(M, b[list(s)])
        if np.all(A @ x <= b + 1e-10):
            pts.append(x)
    return np.array(pts)


def _cross_polytope_volume_error(d, r):
    """|x|_1 <= r in d dimensions: volume (2r)^d / d!  (non-simple vertices for d >= 3)."""
    A = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    p = Polytope(A, np.full(len(A), r))
    return float(p.total_mass()) / ((2 * r) ** d / math.factorial(d)) - 1


@pytest.mark.parametrize("d,r", [(2, 1.5), (3, 1.0), (3, 0.5), (4, 1.0)])
def test_cross_polytope_volume(d, r):
    assert abs(_cross_polytope_volume_error(d, r)) <= 1e-12


# Regression: the 1e-12 box margin once made the jitted 4D clip 2.46% wrong here (fixed in the kernels).
def test_cross_polytope_volume_4d_half():
    assert abs(_cross_polytope_volume_error(4, 0.5)) <= 1e-12


def test_simplex_volume():
    # Simplex x >= 0, sum x <= 2 in 3D: 8 / 6.
    A = np.vstack([-np.eye(3), np.ones((1, 3))])
    p = Polytope(A, [0, 0, 0, 2.0])
    np.testing.assert_allclose(float(p.total_mass()), 8 / 6, rtol=1e-12)


# --- vertices ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def random_cells(request):
    d = request.param
    n = N2 if d == 2 else N3
    rng = np.random.default_rng(20 + d)
    y = rng.random((n, d))
    psi = _random_weights(y, rng, 0.02)
    box = Box().with_dim(d)
    caps = Capacities.default(n, d)
    cells = cell_geometry(jnp.asarray(y), jnp.asarray(psi), box, caps)
    return y, psi, cells


def test_every_vertex_inside_the_domain(random_cells):
    y, psi, cells = random_cells
    v = np.asarray(cells.vertices)[np.asarray(cells.valid)]
    assert v.shape[0] > 0
    assert np.all(v >= -1e-12) and np.all(v <= 1 + 1e-12)


def test_every_vertex_equidistant_to_the_seeds_that_define_it(random_cells):
    y, psi, cells = random_cells
    n, d = y.shape
    V, valid, nb = np.asarray(cells.vertices), np.asarray(cells.valid), np.asarray(cells.neighbours)
    power = lambda x: np.sum((x[:, None] - y[None]) ** 2, -1) - psi[None]  # (m, n)
    A, b = box_halfspaces(np.zeros(d), np.ones(d))
    checked = 0
    for i in range(n):
        verts = V[i][valid[i]]
        if d == 2:
            k = np.nonzero(valid[i])[0]
            # Vertex k lies on edge (k-1 -> k) and edge (k -> k+1).
            ids = np.stack([nb[i][np.roll(k, 1)], nb[i][k]], 1)
        else:
            ids = nb[i][valid[i]]
        p = power(verts)
        # The vertex belongs to cell i: no seed is closer in power distance.
        assert np.all(p[:, i] <= p.min(1) + 1e-12)
        for row, (x, js) in enumerate(zip(verts, ids)):
            defining = [j for j in js if j >= 0]
            np.testing.assert_allclose(p[row, defining], p[row, i], atol=1e-12)
            checked += len(defining)
            if len(defining) < d:  # some of its planes are the boundary: the vertex is on it
                assert np.min(np.abs(A @ x - b)) <= 1e-12
    assert checked > n


# --- invariances -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_problem():
    rng = np.random.default_rng(30)
    y = rng.random((N2, 2))
    a = rng.random(N2) + 0.5
    plan = optimal_transport_plan(_diracs(y, a), Box(), tol=1e-12)
    return y, a, plan


def _diracs(y, a):
    return SumOfDiracs(y, a)


def test_translation_of_both_measures(base_problem):
    y, a, plan = base_problem
    t = np.array([3.0, -1.25])
    moved = optimal_transport_plan(_diracs(y + t, a), Box(origin=t, frame=[1.0, 1.0]), tol=1e-12)
    np.testing.assert_allclose(gauge(moved.weights), gauge(plan.weights), atol=1e-12)
    np.testing.assert_allclose(float(moved.cost), float(plan.cost), rtol=1e-11)
    np.testing.assert_allclose(np.asarray(moved.barycenters), np.asarray(plan.barycenters) + t, atol=1e-12)


def test_permutation_of_the_diracs(base_problem):
    y, a, plan = base_problem
    perm = np.random.default_rng(31).permutation(N2)
    permuted = optimal_transport_plan(_diracs(y[perm], a[perm]), Box(), tol=1e-12)
    np.testing.assert_allclose(gauge(permuted.weights), gauge(plan.weights)[perm], atol=1e-13)
    np.testing.assert_allclose(np.asarray(permuted.cell_masses), np.asarray(plan.cell_masses)[perm], rtol=1e-12)
    np.testing.assert_allclose(float(permuted.cost), float(plan.cost), rtol=1e-12)


def test_uniform_scaling(base_problem):
    y, a, plan = base_problem
    s = 2.5
    scaled = optimal_transport_plan(_diracs(s * y, a), Box(origin=[0.0, 0.0], frame=[s, s]), tol=1e-12)
    np.testing.assert_allclose(float(scaled.distance), s * float(plan.distance), rtol=1e-11)
    np.testing.assert_allclose(gauge(scaled.weights), s**2 * gauge(plan.weights), atol=1e-11)
    np.testing.assert_allclose(np.asarray(scaled.barycenters), s * np.asarray(plan.barycenters), atol=1e-12)


def test_polytope_volume_is_differentiable_and_traceable():
    import jax

    A = np.vstack([np.eye(2), -np.eye(2)])

    def volume(b):  # built from traced offsets: the pure-JAX vertex enumeration runs
        return Polytope(A, b).total_mass()

    b = jnp.array([1.0, 2.0, 0.5, 0.25])  # [-0.5, 1] x [-0.25, 2]
    np.testing.assert_allclose(float(jax.jit(volume)(b)), 1.5 * 2.25, rtol=1e-14)
    # d vol / d b_k = measure of facet k (its normal has unit length): 2.25, 1.5, 2.25, 1.5.
    np.testing.assert_allclose(np.asarray(jax.grad(volume)(b)), [2.25, 1.5, 2.25, 1.5], rtol=1e-13)
