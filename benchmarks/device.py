"""Benchmark on JAX's default device (the GPU where there is one): the whole Newton solve and one
power diagram at the optimal weights, in nanoseconds per cell; uniform Diracs on the unit
square/cube, float64 (or float32), from the initial weights to worst relative mass error <= tol.

    python benchmarks/device.py --cases 2:1e5 3:1e5 2:1e6 2:1e5:1 --deadline 420

A case is ``d:n`` or ``d:n:scale``, the scale on the diagram's batch sizes
(`sdot_jax.geometry.batches`; by default the backend's: 1 on the CPU, 16 elsewhere).  The diagram
is timed through the compiled solve itself, started at the optimum: it evaluates one fresh
diagram (grid, candidate ranking, clipping, certificates, integrals) and stops, with no
compilation of its own.  Cases start in the order given while less than ``--deadline`` seconds
have passed, so a run cut short still printed every row it finished.  Peak memory is the device
allocator's ``peak_bytes_in_use`` (cumulative over the run, so give the cases in increasing size);
on the CPU it is the process's resident peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import traceback

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sdot_jax.geometry import batches  # noqa: E402

import uniform  # noqa: E402 -- benchmarks/uniform.py, beside this script


def set_scale(scale: int | None) -> int:
    """Force ``scale`` on the diagram's batch sizes (`batches.FORCED`; None: the backend's own),
    drop the compiled programs (the sizes are read when a function is traced) and return the
    scale in force."""
    jax.clear_caches()
    batches.FORCED = scale
    return batches.scale()


def peak_memory_gb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def time_diagram(problem, caps, psi, reps: int = 3) -> dict:
    """Median seconds of the compiled solve of ``problem`` (``uniform.ours``'s) started at its
    optimum ``psi``: one diagram."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        _, stats = uniform._solve(*problem[:3], psi, caps, problem[3], 50)
        jax.block_until_ready(stats)
        times.append(time.perf_counter() - t)
    if int(stats.evaluations) != 1 or not bool(stats.converged):
        raise RuntimeError(f"the solve from the optimum took {int(stats.evaluations)} diagrams")
    seconds = float(np.median(times))
    return dict(diagram_s=seconds, ns_per_cell=seconds / psi.shape[0] * 1e9)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="*", default=["2:1e5", "3:1e5", "2:1e6", "3:1e6"])
    p.add_argument("--scale", type=int, default=None, help="for cases that name none (default: the backend's)")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="float32 resolves less as n grows: give --tol 1e-3 or so")
    p.add_argument("--deadline", type=float, default=float("inf"), help="start no case after this many seconds")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args()
    start = time.perf_counter()
    print(f"jax {jax.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}, tol {args.tol}, {args.dtype}",
          flush=True)
    if jax.default_backend() == "gpu":
        print(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version",
                              "--format=csv"], capture_output=True, text=True).stdout, flush=True)
    rows = []
    for spec in args.cases:
        if time.perf_counter() - start > args.deadline:
            print(f"deadline: {spec} not started", flush=True)
            continue
        parts = spec.split(":")
        d, n, scale = int(parts[0]), int(float(parts[1])), int(parts[2]) if len(parts) > 2 else args.scale
        try:
            scale = set_scale(scale)
            solve = uniform.ours(np.random.default_rng(0).random((n, d)), args.tol, jnp.dtype(args.dtype))
            row = dict(n=n, d=d, scale=scale, **{k: solve[k] for k in ("seconds", "compile", "iterations",
                                                                       "evaluations", "error", "status")},
                       cg=f"{min(solve['cg'])}-{max(solve['cg'])}" if solve["cg"] else "-")
            if solve["status"] == "converged":  # (else the solve from its weights is no single diagram)
                row.update(time_diagram(solve["problem"], solve["capacities"], solve["weights"]))
            else:
                row.update(diagram_s=float("nan"), ns_per_cell=float("nan"))
            row["peak_gb"] = peak_memory_gb()
            print(f"  {spec}: {json.dumps(row)}", flush=True)
            rows.append(row)
        except Exception:  # noqa: BLE001 -- report and go on to the next case
            traceback.print_exc()
            sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    print(f"\n{jax.devices()[0].device_kind}, {time.perf_counter() - start:.0f} s in all")
    print("| n | d | batch scale | solve s | compile s | Newton | diagrams | CG/step | worst rel. err "
          "| one diagram s | ns/cell | peak GB |")
    print("|" + "---|" * 12)
    for r in rows:
        print(f"| {r['n']:.0e} | {r['d']} | {r['scale']} | {r['seconds']:.2f} | {r['compile']:.1f} | "
              f"{r['iterations']} | {r['evaluations']} | {r['cg']} | {r['error']:.1e} | {r['diagram_s']:.3f} | "
              f"{r['ns_per_cell']:.0f} | {r['peak_gb']:.1f} |")


if __name__ == "__main__":
    main()
