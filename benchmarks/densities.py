"""Hard image targets with and without continuation (issue 4 'done when').

    python benchmarks/densities.py [n] [pixels]

Cases: a 90:1 contrast image (random pixels at 1 or 90) and an image with 20 % zero pixels
(the others uniform in [0.5, 1]).  Prints Newton iterations, status and wall time, with
continuation off and on (continuation: iterations summed over the stages, via verbose=False and
the stage plans' stats).
"""

from __future__ import annotations

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

from sdot_jax import optimal_transport_plan  # noqa: E402
from sdot_jax.measures.polynomial_grid import Image  # noqa: E402
from sdot_jax.solve import continuation as cont  # noqa: E402


def counted_solve(y, image, use_continuation):
    counts = []

    def solve(source, target, **options):
        plan = optimal_transport_plan(source, target, continuation=False, **options)
        counts.append((int(plan.stats.iterations), float(plan.stats.error), str(plan.stats.status)))
        return plan

    t = time.perf_counter()
    if use_continuation:
        plan = cont.solve_with_continuation(solve, y, image, throw=False, max_iter=60)
    else:
        plan = solve(y, image, throw=False, max_iter=60)
    return plan, counts, time.perf_counter() - t


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    pixels = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    rng = np.random.default_rng(0)
    y = rng.random((n, 2))
    contrast = np.where(rng.random((pixels, pixels)) < 0.5, 1.0, 90.0)
    zeros = np.where(rng.random((pixels, pixels)) < 0.2, 0.0, 0.5 + 0.5 * rng.random((pixels, pixels)))
    for name, values in [("contrast 90:1", contrast), ("20% zero pixels", zeros)]:
        image = Image(values)
        for use in (False, True):
            plan, counts, seconds = counted_solve(y, image, use)
            print(
                f"{name:16s} n={n} {pixels}x{pixels} continuation={use!s:5s} "
                f"stages(iterations, error)={[(c[0], f'{c[1]:.1e}') for c in counts]} "
                f"total iterations={sum(c[0] for c in counts)} final: {counts[-1][2].split('<')[-1][:40]} "
                f"time {seconds:.1f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
