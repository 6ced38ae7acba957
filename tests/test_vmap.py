"""jax.jit and jax.vmap over batches of transport problems.

Batches need problems of the same shapes (n Diracs in d dimensions): jax.vmap stacks arrays.
Problems of different n are solved by grouping them by n (one compilation per n); padding a
problem with zero-mass Diracs is refused with a clear error, since every Dirac needs a cell of
positive mass for Newton to converge.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdot_jax import Box, Capacities, SumOfDiracs, optimal_transport_plan
from sdot_jax.distance import distance

B, N, D = 64, 10, 2  # the done-when: a batch of 64 equals 64 one-by-one solves
CAPS = Capacities.default(N, D)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(11)
    y = jnp.asarray(rng.random((B, N, D)))
    masses = jnp.asarray(rng.uniform(0.5, 1.5, (B, N)))
    return y, masses


def _solve(y, masses):
    plan = optimal_transport_plan(SumOfDiracs(y, masses), Box(), capacities=CAPS, tol=1e-12)
    return plan.weights, plan.cost, plan.barycenters, plan.stats.iterations


def test_vmapped_batch_equals_one_by_one(batch):
    y, masses = batch
    weights, cost, bary, iterations = jax.jit(jax.vmap(_solve))(y, masses)
    assert weights.shape == (B, N) and cost.shape == (B,)
    for b in range(B):
        # Eager, one problem at a time (the retrying path of the public API).
        plan = optimal_transport_plan(SumOfDiracs(y[b], masses[b]), Box(), tol=1e-12)
        np.testing.assert_allclose(np.asarray(weights[b]), np.asarray(plan.weights), atol=1e-11)
        np.testing.assert_allclose(float(cost[b]), float(plan.cost), rtol=1e-11)
        np.testing.assert_allclose(np.asarray(bary[b]), np.asarray(plan.barycenters), atol=1e-11)
        # Each problem stops on its own rule: the iteration counts are the single solve's.
        assert int(iterations[b]) == int(plan.stats.iterations)


def test_vmapped_gradient_of_distance(batch):
    """jax.vmap(jax.grad(distance)) equals the envelope formula problem by problem."""
    y, masses = batch
    loss = lambda y, m: distance(SumOfDiracs(y, m), Box(), squared=True, capacities=CAPS, tol=1e-12)
    grads = jax.jit(jax.vmap(jax.grad(loss)))(y, masses)
    _, _, bary, _ = jax.jit(jax.vmap(_solve))(y, masses)
    a = masses / masses.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(grads), np.asarray(2 * a[..., None] * (y - bary)), atol=1e-10)


def test_padding_with_zero_masses_is_refused(batch):
    y, masses = batch
    padded = masses.at[:, -2:].set(0.0)
    with pytest.raises(Exception, match="masses` must be positive"):
        jax.block_until_ready(jax.jit(jax.vmap(_solve))(y, padded))


def test_brief_example_pattern():
    """The brief's `@jax.jit def loss(p): ... return distance(f, g)`, with the density's parameters
    differentiated (SumOfGaussians when it exists, Box otherwise)."""
    diracs = jnp.asarray(np.random.default_rng(5).uniform(0.1, 0.9, (N, D)))
    try:
        from sdot_jax.measures.gaussians import SumOfGaussians
    except ImportError:
        SumOfGaussians = None
    if SumOfGaussians is not None:
        sigmas = jnp.array([0.3])

        def density(p):
            return SumOfGaussians(p, sigmas)

        p0 = jnp.array([[0.5, 0.5]])
    else:

        def density(p):
            return Box(p, jnp.ones(D))

        p0 = jnp.array([0.02, -0.03])

    @jax.jit
    def loss(p):
        f = density(p)
        g = SumOfDiracs(diracs)
        return distance(f, g, capacities=CAPS, tol=1e-12)

    grad = jax.grad(loss)(p0)
    assert grad.shape == p0.shape and bool(jnp.all(jnp.isfinite(grad)))
    h = 1e-5
    v = jnp.asarray(np.random.default_rng(1).standard_normal(p0.shape))
    fd = (float(loss(p0 + h * v)) - float(loss(p0 - h * v))) / (2 * h)
    assert abs(float(jnp.vdot(grad, v)) - fd) <= 1e-6 * max(abs(fd), 1e-3)


def test_cond_any_keeps_each_problems_branch():
    """Under vmap, `cond_any` keeps the expensive branch's result only where the problem's own
    predicate holds (and equals lax.cond unbatched)."""
    from sdot_jax._batching import cond_any

    def f(x, c):
        return cond_any(x[0] > 0, lambda x, c: 2 * x + c, lambda x, c: x, x, c)

    xs = jnp.array([[1.0, 2.0], [-1.0, 3.0], [2.0, -1.0]])
    expected = jnp.stack([2 * xs[0] + 1, xs[1], 2 * xs[2] + 1])
    np.testing.assert_array_equal(jax.jit(jax.vmap(f, in_axes=(0, None)))(xs, 1.0), expected)
    np.testing.assert_array_equal(jax.vmap(f, in_axes=(0, None))(-jnp.abs(xs), 1.0), -jnp.abs(xs))
    np.testing.assert_array_equal(jax.vmap(jax.vmap(f), in_axes=(0, None))(jnp.stack([xs, -xs]), jnp.ones(3))[0],
                                  expected)
    np.testing.assert_array_equal(f(xs[1], 1.0), xs[1])


@pytest.mark.parametrize("concerned", [0, 1, 3, 9, 13, 20])
@pytest.mark.parametrize("branch", ["cond_any", "for_active"])
def test_batched_branch_runs_only_for_the_problems_concerned(concerned, branch):
    """B = 20 problems, the branch taken by `concerned` of them (at random places): it runs on
    sub-batches of ceil(20 / 8) = 3 problems gathered from those (3 -> 3 runs, 9 -> 9, 1 -> 3:
    a sub-batch padded by repeating one), whichever of the two helpers."""
    from sdot_jax import _batching

    runs = []

    def expensive(x, c):
        jax.debug.callback(lambda v: runs.append(float(v)), x[0])  # once per problem it runs on
        return jnp.sin(x) * c

    def f(x, c):
        return getattr(_batching, branch)(x[0] > 0, expensive, lambda x, c: -x, x, c)

    rng = np.random.default_rng(concerned)
    xs = -rng.uniform(0.5, 1.0, (20, 4))
    taken = rng.permutation(20)[:concerned]
    xs[taken, 0] *= -1
    got = jax.jit(jax.vmap(f, in_axes=(0, None)))(jnp.asarray(xs), 2.0)
    want = np.where((xs[:, 0] > 0)[:, None], 2.0 * np.sin(xs), -xs)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert len(runs) == 3 * -(-concerned // 3)
    assert set(runs) == set(xs[taken, 0])  # the concerned problems only


@pytest.mark.slow  # (47 s: the default suite must stay under 15 minutes on 2 cores)
def test_vmapped_batch_beyond_the_dense_limit_equals_one_by_one():
    """Two problems of 2500 Diracs (multigrid-CG, whose coarse levels Newton keeps across its
    steps, built once per problem): the vmapped solve equals the one-by-one solves."""
    n = 2500
    rng = np.random.default_rng(12)
    y = jnp.asarray(rng.random((2, n, 2)))
    caps = Capacities.default(n, 2)
    solve = lambda y: optimal_transport_plan(SumOfDiracs(y), Box(), capacities=caps, tol=1e-9).weights  # noqa: E731
    weights = jax.jit(jax.vmap(solve))(y)
    for b in range(2):
        np.testing.assert_allclose(np.asarray(weights[b]), np.asarray(jax.jit(solve)(y[b])), atol=1e-10)
