"""Mesh (P1 density on triangles / tetrahedra): integrals against an independent reference
(qhull clipping + Delaunay + a collapsed Gauss rule, all numpy/scipy), solves on a square, an
L-shape with Diracs in the hole, a 3D L-shape, and gradients against finite differences."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.spatial
from hypothesis import given, settings, strategies as st
from numpy.polynomial.legendre import leggauss

from sdot_jax import Box, distance, optimal_transport_plan
from sdot_jax.distance import _dual
from sdot_jax.measures.mesh import Mesh

from helpers import reference_diagram


# ---------------------------------------------------------------------------------------------
# Meshes.


def square_mesh(k, keep=lambda c: True):
    """Unit square, k x k squares each split in 2 triangles; ``keep(centre)`` drops squares."""
    xs = np.linspace(0, 1, k + 1)
    nodes = np.array([[x, y] for x in xs for y in xs])
    idx = lambda i, j: i * (k + 1) + j  # noqa: E731
    tris = []
    for i, j in itertools.product(range(k), range(k)):
        if keep(((i + 0.5) / k, (j + 0.5) / k)):
            a, b, c, d = idx(i, j), idx(i + 1, j), idx(i + 1, j + 1), idx(i, j + 1)
            tris += [[a, b, c], [a, c, d]]
    return nodes, np.array(tris)


def cube_mesh(cubes, h=0.5):
    """Kuhn triangulation (6 tetrahedra, conforming) of the cubes of side h at these offsets."""
    ids, tets = {}, []
    for off in cubes:
        for perm in itertools.permutations(range(3)):
            p = list(off)
            path = [ids.setdefault(tuple(p), len(ids))]
            for axis in perm:
                p[axis] += 1
                path.append(ids.setdefault(tuple(p), len(ids)))
            tets.append(path)
    nodes = np.zeros((len(ids), 3))
    for p, i in ids.items():
        nodes[i] = p
    return nodes * h, np.array(tets)


L_NODES, L_TRIS = square_mesh(4, lambda c: not (c[0] > 0.5 and c[1] > 0.5))
L3_NODES, L3_TETS = cube_mesh([(0, 0, 0), (1, 0, 0), (0, 1, 0)])


# ---------------------------------------------------------------------------------------------
# Independent reference: numpy/scipy only.


def _element_affine(nodes, simplex, values):
    """rho(x) = alpha + beta . x on the element, and its half-spaces A x <= b (lambda_k >= 0)."""
    x = nodes[simplex]
    d = x.shape[1]
    m = np.vstack([x.T, np.ones(d + 1)])  # lambda = inv(m) [x; 1]
    inv = np.linalg.inv(m)
    beta = values[simplex] @ inv[:, :d]
    alpha = values[simplex] @ inv[:, d]
    return alpha, beta, -inv[:, :d], inv[:, d]


def _simplex_halfspaces(s):
    d = s.shape[1]
    m = np.vstack([s.T, np.ones(d + 1)])
    inv = np.linalg.inv(m)
    return -inv[:, :d], inv[:, d]


def _duffy_rule(d, m=3):
    """Points and weights on the reference simplex {x >= 0, sum x <= 1} (weights sum to 1/d!):
    Gauss-Legendre on the cube mapped by x_k = u_k prod_{l<k} (1 - u_l); exact for degree 3
    when m = 3 (the Jacobian adds degree d - 1 <= 2)."""
    x, w = leggauss(m)
    x, w = (x + 1) / 2, w / 2
    u = [g.ravel() for g in np.meshgrid(*([x] * d), indexing="ij")]
    wts = np.prod([g.ravel() for g in np.meshgrid(*([w] * d), indexing="ij")], 0)
    pts = np.zeros((u[0].size, d))
    rest = np.ones_like(u[0])
    for k in range(d):
        pts[:, k] = rest * u[k]
        wts = wts * rest if k > 0 else wts
        rest = rest * (1 - u[k])
    return pts, wts


def _chebyshev(a, b):
    norms = np.linalg.norm(a, axis=1)
    d = a.shape[1]
    lp = scipy.optimize.linprog(
        np.r_[np.zeros(d), -1.0], A_ub=np.c_[a, norms], b_ub=b,
        bounds=[(None, None)] * d + [(0, None)], method="highs",
    )
    return (lp.x[:d], lp.x[-1]) if lp.status == 0 else (None, 0.0)


def reference_moments(nodes, simplices, values, origin, simplex):
    """(int rho, int z rho, int z z^T rho) over origin + conv(simplex), z = x - origin."""
    d = nodes.shape[1]
    pts_ref, w_ref = _duffy_rule(d)
    s = simplex + origin
    a_s, b_s = _simplex_halfspaces(s)
    m0, m1, m2 = 0.0, np.zeros(d), np.zeros((d, d))
    for e in simplices:
        alpha, beta, a_e, b_e = _element_affine(nodes, e, values)
        a, b = np.vstack([a_s, a_e]), np.r_[b_s, b_e]
        centre, r = _chebyshev(a, b)
        if r <= 1e-9:
            continue
        hs = scipy.spatial.HalfspaceIntersection(np.c_[a, -b], centre)
        verts = hs.intersections
        for sub in scipy.spatial.Delaunay(verts).simplices:
            v = verts[sub]
            jac = abs(np.linalg.det(v[1:] - v[0]))
            x = v[0] + pts_ref @ (v[1:] - v[0])
            rho = alpha + x @ beta
            z = x - origin
            w = w_ref * jac * rho
            m0 += w.sum()
            m1 += w @ z
            m2 += (z * w[:, None]).T @ z
    return m0, m1, m2


def reference_cell_masses(y, psi, nodes, simplices, values):
    """Cell masses of the power diagram on the mesh density: per element, the qhull diagram of
    tests/helpers.py restricted to the element, integrated with the element's linear density."""
    mass = np.zeros(len(y))
    for e in simplices:
        alpha, beta, a_e, b_e = _element_affine(nodes, e, values)
        ref = reference_diagram(y, psi, a_e, b_e)
        mass += alpha * ref["mass"] + ref["first"] @ beta
    return mass


