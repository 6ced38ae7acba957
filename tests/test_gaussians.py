"""SumOfGaussians (2D and 3D): integrals against independent references, truncation bound,
a 3D solve checked by Monte Carlo, gradients against central finite differences.

References are independent of the code under test: tensor Gauss--Legendre rules in collapsed
(Duffy) coordinates on uniformly subdivided triangles / tetrahedra, evaluated in numpy (the
integrand is entire, so the rule converges exponentially; the stated error is checked by
comparing two refinements), and Monte Carlo sampling of the mixture for the cells of a solve.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdot_jax import Capacities, SumOfDiracs, optimal_transport_plan
from sdot_jax.distance import dual_value
from sdot_jax.measures.gaussians import TRUNCATION, SumOfGaussians

RNG = np.random.default_rng(2024)


# ---- independent references ------------------------------------------------------------------


def _gl(n):
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


def _subdivide_triangles(tri, levels):
    tris = [np.asarray(tri, float)]
    for _ in range(levels):
        new = []
        for a, b, c in tris:
            ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
            new += [np.array(t) for t in ([a, ab, ca], [ab, b, bc], [ca, bc, c], [ab, bc, ca])]
        tris = new
    return np.array(tris)


def _subdivide_tetrahedra(tet, levels):
    tets = [np.asarray(tet, float)]
    for _ in range(levels):
        new = []
        for x0, x1, x2, x3 in tets:
            x01, x02, x03 = (x0 + x1) / 2, (x0 + x2) / 2, (x0 + x3) / 2
            x12, x13, x23 = (x1 + x2) / 2, (x1 + x3) / 2, (x2 + x3) / 2
            new += [np.array(t) for t in (
                [x0, x01, x02, x03], [x01, x1, x12, x13], [x02, x12, x2, x23], [x03, x13, x23, x3],
                [x01, x02, x03, x13], [x01, x02, x12, x13], [x02, x03, x13, x23], [x02, x12, x13, x23])]
        tets = new
    return np.array(tets)


def _triangle_rule(tris, n):
    """Points and weights on triangles (T, 3, d), any ambient dimension d (area from the Gram)."""
    x, w = _gl(n)
    u, v = (a.ravel() for a in np.meshgrid(x, x, indexing="ij"))
    wt = np.outer(w, w).ravel() * (1 - u)
    a, e1, e2 = tris[:, 0], tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]
    gram = (e1 * e1).sum(-1) * (e2 * e2).sum(-1) - (e1 * e2).sum(-1) ** 2
    pts = a[:, None] + u[None, :, None] * e1[:, None] + (v * (1 - u))[None, :, None] * e2[:, None]
    return pts.reshape(-1, tris.shape[-1]), (np.sqrt(np.maximum(gram, 0))[:, None] * wt[None]).ravel()


def _tetrahedron_rule(tets, n):
    x, w = _gl(n)
    s, t, r = (a.ravel() for a in np.meshgrid(x, x, x, indexing="ij"))
    wt = np.einsum("i,j,k->ijk", w, w, w).ravel() * (1 - s) ** 2 * (1 - t)
    v0, e = tets[:, 0], tets[:, 1:] - tets[:, :1]
    lam = np.stack([s, (1 - s) * t, (1 - s) * (1 - t) * r], -1)  # (p, 3)
    pts = v0[:, None] + np.einsum("pk,tkd->tpd", lam, e)
    return pts.reshape(-1, 3), (np.abs(np.linalg.det(e))[:, None] * wt[None]).ravel()


def _mixture(mu, sig, w):
    d = mu.shape[1]

    def f(x):
        r2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)
        return (w * (2 * np.pi * sig**2) ** (-d / 2) * np.exp(-r2 / (2 * sig**2))).sum(-1)

    return f


def _moments(pts, wts, f, origin):
    z = pts - origin
    fw = f(pts) * wts
    d = z.shape[1]
    m2 = np.array([[np.sum(z[:, i] * z[:, j] * fw) for j in range(d)] for i in range(d)])
    return np.sum(fw), np.sum(z * fw[:, None], 0), m2


def _check(got, ref, scale, tol):
    """|error| <= tol * total mass * (1, L, L^2) for (m0, m1, m2), L a length scale."""
    assert abs(float(got[0]) - ref[0]) <= tol
    np.testing.assert_allclose(np.asarray(got[1]), ref[1], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(np.asarray(got[2]), ref[2], rtol=0, atol=tol * scale**2)


# ---- integrals over simplices and facets ------------------------------------------------------

TOL = 1e-13  # of the total mass (sum of weights = 1 below); the truncation bound is 1e-12


def _shapes(d):
    """Random simplices of sizes 1e-3 to 20 sigma, some straddling a centre, one with an edge
    passing 1e-9 sigma from a centre (where the former angular quadrature lost 2e-5)."""
    out = []
    for scale in (1e-3, 0.3, 2.0, 6.0) + ((20.0,) if d == 2 else ()):
        for shift in (0.0, 1.0):
            out.append(RNG.uniform(-1, 1, (d + 1, d)) * scale * 0.3 + shift * RNG.uniform(-0.5, 0.5, d))
    near = RNG.uniform(-1, 1, (d + 1, d)) * 0.5
    near[1] = -near[0] * 1.7 + 1e-9 * 0.3  # edge v0-v1 almost through the first centre (0)
    out.append(near)
    return out


@pytest.mark.parametrize("d", [2, 3])
def test_simplex_and_facet_integrals(d):
    mu = np.zeros((2, d))
    mu[1] = 0.4
    sig, w = np.array([0.3, 0.15]), np.array([0.75, 0.25])
    g = SumOfGaussians(mu, sig, w)
    f = _mixture(mu, sig, w)
    moments = jax.jit(jax.vmap(lambda o, x: g.simplex_moments(o, x)))
    facet = jax.jit(jax.vmap(lambda o, x: g.facet_mass(o, x)))
    shapes = _shapes(d)
    origins = RNG.uniform(-0.5, 0.5, (len(shapes), d))
    got = moments(jnp.asarray(origins), jnp.asarray(np.array(shapes) - origins[:, None]))
    facets = facet(jnp.asarray(origins), jnp.asarray(np.array(shapes)[:, :d] - origins[:, None]))
    for k, (simplex, o) in enumerate(zip(shapes, origins)):
        size = np.ptp(simplex, 0).max() / 0.15  # in the smaller sigma
        levels = int(np.clip(np.ceil(np.log2(max(size, 1))), 1, 5 if d == 2 else 2))
        if d == 2:
            ref = _moments(*_triangle_rule(_subdivide_triangles(simplex, levels), 16), f, o)
            ref2 = _moments(*_triangle_rule(_subdivide_triangles(simplex, levels), 20), f, o)
        else:
            ref = _moments(*_tetrahedron_rule(_subdivide_tetrahedra(simplex, levels), 16), f, o)
            ref2 = _moments(*_tetrahedron_rule(_subdivide_tetrahedra(simplex, levels), 20), f, o)
        scale = max(1.0, np.abs(simplex - o).max())
        _check(ref, ref2, scale, TOL / 4)  # the finer reference is converged to well below TOL
        _check([x[k] for x in got], ref2, scale, TOL)
        if d == 2:
            fref = _segment_reference(simplex[:2], f)
        else:
            pts, wts = _triangle_rule(_subdivide_triangles(simplex[:3], levels + 1), 20)
            fref = np.sum(f(pts) * wts)
        assert abs(float(facets[k]) - fref) <= TOL


def _segment_reference(seg, f):
    x, w = _gl(40)
    pieces = 64
    t = ((np.arange(pieces)[:, None] + x[None]) / pieces).ravel()
    pts = seg[0] + t[:, None] * (seg[1] - seg[0])
    return np.sum(f(pts) * np.tile(w, pieces) / pieces) * np.linalg.norm(seg[1] - seg[0])


def test_truncation_bound():
    """Mass outside the bounding box <= 1e-12 of the total (union bound over the d axes)."""
    for d in (2, 3):
        mu = RNG.uniform(0, 1, (3, d))
        sig = np.array([0.05, 0.1, 0.2])
        lo, hi = map(np.asarray, SumOfGaussians(mu, sig).bounding_box())
        for k in range(3):
            lost = sum(0.5 * (math.erfc((hi[a] - mu[k, a]) / (sig[k] * math.sqrt(2)))
                              + math.erfc((mu[k, a] - lo[a]) / (sig[k] * math.sqrt(2)))) for a in range(d))
            assert lost <= TRUNCATION


def test_total_mass_is_the_mass_in_the_box_and_the_cells_sum_to_it():
    """`total_mass` is the mixture's mass in its truncation box (the measure solved for), against
    a product of one-dimensional normal masses from the math module; the cells' masses sum to it
    to rounding, and so a solve reaches tol 1e-13 (with the untruncated sum of weights as total,
    it stalled at 1e-12 relative error with a line-search failure)."""
    rng = np.random.default_rng(12)
    mu, sig, w = rng.uniform(0.3, 0.7, (3, 2)), np.array([0.3, 0.05, 0.2]), np.array([0.5, 0.2, 0.3])
    g = SumOfGaussians(mu, sig, w)
    lo, hi = map(np.asarray, g.bounding_box())
    normal = lambda u: 0.5 * math.erfc(-u / math.sqrt(2))
    ref = sum(w[k] * math.prod(normal((hi[a] - mu[k, a]) / sig[k]) - normal((lo[a] - mu[k, a]) / sig[k])
                               for a in range(2)) for k in range(3))
    assert abs(float(g.total_mass()) - ref) <= 1e-15
    assert 0 < w.sum() - ref <= TRUNCATION
    y = rng.uniform(0.2, 0.8, (12, 2))
    plan = optimal_transport_plan(SumOfDiracs(y), g, tol=1e-13)
    assert float(plan.stats.error) <= 1e-13
    assert abs(float(jnp.sum(plan.diagram.mass)) - ref) <= 1e-14


@pytest.mark.parametrize("d", [2, 3])
def test_derivatives_match_identities(d):
    r"""Autodiff through the quadrature vs exact identities, from the function's own moments:
    $\partial_\mu m_0 = \int (x-\mu)\rho/\sigma^2$, $\partial_\sigma m_0 = \int (|x-\mu|^2/\sigma^3 - d/\sigma)\rho$.
    Also: far from the centre everything vanishes; degenerate simplices give zeros, not NaNs
    (a simplex with all vertices equal gave NaN reverse-mode derivatives in 3D before the fix)."""
    far = RNG.uniform(0, 1, (d + 1, d)) + 5.0
    flat = np.zeros((d + 1, d))
    flat[:, 0] = np.linspace(-0.1, 0.1, d + 1)
    point = np.full((d + 1, d), 0.05)  # padding-like simplex: all vertices equal
    shapes = jnp.asarray(np.array(_shapes(d) + [far, flat, point]))
    origin = jnp.zeros(d)

    @jax.jit
    def run(p, s):
        def m(p, s):
            g = SumOfGaussians(p[None], s[None], jnp.ones(1))
            out = jax.vmap(lambda x: g.simplex_moments(origin, x))(shapes)
            return out[0], out

        return jax.jacrev(m, argnums=(0, 1), has_aux=True)(p, s)  # reverse mode, as the solver uses

    p, s = jnp.asarray(RNG.uniform(-0.1, 0.1, d)), jnp.asarray(0.3)
    (dm_dp, dm_ds), (m0, m1, m2) = run(p, s)
    assert all(np.all(np.isfinite(x)) for x in (dm_dp, dm_ds, m0, m1, m2))
    assert abs(float(m0[-3])) < 1e-15 and np.abs(m1[-3]).max() < 1e-14 and np.abs(m2[-3]).max() < 1e-13
    assert np.abs(m0[-2:]).max() < 1e-15
    z1 = m1 - p * m0[:, None]  # first moments about mu
    z2 = jnp.trace(m2, axis1=1, axis2=2) - 2 * m1 @ p + (p @ p) * m0
    np.testing.assert_allclose(dm_dp, z1 / s**2, rtol=0, atol=1e-13)
    np.testing.assert_allclose(dm_ds, z2 / s**3 - d * m0 / s, rtol=0, atol=1e-12)


def test_smoothed_any_dimension():
    for d in (2, 3):
        g = SumOfGaussians(RNG.uniform(0, 1, (2, d)), [0.1, 0.2], [1.0, 3.0])
        s = g.smoothed(0.125)
        lo, hi = g.bounding_box()
        blur = 0.125 * float(jnp.max(hi - lo))
        assert isinstance(s, SumOfGaussians) and s.dim == d
        np.testing.assert_allclose(s.sigmas, np.sqrt(np.array([0.1, 0.2]) ** 2 + blur**2), rtol=1e-14)
        np.testing.assert_allclose(s.weights, g.weights)


def test_unsupported_dimension_message():
    with pytest.raises(NotImplementedError, match="2D and 3D"):
        SumOfGaussians(np.zeros((2, 4)), 1.0)


# ---- a full 3D solve, cells checked by Monte Carlo --------------------------------------------


@pytest.fixture(scope="module")
def solve_3d():
    y = RNG.uniform(0.1, 0.9, (8, 3))
    mu = np.array([[0.3, 0.4, 0.5], [0.7, 0.6, 0.4]])
    sig, w = np.array([0.15, 0.2]), np.array([1.0, 2.0])
    plan = optimal_transport_plan(y, SumOfGaussians(mu, sig, w), tol=1e-10)
    return y, mu, sig, w, plan


def test_3d_solve_converges_and_monte_carlo_cells(solve_3d):
    y, mu, sig, w, plan = solve_3d
    assert bool(plan.stats.converged) and float(plan.stats.error) <= 1e-10
    np.testing.assert_allclose(plan.cell_masses, 1 / 8, rtol=1e-9)
    # Independent check: sample the mixture, assign to the power cells at the solver's weights.
    rng = np.random.default_rng(7)
    samples = 400_000
    comp = rng.choice(2, samples, p=w / w.sum())
    x = mu[comp] + sig[comp, None] * rng.standard_normal((samples, 3))
    psi = np.asarray(plan.weights)
    owner = np.argmin(((x[:, None] - y[None]) ** 2).sum(-1) - psi[None], 1)
    frac = np.bincount(owner, minlength=8) / samples
    # binomial standard deviation sqrt(p(1-p)/N) = 5.2e-4 at p = 1/8: allow 5 of them
    np.testing.assert_allclose(frac, np.asarray(plan.cell_masses), atol=2.6e-3)
    bary = np.stack([x[owner == i].mean(0) for i in range(8)])
    np.testing.assert_allclose(bary, np.asarray(plan.barycenters), atol=5e-3)


# ---- gradients vs central finite differences ---------------------------------------------------

N_GRAD = 10
CAPS = Capacities.default(N_GRAD, 2)


@pytest.fixture(scope="module")
def gradient_problem():
    rng = np.random.default_rng(3)
    y = jnp.asarray(rng.uniform(0.1, 0.9, (N_GRAD, 2)))
    theta = jnp.asarray(np.c_[rng.uniform(0.3, 0.7, (2, 2)), [0.25, 0.35], [0.8, 1.3]])

    def outputs(theta):
        g = SumOfGaussians(theta[:, :2], theta[:, 2], theta[:, 3])
        plan = optimal_transport_plan(SumOfDiracs(y), g, tol=1e-12, capacities=CAPS)
        return jnp.stack([jnp.sqrt(dual_value(plan)), plan.barycenters.sum()])

    @jax.jit
    def value_and_jacobian(theta):  # one compilation serves both the values and the Jacobian
        out, pullback = jax.vjp(outputs, theta)
        return out, jax.vmap(pullback)(jnp.eye(2, dtype=out.dtype))[0]

    return theta, value_and_jacobian


# (22-46 s, slow: the suite must stay under 15 minutes on 2 cores.  `test_gradients.py` checks the
# Jacobian with respect to all of a mixture's parameters at once, along one random direction.)
@pytest.mark.slow
@pytest.mark.parametrize("group", ["positions", "sigmas", "weights"])
def test_gradients_distance_and_barycenters(gradient_problem, group):
    """d(W2, sum of barycenters) / d(Gaussian positions | sigmas | weights), relative <= 1e-6."""
    theta, value_and_jacobian = gradient_problem
    cols = {"positions": slice(0, 2), "sigmas": slice(2, 3), "weights": slice(3, 4)}[group]
    v = np.zeros(theta.shape)
    v[:, cols] = np.random.default_rng(len(group)).standard_normal(v[:, cols].shape)
    v = jnp.asarray(v)
    h = 1e-4
    at = lambda t: np.asarray(value_and_jacobian(theta + t * v)[0])
    fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
    auto = np.asarray(jnp.tensordot(value_and_jacobian(theta)[1], v, 2))
    np.testing.assert_allclose(auto, fd, rtol=1e-6, atol=1e-9)


def test_start_moves_the_diracs_onto_the_mixture():
    """`initial_weights` for a mixture: the power diagram of the Diracs under the starting
    weights is the Voronoi diagram of the cloud moved and scaled onto the mixture's mean and rms
    radius (closed forms, checked here by sampling the mixture), and its cell masses start closer
    to the Dirac masses than the zero weights' (in total variation: with zero weights the cells
    of the Diracs far from the mixture hold almost nothing)."""
    from sdot_jax.geometry.diagram import power_diagram
    from sdot_jax.solve.start import initial_weights

    rng = np.random.default_rng(11)
    centres, sigmas, masses = rng.uniform(0.3, 0.7, (5, 2)), rng.uniform(0.03, 0.08, 5), rng.uniform(0.5, 1, 5)
    g = SumOfGaussians(centres, sigmas, masses)
    k = rng.choice(5, 200_000, p=masses / masses.sum())
    sample = centres[k] + sigmas[k, None] * rng.standard_normal((200_000, 2))
    mean, radius = g.mean_and_spread()
    np.testing.assert_allclose(mean, sample.mean(0), atol=3e-3)  # Monte Carlo: ~4 standard errors
    np.testing.assert_allclose(radius, np.sqrt(np.mean(np.sum((sample - sample.mean(0)) ** 2, 1))), rtol=1e-2)

    y = rng.random((300, 2))
    psi = np.asarray(initial_weights(jnp.asarray(y), g))
    z = np.asarray(mean) + float(radius) / np.sqrt(np.mean(np.sum((y - y.mean(0)) ** 2, 1))) * (y - y.mean(0))
    x = rng.uniform(-0.5, 1.5, (5000, 2))
    power_owner = np.argmin(((x[:, None] - y[None]) ** 2).sum(-1) - psi[None], 1)
    voronoi_owner = np.argmin(((x[:, None] - z[None]) ** 2).sum(-1), 1)
    np.testing.assert_array_equal(power_owner, voronoi_owner)

    def total_variation(weights):
        m = np.asarray(power_diagram(jnp.asarray(y), jnp.asarray(weights), g, Capacities.default(300, 2)).mass)
        return 0.5 * np.sum(np.abs(m / m.sum() - 1 / 300))

    assert total_variation(psi) < total_variation(np.zeros(300))  # measured: 0.46 against 0.73


_BOX_GRADIENT = """
import json, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from sdot_jax import Box, SumOfGaussians
from sdot_jax.measures.gaussians import _truncation_radius
theta = jnp.array([[0.30059603, 0.68938411, 0.25], [0.41936049, 0.4255944, 0.35]])
probe = jnp.array([[1.0, 2.0], [3.0, 5.0]])
def corners(theta):
    lo, hi = SumOfGaussians(theta[:, :2], theta[:, 2], jnp.ones(2)).bounding_box()
    return jnp.sum(probe * jnp.stack([lo, hi]))
