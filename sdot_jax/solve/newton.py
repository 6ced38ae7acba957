r"""Damped Newton for the semi-discrete dual (Kitagawa, Mérigot & Thibert).

Find weights $\psi$ with $m_i(\psi) = a_i$ for every cell.  Each step solves
$L(\psi) \delta = r$ (so that $m(\psi + \delta) \approx m + r$, since $Dm = L$), with $r = a - m(\psi)$
written for the equivalent equations $m_i^{1/d} = a_i^{1/d}$ (`_mass_defect`: the same near the
solution, shorter for cells far below their target), then halves $t$ from 1 until

1. every cell keeps mass at least $\varepsilon_0 = \min(\min_i a_i, \min_i m_i(\psi_0)) / 10$
   (`MASS_FLOOR_FRACTION`; the theory needs any fraction below 1), and
2. $|a - m(\psi + t\delta)| \le (1 - t/2)\, |a - m(\psi)|$.

This is globally convergent and locally quadratic.  The stopping test is the worst relative mass
error $\max_i |m_i - a_i| / a_i \le$ ``tol``.

??? cite "Reference"

    J. Kitagawa, Q. Mérigot, B. Thibert, *Convergence of a Newton algorithm for semi-discrete
    optimal transport*, J. Eur. Math. Soc. 21 (2019).
"""

from __future__ import annotations

import dataclasses

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from .._batching import cond_any, for_active
from ..geometry.diagram import Capacities, Diagram, cell_integrals, grid_for, power_diagram, trial_cells
from . import linear, multigrid


class Status(eqx.Enumeration):
    converged = "converged: the worst relative mass error is below `tol`."
    max_iterations = "not converged: `max_iter` Newton steps were not enough; raise `max_iter`."
    line_search = (
        "not converged: the line search could not decrease the mass error (t < 2^-30). The target "
        "may have zero-density regions or disconnected support: try `continuation=True`."
    )
    precision = (
        "not converged: the mass error stopped decreasing at what the working precision can resolve "
        "(worst relative error below PRECISION_FLOOR * eps * n^(2/d)); in 2D float32 gets to ~1e-5 at "
        "n = 200, 2.7e-4 at n = 2e4, 1.5e-3 at n = 1e5: raise `tol` (in float32: or solve in float64)."
    )
    linear_solve = "not converged: the Newton linear system could not be solved."
    capacity = (
        "a power cell overflowed its padded buffers or could not be certified complete: retry with "
        "larger `capacities` (done automatically outside jax.jit)."
    )


class SolveStats(eqx.Module):
    """How the solve went.  ``residuals[k]`` is the worst relative mass error after k steps
    (inf past the last one)."""

    status: Status
    iterations: Int[Array, ""]
    evaluations: Int[Array, ""]  # power diagrams computed, line searches included
    residuals: Float[Array, " max_iter+1"]
    vertex_overflow: Bool[Array, ""]  # when status is `capacity`: what failed
    uncertified: Bool[Array, ""]
    linear_steps: Int[Array, " max_iter+1"]  # CG iterations of the solve after step k (0: dense)
    fallback_short: Bool[Array, ""]
    window_short: Bool[Array, ""]  # a cell spanned more grid pieces than the density's window

    @property
    def converged(self) -> Bool[Array, ""]:
        return self.status == Status.converged

    @property
    def error(self) -> Float[Array, ""]:
        return jnp.min(self.residuals)


class _State(eqx.Module):
    psi: Float[Array, " n"]  # last accepted weights
    diagram: Diagram  # their power diagram
    direction: Float[Array, " n"]
    t: Float[Array, ""]  # step being tried
    tries: Int[Array, ""]  # diagrams evaluated in the current line search
    eps0: Float[Array, ""]
    residuals: Float[Array, " r"]
    linear_steps: Int[Array, " r"]
    iteration: Int[Array, ""]
    evaluations: Int[Array, ""]
    status: Status
    done: Bool[Array, ""]
    vertex_overflow: Bool[Array, ""]
    uncertified: Bool[Array, ""]
    fallback_short: Bool[Array, ""]
    window_short: Bool[Array, ""]
    smoothed: Bool[Array, ""]  # the direction came from the smoothed density's Laplacian
    coarse: multigrid.Hierarchy | None  # the last direction's multigrid coarse levels (`linear.SolveInfo`)