# ---------------------------------------------------------------------------------------------
# Integrals.


def _random_simplices(seed, d, count, scale):
    rng = np.random.default_rng(seed)
    origin = rng.uniform(-0.2, 1.2, d)
    simplices = rng.normal(0.0, scale, (count, d + 1, d)) + rng.uniform(-0.3, 0.3, (count, 1, d))
    return origin, simplices


@pytest.fixture(scope="module")
def mesh2():
    values = np.random.default_rng(0).uniform(0.0, 2.0, L_NODES.shape[0])
    return Mesh(L_NODES, L_TRIS, values), values


@pytest.fixture(scope="module")
def moments2(mesh2):
    m, _ = mesh2
    return jax.jit(jax.vmap(lambda o, s: m.simplex_moments(o, s), (None, 0)))


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_moments_2d(mesh2, moments2, seed):
    """Mass, first and second moments over random triangles vs the independent reference (exact
    up to rounding: error <= 1e-11 of the triangle's scale)."""
    _, values = mesh2
    origin, tris = _random_simplices(seed, 2, 4, 0.5)
    got = moments2(jnp.asarray(origin), jnp.asarray(tris))
    for k in range(4):
        ref = reference_moments(L_NODES, L_TRIS, values, origin, tris[k])
        for g, r in zip(got, ref):
            np.testing.assert_allclose(np.asarray(g[k]), r, rtol=1e-9, atol=1e-11)


def test_total_mass_and_facets_2d(mesh2):
    m, values = mesh2
    # Total mass: the reference over a triangle covering the whole mesh.
    big = np.array([[-1.0, -1.0], [4.0, -1.0], [-1.0, 4.0]])
    np.testing.assert_allclose(float(m.total_mass()), reference_moments(L_NODES, L_TRIS, values, np.zeros(2), big)[0], rtol=1e-12)
    # Facet (segment) integrals vs a fine composite Simpson rule (error ~1e-7 at the kinks).
    rng = np.random.default_rng(3)
    origin = np.array([0.4, 0.3])
    f = jax.jit(jax.vmap(lambda s: m.facet_mass(jnp.asarray(origin), s)))
    segs = rng.uniform(-0.6, 0.8, (5, 2, 2))
    got = np.asarray(f(jnp.asarray(segs)))
    t = np.linspace(0, 1, 200001)
    for k, s in enumerate(segs):
        x = origin + s[0] + t[:, None] * (s[1] - s[0])
        rho = np.asarray(m.density_at(jnp.asarray(x)))
        ref = scipy.integrate.simpson(rho, x=t) * np.linalg.norm(s[1] - s[0])
        np.testing.assert_allclose(got[k], ref, rtol=1e-5, atol=1e-7)


