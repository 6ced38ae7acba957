r"""$W_2$ between a discrete measure and a density, differentiated by the envelope theorem."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._jit import jit
from .api import optimal_transport_plan
from .geometry.diagram import grid_for, power_diagram
from .plan import TransportPlan


def dual_value(plan: TransportPlan) -> Float[Array, ""]:
    r"""The dual objective at the plan's weights, held fixed:

    $$ \Phi(\psi^*) = \sum_i a_i \psi^*_i + \sum_i \int_{\mathrm{Lag}_i} (|x - y_i|^2 - \psi^*_i)\, \rho \Big/ \int \rho , $$

    with $\psi^*$ under ``stop_gradient``.  At the optimum $\Phi(\psi^*) = W_2^2$ and, since
    $\partial \Phi / \partial \psi = a - m(\psi^*) = 0$ there, its derivatives with respect to the
    positions, masses and density parameters are those of $W_2^2$ (envelope theorem): no linear
    solve on the backward pass.  In particular $\nabla_{y_i} W_2^2 = 2 a_i (y_i - b_i)$.
    """
    # The plan's neighbours lead the search, as Newton's did: the plan's capacities were sized
    # for Newton's trial diagrams, whose candidates are led by the last diagram's neighbours.
    prior = jax.lax.stop_gradient(plan.diagram.neighbours)
    return _dual(plan.positions, plan.masses, plan.weights, plan.target, plan.capacities, prior)


@jit
def _dual(y, a, psi, density, capacities, prior=None):
    psi = jax.lax.stop_gradient(psi)
    diagram = power_diagram(y, psi, density, capacities, grid_for(y, density, capacities), prior=prior).complete()
    second = jnp.trace(diagram.second_moment, axis1=1, axis2=2)
    cells = jnp.sum(second - psi * diagram.mass) / density.total_mass()
    return jnp.sum(a * psi) + cells


def distance(source: Any, target: Any, squared: bool = False, **options) -> Float[Array, ""]:
    r"""$W_2$ between a discrete measure and a density (either order), or $W_2^2$ with
    ``squared=True``.

    Options are those of `optimal_transport_plan`.  The value is the dual objective at the
    optimal weights (equal to the transport cost within the solve's tolerance), and its gradient
    comes from the envelope theorem, never from the Newton iterations nor from a linear solve:
    with respect to the Dirac positions, $\nabla_{y_i} W_2^2 = 2 a_i (y_i - b_i)$ ($b_i$ the
    barycenter of cell i); with respect to the masses, the weights $\psi^*$; with respect to the
    density's parameters, $\partial \Phi / \partial \theta$ at fixed $\psi^*$.

    Works under ``jax.jit``, ``jax.vmap`` and ``jax.grad``.  A batch is solved in one call by
    ``jax.vmap`` over stacked problems of the same shapes (n Diracs in d dimensions); each
    problem stops on its own criterion (the batched Newton loop freezes the problems already
    converged).  Problems of different n must be grouped by n (one compilation per n): padding
    with zero-mass Diracs is refused (``masses must be positive``), since every Dirac needs a
    cell of positive mass.  Under ``jax.jit``/``jax.vmap`` the capacities cannot grow on the fly:
    pass ``capacities=Capacities.default(n, d)`` or larger for unusual inputs.
    """
    plan = optimal_transport_plan(source, target, **options)
    cost = dual_value(plan)
    return cost if squared else jnp.sqrt(cost)
