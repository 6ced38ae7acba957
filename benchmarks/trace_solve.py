"""One Newton solve with a line per step (Diracs onto the unit square/cube, tol 1e-6).

    python benchmarks/trace_solve.py 2 1e4 [clustered|gaussian]    # d, n, points (`uniform.points`)

Shows the error, the accepted step length and the diagrams per step: the quickest way to see a
line search that stalls.
"""

import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sdot_jax import Box  # noqa: E402
from sdot_jax.geometry.diagram import Capacities  # noqa: E402
from sdot_jax.solve.implicit import optimal_weights  # noqa: E402
from sdot_jax.solve.newton import Status  # noqa: E402
from sdot_jax.solve.start import initial_weights  # noqa: E402
from uniform import points  # noqa: E402


def main():
    d, n = int(sys.argv[1]), int(float(sys.argv[2]))
    y = jnp.asarray(points(sys.argv[3] if len(sys.argv) > 3 else "uniform", n, d, np.random.default_rng(0)))
    a = jnp.full((n,), 1.0 / n)
    density = Box().with_dim(d)
    caps = Capacities.default(n, d, np.asarray(y), density)
    print(caps, flush=True)
    t = time.perf_counter()
    _, stats = eqx.filter_jit(optimal_weights)(y, a, density, initial_weights(y, density), caps,
                                                jnp.asarray(1e-6), 50, True)
    print(f"{Status[stats.status]} after {int(stats.iterations)} steps, {int(stats.evaluations)} diagrams, "
          f"{time.perf_counter() - t:.1f} s with compilation")


if __name__ == "__main__":
    main()
