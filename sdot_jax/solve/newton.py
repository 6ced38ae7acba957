r"""Damped Newton for the semi-discrete dual (Kitagawa, Mérigot & Thibert).

Find weights $\psi$ with $m_i(\psi) = a_i$ for every cell.  Each step solves
$L(\psi) \delta = a - m(\psi)$ (so that $m(\psi + \delta) \approx a$, since $Dm = L$), then halves
$t$ from 1 until

1. every cell keeps mass at least $\varepsilon_0 = \min(\min_i a_i, \min_i m_i(\psi_0)) / 2$, and
2. $|a - m(\psi + t\delta)| \le (1 - t/2)\, |a - m(\psi)|$.

This is globally convergent and locally quadratic.  The stopping test is the worst relative mass
error $\max_i |m_i - a_i| / a_i \le$ ``tol``.

??? cite "Reference"

    J. Kitagawa, Q. Mérigot, B. Thibert, *Convergence of a Newton algorithm for semi-discrete
    optimal transport*, J. Eur. Math. Soc. 21 (2019).
"""

from __future__ import annotations

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ..geometry import neighbours
from ..geometry.diagram import Capacities, Diagram, power_diagram
from . import linear


class Status(eqx.Enumeration):
    converged = "converged: the worst relative mass error is below `tol`."
    max_iterations = "not converged: `max_iter` Newton steps were not enough; raise `max_iter`."
    line_search = (
        "not converged: the line search could not decrease the mass error (t < 2^-30). The target "
        "may have zero-density regions or disconnected support: try `continuation=True`."
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
    vertex_overflow: Bool[Array, ""]
    uncertified: Bool[Array, ""]

    @property
    def converged(self) -> Bool[Array, ""]:
        return self.status == Status.converged

    @property
    def error(self) -> Float[Array, ""]:
        return jnp.min(self.residuals)


class _State(eqx.Module):
    psi: Float[Array, " n"]
    diagram: Diagram
    residuals: Float[Array, " r"]
    iteration: Int[Array, ""]
    evaluations: Int[Array, ""]
    status: Status
    done: Bool[Array, ""]


def _capacity_failed(diagram: Diagram) -> Bool[Array, ""]:
    return jnp.any(diagram.overflow) | ~jnp.all(diagram.certified)


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
) -> tuple[Float[Array, " n"], SolveStats]:
    """Run damped Newton from ``psi0``; ``a`` must sum to 1 (the density is normalised here)."""
    total = density.total_mass()
    grid = None
    if capacities.grid is not None:
        grid = neighbours.build_grid(y, *capacities.grid)

    def diagram_at(psi):
        return power_diagram(y, psi, density, capacities, grid)

    def masses(diagram):
        return diagram.mass / total

    diagram0 = diagram_at(psi0)
    m0 = masses(diagram0)
    eps0 = 0.5 * jnp.minimum(jnp.min(a), jnp.min(m0))
    err0 = _relative_error(m0, a)
    residuals = jnp.full((max_iter + 1,), jnp.inf, a.dtype).at[0].set(err0)
    failed0 = _capacity_failed(diagram0)
    status0 = _first(
        (failed0, Status.capacity), (err0 <= tol, Status.converged), default=Status.max_iterations
    )
    done0 = failed0 | (err0 <= tol) | (max_iter == 0)
    state = _State(psi0, diagram0, residuals, jnp.array(0), jnp.array(1), status0, done0)

    def step(state: _State) -> _State:
        m = masses(state.diagram)
        lap = linear.laplacian(state.diagram.facet_mass, state.diagram.candidates, y, total)
        direction, solved = linear.solve(lap, a - m)
        norm0 = jnp.linalg.norm(m - a)

        def search_cond(carry):
            t, _, _, accepted, failed, count = carry
            return ~accepted & ~failed & (count < 30)

        def search_body(carry):
            t, _, _, _, _, count = carry
            psi_t = state.psi + t * direction
            diagram_t = diagram_at(psi_t)
            m_t = masses(diagram_t)
            failed = _capacity_failed(diagram_t)
            accepted = (jnp.min(m_t) >= eps0) & (jnp.linalg.norm(m_t - a) <= (1 - t / 2) * norm0)
            return t / 2, psi_t, diagram_t, accepted & ~failed, failed, count + 1

        init = (jnp.ones((), a.dtype), state.psi, state.diagram, jnp.array(False), jnp.array(False), jnp.array(0))
        _, psi_new, diagram_new, accepted, failed, count = jax.lax.while_loop(
            search_cond, search_body, init
        )
        err = _relative_error(masses(diagram_new), a)
        iteration = state.iteration + 1
        status = _first(
            (~solved, Status.linear_solve),
            (failed, Status.capacity),
            (~accepted, Status.line_search),
            (err <= tol, Status.converged),
            default=Status.max_iterations,
        )
        ok = solved & accepted
        if verbose:
            printer = jax.debug.print if verbose is True else verbose
            printer(
                "newton {i}: worst relative mass error {e:.3e}, step {t}",
                i=iteration, e=err, t=2.0 ** (1 - count),
            )
        return _State(
            jnp.where(ok, psi_new, state.psi),
            jax.tree.map(lambda new, old: jnp.where(ok, new, old), diagram_new, state.diagram),
            state.residuals.at[iteration].set(jnp.where(ok, err, state.residuals[iteration - 1])),
            iteration,
            state.evaluations + count,
            status,
            ~ok | (err <= tol) | (iteration >= max_iter),
        )

    final = jax.lax.while_loop(lambda s: ~s.done, step, state)
    stats = SolveStats(
        final.status,
        final.iteration,
        final.evaluations,
        final.residuals,
        jnp.any(final.diagram.overflow),
        ~jnp.all(final.diagram.certified),
    )
    return final.psi, stats


def _first(*cases, default: Status) -> Status:
    """The status of the first case whose condition holds."""
    out = default
    for condition, item in reversed(cases):
        out = Status.where(condition, item, out)
    return out
