"""Damped Newton: quadratic convergence, honest status on failure, jit == eager."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import box_halfspaces, reference_diagram

from sdot_jax import Box, SumOfDiracs, api, optimal_transport_plan
from sdot_jax.geometry.diagram import Capacities
from sdot_jax.solve import linear
from sdot_jax.solve.newton import Status, _mass_defect, newton
from sdot_jax.solve.start import initial_weights

N = 400


@pytest.fixture(scope="module")
def problem():
    y = jnp.asarray(np.random.default_rng(0).random((N, 2)))
    a = jnp.full((N,), 1.0 / N)
    density = Box().with_dim(2)
    return y, a, density, initial_weights(y, density), Capacities.default(N, 2)


_newton = eqx.filter_jit(newton)


def test_quadratic_convergence(problem):
    y, a, density, psi0, caps = problem
    psi, stats, _ = _newton(y, a, density, psi0, caps, jnp.asarray(1e-12), 30, False)
    assert stats.status == Status.converged
    res = np.asarray(stats.residuals)[: int(stats.iterations) + 1]
    assert res[-1] <= 1e-12
    # Once the error is small, each step at least squares it (up to a constant).
    small = [k for k in range(len(res) - 1) if res[k] < 1e-2]
    assert small, res
    for k in small:
        assert res[k + 1] <= 10 * res[k] ** 2 + 1e-13, res
    assert int(stats.evaluations) >= int(stats.iterations) + 1


def test_from_the_quantile_start_every_step_on_the_dth_root_of_the_masses_is_taken_whole():
    """1000 uniform Diracs: with the steps of `_mass_defect` every trial is accepted at t = 1,
    one diagram per step (with a - m, the first step was halved: 6 steps, 8 diagrams)."""
    n = 1000
    y = jnp.asarray(np.random.default_rng(0).random((n, 2)))
    density = Box().with_dim(2)
    _, stats, _ = _newton(y, jnp.full((n,), 1.0 / n), density, initial_weights(y, density), Capacities.default(n, 2),
                          jnp.asarray(1e-10), 30, False)
    assert stats.status == Status.converged
    assert int(stats.evaluations) == int(stats.iterations) + 1, (int(stats.iterations), int(stats.evaluations))


def test_mass_defect_is_newtons_step_on_the_dth_root_of_the_masses():
    """r_i = (a_i^p - m_i^p) / (p m_i^(p-1)), p = 1/d, written out here; a - m near m = a (where
    that form cancels), in 1D, for an empty cell, and where r would be no descent direction."""
    a = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    x = np.array([0.03, 0.5, 1.7, 6.0, 1.2])  # m / a: far below, below and above the target
    m = a * x
    for d in (2, 3):
        p = 1 / d
        want = (a**p - m**p) / (p * m ** (p - 1))
        assert np.dot(a - m, want) >= 0.75 * np.dot(a - m, a - m)  # (a descent direction)
        np.testing.assert_allclose(np.asarray(_mass_defect(jnp.asarray(a), jnp.asarray(m), d)), want, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(_mass_defect(jnp.asarray(a), jnp.asarray(m), 1)), a - m, rtol=1e-15)
    near = a * (1 + np.array([1e-10, -3e-11, 0.0, 2e-9, -1e-12]))
    np.testing.assert_allclose(np.asarray(_mass_defect(jnp.asarray(a), jnp.asarray(near), 2)), a - near,
                               rtol=2e-9, atol=0)
    # Close to the target (where the closed form cancels): the series of h(1 + u) to O(u^3).
    u = np.array([1e-7, -1e-7, 1e-5, -1e-5, 1e-3])
    close = a * (1 + u)
    for d in (2, 3):
        p = 1 / d
        h = 1 + (1 - p) * u / 2 - (1 - p) * (1 + p) * u**2 / 6
        np.testing.assert_allclose(np.asarray(_mass_defect(jnp.asarray(a), jnp.asarray(close), d)), (a - close) * h,
                                   rtol=1e-9)
    empty = m.copy()
    empty[0] = 0.0
    assert np.asarray(_mass_defect(jnp.asarray(a), jnp.asarray(empty), 2))[0] == a[0]
    # The deficit sits in cells far below their targets (h ~ 2 sqrt(m / a)), the excess spread
    # thin: (a - m) . r < 3/4 |a - m|^2, and Newton's own a - m is kept.
    a = np.full(11, 1 / 11)
    m = a * np.concatenate([[1e-3], np.full(10, 1 + 0.999e-1)])
    p = 1 / 2
    r = (a**p - m**p) / (p * m ** (p - 1))
    assert np.dot(a - m, r) < 0.75 * np.dot(a - m, a - m)
    np.testing.assert_array_equal(np.asarray(_mass_defect(jnp.asarray(a), jnp.asarray(m), 2)), a - m)


def test_max_iterations_reported(problem):
    y, a, density, psi0, caps = problem
    psi, stats, _ = _newton(y, a, density, psi0, caps, jnp.asarray(1e-12), 2, False)
    assert stats.status == Status.max_iterations
    assert int(stats.iterations) == 2
    res = np.asarray(stats.residuals)
    assert np.all(np.isfinite(res[:3])) and res[2] < res[0] and np.isinf(res[3:]).all()


def test_throw_false_returns_partial_plan():
    y = np.random.default_rng(1).random((N, 2))
    with pytest.raises(RuntimeError, match="max_iter"):
        optimal_transport_plan(y, Box(), tol=1e-12, max_iter=1)
    plan = optimal_transport_plan(y, Box(), tol=1e-12, max_iter=1, throw=False)
    assert plan.stats.status == Status.max_iterations
    assert plan.weights.shape == (N,) and np.isfinite(float(plan.stats.error))


def test_a_traced_solve_that_does_not_converge_raises_its_status():
    """Under jax.jit, jax.grad and jax.vmap a solve that stops short of `tol` raises the status's
    message when it runs (a traced solve used to hand back its partial weights silently), and
    ``throw=False`` hands back the partial plan with its status."""
    y = jnp.asarray(np.random.default_rng(2).random((30, 2)))
    caps = Capacities.default(30, 2)
    solve = lambda y, throw=True: optimal_transport_plan(y, Box(), tol=1e-12, max_iter=1, capacities=caps,
                                                         throw=throw)
    message = "`max_iter` Newton steps were not enough"
    with pytest.raises(Exception, match=message):
        jax.jit(lambda y: solve(y).weights)(y).block_until_ready()
    with pytest.raises(Exception, match=message):
        jax.grad(lambda y: solve(y).cost)(y).block_until_ready()
    with pytest.raises(Exception, match=message):
        jax.vmap(lambda y: solve(y).weights)(jnp.stack([y, y[::-1]])).block_until_ready()
    assert jax.jit(lambda y: solve(y, throw=False).stats.status)(y) == Status.max_iterations


def test_jit_equals_eager(problem):
    y, a, density, psi0, caps = problem
    eager = optimal_transport_plan(y, Box(), tol=1e-10, capacities=caps)
    jitted = jax.jit(lambda y: optimal_transport_plan(y, Box(), tol=1e-10, capacities=caps).weights)(y)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager.weights), rtol=1e-9, atol=1e-12)


def test_a_solve_in_morton_order_hands_back_every_cell_under_its_own_dirac():
    """Beyond `linear.DENSE_LIMIT` Newton runs in the seeds' Morton order: the weights, and the
    plan's diagram (its rows and its candidates' names), come back in the Diracs' own order.
    Unequal masses (a row left in Morton order would miss its own), and a sample of cells against
    scipy's half-space intersections at the returned weights."""
    rng = np.random.default_rng(5)
    n = 2500
    assert n > linear.DENSE_LIMIT  # (the Morton path)
    y = rng.random((n, 2))
    masses = rng.uniform(0.5, 1.5, n)
    a = masses / masses.sum()
    plan = optimal_transport_plan(SumOfDiracs(jnp.asarray(y), jnp.asarray(masses)), Box(), tol=1e-10)
    assert plan.stats.converged
    np.testing.assert_allclose(np.asarray(plan.cell_masses), a, rtol=1e-9)
    sample = np.arange(0, n, n // 25)
    ref = reference_diagram(y, np.asarray(plan.weights), *box_halfspaces([0, 0], [1, 1]), hessian=True,
                            cells=sample)
    mass = np.asarray(plan.diagram.mass)
    first = np.asarray(plan.diagram.first_moment) + mass[:, None] * y
    np.testing.assert_allclose(mass[sample], ref["mass"][sample], rtol=1e-9)
    np.testing.assert_allclose(first[sample], ref["first"][sample], rtol=1e-9, atol=1e-14)
    for i in sample:
        got = {int(j): float(f) for j, f in zip(np.asarray(plan.diagram.candidates[i]),
                                                 np.asarray(plan.diagram.facet_mass[i])) if j < n and f > 0}
        want = {int(j): float(ref["facet"][i, j]) for j in ref["facet"][i].indices}
        assert got.keys() == want.keys(), i
        np.testing.assert_allclose([got[j] for j in want], list(want.values()), rtol=1e-9)


def test_short_fallback_stops_and_is_grown_without_compiling_again():
    # Too few candidates for most cells: the fallback cannot redo them all.  Newton must stop
    # with `fallback_short` (not crawl through tiny line-search steps), and the eager driver
    # grow the fallback and converge, re-running the compiled solve: the fallback is a budget
    # the driver passes as an array (`Capacities.traced_budgets`), not a compiled-in size.
    n = 32
    y = np.random.default_rng(1).random((n, 2))
    caps = Capacities(vertices=16, candidates=6, fallback=4, grid=None)
    density = Box().with_dim(2)
    # (the driver's own jitted Newton, with the budgets as the driver passes them)
    _, stats, _ = api._newton_jit(jnp.asarray(y), jnp.full((n,), 1.0 / n), density,
                                  initial_weights(jnp.asarray(y), density), caps.traced_budgets(n),
                                  jnp.asarray(1e-12), 30, False, True, None)
    assert stats.status == Status.capacity and bool(stats.fallback_short)
    compiled = []

    def listener(event, duration, fun_name=None, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        plan = optimal_transport_plan(y, Box(), tol=1e-12, capacities=caps)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert plan.capacities.fallback >= 4 * caps.fallback  # grown twice at least
    # Compiled at the driver's first call (its density and masses are built by the API) and again
    # only when a static size doubles (here the candidates, once the fallback covers every
    # cell: 6 -> 12), not at each of the fallback's doublings (4 -> 32: 5 compilations when the
    # budgets were compiled in).
    static_growths = sum(int(np.log2(new / old)) for new, old in ((plan.capacities.candidates, caps.candidates),
                                                                   (plan.capacities.vertices, caps.vertices)))
    assert plan.capacities.fallback // caps.fallback > 2**static_growths
    assert compiled.count("jit(newton)") <= 1 + static_growths, compiled
    np.testing.assert_allclose(np.asarray(plan.cell_masses), 1 / n, rtol=1e-12)


def test_a_short_fallback_grows_the_block_stage_then_the_exhaustive_stage():
    """`api.grown_after`: a short fallback doubles the block stage's rows up to n, then the
    exhaustive stage's (from its default ~2^24 / n), up to n; then nothing grows (the driver
    raises)."""
    from types import SimpleNamespace

    n = 10**5
    stats = SimpleNamespace(fallback_short=True, vertex_overflow=False, uncertified=True)
    caps = Capacities(16, 32, n // 3, ((65, 65), 272))
    seen = [caps]
    while True:
        grown = api.grown_after(seen[-1], stats, n)
        if grown == seen[-1]:
            break
        seen.append(grown)
    assert [c.fallback for c in seen] == [n // 3, 2 * (n // 3), n] + [n] * (len(seen) - 3)
    exhaustive = [c.exhaustive_rows(n) for c in seen[2:]]
    assert exhaustive[0] == 2**24 // n and exhaustive[-1] == n
    assert all(b == min(2 * a, n) for a, b in zip(exhaustive, exhaustive[1:]))
    assert all(c.candidates == 32 and c.vertices == 16 for c in seen)


def test_float32_solve_reaches_its_tolerance_in_exact_arithmetic():
    """float32 Diracs solve in float32 (default tol 1e-4, the README's claim) in 2D and in 3D: every
    output stays float32, and the cells of the float32 weights, recomputed in float64 by scipy
    for the same (float32-representable) positions, have masses within 1e-4 of the targets,
    plus 1e-5 for float32 rounding in the solver's own mass evaluation."""
    for d, n in [(2, 200), (3, 80)]:
        y32 = np.random.default_rng(d).random((n, d)).astype(np.float32)
        plan = optimal_transport_plan(y32, Box())
        assert bool(plan.stats.converged)
        assert plan.weights.dtype == jnp.float32 and plan.cell_masses.dtype == jnp.float32
        ref = reference_diagram(y32.astype(np.float64), np.asarray(plan.weights, np.float64),
                                *box_halfspaces([0.0] * d, [1.0] * d))["mass"]
        assert np.max(np.abs(ref * n - 1)) <= 1e-4 + 1e-5


def test_a_tolerance_below_float32_resolution_stops_at_once_with_the_precision_status():
    """Asked for 1e-9 in float32, Newton cannot get there: masses computed in float32 move by
    ~eps n^(2/d).  It must say so (`Status.precision`, not `max_iterations` after 50 steps of
    t = 2^-24, which rounded (1 - t/2) to 1 and accepted trials that changed nothing), and the
    weights it returns are as good as a float32 solve gets: within 1e-4 in float64 (scipy)."""
    n = 200
    y32 = np.random.default_rng(2).random((n, 2)).astype(np.float32)
    plan = optimal_transport_plan(y32, Box(), tol=1e-9, throw=False)
    assert plan.stats.status == Status.precision
    assert int(plan.stats.iterations) < 10 and int(plan.stats.evaluations) < 60
    ref = reference_diagram(y32.astype(np.float64), np.asarray(plan.weights, np.float64),
                            *box_halfspaces([0.0, 0.0], [1.0, 1.0]))["mass"]
    assert np.max(np.abs(ref * n - 1)) <= 1e-4
    with pytest.raises(Exception, match="working precision"):
        optimal_transport_plan(y32, Box(), tol=1e-9)
