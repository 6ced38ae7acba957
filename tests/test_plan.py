"""Plan outputs against Monte Carlo and brute force; the Brenier potential; the jitted solve.

Monte Carlo bounds are 5 standard errors (a false alarm has probability below 1e-6 per check).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial

from helpers import assign, gauge, monte_carlo, reference_diagram
from sdot_jax import Box, Capacities, SumOfDiracs, optimal_transport_plan
from sdot_jax.measures.polytope import ConvexHull
from sdot_jax.solve.newton import Status

N2 = 16
SAMPLES = 400_000


@pytest.fixture(scope="module")
def solved():
    rng = np.random.default_rng(40)
    y = rng.random((N2, 2))
    a = rng.random(N2) + 0.5
    plan = optimal_transport_plan(SumOfDiracs(y, a), Box(), tol=1e-12)
    samples = np.random.default_rng(41).random((SAMPLES, 2))
    mc = monte_carlo(y, np.asarray(plan.weights), samples)
    return y, a / a.sum(), plan, samples, mc


def test_cell_masses_sum_to_one_and_match_the_diracs(solved):
    y, a, plan, _, _ = solved
    m = np.asarray(plan.cell_masses)
    np.testing.assert_allclose(m.sum(), 1.0, rtol=1e-14)
    np.testing.assert_allclose(m, a, rtol=1e-12)


def test_masses_barycenters_cost_agree_with_monte_carlo(solved):
    y, a, plan, samples, mc = solved
    assert np.all(np.abs(np.asarray(plan.cell_masses) - mc["mass"]) <= 5 * mc["mass_se"])
    # Barycenters: per coordinate, standard error std/sqrt(count) (uniform on the cell).
    for i in range(N2):
        pts = samples[mc["idx"] == i]
        se = pts.std(0) / np.sqrt(pts.shape[0])
        assert np.all(np.abs(np.asarray(plan.barycenters)[i] - pts.mean(0)) <= 5 * se)
    assert abs(float(plan.cost) - mc["cost"]) <= 5 * mc["cost_se"]


def test_second_order_moments_agree_with_monte_carlo(solved):
    y, a, plan, samples, mc = solved
    mom = np.asarray(plan.second_order_moments)
    tensors = np.asarray(plan.second_order_moment_tensors)
    for i in range(N2):
        z = samples - y[i]
        inside = (mc["idx"] == i)[:, None, None]
        terms = np.where(inside, z[:, :, None] * z[:, None, :], 0.0)  # (S, 2, 2)
        est = terms.mean(0)
        se = terms.std(0) / np.sqrt(SAMPLES)
        assert np.all(np.abs(tensors[i] - est) <= 5 * se + 1e-15)
        np.testing.assert_allclose(mom[i], np.trace(tensors[i]), rtol=1e-14)


def test_assignment_is_the_brute_force_argmin(solved):
    y, a, plan, samples, mc = solved
    x = samples[:20_000]
    np.testing.assert_array_equal(np.asarray(plan.assignment(jnp.asarray(x))), mc["idx"][:20_000])
    np.testing.assert_array_equal(
        np.asarray(plan.backward_map.assignment(jnp.asarray(x))), assign(y, plan.weights, x)
    )


def test_brenier_potential_is_convex_with_gradient_the_dirac_of_the_cell(solved):
    y, a, plan, samples, mc = solved
    u = plan.backward_map.brenier_potential
    rng = np.random.default_rng(42)
    x, z, t = rng.random((2000, 2)), rng.random((2000, 2)), rng.random((2000, 1))
    mid = np.asarray(u(jnp.asarray(t * x + (1 - t) * z)))
    chord = t[:, 0] * np.asarray(u(jnp.asarray(x))) + (1 - t[:, 0]) * np.asarray(u(jnp.asarray(z)))
    assert np.all(mid <= chord + 1e-14)
    grads = np.asarray(jax.vmap(jax.grad(u))(jnp.asarray(x)))
    np.testing.assert_allclose(grads, y[assign(y, plan.weights, x)], atol=1e-15)
    # The backward map is that gradient.
    np.testing.assert_allclose(np.asarray(plan.backward_map(jnp.asarray(x))), grads, atol=1e-15)


def test_whole_solve_under_jit_equals_eager(solved):
    y, a, plan, _, _ = solved
    caps = plan.capacities

    @eqx.filter_jit
    def run(y, a):
        out = optimal_transport_plan(SumOfDiracs(y, a), Box(), tol=1e-12, capacities=caps)
        return out.weights, out.cell_masses, out.barycenters, out.cost, out.stats.iterations

    w, m, b, cost, iterations = run(jnp.asarray(y), jnp.asarray(a))
    assert isinstance(caps, Capacities)
    np.testing.assert_allclose(gauge(w), gauge(plan.weights), atol=1e-14)
    np.testing.assert_allclose(np.asarray(m), np.asarray(plan.cell_masses), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(b), np.asarray(plan.barycenters), atol=1e-14)
    np.testing.assert_allclose(float(cost), float(plan.cost), rtol=1e-13)
    assert int(iterations) == int(plan.stats.iterations)


def test_convex_hull_target_agrees_with_monte_carlo():
    rng = np.random.default_rng(43)
    points = rng.random((10, 2))
    hull = ConvexHull(points)
    y = rng.random((N2, 2))  # some Diracs lie outside the hull
    plan = optimal_transport_plan(y, hull, tol=1e-12)
    assert bool(plan.stats.converged)
    np.testing.assert_allclose(np.asarray(plan.cell_masses), 1 / N2, rtol=1e-12)
    x = np.random.default_rng(44).random((SAMPLES, 2))
    A, b = np.asarray(hull.directions), np.asarray(hull.offsets)
    x = x[np.all(x @ A.T <= b, 1)]
    mc = monte_carlo(y, np.asarray(plan.weights), x)
    assert np.all(np.abs(np.asarray(plan.cell_masses) - mc["mass"]) <= 5 * mc["mass_se"])
    assert abs(float(plan.cost) - mc["cost"]) <= 5 * mc["cost_se"]
    # And the independent qhull diagram at the solver's weights.
    ref = reference_diagram(y, np.asarray(plan.weights), A, b)
    volume = scipy.spatial.ConvexHull(points).volume
    np.testing.assert_allclose(ref["mass"] / volume, 1 / N2, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(plan.barycenters), ref["first"] / ref["mass"][:, None], atol=1e-12)
    np.testing.assert_allclose(float(plan.cost), ref["second"].sum() / volume, rtol=1e-10)


def test_a_diagram_computed_under_jit_with_short_capacities_raises_when_used():
    """Under jax.jit the capacities cannot grow: the diagrams computed there for the plan, the
    implicit gradients and `distance` raise when a cell is left uncertified or overflows (the
    dual value from such a diagram was silently wrong)."""
    import dataclasses

    from sdot_jax.distance import _dual
    from sdot_jax.geometry.diagram import power_diagram

    n = 200
    y = jnp.asarray(np.random.default_rng(0).random((n, 2)))
    short = dataclasses.replace(Capacities.default(n, 2), candidates=4, fallback=1)
    unchecked = jax.jit(lambda y: power_diagram(y, jnp.zeros(n), Box().with_dim(2), short))(y)
    assert bool(unchecked.incomplete) and int(jnp.sum(~unchecked.certified)) > n // 2
    with pytest.raises(Exception, match="could not be certified complete"):
        jax.jit(lambda y: power_diagram(y, jnp.zeros(n), Box().with_dim(2), short).complete().mass)(y).block_until_ready()
    with pytest.raises(Exception, match="could not be certified complete"):
        jax.block_until_ready(_dual(y, jnp.full(n, 1.0 / n), jnp.zeros(n), Box().with_dim(2), short))
    # throw=False: the status says capacity, and implicit gradients through such a diagram are NaN.
    solve = lambda y: optimal_transport_plan(y, Box(), capacities=short, throw=False)
    assert jax.jit(lambda y: solve(y).stats.status)(y) == Status.capacity
    grad = jax.jit(jax.grad(lambda y: solve(y).weights @ jnp.arange(n, dtype=y.dtype)))(y)
    assert bool(jnp.all(jnp.isnan(grad)))