SMOOTHED_HESSIAN_UNTIL = 1e-2  # rms relative mass error below which the true Hessian is used
GROW_BELOW_STEP = 1 / 8  # see `newton`'s stop_when_short
#: Below PRECISION_FLOOR * eps * n^(2/d), the worst relative mass error is at what the working
#: precision resolves (2D float32, uniform Diracs, the error Newton gets stuck at: 2.7e-4 for
#: n = 2e4, 1.5e-3 for 1e5, i.e. 0.11 and 0.13 eps n; float64 recomputes the same error at those
#: weights; 1D float32, n = 300: 1.05e-2, 0.98 eps n^2).  A line search that fails there gives up
#: after FLOOR_TRIES trials (elsewhere 30: steps down to 2^-11 are still tried, hard targets take
#: steps of 2^-8) and reports `Status.precision`.
PRECISION_FLOOR = 1.0
FLOOR_TRIES = 12
#: The line search's floor on every cell's mass, as a fraction of the smallest target or starting
#: mass.  Kitagawa-Merigot-Thibert take 1/2; at 1/10 the trials at t = 1 that leave one cell at a
#: few percent of its target are kept (1e5 uniform Diracs in 2D: 7 -> 6 diagrams; the 90:1 image
#: without continuation, 2e3 Diracs: 33 -> 27), and no other solve measured changed.
MASS_FLOOR_FRACTION = 0.1
SMOOTHED_MIN_STEP = 1 / 8  # a smoothed direction not accepted down to this t gives way to the true one


def _relative_error(mass, a):
    return jnp.max(jnp.abs(mass - a) / a)


def newton(
    y: Float[Array, "n d"],
    a: Float[Array, " n"],
    density,
    psi0: Float[Array, " n"],
    capacities: Capacities,
    tol: Float[Array, ""],
    max_iter: int,
    verbose: bool | Callable = False,
    stop_when_short: bool = False,
    hessian_density=None,
) -> tuple[Float[Array, " n"], SolveStats, Diagram]:
    r"""Run damped Newton from ``psi0``; ``a`` must sum to 1 (the density is normalised here).
    Returns the last accepted weights, how the solve went and their power diagram, in the
    seeds' order (beyond ``linear.DENSE_LIMIT`` seeds the solve itself runs in their Morton order).

    One ``while_loop`` evaluates one power diagram per pass (the first pass at ``psi0``, then
    every line-search trial), so the diagram is traced and compiled once.  A trial whose diagram
    overflowed or could not be certified is rejected like a trial that does not decrease the
    error; if the line search then gives up, the status is ``capacity`` (the driver grows the
    capacities and restarts from the last accepted weights).  With ``stop_when_short``, a trial
    with more uncertified cells than the fallback stages can redo (at the first pass, or at a
    step t <= ``GROW_BELOW_STEP``: longer trials are more likely wild ones, rejected anyway)
    stops the solve at once with status ``capacity`` and ``fallback_short``, for the driver to grow ``Capacities.fallback``
    (rejecting such trials shrinks the steps until the trials are easy: on hard images Newton
    crawled at steps of 2^-8).  Likewise, for grid densities, a trial whose masses are not
    finite (a cell spanning more grid pieces than the density's ``window``) stops the solve with
    ``window_short``, for the driver to grow ``Capacities.window``.

    ``hessian_density`` (a smoothed copy of ``density``, from continuation): while the
    root-mean-square relative mass error exceeds ``SMOOTHED_HESSIAN_UNTIL``, the direction solves
    $L_s \delta = a - m(\psi)$ with $L_s$ the Laplacian of the *smoothed* density's facets (one
    more diagram per step); when the line search rejects it down to ``SMOOTHED_MIN_STEP``, the true
    direction from the same point takes over for that step.  On a sharp image the true $L$ only
    sees the pixel a facet lies in and misses the 90x denser one a fraction of a cell away: at
    n = 1e4 its direction emptied 2590 cells at t = 1/4 and was accepted at t = 1/64, where the
    smoothed one (0.5 pixel) is accepted at t = 1/2.  Near the solution the true $L$ takes over
    (quadratic convergence).
    """
    n = y.shape[0]
    if n <= linear.DENSE_LIMIT:
        psi, stats, diagram = _newton(y, a, density, psi0, capacities, tol, max_iter, verbose, stop_when_short,
                                      hessian_density)
        return psi, stats, dataclasses.replace(diagram, cells=None)  # (the cells are for the next trial only)
    # Solved in the seeds' Morton order (`multigrid.morton_order`), in which the multigrid's
    # aggregates are runs of consecutive seeds and every gather of the diagram and of the
    # Laplacian reads nearby memory (2D 1e5 uniform seeds: Newton's trial diagram 0.67 -> 0.60 s,
    # the solve 9.07 -> 7.78 s; 3D 1e5, whose cells cost more than their gathers: no change).
    order = multigrid.morton_order(jax.lax.stop_gradient(y))
    psi, stats, diagram = _newton(y[order], a[order], density, psi0[order], capacities, tol, max_iter, verbose,
                                  stop_when_short, hessian_density)
    inverse = jnp.zeros((n,), order.dtype).at[order].set(jnp.arange(n, dtype=order.dtype))
    return psi[inverse], stats, _relabelled(diagram, order, inverse)


