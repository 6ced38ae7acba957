"""Time the pieces of one power diagram and one Newton linear solve (uniform Diracs, psi = 0 or optimal).

    python benchmarks/profile.py 2 1e4              # d, n
    python benchmarks/profile.py 2 1e4 image 4      # a 32x32 image of 90:1 contrast, window 4
    python benchmarks/profile.py 2 1e4 optimal      # at the optimal weights (solved first)
    python benchmarks/profile.py 2 1e4 optimal prior loops  # ... ranking the optimum's neighbours
                                                    # first and clipping with loops (as Newton does)
    python benchmarks/profile.py 2 1e4 sorted       # Diracs numbered along a Z curve
    python benchmarks/profile.py 2 1e4 clustered optimal   # points of `uniform.points` (or gaussian)

Prints wall and CPU milliseconds (best of 3 after compilation) for the grid build, candidate
search, clipping (by every candidate, and in two where the first pass splits it), integration,
pool certificate, far-field and pool bounds, the first pass (all of these and the far test, as
`power_diagram` runs it), the pool stage (3D), the block stage, the whole diagram and a
multigrid-CG solve.
"""

import functools
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sdot_jax import Box, Image  # noqa: E402
from sdot_jax.geometry import diagram as dg, neighbours  # noqa: E402
from sdot_jax.geometry.gauge import axis_gauge  # noqa: E402
from sdot_jax.geometry.kernels import kernel_for  # noqa: E402
from sdot_jax.solve import linear, multigrid  # noqa: E402
from uniform import points  # noqa: E402


def timeit(name, f, *args, reps=3):
    f = jax.jit(f)
    t = time.perf_counter()
    out = jax.block_until_ready(f(*args))
    compile_s = time.perf_counter() - t
    walls, cpus = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(f(*args))
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    print(f"{name:24s} {min(walls) * 1e3:9.1f} ms wall {min(cpus) * 1e3:9.1f} ms CPU (compile {compile_s:.1f} s)",
          flush=True)
    return out