def box_corners(frame):
    lo, hi = Box(jnp.array([0.1, -0.2]), frame).bounding_box()
    return jnp.sum(probe * jnp.stack([lo, hi]))
print(json.dumps([np.asarray(jax.jit(jax.grad(corners))(theta)).tolist(),
                  np.asarray(jax.jit(jax.grad(box_corners))(jnp.array([[1.0, 0.3], [-0.2, 0.9]]))).tolist(),
                  _truncation_radius(2)]))
"""


def test_bounding_box_gradients_do_not_depend_on_how_xla_fuses_them():
    """At XLA's CPU optimisation level 0, ``mu - r sigma`` is rounded differently where
    ``jnp.min`` takes the minimum and where its gradient counts the entries equal to it: the count
    was 0 and the Gaussian mixture's gradients NaN.  The boxes' gradients go to the points that
    attain the extremes: here every extreme is the second Gaussian's (the wider one), and for the
    Box, the corners o + f1 (lowest x), o + f0 (highest x), o + f0 + f1 (highest y)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
    out = subprocess.run([sys.executable, "-c", _BOX_GRADIENT], env=env, capture_output=True, text=True, check=True)
    gaussians, box, r = json.loads(out.stdout.strip().splitlines()[-1])
    # lo = mu_2 - r s_2, hi = mu_2 + r s_2, probed by (1, 2) and (3, 5)
    np.testing.assert_allclose(gaussians, [[0.0, 0.0, 0.0], [1 + 3, 2 + 5, -(1 + 2) * r + (3 + 5) * r]], rtol=1e-12)
    np.testing.assert_allclose(box, [[3.0, 5.0], [1.0, 5.0]], rtol=1e-12)
