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
from sdot_jax.geometry import diagram as dg

jax.config.update("jax_enable_x64", True)


def _best(f, *args, reps: int = 5) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def _box_planes(y_i, density, d: int):
    """The box's half-spaces relative to y_i in the kernels' id order (ids k + 2a: x_a >= lo_a,
    k + 2a + 1: x_a <= hi_a)."""
    lo, hi = density.bounding_box()
    eye = jnp.eye(d)
    normals = jnp.stack([s * eye[a] for a in range(d) for s in (-1.0, 1.0)])
    offsets = jnp.stack([v for a in range(d) for v in (y_i[a] - lo[a], hi[a] - y_i[a])])
    return normals, offsets


def _intersections(normals, offsets, valid):
    """The points where each row's d planes meet (Cramer's rule), ``(V, d)``."""
    if normals.shape[-1] == 2:
        a, b = normals[:, 0], normals[:, 1]
        det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        oa, ob = offsets[:, 0], offsets[:, 1]
        x = jnp.stack([oa * b[:, 1] - ob * a[:, 1], a[:, 0] * ob - b[:, 0] * oa], -1)
    else:
        c0 = jnp.cross(normals[:, 1], normals[:, 2])
        c1 = jnp.cross(normals[:, 2], normals[:, 0])
        c2 = jnp.cross(normals[:, 0], normals[:, 1])
        det = jnp.sum(normals[:, 0] * c0, -1)
        x = offsets[:, 0, None] * c0 + offsets[:, 1, None] * c1 + offsets[:, 2, None] * c2
    return x / jnp.where(valid, det, 1.0)[:, None]


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

    def planes(y, psi_pad, i, index):
        y_pad = jnp.concatenate([y, jnp.zeros((1, d))])
        normals, offsets = dg._bisectors(y[i], psi_pad[i], index, y_pad, psi_pad)
        box_normals, box_offsets = _box_planes(y[i], density, d)
        return jnp.concatenate([normals, box_normals]), jnp.concatenate([offsets, box_offsets])

    def clipped(y, psi_pad, i, index, count):
        y_pad = jnp.concatenate([y, jnp.zeros((1, d))])
        normals, offsets = dg._bisectors(y[i], psi_pad[i], index, y_pad, psi_pad)
        poly = dg._domain(y[i], density, slots, k)
        return dg._clip_while(poly, normals, offsets, count)

    def rebuilt(y, psi_pad, i, index, poly):
        normals, offsets = planes(y, psi_pad, i, index)
        if d == 2:
            live = jnp.arange(slots) < poly.count
            ids = jnp.stack([poly.planes[(jnp.arange(slots) - 1) % jnp.maximum(poly.count, 1)], poly.planes], -1)
        else:
            live, ids = poly.valid, poly.planes
        ids = jnp.clip(ids, 0, normals.shape[0] - 1)
        x = _intersections(normals[ids], offsets[ids], live)
        excess = sum(x[:, None, a] * normals[None, :, a] for a in range(d)) - offsets
        return x, jnp.all(~live[:, None] | (excess <= 1e-9))

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
