"""Grid densities, Gaussian mixtures: integrals against independent references, full solves.

References are independent of the code under test: numpy Sutherland--Hodgman clipping, numpy
B-spline evaluation from the definition, numpy/scipy quadrature.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdot_jax import Capacities, optimal_transport_plan
from sdot_jax.geometry.diagram import power_diagram
from sdot_jax.measures.gaussians import SumOfGaussians
from sdot_jax.measures.polynomial_grid import Image, PolynomialGrid
from sdot_jax.measures.spline_grid import SplineGrid

RNG = np.random.default_rng(42)


# ---- independent references ------------------------------------------------------------------


def bspline(x, p):
    """Centred cardinal B-spline of degree p, by the de Boor recursion (not the code's formula)."""
    if p == 0:
        return ((x >= -0.5) & (x < 0.5)).astype(float)
    # B_p(x) = ((x + (p+1)/2) B_{p-1}(x + 1/2) + ((p+1)/2 - x) B_{p-1}(x - 1/2)) / p
    return ((x + (p + 1) / 2) * bspline(x + 0.5, p - 1) + ((p + 1) / 2 - x) * bspline(x - 0.5, p - 1)) / p


def spline_value(values, p, pts):
    """Spline with edge-extended coefficients at points in the unit square."""
    nx, ny = values.shape
    out = np.zeros(len(pts))
    for i in range(-p - 1, nx + p + 1):
        bx = bspline(pts[:, 0] * nx - i - 0.5, p)
        if not bx.any():
            continue
        for j in range(-p - 1, ny + p + 1):
            by = bspline(pts[:, 1] * ny - j - 0.5, p)
            out += values[min(max(i, 0), nx - 1), min(max(j, 0), ny - 1)] * bx * by
    inside = np.all((pts >= 0) & (pts <= 1), 1)
    return out * inside


def clip(poly, normal, offset):
    out = []
    for k in range(len(poly)):
        a, b = poly[k], poly[(k + 1) % len(poly)]
        sa, sb = a @ normal - offset, b @ normal - offset
        if sa <= 0:
            out.append(a)
        if (sa <= 0) != (sb <= 0):
            out.append(a + sa / (sa - sb) * (b - a))
    return out


def triangle_rule(order):
    x, w = np.polynomial.legendre.leggauss(order)
    u, wu = (x + 1) / 2, w / 2
    pts, wts = [], []
    for i in range(order):
        for j in range(order):
            pts.append((u[i], (1 - u[i]) * u[j]))
            wts.append(wu[i] * wu[j] * (1 - u[i]) * 2)
    return np.array(pts), np.array(wts)


def polygon_points(poly, order):
    """Quadrature points and weights over a convex polygon (fan + collapsed Gauss rule)."""
    pts, wts = triangle_rule(order)
    xs, ws = [], []
    for k in range(1, len(poly) - 1):
        a, b, c = poly[0], poly[k], poly[k + 1]
        area = abs((b - a)[0] * (c - a)[1] - (b - a)[1] * (c - a)[0]) / 2
        xs.append(a + pts[:, :1] * (b - a) + pts[:, 1:] * (c - a))
        ws.append(wts * area)
    return xs, ws


def piecewise_moments(poly, breaks_x, breaks_y, f, origin, order=6):
    """Clip a convex polygon against every piece, integrate f exactly per piece (one f call)."""
    xs, ws = [], []
    for i in range(len(breaks_x) - 1):
        for j in range(len(breaks_y) - 1):
            q = list(poly)
            for n, o in [((-1, 0), -breaks_x[i]), ((1, 0), breaks_x[i + 1]),
                         ((0, -1), -breaks_y[j]), ((0, 1), breaks_y[j + 1])]:
                if len(q) < 3:
                    break
                q = clip(q, np.array(n, float), o)
            if len(q) >= 3:
                x, w = polygon_points(q, order)
                xs += x
                ws += w
    x, w = np.concatenate(xs), np.concatenate(ws)
    fw = f(x) * w
    z = x - origin
    return fw.sum(), fw @ z, (z * fw[:, None]).T @ z


def segment_reference(p0, p1, nx, ny, f):
    """Mean of f along p0 -> p1 (grid coordinates): Gauss per piece between the grid lines of an
    nx x ny grid on the unit square that it crosses."""
    breaks = (np.linspace(0, 1, nx + 1), np.linspace(0, 1, ny + 1))
    lam = [0.0, 1.0] + [(v - p0[k]) / (p1[k] - p0[k]) for k in range(2) if p1[k] != p0[k] for v in breaks[k]]
    lam = np.unique(np.clip(lam, 0, 1))
    x, w = np.polynomial.legendre.leggauss(6)
    out = 0.0
    for a0, a1 in zip(lam[:-1], lam[1:]):
        t = a0 + (a1 - a0) * (x + 1) / 2
        out += (a1 - a0) / 2 * np.sum(w * f(p0 + t[:, None] * (p1 - p0)))
    return out


def random_triangle(scale, centre):
    return centre + scale * (RNG.random((3, 2)) - 0.5)


# ---- SplineGrid --------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_spline_grid_matches_definition(degree):
    values = RNG.random((5, 4))
    grid = SplineGrid(values, degree=degree)
    pts = RNG.random((500, 2))
    np.testing.assert_allclose(grid.density_at(jnp.asarray(pts)), spline_value(values, degree, pts), atol=1e-12)
    const = SplineGrid(np.full((5, 4), 2.0), degree=degree)
    np.testing.assert_allclose(const.density_at(jnp.asarray(pts)), 2.0, atol=1e-12)
    np.testing.assert_allclose(const.total_mass(), 2.0, rtol=1e-12)
    # total mass: pieces are polynomials between the knots (cell edges or centres) -> exact rule.
    kx = np.unique(np.concatenate([np.linspace(0, 1, 6), (np.arange(5) + 0.5) / 5]))
    ky = np.unique(np.concatenate([np.linspace(0, 1, 5), (np.arange(4) + 0.5) / 4]))
    ref = piecewise_moments([np.array(c, float) for c in [(0, 0), (1, 0), (1, 1), (0, 1)]],
                            kx, ky, lambda x: spline_value(values, degree, x), np.zeros(2), 4)[0]
    np.testing.assert_allclose(grid.total_mass(), ref, rtol=1e-12)


@pytest.mark.parametrize("degree", [1, 3])
def test_spline_grid_triangle_moments(degree):
    values = RNG.random((5, 4))
    origin, frame = np.array([-1.0, 0.5]), np.array([2.0, 1.5])
    grid = SplineGrid(values, degree=degree, origin=origin, frame=frame)
    knots_x = np.unique(np.concatenate([np.linspace(0, 1, 6), (np.arange(5) + 0.5) / 5])) * 2 - 1
    knots_y = np.unique(np.concatenate([np.linspace(0, 1, 5), (np.arange(4) + 0.5) / 4])) * 1.5 + 0.5
    f = lambda x: spline_value(values, degree, (x - origin) / frame)
    fn = jax.jit(lambda o, s: grid.simplex_moments(o, s))
    for scale in (0.2, 0.8):
        tri = random_triangle(scale, np.array([0.0, 1.25]))
        dirac = tri.mean(0) + 0.1
        m0, m1, m2 = fn(jnp.asarray(dirac), jnp.asarray(tri - dirac))
        r0, r1, r2 = piecewise_moments(list(tri), knots_x, knots_y, f, dirac)
        np.testing.assert_allclose(m0, r0, rtol=1e-11)
        np.testing.assert_allclose(m1, r1, atol=1e-12 * abs(r0))
        np.testing.assert_allclose(m2, r2, atol=1e-12 * abs(r0))


def test_image_and_polynomial_grid_moments_and_facets():
    values = RNG.random((6, 6))
    image = Image(values)
    coeffs = RNG.random((6, 6, 2, 3))
    poly = PolynomialGrid(coeffs)
    b = np.linspace(0, 1, 7)

    def f_image(x):
        i = np.clip((x * 6).astype(int), 0, 5)
        return values[i[:, 0], i[:, 1]]

    def f_poly(x):
        i = np.clip((x * 6).astype(int), 0, 5)
        u = x * 6 - i
        c = coeffs[i[:, 0], i[:, 1]]
        return np.einsum("nab,na,nb->n", c, u[:, :1] ** np.arange(2), u[:, 1:] ** np.arange(3))

    for dens, f in [(image, f_image), (poly, f_poly)]:
        fn = jax.jit(lambda o, s: dens.simplex_moments(o, s))
        for scale in (0.05, 0.3):
            tri = random_triangle(scale, np.array([0.5, 0.5]))
            dirac = tri[0] + 0.02
            m0, m1, m2 = fn(jnp.asarray(dirac), jnp.asarray(tri - dirac))
            r0, r1, r2 = piecewise_moments(list(tri), b, b, f, dirac)
            np.testing.assert_allclose(m0, r0, rtol=1e-12)
            np.testing.assert_allclose(m1, r1, atol=1e-13 * abs(r0))
            np.testing.assert_allclose(m2, r2, atol=1e-13 * abs(r0))
        # facet: a segment split where it crosses grid lines, Gauss per piece
        p0, p1 = np.array([0.12, 0.81]), np.array([0.77, 0.09])
        ref = segment_reference(p0, p1, 6, 6, f) * np.linalg.norm(p1 - p0)
        got = dens.facet_mass(jnp.asarray(p0), jnp.asarray(np.stack([np.zeros(2), p1 - p0])))
        np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_window_overflow_is_not_silent():
    image = Image(RNG.random((32, 32)), window=2)
    m0, _, _ = image.simplex_moments(jnp.zeros(2), jnp.array([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]))
    assert np.isnan(m0)


@pytest.mark.parametrize("kind", ["image", "cubic"])
def test_polygon_moments_match_clipped_quadrature(kind):
    """The one-pass boundary (Green) integral of a whole polygon, in a skewed frame, against the
    polygon clipped against every grid cell and integrated by an exact rule per piece (numpy,
    in grid coordinates: x = origin + t @ frame), for an image and a bicubic `PolynomialGrid`;
    and each edge's line integral against Gauss rules between the grid lines it crosses."""
    rng = np.random.default_rng(7)
    nx, ny = 7, 5
    origin, frame = np.array([0.2, -0.1]), np.array([[1.3, 0.2], [0.1, 0.9]])
    if kind == "image":
        values = 0.1 + rng.random((nx, ny))
        grid = Image(values, origin=origin, frame=frame)
        coeffs = values[..., None, None]
    else:
        coeffs = 0.1 + rng.random((nx, ny, 4, 4))
        grid = PolynomialGrid(coeffs, origin=origin, frame=frame)

    def f_grid(t):  # the density at grid coordinates t, zero outside the unit square
        i = np.clip((t[:, 0] * nx).astype(int), 0, nx - 1)
        j = np.clip((t[:, 1] * ny).astype(int), 0, ny - 1)
        u, v = t[:, 0] * nx - i, t[:, 1] * ny - j
        p, q = coeffs.shape[2:]
        val = np.einsum("nab,na,nb->n", coeffs[i, j], u[:, None] ** np.arange(p), v[:, None] ** np.arange(q))
        return val * np.all((t >= 0) & (t <= 1), 1)

    jac = abs(np.linalg.det(frame))
    inverse = np.linalg.inv(frame)
    for _ in range(5):
        angles = np.sort(rng.random(6)) * 2 * np.pi
        verts = (0.2 + 0.3 * rng.random()) * np.stack([np.cos(angles), np.sin(angles)], -1)
        centre = np.array([0.7, 0.4]) + 0.1 * rng.standard_normal(2)
        padded = jnp.zeros((10, 2)).at[:6].set(verts)
        live = jnp.arange(10) < 6
        following = padded[(jnp.arange(10) + 1) % 6]
        m0, m1, m2, edges = grid.polygon_moments(jnp.asarray(centre), padded, following, live)
        poly_t = [(centre + v - origin) @ inverse for v in verts]
        t0 = (centre - origin) @ inverse
        r0, r1, r2 = piecewise_moments(poly_t, np.linspace(0, 1, nx + 1), np.linspace(0, 1, ny + 1), f_grid, t0,
                                       order=8)
        np.testing.assert_allclose(m0, jac * r0, rtol=1e-12)
        np.testing.assert_allclose(m1, jac * r1 @ frame, atol=1e-12 * jac * r0)
        np.testing.assert_allclose(m2, jac * frame.T @ r2 @ frame, atol=1e-12 * jac * r0)
        for k in range(6):  # edge integrals: split where the edge crosses grid lines (numpy)
            p0, p1 = poly_t[k], poly_t[(k + 1) % 6]
            ref = segment_reference(p0, p1, nx, ny, f_grid) * np.linalg.norm(verts[(k + 1) % 6] - verts[k])
            np.testing.assert_allclose(edges[k], ref, rtol=1e-12)
        np.testing.assert_array_equal(edges[6:], 0.0)


def test_a_window_too_small_is_grown_by_the_solver():
    """Cells spanning more pixels than `Capacities.window` give NaN masses; an eager solve grows
    the window and converges, to masses that the whole-grid window confirms."""
    rng = np.random.default_rng(5)
    values = np.where(rng.random((16, 16)) < 0.5, 1.0, 20.0)
    y = rng.random((40, 2))
    start = Capacities.default(40, 2).grown(window=4)
    plan = optimal_transport_plan(y, Image(values), capacities=start, tol=1e-10, continuation=False)
    assert plan.capacities.window > 4
    whole = Capacities.default(40, 2)  # window None: the image's own, the whole grid
    mass = power_diagram(jnp.asarray(y), plan.weights, Image(values), whole).mass
    np.testing.assert_allclose(mass / mass.sum(), np.full(40, 1 / 40), rtol=1e-9)


# ---- Gaussians: tests/test_gaussians.py -------------------------------------------------------


def power_cell_masses(y, psi, density_fn, lo, hi, samples=400):
    """Independent quadrature of the final cells: midpoint grid, brute-force power argmin."""
    xs = lo[0] + (np.arange(samples) + 0.5) / samples * (hi[0] - lo[0])
    ys = lo[1] + (np.arange(samples) + 0.5) / samples * (hi[1] - lo[1])
    pts = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    cost = ((pts[:, None, :] - y[None]) ** 2).sum(-1) - psi[None]
    owner = np.argmin(cost, 1)
    dens = density_fn(pts) * np.prod(hi - lo) / samples**2
    return np.bincount(owner, dens, minlength=len(y))


@pytest.mark.slow
def test_image_and_gaussian_solves():
    rng = np.random.default_rng(3)
    y = rng.random((60, 2))
    values = 0.5 + rng.random((8, 8))
    image = Image(values)
    plan = optimal_transport_plan(y, image, tol=1e-10)
    assert bool(plan.stats.converged)
    f = lambda p: values[np.clip((p[:, 0] * 8).astype(int), 0, 7), np.clip((p[:, 1] * 8).astype(int), 0, 7)]
    m = power_cell_masses(y, np.asarray(plan.weights), f, np.zeros(2), np.ones(2))
    np.testing.assert_allclose(m / m.sum(), 1 / 60, atol=3e-4)  # midpoint rule on cell edges: O(h)
    gauss = SumOfGaussians(np.array([[0.3, 0.4], [0.7, 0.6]]), 0.15)
    plan = optimal_transport_plan(y, gauss, tol=1e-10)
    assert bool(plan.stats.converged)
    np.testing.assert_allclose(plan.cell_masses, 1 / 60, rtol=1e-9)
