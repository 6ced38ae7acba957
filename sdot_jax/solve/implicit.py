"""The optimal weights as a function of the problem's data.

``optimal_weights`` runs damped Newton; its derivatives are to come from the implicit function
theorem at $m(\\psi^*, \\theta) = a$, never from the iterations.
"""

from __future__ import annotations

from .newton import newton


def optimal_weights(y, a, density, psi0, capacities, tol, max_iter, verbose=False):
    """``(psi, stats)``: the weights solving ``m(psi) = a`` and how the solve went."""
    return newton(y, a, density, psi0, capacities, tol, max_iter, verbose)