def _relabelled(diagram: Diagram, order: Int[Array, " n"], inverse: Int[Array, " n"]) -> Diagram:
    """The diagram of seeds ``y[order]`` as that of the seeds ``y``: rows back in place and
    candidates renamed (padding n stays n)."""
    names = jnp.concatenate([order, jnp.array([order.shape[0]], order.dtype)])
    back = lambda per_cell: per_cell[inverse]  # noqa: E731
    return Diagram(back(diagram.mass), back(diagram.first_moment), back(diagram.second_moment),
                   back(diagram.facet_mass), names[back(diagram.candidates)].astype(diagram.candidates.dtype),
                   back(diagram.certified), back(diagram.overflow), diagram.short)


def _newton(y, a, density, psi0, capacities, tol, max_iter, verbose, stop_when_short, hessian_density):
    """`newton` in the seeds' own order: Morton order beyond ``linear.DENSE_LIMIT`` (see `newton`)."""
    n, d = y.shape
    total = density.total_mass()
    stop_on_nan = stop_when_short and hasattr(density, "with_window")
    grid = grid_for(y, density, capacities)
    order = jnp.arange(n, dtype=jnp.int32) if n > linear.DENSE_LIMIT else None  # (the seeds' Morton order)
    k = capacities.candidates
    dtype = a.dtype
    floor = PRECISION_FLOOR * jnp.finfo(dtype).eps * n ** (2 / d)

    state = _State(
        psi=psi0,
        diagram=Diagram(
            mass=jnp.zeros((n,), dtype),
            first_moment=jnp.zeros((n, d), dtype),
            second_moment=jnp.zeros((n, d, d), dtype),
            facet_mass=jnp.zeros((n, k), dtype),
            candidates=jnp.full((n, k), n, jnp.int32),
            certified=jnp.zeros((n,), bool),
            overflow=jnp.zeros((n,), bool),
            short=jnp.array(False),
            cells=trial_cells(n, d, density, capacities),
        ),
        direction=jnp.zeros((n,), dtype),
        t=jnp.zeros((), dtype),  # pass 0 "tries" psi0 itself and always accepts it
        tries=jnp.array(0),
        eps0=jnp.zeros((), dtype),
        residuals=jnp.full((max_iter + 1,), jnp.inf, dtype),
        linear_steps=jnp.zeros((max_iter + 1,), jnp.int32),
        iteration=jnp.array(-1),
        evaluations=jnp.array(0),
        status=Status.max_iterations,
        done=jnp.array(False),
        vertex_overflow=jnp.array(False),
        uncertified=jnp.array(False),
        fallback_short=jnp.array(False),
        window_short=jnp.array(False),
        smoothed=jnp.array(False),
        coarse=None if order is None else linear.empty_coarse(n, k, d, dtype),
    )

    def body(s: _State) -> _State:
        initial = s.iteration < 0
        # False only in the lanes of a vmapped batch whose problem has finished (the loop runs
        # until every problem has, and discards those lanes): they skip the diagram and the solve.
        active = ~s.done
        psi_t = s.psi + s.t * s.direction
        diagram = for_active(active, _evaluate, _unchanged, s.diagram, y, psi_t, ~initial, density, capacities, grid)
        m_t = diagram.mass / total
        eps0 = jnp.where(initial, MASS_FLOOR_FRACTION * jnp.minimum(jnp.min(a), jnp.min(m_t)), s.eps0)
        # A cell clipped by only some of the seeds contains the true cell, so an uncertified mass
        # is an upper bound: one below eps0 rejects the trial whatever the missing seeds would
        # cut, and no capacity is blamed (the Gaussian mixture at n = 1e4: the trials at t = 1
        # ... 1/32 emptied cells and left up to 8538 cells uncertified).  (An overflowed cell's
        # mass is inf: `diagram._cells`.)
        doomed = ~initial & jnp.any(m_t < eps0)
        overflowed = jnp.any(diagram.overflow) & ~doomed
        uncertain = ~jnp.all(diagram.certified) & ~doomed
        # A trial at a long step that is short of fallback or window is most likely a wild one
        # that the line search rejects anyway: stop to grow capacities only from GROW_BELOW_STEP.
        may_grow = (initial | (s.t <= GROW_BELOW_STEP)) & ~doomed
        window_short = jnp.any(jnp.isnan(m_t)) & stop_on_nan & may_grow  # (overflowed cells: inf)
        failed = overflowed | uncertain | window_short
        # Strictly: once t / 2 is below the working precision's resolution, (1 - t / 2) rounds to
        # 1 and a trial that changed nothing would pass (float32 at its floor: 50 steps of 2^-24).
        norm_t, norm_0 = jnp.linalg.norm(m_t - a), jnp.linalg.norm(s.diagram.mass / total - a)
        decrease = (norm_t <= (1 - s.t / 2) * norm_0) & (norm_t < norm_0)
        accepted = ~failed & (initial | ((jnp.min(m_t) >= eps0) & decrease))
        tries = s.tries + 1
        short = diagram.short & stop_when_short & may_grow
        at_floor = ~initial & (_relative_error(s.diagram.mass / total, a) <= floor)
        out_of_tries = (tries >= 30) | (at_floor & (tries >= FLOOR_TRIES))
        gave_up = ~accepted & (initial | out_of_tries | short | window_short)
        err = _relative_error(m_t, a)
        iteration = jnp.where(accepted, s.iteration + 1, s.iteration)
        converged = accepted & (err <= tol)
        out_of_steps = accepted & (iteration >= max_iter)
        finished = converged | out_of_steps | gave_up

        # The next direction, when a new point was accepted and we carry on, or when a smoothed
        # direction failed down to SMOOTHED_MIN_STEP (then the true one, from the same point).
        base = jax.tree.map(lambda new, old: jnp.where(accepted, new, old), diagram, s.diagram)
        base_psi = jnp.where(accepted, psi_t, s.psi)
        base_mass = base.mass / total
        base_err = _relative_error(base_mass, a)
        give_way = ~accepted & s.smoothed & (s.t / 2 < SMOOTHED_MIN_STEP) & ~finished
        renew = ((accepted & ~finished) | give_way) & active
        facets = base.facet_mass, base.candidates, total
        smooth = jnp.array(False)
        if hessian_density is not None:
            smooth = accepted & (jnp.linalg.norm(m_t - a) > SMOOTHED_HESSIAN_UNTIL * jnp.linalg.norm(a))
            facets = cond_any(renew & smooth, _smoothed_facets, _unchanged, facets, y, base_psi,
                              hessian_density, capacities)
        direction, info = cond_any(renew, _direction, _keep_direction, (s.direction, s.coarse), y, a, base_mass,
                                   *facets, base_err, tol, order, smooth)
        solve_failed = renew & ~info.ok
        status = _first(
            (gave_up & (failed | initial), Status.capacity),
            (gave_up & at_floor, Status.precision),
            (gave_up, Status.line_search),
            (solve_failed, Status.linear_solve),
            (converged, Status.converged),
            default=Status.max_iterations,
        )
        if verbose:
            printer = jax.debug.print if verbose is True else verbose
            jax.lax.cond(
                accepted,
                lambda: printer(
                    "newton {i}: worst relative mass error {e:.3e}, step {t}, {c} diagrams, {l} CG steps",
                    i=iteration, e=err, t=s.t, c=tries, l=info.steps,
                ),
                lambda: None,
            )
        step = iteration.clip(0, max_iter)
        return _State(
            psi=base_psi,
            diagram=base,
            direction=direction,
            t=jnp.where(renew, jnp.ones((), dtype), s.t / 2),
            tries=jnp.where(accepted, 0, tries),
            eps0=eps0,
            residuals=jnp.where(accepted, s.residuals.at[step].set(err), s.residuals),
            linear_steps=jnp.where(accepted & ~finished, s.linear_steps.at[step].set(info.steps), s.linear_steps),
            iteration=iteration,
            evaluations=s.evaluations + 1 + (renew & smooth),
            status=status,
            done=finished | solve_failed,
            vertex_overflow=jnp.where(accepted, False, s.vertex_overflow | overflowed),
            uncertified=jnp.where(accepted, False, s.uncertified | uncertain),
            fallback_short=jnp.where(accepted, False, s.fallback_short | short),
            window_short=jnp.where(accepted, False, s.window_short | window_short),
            smoothed=jnp.where(renew, smooth, s.smoothed),
            coarse=info.coarse,
        )

    final = jax.lax.while_loop(lambda s: ~s.done, body, state)
    stats = SolveStats(
        final.status,
        jnp.maximum(final.iteration, 0),
        final.evaluations,
        final.residuals,
        final.vertex_overflow,
        final.uncertified,
        final.linear_steps,
        final.fallback_short,
        final.window_short,
    )
    return final.psi, stats, final.diagram


