"""Benchmark: non-uniform targets (images, splines, Gaussian mixtures) and the hard images.

    python benchmarks/densities.py --cases image:32 image:256 image:1024 spline:32:3 gaussians:8
    python benchmarks/densities.py --cases image:256 --n 1e4 --sdot-python /work/sdot-env/bin/python
    python benchmarks/densities.py --hard --n 1e4          # 90:1 and 20 %-zero images, +- continuation
    python benchmarks/densities.py --hard --continuation off --max-iter 20

Cases (float64, Diracs uniform in the unit square, equal masses, from zero weights):
  ``image:P``        P x P ``Image``, pixel values uniform in [0.5, 1];
  ``spline:P:deg``   ``SplineGrid`` of degree ``deg`` on P x P coefficients uniform in [0.5, 1];
  ``gaussians:K``    ``SumOfGaussians`` of K components, centres in [0.2, 0.8]^2, sigma 0.1,
                     masses uniform in [0.5, 1] (on all of R^2).
Columns: seconds of our solve after compilation (wall, CPU), compile seconds (first call minus
second), Newton iterations, power diagrams evaluated, worst relative mass error, peak RSS.  With
``--sdot-python``, the reference library ``sdot`` solves the same problem in its own interpreter
right after ours (``tol / n``: its tol is absolute on masses summing to 1), twice, and its second
run is timed (the first compiles its kernels).  Its weights are then put through *our* power
diagram: ``sdot err (ours)`` is the worst relative mass error of sdot's solution as we integrate
it, which checks that both libraries solve the same problem (same placement, same indexing).

``--hard``: the two images of issue 4 (32 x 32: random pixels at 1 or 90; 20 % zero pixels and
the others uniform in [0.5, 1]), without and with continuation, with the Newton iterations of each
stage.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sdot_jax import SumOfDiracs, optimal_transport_plan  # noqa: E402
from sdot_jax import api  # noqa: E402
from sdot_jax.geometry.diagram import Capacities  # noqa: E402
from sdot_jax.measures import Image, SplineGrid, SumOfGaussians  # noqa: E402
from sdot_jax.solve import continuation  # noqa: E402

import _sdot  # noqa: E402 -- benchmarks/_sdot.py, beside this script

SDOT_SCRIPT = r"""
import sys, time, json, numpy as np, sdot
folder, kind, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
y = np.load(folder + "/y.npy")
if kind == "image":
    target = lambda: sdot.Image(np.load(folder + "/values.npy"))
elif kind == "spline":
    target = lambda: sdot.SplineGrid(np.load(folder + "/values.npy"), degree=int(sys.argv[4]))
else:
    g = {k: np.load(folder + f"/{k}.npy") for k in ("positions", "sigmas", "weights")}
    target = lambda: sdot.SumOfGaussians(g["positions"], g["sigmas"], g["weights"], support_sigmas=None)
times = []
for _ in range(2):  # the first run compiles the kernels it lacks
    t, c = time.perf_counter(), time.process_time()
    plan = sdot.ot_solve(sdot.SumOfDiracs(y), target(), tol=tol)
    times.append((time.perf_counter() - t, time.process_time() - c))
a = np.asarray(plan.cell_masses)
np.save(folder + "/weights.npy", np.asarray(plan.weights))
print(json.dumps({"seconds": times[1][0], "cpu": times[1][1], "first": times[0][0],
                  "error": float(np.max(np.abs(a * len(a) / a.sum() - 1)))}))