def main():
    d, n = int(sys.argv[1]), int(float(sys.argv[2]))
    case = next((c for c in ("clustered", "gaussian") if c in sys.argv[3:]), "uniform")
    y = jnp.asarray(points(case, n, d, np.random.default_rng(0)))
    if "sorted" in sys.argv[3:]:
        y = y[multigrid.morton_order(y)]
    psi = jnp.zeros(n)
    density = Box().with_dim(d)
    caps = dg.Capacities.default(n, d, np.asarray(y), density)
    if len(sys.argv) > 3 and sys.argv[3] == "image":  # pixels 1 or 90 at random (issue 4's hard image)
        density = Image(np.where(np.random.default_rng(0).random((32, 32)) < 0.5, 1.0, 90.0))
        window = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4].isdigit() else None
        caps = dg.Capacities(caps.vertices, caps.candidates, caps.fallback, caps.grid, window)
        density = density if window is None else density.with_window(window)
    if "optimal" in sys.argv[3:]:
        from sdot_jax import optimal_transport_plan
        psi = optimal_transport_plan(y, density, tol=1e-6, capacities=caps).weights
    # The stages below run where `power_diagram` runs them: in the axis gauge (the identity for
    # uniform points; applied twice, it is the identity the second time).
    axes = axis_gauge(y, density)
    y, psi, density = axes.seeds(y), axes.weights(y, psi), axes.density(density)
    print(caps)
    prior = None
    if "prior" in sys.argv[3:]:
        last = jax.jit(lambda psi: dg.power_diagram(y, psi, density, caps, neighbours.build_grid(y, *caps.grid)))(psi)
        prior = jnp.where(last.facet_mass > 0, last.candidates, n)
    if caps.grid is None:
        raise SystemExit("n <= 4096 uses the exhaustive search: profile a larger n.")
    grid = timeit("grid build", lambda y: neighbours.build_grid(y, *caps.grid), y)
    k, kernel = caps.candidates, kernel_for(d)
    cand = timeit("candidates", lambda y, psi: neighbours.from_grid(y, psi, grid, k, first=prior), y, psi)
    y_pad, psi_pad = jnp.concatenate([y, jnp.zeros((1, d))]), jnp.concatenate([psi, jnp.zeros(1)])
    batch = dg.CLIP_BATCH[d]
    slots = dg.first_pass_vertices(d, caps.vertices)

    def clip_all(index):
        return jax.lax.map(lambda a: dg.clip_cell(y[a[0]], psi[a[0]], a[1], y_pad, psi_pad, density, slots),
                           (jnp.arange(n), index), batch_size=batch)

    polys = timeit("clipping", clip_all, cand.index)
    loops = "loops" in sys.argv[3:]
    split = dg.split_for(d, k, loops)
    if split:
        timeit(f"clipping in two {split}", lambda index: jax.lax.map(
            lambda a: dg.clip_cell_in_two(y[a[0]], psi[a[0]], a[1], y_pad, psi_pad, density, slots, *split,
                                          loops),
            (jnp.arange(n), index), batch_size=batch), cand.index)
    timeit("integration", lambda p: jax.lax.map(lambda a: kernel.integrate(a[0], density, a[1], k), (p, y),
                                                batch_size=batch), polys)
    timeit("pool certificate", lambda p, cand: jax.lax.map(
        lambda a: dg._cut_by_pool(a[0].vertices, kernel.live_mask(a[0]), jnp.sqrt(kernel.squared_radius(a[0])),
                                  a[1], y[a[1]], psi[a[1]], a[2], a[3], y_pad, psi_pad),
        (p, jnp.arange(n), cand.pool, cand.slot),
        batch_size=max(8, min(batch, dg.PAIRS_PER_BATCH // (cand.pool.shape[1] * slots)))), polys, cand)
    field = timeit("far-field bounds", lambda psi: neighbours.far_field(grid, psi, y), psi)
    bounds = timeit("pool bounds", lambda cand: neighbours.pool_bounds(grid, field, cand.shift), cand)
    first = timeit("first pass", lambda cand: dg._cells(jnp.arange(n), cand, y, psi, density, slots,
                                                       vertex_test=dg._pool_bounds_test(grid, bounds, y, psi),
                                                       split=split, loop=loops, survivors=dg.SURVIVORS.get(d),
                                                       block_test=dg._ring_pool_test(grid, field, y, psi)), cand)
    left = int((~first[4]).sum())
    print("uncertified after the first pass", left)
    out = dg._overflow_to_next_stage(first + (cand.index,))
    if left and d in dg.POOL_STAGE:
        stage = functools.partial(dg._pool_stage, k=2 * k, capacity=caps.vertices, loop=loops)
        out, _ = timeit(f"pool stage ({left} of {caps.fallback} rows)",
                        lambda out: dg._redo_uncertified(stage, out, y, psi, density, grid, field, bounds, cand.shift,
                                                         size=caps.fallback, hopeless=n, cond=jax.lax.cond), out)
        out = dg._overflow_to_next_stage(out)
        left = int((~out[4]).sum())
        print("uncertified after it", left)
    if left:
        stage = functools.partial(dg._block_stage, k=2 * k, capacity=caps.vertices, loop=loops)
        for round_ in (1, 2):
            out, _ = timeit(f"block stage, round {round_} ({left} of {caps.fallback} rows)",
                            lambda out: dg._redo_uncertified(stage, out, y, psi, density, grid, field,
                                                             size=caps.fallback, hopeless=n, cond=jax.lax.cond),
                            out)
            left = int((~out[4]).sum())
            print("uncertified after it", left)
            if not left:
                break
    diagram = timeit("whole diagram", lambda y, psi: dg.power_diagram(y, psi, density, caps, grid, prior=prior,
                                                                      loops=loops), y, psi)
    print("uncertified", int((~diagram.certified).sum()), "overflowed", int(diagram.overflow.sum()))
    lap = linear.laplacian(diagram.facet_mass, diagram.candidates, y, 1.0, multigrid.morton_order(y))
    rhs = jnp.asarray(np.random.default_rng(1).standard_normal(n)) / n
    _, info = timeit("multigrid-CG rtol 1e-6", lambda lap, b: linear.solve_with_info(lap, b, 1e-6), lap, rhs)
    print("CG iterations", int(info.steps))


if __name__ == "__main__":
    main()