def test_moments_3d():
    """Same in 3D (3D L-shape of 18 tetrahedra, random values, random tetrahedra)."""
    values = np.random.default_rng(1).uniform(0.0, 2.0, L3_NODES.shape[0])
    m = Mesh(L3_NODES, L3_TETS, values)
    f = jax.jit(jax.vmap(lambda o, s: m.simplex_moments(o, s), (None, 0)))
    np.testing.assert_allclose(float(m.total_mass()), reference_moments(L3_NODES, L3_TETS, values, np.zeros(3), np.array([[-1.0] * 3, [5, -1, -1], [-1, 5, -1], [-1, -1, 5.0]]))[0], rtol=1e-12)
    for seed in (5, 6):
        origin, tets = _random_simplices(seed, 3, 3, 0.5)
        got = f(jnp.asarray(origin), jnp.asarray(tets))
        for k in range(3):
            ref = reference_moments(L3_NODES, L3_TETS, values, origin, tets[k])
            for g, r in zip(got, ref):
                np.testing.assert_allclose(np.asarray(g[k]), r, rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# Solves.


def test_square_mesh_equals_box():
    """A constant density on a triangulated unit square is the uniform unit square."""
    y = np.random.default_rng(2).uniform(0, 1, (16, 2))
    # 4 x 3 rectangles (24 triangles) plus 5 unused nodes: the shapes of the L-shape problem,
    # so that the solve reuses its compilation.
    xs, ys = np.linspace(0, 1, 5), np.linspace(0, 1, 4)
    nodes = np.array([[x, v] for x in xs for v in ys] + [[0.5, 0.5]] * 5)
    idx = lambda i, j: i * 4 + j  # noqa: E731
    tris = np.array([t for i, j in itertools.product(range(4), range(3)) for t in (
        [idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)], [idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)])])
    assert nodes.shape == L_NODES.shape and tris.shape == L_TRIS.shape
    a = optimal_transport_plan(y, Mesh(nodes, tris, np.full(nodes.shape[0], 3.0)), tol=1e-13)
    b = optimal_transport_plan(y, Box(), tol=1e-13)
    np.testing.assert_allclose(np.asarray(a.weights - a.weights.mean()), np.asarray(b.weights - b.weights.mean()), atol=1e-10)
    np.testing.assert_allclose(np.asarray(a.barycenters), np.asarray(b.barycenters), atol=1e-10)
    np.testing.assert_allclose(float(a.cost), float(b.cost), rtol=1e-10)


@pytest.fixture(scope="module")
def l_problem():
    """L-shaped domain, non-uniform values, Diracs all over the unit square (some in the hole)."""
    rng = np.random.default_rng(7)
    values = rng.uniform(0.5, 1.5, L_NODES.shape[0])
    y = rng.uniform(0, 1, (16, 2))
    plan = optimal_transport_plan(y, Mesh(L_NODES, L_TRIS, values), tol=1e-11, continuation=True)
    return y, values, plan


@pytest.mark.slow
def test_l_shape_under_jit_takes_continuation_and_equals_eager(l_problem):
    """Under jax.jit a mesh built inside the function keeps its concrete nodes (its checks run at
    once), so the non-convex domain turns continuation on (a traced solve without it stops at
    step 0 with Diracs in the hole, and now raises): the eager solve's weights."""
    y, values, plan = l_problem
    solve = lambda y: optimal_transport_plan(y, Mesh(L_NODES, L_TRIS, values), tol=1e-11,
                                             capacities=plan.capacities).weights
    np.testing.assert_allclose(jax.jit(solve)(jnp.asarray(y)), plan.weights,
                               atol=1e-9 * np.ptp(np.asarray(plan.weights)))


