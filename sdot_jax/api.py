"""``optimal_transport_plan``: the public entry point (``distance`` is in ``distance.py``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._jit import jit
from .geometry.diagram import Capacities, grid_for, power_diagram
from .measures._density import AbstractDensity
from .measures.diracs import SumOfDiracs
from .plan import TransportPlan
from .solve import continuation as _continuation
from .solve.implicit import optimal_weights
from .solve.newton import Status, newton
from .solve.start import initial_weights


class NotConvergedError(RuntimeError):
    """Raised when the solve does not reach ``tol``; ``.plan`` holds the partial result."""

    def __init__(self, message: str, plan: TransportPlan):
        super().__init__(message)
        self.plan = plan


def _split(a: Any, b: Any) -> tuple[SumOfDiracs, AbstractDensity]:
    """Which argument is the discrete measure and which the density (any order)."""
    if isinstance(a, AbstractDensity) and not isinstance(b, AbstractDensity):
        a, b = b, a
    if isinstance(a, AbstractDensity):
        raise TypeError("both measures are densities: one must be discrete (SumOfDiracs or an array).")
    if not isinstance(b, AbstractDensity):
        raise TypeError(
            "one measure must be a density (Box, Polytope, ConvexHull, ...); got "
            f"{type(a).__name__} and {type(b).__name__}."
        )
    diracs = a if isinstance(a, SumOfDiracs) else SumOfDiracs(a)
    density = b.with_dim(diracs.dim)
    # One working precision: the density's float arrays follow the Diracs' dtype.
    dtype = diracs.positions.dtype
    density = jax.tree.map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, density)
    return diracs, density


def _is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _check_distinct(y: np.ndarray) -> None:
    order = np.lexsort(y.T[::-1])
    same = np.all(y[order[1:]] == y[order[:-1]], axis=1)
    if np.any(same):
        k = int(np.argmax(same))
        i, j = sorted((int(order[k]), int(order[k + 1])))
        raise ValueError(
            f"Diracs {i} and {j} are at the same position {y[i].tolist()}: a power diagram cannot "
            "separate them. Merge duplicate Diracs (add their masses) before solving."
        )


_solve_jit = jit(optimal_weights)
_newton_jit = jit(newton)

# Capacities that had to grow, remembered per problem size so that the next solve of the same
# size starts with them (and reuses the compiled code) instead of overflowing again.
_grown_capacities: dict[tuple, Capacities] = {}


@jit
def _final_diagram(y, psi, density, capacities: Capacities):
    return power_diagram(y, psi, density, capacities, grid_for(y, density, capacities))


def optimal_transport_plan(
    source: Any,
    target: Any,
    *,
    tol: float | None = None,
    max_iter: int = 50,
    weights: Any = None,
    verbose: bool | Callable = False,
    capacities: Capacities | None = None,
    throw: bool = True,
    continuation: bool | None = None,
) -> TransportPlan:
    r"""Solve semi-discrete optimal transport with the quadratic cost.

    **Arguments:**

    - `source`, `target`: one discrete measure (a `SumOfDiracs`, or an ``(n, d)`` array of
      positions with equal masses) and one density (`Box`, `Polytope`, ...), in either order.
      Both are normalised to total mass 1.
    - `tol`: stop when $\max_i |m_i - a_i| / a_i \le$ `tol`; default 1e-10 in float64, 1e-4 in
      float32.  What float32 resolves coarsens like eps n^(2/d) (2D: ~1e-5 at n = 200, 2.7e-4 at
      2e4, 1.5e-3 at 1e5); a solve stuck there stops with `Status.precision`.
    - `max_iter`: maximum number of Newton steps.
    - `weights`: initial weights $\psi$ (warm start), shape ``(n,)``.
    - `verbose`: print one line per Newton step (or a callable used like ``jax.debug.print``).
    - `capacities`: buffer sizes (`Capacities`); by default sized from the data and grown
      automatically when a cell overflows or is not certified.  Under ``jax.jit`` no retry is
      possible: an overflow raises an error that names the capacity to raise.
    - `throw`: raise `NotConvergedError` when the solve does not converge (the default; under
      ``jax.jit``, ``jax.grad`` or ``jax.vmap``, equinox's runtime error with the status's
      message); otherwise return the partial plan, whose ``stats.status`` says what happened.
    - `continuation`: solve against smoothed copies of the target first, then sharpen (reliable
      on targets with zero-density regions or high contrast); outside ``jax.jit`` each stage
      takes its first Newton directions from the previous stage's Laplacian.  ``None`` decides
      from the target's concrete parts (see `continuation.wanted`).

    **Returns:** a `TransportPlan`.
    """
    diracs, density = _split(source, target)
    if continuation is None:
        continuation = _continuation.wanted(density)
    options = dict(tol=tol, max_iter=max_iter, weights=weights, verbose=verbose,
                   capacities=capacities, throw=throw)
    if continuation:
        return _continuation.solve_with_continuation(_solve, diracs, density, **options)
    return _solve(diracs, density, **options)


def grown_after(capacities: Capacities, stats, n: int) -> Capacities:
    """The capacities to retry with after a ``Status.capacity`` stop that was not the window's:
    the fallback when it was short (the block stage's rows, then, once they are all n cells, the
    exhaustive stage's), else the candidates when cells were uncertified, and the vertex slots
    when a cell overflowed."""
    short = bool(stats.fallback_short)
    fallback_full = capacities.grid is not None and capacities.fallback >= n
    return capacities.grown(vertices=bool(stats.vertex_overflow), fallback=short and not fallback_full,
                            exhaustive=short and fallback_full, candidates=bool(stats.uncertified) and not short, n=n)


def _solve(diracs: SumOfDiracs, density: AbstractDensity, *, tol, max_iter, weights, verbose,
           capacities, throw, hessian_density=None) -> TransportPlan:
    """`optimal_transport_plan` without continuation (``hessian_density``: see `newton`)."""
    y = diracs.positions
    n, d = y.shape
    a = diracs.masses / jnp.sum(diracs.masses)
    a = eqx.error_if(a, jnp.any(a <= 0), "`masses` must be positive (drop the Diracs of mass 0).") if _is_traced(a) else a
    dtype = y.dtype
    if tol is None:
        tol = 1e-10 if dtype == jnp.float64 else 1e-4
    traced = _is_traced((diracs, density))
    if not traced:
        if np.any(np.asarray(a) <= 0):
            raise ValueError("`masses` must be positive: drop the Diracs of mass 0.")
        _check_distinct(np.asarray(y))
    psi = initial_weights(y, density) if weights is None else jnp.asarray(weights, dtype)
    if psi.shape != (n,):
        raise ValueError(f"`weights` must have shape ({n},), got {psi.shape}.")
    memory_key = (n, d, type(density).__name__, str(dtype))
    if capacities is None:
        capacities = Capacities.default(n, d, None if traced else np.asarray(y), density)
        grown = _grown_capacities.get(memory_key)
        if grown is not None:  # the grown counts, on this cloud's own grid (its shape may differ)
            capacities = dataclasses.replace(grown, grid=capacities.grid)
    if capacities.window is None and hasattr(density, "initial_window") and not traced:
        capacities = capacities.grown(window=density.initial_window(n))
    tol_arr = jnp.asarray(tol, dtype)
    first = capacities

    while True:
        if traced:  # differentiable (implicit gradients); the diagram is recomputed below
            psi_out, stats = _solve_jit(y, a, density, psi, capacities, tol_arr, max_iter, verbose)
            break
        # Eager: Newton hands back its last accepted diagram, sparing a second compilation.
        psi_out, stats, diagram = _newton_jit(y, a, density, psi, capacities.traced_budgets(n), tol_arr, max_iter,
                                              verbose, True, hessian_density)
        if not bool(stats.status == Status.capacity):
            psi_out = psi_out - jnp.mean(psi_out)  # the zero-mean gauge of `optimal_weights`
            break
        # Outside jit: grow what failed and carry on from the last accepted weights.
        if bool(stats.window_short):
            grown = capacities.grown(window=min(2 * capacities.window, density.pieces_per_axis()))
            if grown == capacities:
                raise RuntimeError("non-finite cell masses with the whole grid as window: the "
                                   "density or the Diracs hold non-finite values.")
            capacities = _grown_capacities[memory_key] = grown
            psi = psi_out
            continue
        short = bool(stats.fallback_short)
        grown = grown_after(capacities, stats, n)
        if short and grown == capacities:
            raise RuntimeError(
                f"more power cells were left uncertified by the grid neighbour search than the "
                f"fallback stages can redo, with every cell in both fallback stages ({capacities}): "
                "the input is degenerate (e.g. non-finite weights)."
            )
        if grown == capacities or grown.vertices > 4096 or grown.candidates > 8 * first.candidates:
            raise RuntimeError(
                f"power cells could not be computed within {capacities}: the input is degenerate "
                "(e.g. nearly coincident Diracs)."
            )
        capacities = _grown_capacities[memory_key] = grown
        psi = psi_out
    if traced:  # the diagram at the solved weights, searched afresh: may need more than Newton's
        diagram = _final_diagram(y, psi_out, density, capacities)
        stats = _blame_capacity(stats, diagram)
    plan = TransportPlan(SumOfDiracs(y, a), density, psi_out, stats, diagram, capacities)
    if throw:
        if traced:  # the status's own message, raised when the computation runs
            status = jax.lax.stop_gradient(stats.status._value)  # integers: the JVP of the raise is refused
            plan = eqx.branched_error_if(plan, ~stats.converged, status, _NOT_CONVERGED)
        elif not bool(stats.converged):
            raise NotConvergedError(
                f"{_message(stats.status)} (worst relative mass error {float(stats.error):.3e} after "
                f"{int(stats.iterations)} steps; pass throw=False to get the partial plan)",
                plan,
            )
    return plan


def _blame_capacity(stats, diagram):
    """A converged solve's stats, with `Status.capacity` and the diagram's failures where the
    diagram recomputed at its weights is incomplete (another failure keeps its own status)."""
    blame = stats.converged & diagram.incomplete
    return eqx.tree_at(
        lambda s: (s.status, s.vertex_overflow, s.uncertified, s.fallback_short),
        stats,
        (Status.where(blame, Status.capacity, stats.status),
         stats.vertex_overflow | (blame & jnp.any(diagram.overflow)),
         stats.uncertified | (blame & ~jnp.all(diagram.certified)),
         stats.fallback_short | (blame & diagram.short)),
    )


#: What a traced solve raises, by status (its error and step count are not known when the message
#: is chosen).
_NOT_CONVERGED = [f"{message} (pass throw=False to get the partial plan and its `stats`)"
                  for message in Status._index_to_message]


def _message(status: Status) -> str:
    return Status[status]
