r"""Continuation: solve against smoothed copies of the target first, then sharpen.

Hard targets -- zero-density regions, high contrast -- make the first Newton steps from the
start weights take cells through wildly unbalanced diagrams.  A blurred copy of the target
(``target.smoothed(amount)``, same type) is easy; its optimal weights are a good start for a
less blurred copy, and so on down to the target itself:

    amount_k = amount_0 / 4^k,  k = 0 .. K-1, then the exact target,

every stage warm-started from the previous weights, intermediate stages solved to a loose
tolerance (``max(tol, 1e-3)``) without raising.  Only the final solve uses the caller's ``tol``,
``max_iter`` and ``throw``.
"""

from __future__ import annotations

import jax
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
    can be smoothed and has zero-density regions or a max/min contrast above 10 (checked only on
    concrete arrays; under ``jax.jit`` the default is off)."""
    if not hasattr(target, "smoothed"):
        return False
    hint = getattr(target, "wants_continuation", None)  # a density that knows (e.g. Mesh)
    hint = hint() if callable(hint) else None
    if hint is not None:
        return bool(hint)
    levels = _levels(target)
    if levels is None or isinstance(levels, jax.core.Tracer):
        return False
    levels = np.asarray(levels)
    top, low = float(levels.max()), float(levels.min())
    return bool(low <= 0 or top / low > _CONTRAST)


def schedule(target) -> list[float]:
    """Blur amounts (fractions of the box side), coarsest first."""
    shape = np.shape(_levels(target)) if _levels(target) is not None else (16,)
    finest = 0.5 / max(shape)  # half a grid cell
    amounts = []
    a = 0.125
    while a > finest:
        amounts.append(a)
        a /= 4
    return amounts


def solve_with_continuation(solve, source, target, *, tol=None, max_iter=50, weights=None,
                            verbose=False, capacities=None, throw=True):
    """Solve a sequence of smoothed targets, each warm-starting the next; ``solve`` is
    ``optimal_transport_plan`` without continuation."""
    psi = weights
    loose = 1e-3 if tol is None else max(float(tol), 1e-3)
    for amount in schedule(target):
        plan = solve(source, target.smoothed(amount), tol=loose, max_iter=max_iter, weights=psi,
                     verbose=verbose, capacities=capacities, throw=False)
        if bool(np.all(np.isfinite(np.asarray(plan.weights)))):
            psi = plan.weights
        if verbose:
            print(f"continuation: amount {amount:.3g}, {int(plan.stats.iterations)} Newton steps, "
                  f"error {float(plan.stats.error):.2e}")
    return solve(source, target, tol=tol, max_iter=max_iter, weights=psi, verbose=verbose,
                 capacities=capacities, throw=throw)
