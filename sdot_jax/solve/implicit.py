r"""The optimal weights as a differentiable function of the problem's data.

``optimal_weights`` runs damped Newton forward; its derivatives come from the implicit function
theorem at the optimum, never from the iterations.  With $\theta = (y, a, \rho)$ (positions,
normalised Dirac masses, density pytree) the weights solve

$$ F(\psi, \theta) = m(\psi, y, \rho) - a = 0, \qquad m_i = \int_{\mathrm{Lag}_i(\psi, y)} \rho \Big/ \int \rho . $$

$\partial F / \partial \psi = L$, the facet Laplacian (symmetric, positive semi-definite, kernel
the constants).  **Gauge:** $\psi$ is defined up to an additive constant; the returned weights are
normalised to zero mean, and so are their derivatives: with $P = I - \mathbf{1}\mathbf{1}^T/n$,

$$ d\psi = P L^{+} P \,(da - \partial_{y,\rho} m \; d(y, \rho)) . $$

The backward pass therefore solves one adjoint system $L \lambda = P \bar\psi$ (zero-mean
$\lambda$, `linear.solve`), returns $\bar a = \lambda$ and pulls $-\lambda$ back through
``jax.vjp`` of the mass function $(y, \rho) \mapsto m(\psi^*, y, \rho)$, built at $\psi^*$ with
the same candidates and capacities as the solve.  Masses $a$ must sum to one (the public API
normalises them): a perturbation $da$ is only meaningful on that simplex.

The stats are not differentiable (their cotangents are ignored).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..geometry.diagram import grid_for, power_diagram
from . import linear
from .newton import newton


def _mass_function(y, density, psi, capacities, grid):
    """``(m(psi, y, density), diagram)``: normalised cell masses and the diagram they came from."""
    diagram = power_diagram(y, psi, density, capacities, grid)
    return diagram.mass / density.total_mass(), diagram


@eqx.filter_custom_vjp
def _weights(theta, psi0, capacities, tol, max_iter, verbose):
    y, a, density = theta
    psi, stats, _ = newton(y, a, density, psi0, capacities, tol, max_iter, verbose)
    return psi - jnp.mean(psi), stats


@_weights.def_fwd
def _weights_fwd(perturbed, theta, psi0, capacities, tol, max_iter, verbose):
    out = _weights.fn(theta, psi0, capacities, tol, max_iter, verbose)
    return out, out[0]


@_weights.def_bwd
def _weights_bwd(psi, grad_out, perturbed, theta, psi0, capacities, tol, max_iter, verbose):
    grad_psi, _ = grad_out
    y, a, density = theta
    if grad_psi is None:
        grad_psi = jnp.zeros_like(psi)
    grid = grid_for(y, density, capacities)
    dynamic, static = eqx.partition(density, eqx.is_inexact_array)

    def mass(y_, dynamic_):
        return _mass_function(y_, eqx.combine(dynamic_, static), psi, capacities, grid)

    _, pullback, diagram = jax.vjp(mass, y, dynamic, has_aux=True)
    total = density.total_mass()
    lap = linear.laplacian(diagram.facet_mass, diagram.candidates, y, total)
    lap = jax.lax.stop_gradient(lap)
    # Adjoint: L lam = P grad_psi, lam zero-mean (the gauge of the forward output).
    rtol = 1e-12 if psi.dtype == jnp.float64 else 1e-6
    lam, ok = linear.solve(lap, grad_psi, rtol=rtol)
    # A failed adjoint solve, or a diagram with uncertified or overflowed cells (the forward
    # solve reported it as `Status.capacity`), gives NaN gradients rather than silently wrong ones.
    lam = jnp.where(ok & ~diagram.incomplete, lam, jnp.nan)
    grad_y, grad_dynamic = pullback(-lam)
    return _select(perturbed, (grad_y, lam, grad_dynamic))


def _select(perturbed, grads):
    """Gradients only where a leaf is perturbed (None elsewhere), as filter_custom_vjp expects."""
    return jax.tree.map(lambda p, g: g if p else None, perturbed, grads)


def optimal_weights(y, a, density, psi0, capacities, tol, max_iter, verbose=False):
    """``(psi, stats)``: the zero-mean weights solving ``m(psi) = a`` and how the solve went.

    Differentiable with respect to ``y``, ``a`` and the density's floating-point leaves by the
    implicit function theorem (see the module docstring); ``psi0`` only seeds Newton and carries
    no gradient.
    """
    psi0 = jax.lax.stop_gradient(psi0)
    return _weights((y, a, density), psi0, capacities, tol, max_iter, verbose)