def _evaluate(last, y, psi, reuse, density, capacities, grid):
    """The trial diagram, its neighbour search led by the neighbours in the last accepted one
    (``last``, also `_unchanged`'s operand; before the first, none), whose candidate list it
    reuses from the second diagram on (``reuse``; see `power_diagram`'s ``previous``).  Along a
    Newton solve of 1e4 uniform seeds in 3D, the first pass then leaves 1043, 366, 736, 354 cells
    to the fallback stages where ranking the pools leaves 1102, 389, 779, 366 (325 and 325 near
    the optimum)."""
    return power_diagram(y, psi, density, capacities, grid, cond=cond_any, prior=last.neighbours, loops=True,
                         previous=last.candidates, reuse=reuse, last_cells=last.cells)


def _smoothed_facets(own, y, psi, density, capacities):
    """Facet integrals, neighbours and total mass of ``density`` (the smoothed copy) over the
    cells of the accepted diagram at ``psi`` (``own``: its facets, neighbours and total)."""
    _, candidates, _ = own
    _, facet_mass = cell_integrals(y, psi, density, candidates, capacities)
    return facet_mass, candidates, density.total_mass()


def _unchanged(first, *_):
    """The branch that keeps its first operand (the diagram, or the accepted facets)."""
    return first


def _direction(old, y, a, mass, facet_mass, candidates, total, err, tol, order, smoothed):
    """The Newton direction: solve L delta = r (`_mass_defect`), or L_s delta = a - m with the
    ``smoothed`` density's facets (the first operand, the old direction and the multigrid's
    coarse levels, is `_keep_direction`'s; the coarse levels are kept from the second direction
    on: before the first, they are `linear.empty_coarse`, flagged not to be kept).  (L_s is not
    Dm, so the reason for `_mass_defect` does not hold there: 2e3 Diracs on the 90:1 image with
    continuation, its last stage took 44 diagrams with r, 30 with a - m.)"""
    lap = linear.laplacian(facet_mass, candidates, y, total, order)
    # Inexact Newton: a relative residual 0.1 x the mass error keeps the convergence quadratic;
    # near the end, 0.1 x tol / err is enough to land below tol (the linear part of the next
    # error is ~ rtol x err), and saves the tightest solves (2D 1e6: 102 CG steps at err 7.5e-5).
    rtol = jnp.clip(jnp.maximum(0.1 * err, 0.1 * tol / err), 1e-13, 1e-2).astype(a.dtype)
    rhs = jnp.where(smoothed, a - mass, _mass_defect(a, mass, y.shape[1]))
    return linear.solve_with_info(lap, rhs, rtol, coarse=old[1])