"""


def target(spec: str, rng) -> tuple[object, dict]:
    """The density of a case, and what sdot needs to build the same one."""
    kind, *args = spec.split(":")
    if kind == "image":
        values = 0.5 + 0.5 * rng.random((int(args[0]),) * 2)
        return Image(values), dict(kind="image", values=values)
    if kind == "spline":
        values = 0.5 + 0.5 * rng.random((int(args[0]),) * 2)
        degree = int(args[1]) if len(args) > 1 else 1
        return SplineGrid(values, degree=degree), dict(kind="spline", values=values, degree=degree)
    if kind == "gaussians":
        k = int(args[0])
        g = dict(positions=rng.uniform(0.2, 0.8, (k, 2)), sigmas=np.full(k, 0.1), weights=rng.uniform(0.5, 1.0, k))
        return SumOfGaussians(**g), dict(kind="gaussians", **g)
    raise ValueError(f"unknown case {spec!r}")


def ours(y: np.ndarray, density, tol: float, max_iter: int) -> dict:
    times = []
    for _ in range(2):  # the first call compiles
        t, c = time.perf_counter(), time.process_time()
        plan = optimal_transport_plan(y, density, tol=tol, max_iter=max_iter, continuation=False, throw=False)
        jax.block_until_ready(plan.weights)
        times.append((time.perf_counter() - t, time.process_time() - c))
    s = plan.stats
    return dict(seconds=times[1][0], cpu=times[1][1], compile=times[0][0] - times[1][0],
                iterations=int(s.iterations), evaluations=int(s.evaluations), error=float(s.error),
                converged=bool(s.converged), status=str(s.status))


def worst_error_of(y: np.ndarray, psi: np.ndarray, density) -> float:
    """Worst relative mass error of weights ``psi`` (equal Dirac masses) in our power diagram."""
    n = len(y)
    diagram = api._final_diagram(jnp.asarray(y), jnp.asarray(psi), density, Capacities.default(n, 2, y))
    if not bool(np.all(diagram.certified)) or bool(np.any(diagram.overflow)):
        return float("nan")
    m = np.asarray(diagram.mass)
    return float(np.max(np.abs(m * n / m.sum() - 1)))


def sdot_run(python: str, y: np.ndarray, density, recipe: dict, tol: float) -> dict:
    keys = ("positions", "sigmas", "weights") if recipe["kind"] == "gaussians" else ("values",)
    arrays = {"y": y, **{k: recipe[k] for k in keys}}

    def read(folder, result):  # sdot's weights, put through our diagram
        result["ours"] = worst_error_of(y, np.load(os.path.join(folder, "weights.npy")), density)
        return result

    result = _sdot.run(python, SDOT_SCRIPT, arrays, [recipe["kind"], str(tol), str(recipe.get("degree", 0))], read)
    return result or dict(seconds=float("nan"), cpu=float("nan"), first=float("nan"), error=float("nan"),
                          ours=float("nan"))


def table(args) -> None:
    head = ("| case | n | s (run) | CPU s | s (compile) | Newton | diagrams | worst rel. err | peak RSS MB |")
    if args.sdot_python:
        head += " sdot s | sdot CPU s | sdot first s | sdot err | sdot err (ours) | ours/sdot (wall) | ours/sdot (CPU) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1), flush=True)
    n = int(float(args.n))
    for spec in args.cases:
        rng = np.random.default_rng(0)
        y = rng.random((n, 2))
        density, recipe = target(spec, rng)
        r = ours(y, density, args.tol, args.max_iter)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row = (f"| {spec} | {n:.0e} | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['compile']:.1f} | {r['iterations']} | "
               f"{r['evaluations']} | {r['error']:.1e} | {rss:.0f} |")
        if args.sdot_python:
            s = sdot_run(args.sdot_python, y, density, recipe, args.tol / n)
            row += (f" {s['seconds']:.2f} | {s['cpu']:.2f} | {s['first']:.2f} | {s['error']:.1e} | {s['ours']:.1e} |"
                    f" {r['seconds'] / s['seconds']:.2f} | {r['cpu'] / s['cpu']:.2f} |")
        print(row, flush=True)
        if not r["converged"]:
            print(f"  not converged: {r['status']}", flush=True)


def counted(stages: list):
    """`api._solve` (the solve of one stage), recording each stage's iterations and error."""
    def solve(source, stage_target, **options):
        plan = api._solve(source, stage_target, **options)
        stages.append((int(plan.stats.iterations), int(plan.stats.evaluations), float(plan.stats.error)))
        return plan
    return solve


def hard(args) -> None:
    n = int(float(args.n))
    rng = np.random.default_rng(0)
    y = rng.random((n, 2))
    contrast = np.where(rng.random((32, 32)) < 0.5, 1.0, 90.0)
    zeros = np.where(rng.random((32, 32)) < 0.2, 0.0, 0.5 + 0.5 * rng.random((32, 32)))
    print("| image | continuation | stages: Newton steps / diagrams / error | Newton (all) | diagrams (all) "
          "| final error | status | s (with compilation) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for name, values in [("90:1 contrast", contrast), ("20% zero pixels", zeros)]:
        image = Image(values)
        for use in {"both": (False, True), "off": (False,), "on": (True,)}[args.continuation]:
            stages: list = []
            solve = counted(stages)
            source = SumOfDiracs(jnp.asarray(y))
            options = dict(tol=args.tol, max_iter=args.max_iter, weights=None, verbose=args.verbose,
                           capacities=None, throw=False)
            t = time.perf_counter()
            if use:
                plan = continuation.solve_with_continuation(solve, source, image, **options)
            else:
                plan = solve(source, image, **options)
            seconds = time.perf_counter() - t
            per_stage = ", ".join(f"{i}/{e}/{err:.0e}" for i, e, err in stages)
            print(f"| {name} | {use} | {per_stage} | {sum(s[0] for s in stages)} | {sum(s[1] for s in stages)} | "
                  f"{float(plan.stats.error):.1e} | {'converged' if bool(plan.stats.converged) else plan.stats.status} | "
                  f"{seconds:.0f} |", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="*", default=["image:32", "image:256", "image:1024", "spline:32:1", "spline:32:3",
                                                  "gaussians:8"])
    p.add_argument("--n", default="1e4")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-iter", type=int, default=50)
    p.add_argument("--sdot-python", default=None)
    p.add_argument("--hard", action="store_true", help="the 90:1 and 20%%-zero images, with and without continuation")
    p.add_argument("--continuation", choices=["both", "off", "on"], default="both", help="with --hard")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}, cpus {os.cpu_count()}, tol {args.tol}, n {args.n}")
    hard(args) if args.hard else table(args)


if __name__ == "__main__":
    main()
