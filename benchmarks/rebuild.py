"""Newton's trial diagrams rebuild each cell from the last diagram's combinatorics instead of
clipping it (`sdot_jax.geometry.rebuild`, built in the twenty-fifth session): its cost per cell,
measured in isolation.

At the optimum of uniform Diracs, the weights are perturbed (1e-3 / n) as a trial step would.
For every cell: (a) clip the box by its neighbours at the optimum, in a loop as the trial
diagram does (`diagram._clip_while`); (b) rebuild it from (a)'s polytope: every vertex as the
intersection of its own planes (3 in 3D, 2 lines in 2D) at the new weights, then test it
against every candidate's half-space.  A cell passes when no vertex violates any half-space;
then (b) is the cell (see `benchmarks/README.md`, twenty-fourth session).  Prints the time per
cell of each, how many cells pass, and the largest difference between the two polytopes'
vertices in the cells that pass.

    python benchmarks/rebuild.py --cases 2:1e5 3:1e4
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sdot_jax import Box, optimal_transport_plan
from sdot_jax.geometry import diagram as dg, rebuild

jax.config.update("jax_enable_x64", True)


def _best(f, *args, reps: int = 5) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def run(d: int, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = jnp.asarray(rng.random((n, d)))
    density = Box().with_dim(d)
    psi = optimal_transport_plan(y, density, tol=1e-6).weights
    caps = dg.Capacities.default(n, d, np.asarray(y), density)
    last = jax.jit(lambda y, psi: dg.power_diagram(y, psi, density, caps, dg.grid_for(y, density, caps)))(y, psi)
    known = jnp.where(last.facet_mass > 0, last.candidates, n)
    known = jnp.take_along_axis(known, jnp.argsort(known >= n, axis=1, stable=True), 1)  # neighbours first
    count = jnp.sum(known < n, 1)
    k = known.shape[1]
    slots = dg.first_pass_vertices(d, caps.vertices)
    trial = psi + 1e-3 * jnp.asarray(rng.standard_normal(n)) / n
    psi_pad = jnp.concatenate([trial, jnp.zeros(1)])
    batch = 4096 if d == 2 else 1024

    def clipped(y, psi_pad, i, index, count):
        y_pad = jnp.concatenate([y, jnp.zeros((1, d))])
        normals, offsets = dg._bisectors(y[i], psi_pad[i], index, y_pad, psi_pad)
        poly = dg._domain(y[i], density, slots, k)
        return dg._clip_while(poly, normals, offsets, count)

    def rebuilt(y, psi_pad, i, index, poly):
        y_pad = jnp.concatenate([y, jnp.zeros((1, d))])
        planes = dg._cell_planes(y[i], psi_pad[i], index, y_pad, psi_pad, density)
        rebuilt, passed = rebuild.rebuilt(rebuild.kept(poly, jnp.array(True)), jnp.arange(k), *planes)
        return rebuilt.vertices, passed

    # (The arrays are arguments: captured, they were constants that XLA folded for minutes.)
    cells = jnp.arange(n)
    clip_all = jax.jit(lambda y, psi_pad, known, count: jax.lax.map(
        lambda a: clipped(y, psi_pad, *a), (cells, known, count), batch_size=batch))
    polys = clip_all(y, psi_pad, known, count)
    rebuild_all = jax.jit(lambda y, psi_pad, known, polys: jax.lax.map(
        lambda a: rebuilt(y, psi_pad, *a), (cells, known, polys), batch_size=batch))
    x, passed = rebuild_all(y, psi_pad, known, polys)
    live = (jnp.arange(slots)[None] < polys.count[:, None]) if d == 2 else polys.valid
    gap = jnp.max(jnp.where(live[..., None], jnp.abs(x - polys.vertices), 0.0), (1, 2))
    return dict(clip=_best(clip_all, y, psi_pad, known, count) / n,
                rebuild=_best(rebuild_all, y, psi_pad, known, polys) / n, passed=int(passed.sum()),
                overflowed=int(jnp.sum(polys.overflow)), gap=float(jnp.max(jnp.where(passed, gap, 0.0))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=["2:1e5", "3:1e4"], help="d:n")
    args = parser.parse_args()
    print("| d | n | clip (us per cell) | rebuild + test (us per cell) | cells passing | overflowed slots "
          "| max vertex gap |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        d, n = case.split(":")
        r = run(int(d), int(float(n)))
        print(f"| {d} | {n} | {r['clip'] * 1e6:.2f} | {r['rebuild'] * 1e6:.2f} | {r['passed']} of {n} | "
              f"{r['overflowed']} | {r['gap']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