def _mass_defect(a, mass, d: int):
    r"""The right-hand side $r$ of the Newton system $L \delta = r$: Newton's step for the
    equations $m_i^p = a_i^p$, $p = 1/d$, whose solution is the same,
    $r_i = (a_i^p - m_i^p) / (p\, m_i^{p-1}) = (a_i - m_i)\, h(m_i / a_i)$ with
    $h(x) = (1 - x^p) / (p\, x^{p-1} (1 - x))$, $h(1) = 1$: near the solution, Newton's own step.

    A cell far below its target grows like $(\psi_i - \psi_c)^d$ from where it appears, so the
    step for $m_i = a_i$ overshoots it by ~$a_i / m_i$ (from the quantile start, 1e4 uniform
    Diracs in 2D: cells at 3% of their target reached 328% at $t = 1$ and others emptied; the
    line search took $t = 1/2$).  On $m^{1/d}$, ~the cell's diameter, that step is ~linear:
    2D 1e4 uniform 7 -> 5 diagrams, 3D 1e5 8 -> 5.

    The line search needs $|a - m - t r| \le (1 - t/2) |a - m|$ at small $t$, so $r$ is kept
    when $(a - m) \cdot r \ge \tfrac34 |a - m|^2$ (a margin over the first order's 1/2, as
    $|r| \le d |a - m|$ since $h < d$): along the uniform solves above the ratio stays in
    0.95 ... 1.05.  Else (and for empty cells, $h(0) = 0$) $a - m$ is kept.  The solve
    projects $r$ to zero mean (as it does $a - m$, whose mean is 0): the step is that of
    $m^{1/d}$ up to a uniform shift of the targets, which leaves $(a - m) \cdot r$ unchanged.
    """
    p = 1.0 / d
    u = (mass - a) / a
    plain = (jnp.abs(u) < 1e-8) | (mass <= 0)  # h = 1: at the target, and for empty cells
    u_safe = jnp.where(plain, 1.0, u)  # (no NaN or inf even in the discarded branch)
    h = jnp.where(plain, 1.0, jnp.expm1(p * jnp.log1p(u_safe)) / (p * u_safe * (1 + u_safe) ** (p - 1)))
    defect = a - mass
    r = defect * h
    return jnp.where(jnp.vdot(defect, r) >= 0.75 * jnp.vdot(defect, defect), r, defect)


def _keep_direction(old, *_):
    direction, coarse = old
    return direction, linear.SolveInfo(jnp.array(True), jnp.array(0), coarse)


def _first(*cases, default: Status) -> Status:
    """The status of the first case whose condition holds."""
    out = default
    for condition, item in reversed(cases):
        out = Status.where(condition, item, out)
    return out
