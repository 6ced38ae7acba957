"""The Newton linear solve: dense, Jacobi-CG and multigrid-CG against scipy's sparse direct solve
on the Laplacians of random power diagrams (independent reference)."""

import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from sdot_jax import Box
from sdot_jax.geometry.diagram import Capacities, power_diagram
from sdot_jax.solve import linear, multigrid

N = 3000  # above DENSE_LIMIT, so "auto" picks multigrid; grid search off (n <= 4096)


def _laplacian(y, box):
    """The Newton Laplacian of the Voronoi diagram (zero weights) of ``y`` in ``box``."""
    caps = Capacities.default(N, 2)
    diagram = jax.jit(lambda y, p: power_diagram(y, p, box, caps))(y, jnp.zeros(N))
    assert bool(diagram.certified.all())
    return jax.jit(linear.laplacian)(diagram.facet_mass, diagram.candidates, y, 1.0)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.random((N, 2)))
    lap = _laplacian(y, Box().with_dim(2))
    # Reference matrix built independently from the padded lists with scipy.
    w = np.asarray(lap.weights)
    idx = np.asarray(lap.index)
    rows = np.repeat(np.arange(N), idx.shape[1])
    ok = idx.reshape(-1) < N
    W = sp.coo_matrix((w.reshape(-1)[ok], (rows[ok], idx.reshape(-1)[ok])), shape=(N, N)).tocsr()
    W = 0.5 * (W + W.T)
    L = sp.diags(np.asarray(W.sum(1)).ravel()) - W
    rhs = rng.standard_normal(N)
    rhs -= rhs.mean()
    return lap, L.tocsc(), rhs


def _reference(L, rhs):
    # Fix the gauge by grounding node 0, then project to zero mean.
    x = np.zeros(L.shape[0])
    x[1:] = spla.spsolve(L[1:, 1:], rhs[1:])
    return x - x.mean()


def test_matvec_matches_scipy(problem):
    lap, L, rhs = problem
    np.testing.assert_allclose(np.asarray(lap.mv(jnp.asarray(rhs))), L @ rhs, rtol=1e-10, atol=1e-12)
    comp = linear.compact(lap, 2)
    assert not bool(comp.overflow)
    np.testing.assert_allclose(np.asarray(comp.mv(jnp.asarray(rhs))), L @ rhs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["dense", "jacobi", "multigrid"])
