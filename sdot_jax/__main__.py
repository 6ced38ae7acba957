"""Demo: ``python -m sdot_jax`` solves a real transport problem and prints what it found."""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from . import Box, Status, enable_compilation_cache, optimal_transport_plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="number of Diracs")
    parser.add_argument("-d", type=int, default=2, help="dimension")
    parser.add_argument("--tol", type=float, default=1e-10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="do not keep compiled programs on disk")
    args = parser.parse_args()
    if not args.no_cache:
        print(f"compiled programs are kept in {enable_compilation_cache()} (--no-cache: not)")

    rng = np.random.default_rng(args.seed)
    # Diracs drawn from a Gaussian blob, about a fifth of them outside the target box [-1, 1]^d.
    y = rng.normal(size=(args.n, args.d)) * 0.6
    target = Box(origin=-np.ones(args.d), frame=2 * np.ones(args.d))
    outside = int(np.sum(np.any(np.abs(y) > 1, axis=1)))
    print(f"sdot_jax demo: {args.n} Diracs ~ N(0, 0.6^2 I) in {args.d}D ({outside} outside the box) "
          f"-> uniform density on [-1, 1]^{args.d}")
    start = time.perf_counter()
    plan = optimal_transport_plan(y, target, tol=args.tol)
    first = time.perf_counter() - start
    start = time.perf_counter()
    plan = optimal_transport_plan(y, target, tol=args.tol)
    second = time.perf_counter() - start
    error = np.max(np.abs(np.asarray(plan.cell_masses) - np.asarray(plan.masses)) / np.asarray(plan.masses))
    print(f"  W2                         = {float(plan.distance):.12f}")
    print(f"  Newton iterations          = {int(plan.stats.iterations)} ({int(plan.stats.evaluations)} diagrams)")
    print(f"  worst relative mass error  = {error:.2e}  (tol {args.tol:g})")
    print(f"  sum of cell masses         = {float(plan.cell_masses.sum()):.15f}")
    print(f"  time                       = {second:.2f} s ({first:.2f} s with compilation)")
    print(f"  status                     = {Status[plan.stats.status]}")


if __name__ == "__main__":
    main()
