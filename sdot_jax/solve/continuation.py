r"""Continuation: solve against smoothed copies of the target first, then sharpen.

Hard targets -- zero-density regions, high contrast -- make the first Newton steps from the
start weights take cells through wildly unbalanced diagrams.  A blurred copy of the target
(``target.smoothed(amount)``, same type) is easy; its optimal weights are a good start for a
less blurred copy, and so on down to the target itself (amounts from `schedule`), every stage
warm-started from the previous weights, intermediate stages solved to a loose tolerance
(``max(tol, 1e-3)``) without raising.  Only the final solve uses the caller's ``tol``,
``max_iter`` and ``throw``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


_CONTRAST = 10.0  # max/min density ratio above which continuation is used by default


def _levels(target) -> np.ndarray | None:
    """Representative non-negative levels of the density (pixel values, coefficient means...)."""
    for name in ("values",):
        v = getattr(target, name, None)
        if v is not None:
            return v
    c = getattr(target, "coefficients", None)
    if c is not None and hasattr(target, "_cell_means"):
        return target._cell_means()
    return None


def wanted(target) -> bool:
    """Whether ``continuation=None`` (automatic) turns continuation on for this target: when it
    can be smoothed and has zero-density regions or a max/min contrast above 10, checked on
    concrete arrays only: under ``jax.jit`` it is off unless the target can tell from its concrete
    parts (a `Mesh` whose nodes are concrete and whose domain is not convex)."""
    if not hasattr(target, "smoothed"):
        return False
    hint = getattr(target, "wants_continuation", None)  # a density that knows (e.g. Mesh)
    hint = hint() if callable(hint) else None
    if hint is not None:
        return bool(hint)
    levels = _levels(target)
    if levels is None or isinstance(levels, jax.core.Tracer):
        return False
    return _contrast(levels) > _CONTRAST


def _contrast(levels) -> float:
    """max / min of the levels (about 1e300 where some are zero)."""
    levels = np.asarray(levels)
    top = float(levels.max())
    return top / max(float(levels.min()), 1e-300 * top)


def schedule(target) -> list[float]:
    """Blur amounts (fractions of the box side), coarsest first.

    For densities with levels on a grid (pixel values, cell means): from a blur of 4 grid cells
    down to a quarter of a cell by factors of sqrt(2), keeping a stage when its max/min contrast
    is at least twice the last kept stage's and at most half the target's.  The contrast of a
    blurred image grows fast below one cell (random 90:1 pixels: 7.6 at one pixel, 16 at 0.7,
    44 at 0.5, 88 at 0.35), and going
    from one pixel straight to the sharp image left Newton, at n = 1e4, a direction that
    emptied 96% of the cells at t = 1 (steps of 2^-8).  Traced levels (under ``jax.jit``, whose
    contrasts are unknown): 4, 2, 1, 1/2 and 1/4 cells.  Other densities (meshes, whose
    continuation is for non-convex domains): from 0.125 down by factors of 4 while above half of
    1/(number of levels)."""
    levels = _levels(target)
    if levels is None or np.ndim(levels) != target.dim:
        finest = 0.5 / (np.size(levels) if levels is not None else 16)
        return [0.125 / 4**k for k in range(8) if 0.125 / 4**k > finest]
    cell = 1.0 / max(np.shape(levels)[: target.dim])
    if isinstance(levels, jax.core.Tracer):  # contrasts unknown under jax.jit: every other amount
        return [4 * cell * 2.0 ** (-k) for k in range(5)]
    amounts, last, sharp = [], 0.0, _contrast(levels)
    for k in range(9):  # 4 cells ... 1/4 cell
        amount = 4 * cell * 2 ** (-k / 2)
        with jax.ensure_compile_time_eval():  # concrete levels under jax.jit too
            contrast = _contrast(_levels(target.smoothed(amount)))
        if 2 * last <= contrast <= sharp / 2:
            amounts.append(amount)
            last = contrast
    return amounts


def solve_with_continuation(solve, source, target, *, tol=None, max_iter=50, weights=None,
                            verbose=False, capacities=None, throw=True):
    """Solve a sequence of smoothed targets, each warm-starting the next; ``solve`` is
    ``optimal_transport_plan`` without continuation, taking ``hessian_density``: outside
    ``jax.jit`` every stage after the first takes its first Newton directions from the previous
    stage's Laplacian (see `sdot_jax.solve.newton.newton`)."""
    psi, previous = weights, None
    loose = 1e-3 if tol is None else max(float(tol), 1e-3)
    for amount in schedule(target):
        stage = target.smoothed(amount)
        plan = solve(source, stage, tol=loose, max_iter=max_iter, weights=psi, verbose=verbose,
                     capacities=capacities, throw=False, hessian_density=previous)
        psi = _finite_or(plan.weights, psi)
        previous = stage
        if verbose:
            printer = verbose if callable(verbose) else jax.debug.print
            printer("continuation: amount {amount:.3g}, {steps} Newton steps, error {error:.2e}",
                    amount=amount, steps=plan.stats.iterations, error=plan.stats.error)
    return solve(source, target, tol=tol, max_iter=max_iter, weights=psi, verbose=verbose,
                 capacities=capacities, throw=throw, hessian_density=previous)


def _finite_or(new, old):
    """``new`` when all its entries are finite, else ``old`` (``None``: the default start), also
    under ``jax.jit`` (there ``new`` is kept when ``old`` is ``None``: a non-finite start leaves
    the final solve unconverged, which raises unless ``throw=False``)."""
    finite = jnp.all(jnp.isfinite(new))
    if isinstance(finite, jax.core.Tracer):
        return new if old is None else jnp.where(finite, new, old)
    return new if bool(finite) else old