def test_solve_matches_scipy(problem, method):
    lap, L, rhs = problem
    ref = _reference(L, rhs)
    x, info = jax.jit(lambda lap, b: linear.solve_with_info(lap, b, 1e-10, method=method))(lap, jnp.asarray(rhs))
    assert bool(info.ok)
    np.testing.assert_allclose(np.asarray(x), ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_an_overflowed_compact_list_falls_back_to_the_padded_operator(problem, monkeypatch):
    """With room for only n of the ~6n facet entries, the compact Laplacian says it overflowed:
    its operator is the padded one, and the solve (Jacobi-preconditioned, with that operator's
    diagonal) still matches scipy."""
    lap, L, rhs = problem
    monkeypatch.setattr(linear, "compact_capacity", lambda n, k, d: n)
    comp = linear.compact(lap, 2)
    assert bool(comp.overflow)
    np.testing.assert_allclose(np.asarray(comp.mv(jnp.asarray(rhs))), L @ rhs, rtol=1e-10, atol=1e-12)
    x, info = jax.jit(lambda lap, b: linear.solve_with_info(lap, b, 1e-10, method="multigrid"))(lap, jnp.asarray(rhs))
    assert bool(info.ok)
    ref = _reference(L, rhs)
    np.testing.assert_allclose(np.asarray(x), ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_multigrid_needs_few_iterations(problem):
    lap, _, rhs = problem
    solve = jax.jit(lambda lap, b, m: linear.solve_with_info(lap, b, 1e-8, method=m)[1].steps, static_argnums=2)
    mg = int(solve(lap, jnp.asarray(rhs), "multigrid"))
    jac = int(solve(lap, jnp.asarray(rhs), "jacobi"))
    assert mg < jac / 4, (mg, jac)


def test_multigrid_on_an_elongated_cloud_needs_as_few_iterations(problem):
    """Seeds uniform in a 10:1 rectangle: the multigrid's aggregates (runs along a Z curve) stay
    round, and CG needs at most 1.5x the iterations of the square (a curve scaled per axis made
    them 10:1: 414-487 CG steps per Newton step at n = 5000, against 8-19)."""
    lap, _, rhs = problem
    y = jnp.asarray(np.random.default_rng(1).random((N, 2)) * np.array([10.0, 1.0]))
    long = _laplacian(y, Box([0.0, 0.0], [10.0, 1.0]))
    solve = jax.jit(lambda lap, b: linear.solve_with_info(lap, b, 1e-8, method="multigrid")[1].steps)
    square, elongated = int(solve(lap, jnp.asarray(rhs))), int(solve(long, jnp.asarray(rhs)))
    assert elongated <= 1.5 * square, (elongated, square)


def test_multigrid_as_lineax_preconditioner(problem):
    lap, L, rhs = problem
    comp = linear.compact(lap, 2)
    precond = linear.preconditioner_operator(comp, lap.order, 2)
    op = lx.FunctionLinearOperator(comp.mv, jax.ShapeDtypeStruct((N,), jnp.float64), lx.positive_semidefinite_tag)
    solver = lx.CG(rtol=1e-9, atol=1e-9 * float(np.abs(rhs).max()), max_steps=500, stabilise_every=None)
    sol = lx.linear_solve(op, jnp.asarray(rhs), solver, options={"preconditioner": precond}, throw=False)
    assert sol.result == lx.RESULTS.successful
    x = np.array(sol.value)
    x -= x.mean()
    ref = _reference(L, rhs)
    np.testing.assert_allclose(x, ref, atol=1e-5 * np.abs(ref).max())
    assert int(sol.stats["num_steps"]) < 100


def test_morton_order_is_a_permutation():
    y = jnp.asarray(np.random.default_rng(1).random((1000, 3)))
    order = np.asarray(multigrid.morton_order(y))
    assert sorted(order.tolist()) == list(range(1000))


@pytest.mark.parametrize("key", ["packed", jnp.int32, jnp.int64, None], ids=["packed", "int32", "int64", "pairs"])
def test_contracted_edges_sum_duplicates_on_every_key_path(key):
    """`multigrid._contract` (coarse operators): duplicates summed, self-loops dropped, rows
    sorted with the padding last, the distinct count reported (also past the capacity); the same
    on its four paths (int64 keys packed with each edge's position, int32 keys, int64 keys, a
    sort of the pairs), against a dict."""
    rng = np.random.default_rng(3)
    m, e = 40, 3000
    rows, cols = rng.integers(0, m, e), rng.integers(0, m, e)
    w = rng.random(e) * (rng.random(e) > 0.1)
    reference = {}
    for a, b, x in zip(rows, cols, w):
        if a != b and x != 0:
            reference[(a, b)] = reference.get((a, b), 0.0) + x
    args = (jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int32), jnp.asarray(w), m)
    r, c, ww, count = (np.asarray(a) for a in multigrid._contract(*args, 2000, key))
    assert int(count) == len(reference) and np.all(np.diff(r) >= 0)
    got = {(a, b): x for a, b, x in zip(r, c, ww) if x != 0}
    assert got.keys() == reference.keys()
    np.testing.assert_allclose([got[p] for p in reference], list(reference.values()), rtol=1e-12)
    assert int(multigrid._contract(*args, 10, key)[3]) == len(reference)  # over capacity: reported


def test_key_choice_packs_only_what_fits_in_63_bits():
    """`multigrid.key_kind` (x64 is on in the tests): packed keys while key and position fit in
    63 bits, on either side of that limit; then int32 keys while m * m fits in them, else int64."""
    assert multigrid.key_kind(25_000, 600_000) == "packed"  # 2D 1e5, first contraction
    assert multigrid.key_kind(250_000, 24_000_000) == "packed"  # 3D 1e6
    assert multigrid.key_kind(2**19 - 1, 2**25 - 1) == "packed"  # (m^2 + 1) 2^25 < 2^63
    assert multigrid.key_kind(2**19, 2**25 - 1) == jnp.int64  # just past it
    assert multigrid.key_kind(40_000, 2**62) == jnp.int32


@pytest.mark.parametrize("room", [None, 1000, 1])
def test_compact_list_is_the_nonzero_entries_in_row_order(problem, monkeypatch, room):
    """The compact list holds each cell's nonzero (cell, candidate) entries, rows in order and
    within a row in candidate order (numpy's row-major nonzero, an independent reference),
    padded with row n - 1 and weight 0; with less room than entries, the first ones that fit and
    the overflow flag."""
    lap, _, _ = problem
    if room is not None:
        monkeypatch.setattr(linear, "compact_capacity", lambda n, k, d: room)
    comp = linear.compact(lap, 2)
    w, idx = np.asarray(lap.weights), np.asarray(lap.index)
    rows, slots = np.nonzero((idx < N) & (w != 0))
    cap = comp.rows.shape[0]
    kept = min(cap, rows.size)
    assert bool(comp.overflow) == (rows.size > cap) and (room is None) != bool(comp.overflow)
    np.testing.assert_array_equal(np.asarray(comp.rows)[:kept], rows[:kept])
    np.testing.assert_array_equal(np.asarray(comp.cols)[:kept], idx[rows, slots][:kept])
    np.testing.assert_array_equal(np.asarray(comp.weights)[:kept], w[rows, slots][:kept])
    assert np.all(np.asarray(comp.rows)[kept:] == N - 1) and np.all(np.asarray(comp.weights)[kept:] == 0)


@pytest.mark.parametrize("width, tail", [(3, 2000), (10, 138), (10, 137), (1, 3000)])
def test_rows_of_fixed_width_give_the_product_of_the_list(width, tail):
    """`multigrid.as_rows`: the first ``width`` entries of each row, the rest in the tail, give
    W x as scipy's sparse product of the same COO list (rows of 0 to 12 entries, some past the
    width; padding with weight 0 last); the tail's overflow is reported when it lacks room."""
    rng = np.random.default_rng(4)
    m = 500
    count = rng.integers(0, 13, m)
    rows = np.repeat(np.arange(m), count)
    cols = rng.integers(0, m, rows.size)
    w = rng.random(rows.size)
    pad = 7
    args = (jnp.asarray(np.concatenate([rows, np.full(pad, m - 1)]), jnp.int32),
            jnp.asarray(np.concatenate([cols, np.zeros(pad, int)]), jnp.int32),
            jnp.asarray(np.concatenate([w, np.zeros(pad)])))
    packed, overflow = multigrid.as_rows(*args, m, width, tail)
    beyond = int(np.sum(np.maximum(count - width, 0)))
    assert bool(overflow) == (beyond > tail)
    x = rng.standard_normal(m)
    reference = sp.coo_matrix((w, (rows, cols)), shape=(m, m)).tocsr() @ x
    got = np.asarray(packed.product(jnp.asarray(x)))
    if beyond <= tail:
        np.testing.assert_allclose(got, reference, rtol=1e-12, atol=1e-12)
    else:  # the entries that fit are right, the others are missing
        assert not np.allclose(got, reference)


def test_an_overflowed_row_tail_falls_back_to_jacobi(problem, monkeypatch):
    """With no room past the rows' width, the hierarchy says it overflowed, and the solve
    (Jacobi-CG on the compact list) still matches scipy; with room, multigrid needs far fewer
    steps."""
    lap, L, rhs = problem
    solve = lambda: jax.jit(lambda lap, b: linear.solve_with_info(lap, b, 1e-10, method="multigrid"))(  # noqa: E731
        lap, jnp.asarray(rhs))
    x, info = solve()
    multigrid_steps = int(info.steps)
    monkeypatch.setattr(multigrid, "tail_capacity", lambda m: 1)
    monkeypatch.setattr(multigrid, "row_width", lambda d: 3)
    comp = linear.compact(lap, 2)
    assert bool(multigrid.build(comp.rows, comp.cols, comp.weights, lap.order, 2).overflow)
    x, info = solve()
    assert bool(info.ok) and int(info.steps) > 4 * multigrid_steps
    ref = _reference(L, rhs)
    np.testing.assert_allclose(np.asarray(x), ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_coarse_levels_kept_from_another_laplacian_still_precondition(problem):
    """`solve_with_info(..., coarse=)` (Newton after its first step): the Laplacian of the power
    diagram at other weights, preconditioned with its own finest level and the coarse levels of
    the zero-weight diagram's solve, still matches scipy, in at most 1.5x the CG steps of its own
    hierarchy (+2).  Coarse levels are rebuilt when ``keep_coarse`` is False or they are flagged
    overflowed (`linear.empty_coarse`, Newton's placeholder)."""
    lap0, _, rhs = problem
    y = jnp.asarray(np.random.default_rng(0).random((N, 2)))  # the fixture's seeds
    caps = Capacities.default(N, 2)
    # Weights that move every cell (random ones as small as the cells empty the smallest).
    psi = 0.5 * jnp.sum((y - jnp.array([0.3, 0.6])) ** 2, -1) + 0.002 * jnp.sin(9 * y[:, 0])
    diagram = jax.jit(lambda y, p: power_diagram(y, p, Box().with_dim(2), caps))(y, psi)
    assert bool(diagram.certified.all()) and float(jnp.min(diagram.mass)) > 0
    lap = jax.jit(linear.laplacian)(diagram.facet_mass, diagram.candidates, y, 1.0)
    w, idx = np.asarray(lap.weights), np.asarray(lap.index)
    ok = idx < N
    W = sp.coo_matrix((w[ok], (np.nonzero(ok)[0], idx[ok])), shape=(N, N)).tocsr()
    W = 0.5 * (W + W.T)
    L = (sp.diags(np.asarray(W.sum(1)).ravel()) - W).tocsc()
    solve = jax.jit(lambda lap, b, coarse, keep: linear.solve_with_info(lap, b, 1e-10, method="multigrid",
                                                                         coarse=coarse, keep_coarse=keep))
    b = jnp.asarray(rhs)
    first = solve(lap0, b, None, True)[1].coarse
    _, own = solve(lap, b, None, True)
    x, kept = solve(lap, b, first, True)
    assert bool(kept.ok) and int(kept.steps) <= 1.5 * int(own.steps) + 2, (int(kept.steps), int(own.steps))
    ref = _reference(L, rhs)
    np.testing.assert_allclose(np.asarray(x), ref, rtol=0, atol=1e-7 * np.abs(ref).max())
    level = lambda info: np.asarray(info.coarse.levels[1].weights)  # noqa: E731
    np.testing.assert_array_equal(level(kept), np.asarray(first.levels[1].weights))
    assert not np.array_equal(level(own), np.asarray(first.levels[1].weights))
    for coarse, keep in ((first, False), (linear.empty_coarse(N, lap.index.shape[1], 2, jnp.float64), True)):
        x, info = solve(lap, b, coarse, keep)
        np.testing.assert_array_equal(level(info), level(own))
        assert int(info.steps) == int(own.steps)
