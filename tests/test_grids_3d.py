"""3D grid densities (SplineGrid, PolynomialGrid, Image): integrals against independent
references, constant == Box, window overflow, smoothing, a full solve and gradients.

The reference for tetrahedron moments is independent of the code under test: the vertices of
each piece of ``T ∩ grid cell`` by brute-force plane-triple enumeration, a qhull Delaunay
triangulation of them, and a conical-product Gauss rule on every small tetrahedron; splines are
evaluated from the de Boor recursion.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import Delaunay, QhullError

import sdot_jax
from sdot_jax.geometry.diagram import Capacities
from sdot_jax.measures.box import Box
from sdot_jax.measures.diracs import SumOfDiracs
from sdot_jax.measures.polynomial_grid import Image, PolynomialGrid
from sdot_jax.measures.spline_grid import SplineGrid

RNG = np.random.default_rng(7)


# ---- independent references ------------------------------------------------------------------


def tet_rule(order):
    """Conical product Gauss rule on the reference tetrahedron (weights sum to 1/6)."""
    x, w = np.polynomial.legendre.leggauss(order)
    u, wu = (x + 1) / 2, w / 2
    pts, wts = [], []
    for a, wa in zip(u, wu):
        for b, wb in zip(u, wu):
            for c, wc in zip(u, wu):
                pts.append((a, (1 - a) * b, (1 - a) * (1 - b) * c))
                wts.append(wa * wb * wc * (1 - a) ** 2 * (1 - b))
    return np.array(pts), np.array(wts)


def tet_planes(tet):
    out = []
    for f in range(4):
        i = [k for k in range(4) if k != f]
        n = np.cross(tet[i[1]] - tet[i[0]], tet[i[2]] - tet[i[0]])
        if n @ (tet[f] - tet[i[0]]) > 0:
            n = -n
        out.append((n, n @ tet[i[0]]))
    return out


def polytope_points(planes):
    pts = []
    for (n1, b1), (n2, b2), (n3, b3) in itertools.combinations(planes, 3):
        a = np.array([n1, n2, n3])
        if abs(np.linalg.det(a)) < 1e-13 * np.prod(np.linalg.norm(a, axis=1)):
            continue
        x = np.linalg.solve(a, [b1, b2, b3])
        if all(n @ x <= o + 1e-12 * (1 + abs(o)) * max(1.0, np.linalg.norm(n)) for n, o in planes):
            pts.append(x)
    return np.array(pts)


def polytope_moments(planes, f, origin, order=8):
    """Moments of f over {n . x <= o}: vertices, Delaunay tetrahedra, conical Gauss rule."""
    p = polytope_points(planes)
    if len(p) < 4:
        return 0.0, np.zeros(3), np.zeros((3, 3))
    try:
        simplices = Delaunay(p).simplices
    except QhullError:  # flat: no volume
        return 0.0, np.zeros(3), np.zeros((3, 3))
    rp, rw = tet_rule(order)
    xs, ws = [], []
    for s in simplices:
        v = p[s]
        xs.append(v[0] + rp @ (v[1:] - v[0]))
        ws.append(rw * abs(np.linalg.det(v[1:] - v[0])))
    x, w = np.concatenate(xs), np.concatenate(ws)
    fw = f(x) * w
    z = x - origin
    return fw.sum(), fw @ z, (z * fw[:, None]).T @ z


def box_planes(lo, hi):
    return [(-e, -a) for e, a in zip(np.eye(3), lo)] + [(e, b) for e, b in zip(np.eye(3), hi)]


def piecewise_tet_moments(tet, knots, f, origin):
    """Sum over the boxes between ``knots`` (per axis) where f is one polynomial."""
    total = [0.0, np.zeros(3), np.zeros((3, 3))]
    planes = tet_planes(tet)
    for i, j, k in itertools.product(*(range(len(kn) - 1) for kn in knots)):
        lo = np.array([knots[0][i], knots[1][j], knots[2][k]])
        hi = np.array([knots[0][i + 1], knots[1][j + 1], knots[2][k + 1]])
        if np.any(tet.min(0) >= hi) or np.any(tet.max(0) <= lo):
            continue
        m = polytope_moments(planes + box_planes(lo, hi), f, origin)
        total = [t + x for t, x in zip(total, m)]
    return tuple(total)


def bspline(x, p):
    """Centred cardinal B-spline of degree p, by the de Boor recursion."""
    if p == 0:
        return ((x >= -0.5) & (x < 0.5)).astype(float)
    return ((x + (p + 1) / 2) * bspline(x + 0.5, p - 1) + ((p + 1) / 2 - x) * bspline(x - 0.5, p - 1)) / p


def spline_value(values, p, t):
    """3D spline with edge-extended coefficients at box coordinates ``t (m, 3)``."""
    shape = values.shape
    basis = [[(i, bspline(t[:, a] * shape[a] - i - 0.5, p)) for i in range(-p - 1, shape[a] + p + 1)]
             for a in range(3)]
    out = np.zeros(len(t))
    for i, bx in basis[0]:
        if not bx.any():
            continue
        for j, by in basis[1]:
            if not by.any():
                continue
            for k, bz in basis[2]:
                c = values[min(max(i, 0), shape[0] - 1), min(max(j, 0), shape[1] - 1), min(max(k, 0), shape[2] - 1)]
                out += c * bx * by * bz
    return out * np.all((t >= 0) & (t <= 1), 1)


def spline_knots(n, p):
    edges = np.linspace(0, 1, n + 1)
    return edges if p % 2 == 0 else np.unique(np.concatenate([edges, (np.arange(n) + 0.5) / n]))


def random_tet(scale, centre):
    return centre + scale * (RNG.random((4, 3)) - 0.5)


def check(m, r, rtol):
    np.testing.assert_allclose(m[0], r[0], rtol=rtol)
    np.testing.assert_allclose(m[1], r[1], atol=rtol * abs(r[0]))
    np.testing.assert_allclose(m[2], r[2], atol=rtol * abs(r[0]))


# Special tetrahedra in box coordinates: faces on grid planes (inside and on the boundary),
# vertices on grid nodes, partly outside the box.
SPECIAL = [
    np.array([[0.5, 0.1, 0.1], [0.5, 0.9, 0.2], [0.5, 0.3, 0.8], [0.9, 0.5, 0.5]]),
    np.array([[0.5, 0.1, 0.1], [0.5, 0.9, 0.2], [0.5, 0.3, 0.8], [0.1, 0.5, 0.5]]),
    np.array([[0.0, 0.1, 0.1], [0.0, 0.9, 0.2], [0.0, 0.3, 0.8], [0.6, 0.5, 0.5]]),
    np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    np.array([[-0.2, 0.3, 0.3], [0.6, -0.1, 0.4], [0.4, 0.7, 1.2], [0.3, 0.4, 0.2]]),
]


# ---- integrals ---------------------------------------------------------------------------------


def test_polynomial_grid_tetrahedra_and_triangles():
    coeffs = RNG.random((2, 3, 2, 2, 3, 2))  # degrees (1, 2, 1) per cell
    dens = PolynomialGrid(coeffs)
    knots = [np.linspace(0, 1, n + 1) for n in (2, 3, 2)]

    def f(x):
        i = [np.clip((x[:, a] * n).astype(int), 0, n - 1) for a, n in enumerate((2, 3, 2))]
        u = [x[:, a] * n - i[a] for a, n in enumerate((2, 3, 2))]
        c = coeffs[i[0], i[1], i[2]]
        return np.einsum("nabc,na,nb,nc->n", c, u[0][:, None] ** np.arange(2), u[1][:, None] ** np.arange(3),
                         u[2][:, None] ** np.arange(2))

    fn = jax.jit(lambda o, s: dens.simplex_moments(o, s))
    tets = [random_tet(s, np.full(3, 0.5)) for s in (0.3, 0.9)] + SPECIAL
    for tet in tets:
        o = tet.mean(0) + 0.03
        m = fn(jnp.asarray(o), jnp.asarray(tet - o))
        # The reference evaluates f at points of each piece's interior only (Gauss points).
        check(m, piecewise_tet_moments(tet, knots, f, o), 1e-12)
    # A flat tetrahedron (repeated vertex, as the padded kernels produce) integrates to zero.
    flat = SPECIAL[0].copy()
    flat[3] = flat[1]
    assert float(fn(jnp.zeros(3), jnp.asarray(flat))[0]) == 0.0

    # Facet: the triangle split by the grid planes (numpy Sutherland-Hodgman), Gauss per piece.
    tri = np.array([[0.1, 0.2, 0.15], [0.9, 0.4, 0.7], [0.3, 0.95, 0.5]])
    x, w = np.polynomial.legendre.leggauss(5)
    u, wu = (x + 1) / 2, w / 2
    ref = 0.0
    for i, j, k in itertools.product(range(2), range(3), range(2)):
        lo = np.array([knots[0][i], knots[1][j], knots[2][k]])
        hi = np.array([knots[0][i + 1], knots[1][j + 1], knots[2][k + 1]])
        poly = list(tri)
        for n, off in box_planes(lo, hi):
            out = []
            for a, b in zip(poly, poly[1:] + poly[:1]):
                sa, sb = a @ n - off, b @ n - off
                if sa <= 0:
                    out.append(a)
                if (sa <= 0) != (sb <= 0):
                    out.append(a + sa / (sa - sb) * (b - a))
            poly = out
            if len(poly) < 3:
                break
        for q in range(1, len(poly) - 1):
            a, b, c = poly[0], poly[q], poly[q + 1]
            area = np.linalg.norm(np.cross(b - a, c - a)) / 2
            pts = np.array([a + s * (b - a) + (1 - s) * t * (c - a) for s in u for t in u])
            wts = np.array([ws * wt * (1 - s) * 2 for s, ws in zip(u, wu) for wt in wu])
            ref += area * np.sum(wts * f(pts))
    got = dens.facet_mass(jnp.asarray(tri[0]), jnp.asarray(tri - tri[0]))
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.parametrize("degree", [1, 3])
def test_spline_grid_tetrahedra(degree):
    values = RNG.random((3, 2, 2))
    origin, frame = np.array([-1.0, 0.5, 0.0]), np.array([2.0, 1.5, 1.0])
    grid = SplineGrid(values, degree=degree, origin=origin, frame=frame)
    knots = [spline_knots(n, degree) * s + o for n, s, o in zip(values.shape, frame, origin)]
    f = lambda x: spline_value(values, degree, (x - origin) / frame)
    fn = jax.jit(lambda o, s: grid.simplex_moments(o, s))
    for scale in (0.3, 1.0):
        tet = random_tet(scale, origin + frame / 2)
        o = tet[0] + 0.05
        m = fn(jnp.asarray(o), jnp.asarray(tet - o))
        check(m, piecewise_tet_moments(tet, knots, f, o), 1e-11)
    pts = RNG.random((200, 3))
    np.testing.assert_allclose(grid.density_at(jnp.asarray(origin + pts * frame)), spline_value(values, degree, pts),
                               atol=1e-12)


def test_constant_values_equal_box():
    frame = np.array([[1.0, 0.2, 0.0], [0.0, 0.8, 0.1], [0.1, 0.0, 1.2]])
    origin = np.array([0.2, -0.1, 0.3])
    box = Box(origin, frame)
    centre = origin + frame.sum(0) / 2
    tets = np.stack([random_tet(0.4, centre) for _ in range(3)])
    inv = np.linalg.inv(frame)
    assert np.all((tets - origin) @ inv > 0) and np.all((tets - origin) @ inv < 1)
    o = tets.mean(1) + 0.01
    args = (jnp.asarray(o), jnp.asarray(tets - o[:, None]))
    facet_args = (jnp.asarray(tets[:, 0]), jnp.asarray(tets[:, 1:] - tets[:, :1]))

    def integrals(d):
        moments = jax.vmap(d.simplex_moments)(*args)
        return moments, jax.vmap(d.facet_mass)(*facet_args)

    (r0, r1, r2), rf = integrals(box)
    for d in (SplineGrid(np.full((2, 3, 2), 3.0), degree=1, origin=origin, frame=frame),
              Image(np.full((3, 2, 2), 3.0), origin=origin, frame=frame)):
        np.testing.assert_allclose(d.total_mass(), 3.0 * box.total_mass(), rtol=1e-12)
        (m0, m1, m2), mf = jax.jit(integrals)(d)
        np.testing.assert_allclose(m0, 3 * r0, rtol=1e-12)
        np.testing.assert_allclose(m1, 3 * r1, atol=1e-12 * float(np.max(r0)))
        np.testing.assert_allclose(m2, 3 * r2, atol=1e-12 * float(np.max(r0)))
        np.testing.assert_allclose(mf, 3 * rf, rtol=1e-12)


def test_window_overflow_is_nan_and_smoothing():
    image = Image(RNG.random((8, 8, 8)), window=2)
    tet = jnp.asarray([[0.1, 0.1, 0.1], [0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    assert np.isnan(image.simplex_moments(jnp.zeros(3), tet)[0])
    assert image.window == 2 and Image(np.ones((8, 8, 8))).window == 4
    for d in (Image(np.full((3, 4, 2), 2.0)), SplineGrid(np.full((3, 4, 2), 2.0), degree=2),
              PolynomialGrid(np.full((3, 4, 2, 1, 1, 1), 2.0))):
        s = d.smoothed(0.2)
        assert type(s) is type(d) and s.dim == 3
        np.testing.assert_allclose(s.total_mass(), d.total_mass(), rtol=1e-12)
    v = RNG.random((4, 3, 2))
    s = Image(v).smoothed(0.25).values
    assert s.shape == v.shape and np.ptp(np.asarray(s)) < np.ptp(v)


# ---- full solve and gradients ------------------------------------------------------------------

N = 6
VALUES = 0.5 + RNG.random((2, 2, 2))
Y = 0.1 + 0.8 * RNG.random((N, 3))


# 32 vertex slots are plenty for 6 cells (retried larger on overflow): half the tetrahedra of
# the default 64, and every tetrahedron costs window**3 = 8 clipped voxels here.
OPTIONS = dict(tol=1e-11, capacities=Capacities(32, N - 1, N, None))


@pytest.fixture(scope="module")
def image_plan():
    return sdot_jax.optimal_transport_plan(SumOfDiracs(Y), Image(VALUES), **OPTIONS)


def test_image_solve(image_plan):
    plan = image_plan
    assert bool(plan.stats.converged)
    psi = np.asarray(plan.weights)
    # Independent cell masses at the solver's weights: each power cell cut by every voxel,
    # vertices by plane-triple enumeration, qhull + Gauss on the pieces.
    knots = np.linspace(0, 1, 3)
    f = lambda x: spline_value(VALUES, 0, x)
    masses = np.zeros(N)
    for i in range(N):
        cell = [(2 * (Y[j] - Y[i]), Y[j] @ Y[j] - Y[i] @ Y[i] - psi[j] + psi[i]) for j in range(N) if j != i]
        for a, b, c in itertools.product(range(2), repeat=3):
            lo, hi = knots[[a, b, c]], knots[[a + 1, b + 1, c + 1]]
            masses[i] += polytope_moments(cell + box_planes(lo, hi), f, Y[i], order=2)[0]
    total = float(Image(VALUES).total_mass())
    np.testing.assert_allclose(masses.sum(), total, rtol=1e-10)
    np.testing.assert_allclose(masses / total, 1 / N, rtol=1e-9)
    np.testing.assert_allclose(plan.cell_masses, 1 / N, rtol=1e-10)


# (59 s, slow: the suite must stay under 15 minutes on 2 cores.  Gradients wrt a 2D grid density's
# values: test_gradients.py; 3D gradients wrt the Diracs: test_gradients.py::test_gradients_3d_box.)
@pytest.mark.slow
def test_distance_gradient_wrt_values(image_plan):
    dist = lambda v: sdot_jax.distance(SumOfDiracs(Y), Image(v), squared=True, **OPTIONS)
    grad = jax.grad(dist)(jnp.asarray(VALUES))
    direction = RNG.standard_normal(VALUES.shape)
    h = 1e-4
    fd = (dist(VALUES + h * direction) - dist(VALUES - h * direction)) / (2 * h)
    np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=1e-6)
