"""Time jax.grad(distance) and a vmapped batch of problems against a Python loop.

    python benchmarks/gradients.py [--batch 64] [--n 100] [--repeat 3]

Compile times are reported apart from run times (best of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sdot_jax import Box, Capacities, SumOfDiracs, optimal_transport_plan  # noqa: E402
from sdot_jax.distance import distance  # noqa: E402


def _time(fn, *args, repeat=3):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return first, best


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    b, n, d = args.batch, args.n, 2
    rng = np.random.default_rng(0)
    ys = jnp.asarray(rng.random((b, n, d)))
    caps = Capacities.default(n, d)
    rows = []

    def loss(y):
        return distance(SumOfDiracs(y), Box(), squared=True, capacities=caps)

    value = jax.jit(loss)
    grad = jax.jit(jax.grad(loss))
    first, best = _time(value, ys[0], repeat=args.repeat)
    rows.append((f"distance, n={n} (jit)", first, best))
    first, best = _time(grad, ys[0], repeat=args.repeat)
    rows.append((f"grad(distance), n={n} (jit)", first, best))
    weights_grad = jax.jit(jax.grad(lambda y: optimal_transport_plan(y, Box(), capacities=caps).barycenters.sum()))
    first, best = _time(weights_grad, ys[0], repeat=args.repeat)
    rows.append((f"grad(barycenters.sum()), n={n} (implicit, jit)", first, best))

    def cost(y):
        return optimal_transport_plan(y, Box(), capacities=caps).cost

    single = jax.jit(cost)
    batched = jax.jit(jax.vmap(cost))
    batched_grad = jax.jit(jax.vmap(jax.grad(loss)))

    def loop(ys):
        return jnp.stack([single(y) for y in ys])

    def loop_grad(ys):
        return jnp.stack([grad(y) for y in ys])

    def eager_loop(ys):
        return jnp.stack([optimal_transport_plan(y, Box()).cost for y in ys])

    first, best = _time(batched, ys, repeat=args.repeat)
    rows.append((f"vmap cost, B={b}, n={n}", first, best))
    first, best = _time(loop, ys, repeat=args.repeat)
    rows.append((f"loop of jitted cost, B={b}", first, best))
    first, best = _time(eager_loop, ys, repeat=1)
    rows.append((f"loop of public API (eager), B={b}", first, best))
    first, best = _time(batched_grad, ys, repeat=args.repeat)
    rows.append((f"vmap grad(distance), B={b}", first, best))
    first, best = _time(loop_grad, ys, repeat=args.repeat)
    rows.append((f"loop of jitted grad(distance), B={b}", first, best))
    np.testing.assert_allclose(np.asarray(batched(ys)), np.asarray(loop(ys)), rtol=1e-10)

    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'first call (s)':>14}  {'best run (s)':>12}")
    for name, first, best in rows:
        print(f"{name:<{width}}  {first:>14.3f}  {best:>12.4f}")


if __name__ == "__main__":
    main()