def test_l_shape_solve(l_problem):
    y, values, plan = l_problem
    assert bool(plan.stats.converged)
    assert float(plan.stats.error) <= 1e-11
    ref = reference_cell_masses(y, np.asarray(plan.weights), L_NODES, L_TRIS, values)
    np.testing.assert_allclose(ref / ref.sum(), np.full(len(y), 1 / len(y)), rtol=1e-9)


def test_l_shape_distance_gradients(l_problem):
    """d W2^2 / d(values, nodes) by the envelope theorem (what `distance` differentiates) vs
    central finite differences of `distance` itself (each a full solve), relative error <= 1e-6."""
    y, values, plan = l_problem
    rng = np.random.default_rng(11)
    yj = jnp.asarray(y)
    a = jnp.full(len(y), 1.0 / len(y))
    psi = plan.weights
    caps = plan.capacities

    def envelope(v, nodes):
        return _dual(yj, a, psi, Mesh(nodes, L_TRIS, v), caps)

    gv, gn = jax.grad(envelope, argnums=(0, 1))(jnp.asarray(values), jnp.asarray(L_NODES))
    dv = rng.standard_normal(values.shape)
    dn = rng.standard_normal(L_NODES.shape) * 0.5

    def w2(v, nodes):
        return float(distance(y, Mesh(nodes, L_TRIS, v), squared=True, weights=psi, tol=1e-13,
                              continuation=False))

    h = 1e-5
    fd_v = (8 * (w2(values + h * dv, L_NODES) - w2(values - h * dv, L_NODES))
            - (w2(values + 2 * h * dv, L_NODES) - w2(values - 2 * h * dv, L_NODES))) / (12 * h)
    fd_n = (8 * (w2(values, L_NODES + h * dn) - w2(values, L_NODES - h * dn))
            - (w2(values, L_NODES + 2 * h * dn) - w2(values, L_NODES - 2 * h * dn))) / (12 * h)
    np.testing.assert_allclose(float(jnp.sum(gv * dv)), fd_v, rtol=1e-6)
    np.testing.assert_allclose(float(jnp.sum(gn * dn)), fd_n, rtol=1e-6)


@pytest.mark.slow
def test_distance_grad_traced(l_problem):
    """jax.grad of `distance` itself (the traced solve) equals the envelope gradient."""
    y, values, plan = l_problem
    grad = jax.grad(lambda v: distance(y, Mesh(L_NODES, L_TRIS, v), squared=True, tol=1e-12))(jnp.asarray(values))
    a = jnp.full(len(y), 1.0 / len(y))
    ref = jax.grad(lambda v: _dual(jnp.asarray(y), a, plan.weights, Mesh(L_NODES, L_TRIS, v), plan.capacities))(jnp.asarray(values))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref), rtol=1e-7, atol=1e-12)


@pytest.mark.slow
def test_l_shape_3d_solve():
    """3D L-shape (3 cubes, 18 tetrahedra), random values, Diracs inside the domain."""
    rng = np.random.default_rng(8)
    values = rng.uniform(0.5, 1.5, L3_NODES.shape[0])
    m = Mesh(L3_NODES, L3_TETS, values)
    y = rng.uniform(0, 1, (40, 3))
    y = y[np.asarray(m.density_at(jnp.asarray(y))) > 0][:6]
    plan = optimal_transport_plan(y, m, tol=1e-10)
    assert bool(plan.stats.converged)
    ref = reference_cell_masses(y, np.asarray(plan.weights), L3_NODES, L3_TETS, values)
    np.testing.assert_allclose(ref / ref.sum(), np.full(len(y), 1 / len(y)), rtol=1e-8)


def test_errors():
    with pytest.raises(ValueError, match="flat element"):
        Mesh(np.array([[0.0, 0], [1, 0], [2, 0]]), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="must index"):
        Mesh(L_NODES, L_TRIS + 100)
    with pytest.raises(ValueError, match="non-negative"):
        Mesh(L_NODES, L_TRIS, -np.ones(L_NODES.shape[0]))
