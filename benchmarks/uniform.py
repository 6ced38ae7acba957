"""Benchmark: uniform density on the unit square/cube, random Diracs, float64 (or float32).

    python benchmarks/uniform.py                      # default cases
    python benchmarks/uniform.py --cases 2:1e4 2:1e5 3:1e3 --tol 1e-6
    python benchmarks/uniform.py --sdot-python /tmp/sdotenv/bin/python
    python benchmarks/uniform.py --cases 2:1e4 --compilation-cache /tmp/xla   # twice: cold, then warm
    python benchmarks/uniform.py --cases 2:2e4 --dtype float32 --tol 1e-3

Prints one row per case: n, d, points, seconds of the solve after compilation (wall and CPU: the
CPU seconds stay meaningful when other work shares the machine), compile seconds
(first call minus second), Newton iterations, diagram evaluations, CG steps per Newton step, worst
relative mass error, peak resident memory of the process (ru_maxrss, cumulative).  With
``--sdot-python``, the reference library ``sdot`` is run on the same data in a subprocess after
each of our cases (alternating), and its seconds and the ratio are added.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

from sdot_jax import Box, enable_compilation_cache
from sdot_jax.api import _newton_jit, _split, grown_after
from sdot_jax.geometry.diagram import Capacities
from sdot_jax.solve.newton import Status
from sdot_jax.solve.start import initial_weights

import _sdot  # noqa: E402 -- benchmarks/_sdot.py, beside this script


def _solve(y, a, density, psi, capacities, tol, max_iter):
    """The public API's eager solve: Newton stops when a fallback stage is short, so that the
    capacities grow at once (`optimal_weights`, for traced calls, goes on halving its steps)."""
    psi, stats, _ = _newton_jit(y, a, density, psi, capacities.traced_budgets(y.shape[0]), tol, max_iter, False, True,
                                None)
    return psi, stats


SDOT_SCRIPT = r"""
import sys, time, json, numpy as np, sdot
y = np.load(sys.argv[1] + "/y.npy"); tol = float(sys.argv[2])
d = y.shape[1]
t, c = time.perf_counter(), time.process_time()
plan = sdot.ot_solve(sdot.SumOfDiracs(y), sdot.Box([0.0] * d, [1.0] * d), tol=tol)
seconds, cpu = time.perf_counter() - t, time.process_time() - c
a = np.asarray(plan.cell_masses) if hasattr(plan, "cell_masses") else None
err = float(np.max(np.abs(a * len(a) / a.sum() - 1))) if a is not None else float("nan")
print(json.dumps({"seconds": seconds, "cpu": cpu, "error": err}))
"""


def points(case: str, n: int, d: int, rng) -> np.ndarray:
    if case == "uniform":
        return rng.random((n, d))
    if case == "clustered":  # concentrated near the line x = 0.5 (2D) / plane x = 0.5 (3D)
        y = rng.random((n, d))
        y[:, 0] = np.clip(0.5 + 0.02 * rng.standard_normal(n), 0, 1)
        return y
    if case == "gaussian":  # drawn from N(1/2, 0.1^2) per axis, clipped to the unit square/cube
        return np.clip(0.5 + 0.1 * rng.standard_normal((n, d)), 0, 1)
    raise ValueError(case)


def ours(y: np.ndarray, tol: float, dtype=jnp.float64):
    n, d = y.shape
    yj = jnp.asarray(y, dtype)
    a = jnp.full((n,), 1.0 / n, dtype)
    density = _split(yj, Box())[1]  # as the public API does: the density in the Diracs' dtype
    psi0 = initial_weights(yj, density)
    caps = Capacities.default(n, d, y, density)
    tol_arr = jnp.asarray(tol, dtype)
    times = []
    psi = psi0
    while True:  # compile, growing capacities as the public API does (from where it stopped)
        t = time.perf_counter()
        psi, stats = _solve(yj, a, density, psi, caps, tol_arr, 50)
        jax.block_until_ready(psi)
        times.append(time.perf_counter() - t)
        print(f"  ours, call {len(times)} (compiles): {times[-1]:.1f} s, status {Status[stats.status]}",
              file=sys.stderr, flush=True)
        if not bool(stats.status == Status.capacity) or len(times) > 12:  # Status.capacity: grow and retry
            break
        caps = grown_after(caps, stats, n)  # as the public API grows them
    # The timed run: from the initial weights, with the capacities the retries settled on.
    t, c = time.perf_counter(), time.process_time()
    psi, stats = _solve(yj, a, density, psi0, caps, tol_arr, 50)
    jax.block_until_ready(psi)
    run, cpu = time.perf_counter() - t, time.process_time() - c
    it = int(stats.iterations)
    steps = np.asarray(stats.linear_steps)[:it]
    return dict(
        # With capacity retries: every call's compilation plus the partial solves that stopped to grow.
        seconds=run, cpu=cpu, compile=sum(times) - run,
        iterations=it, evaluations=int(stats.evaluations), cg=steps.tolist(),
        error=float(np.min(np.asarray(stats.residuals))), status="converged" if bool(stats.converged) else Status[stats.status],
        retries=len(times) - 1, capacities=caps, weights=psi, problem=(yj, a, density, tol_arr),
    )


def sdot_run(python: str, y: np.ndarray, tol: float):
    result = _sdot.run(python, SDOT_SCRIPT, {"y": y}, [str(tol)])
    return result or {"seconds": float("nan"), "cpu": float("nan"), "error": float("nan")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="*", default=["2:1e3", "2:1e4", "2:1e5", "3:1e3", "3:1e4", "2:1e4:clustered"])
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="our working precision (float32 resolves ~0.1 eps n in 2D: 1.5e-3 at 1e5)")
    p.add_argument("--sdot-python", default=None)
    p.add_argument("--compilation-cache", default=None, metavar="DIR",
                   help="keep compiled programs in DIR (a second run of the same cases compiles from there)")
    args = p.parse_args()
    if args.compilation_cache:
        enable_compilation_cache(args.compilation_cache)
    print(f"jax {jax.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}, tol {args.tol}, {args.dtype}")
    head = ("| n | d | points | s (run) | CPU s | s (compile) | Newton | diagrams | CG/step | worst rel. err "
            "| peak RSS MB |")
    if args.sdot_python:
        head += " sdot s | sdot CPU s | sdot err | ours/sdot (wall) | ours/sdot (CPU) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1), flush=True)
    rng = np.random.default_rng(0)
    for spec in args.cases:
        parts = spec.split(":")
        d, n = int(parts[0]), int(float(parts[1]))
        case = parts[2] if len(parts) > 2 else "uniform"
        y = points(case, n, d, rng)
        r = ours(y, args.tol, jnp.dtype(args.dtype))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cg = "dense" if not r["cg"] or max(r["cg"]) == 0 else f"{min(r['cg'])}-{max(r['cg'])}"
        row = (f"| {n:.0e} | {d} | {case} | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['compile']:.1f} | "
               f"{r['iterations']} | {r['evaluations']} | {cg} | {r['error']:.1e} | {rss:.0f} |")
        print(f"  ours, timed run: {r['seconds']:.1f} s", file=sys.stderr, flush=True)
        if args.sdot_python:
            s = sdot_run(args.sdot_python, y, args.tol / n)  # sdot's tol: absolute, masses sum to 1
            print(f"  sdot: {s['seconds']:.1f} s", file=sys.stderr, flush=True)
            row += (f" {s['seconds']:.2f} | {s['cpu']:.2f} | {s['error']:.1e} | {r['seconds'] / s['seconds']:.2f} |"
                    f" {r['cpu'] / s['cpu']:.2f} |")
        print(row, flush=True)
        if r["status"] != "converged" or r["retries"]:
            print(f"  status: {r['status']}, capacity retries {r['retries']}, {r['capacities']}", flush=True)


if __name__ == "__main__":
    main()
