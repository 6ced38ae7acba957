"""The discrete source measure."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import as_float_array, check_finite, check_values


class SumOfDiracs(eqx.Module):
    r"""$\mu = \sum_i a_i \delta_{y_i}$: n weighted Diracs in $\mathbb{R}^d$.

    **Arguments:**

    - `positions`: the points $y_i$, shape ``(n, d)``.
    - `masses`: the masses $a_i \ge 0$, shape ``(n,)``; equal masses when omitted.

    Positions must be pairwise distinct: two Diracs at the same place would share one power cell,
    so :func:`sdot_jax.optimal_transport_plan` raises a ``ValueError`` naming them (merge their
    masses instead).  A Dirac of mass 0 is allowed and gets an empty cell.
    """

    positions: Float[Array, "n d"]
    masses: Float[Array, " n"]

    def __init__(self, positions: Any, masses: Any = None):
        if isinstance(positions, SumOfDiracs):
            positions, masses = positions.positions, positions.masses if masses is None else masses
        positions = as_float_array(positions, "positions")
        if positions.ndim != 2 or positions.shape[0] == 0 or positions.shape[1] == 0:
            raise ValueError(
                f"`positions` must have shape (n, d) with n, d >= 1, got {positions.shape}."
            )
        positions = check_finite(positions, "positions")
        n = positions.shape[0]
        if masses is None:
            masses = jnp.full((n,), 1.0 / n, positions.dtype)
        else:
            masses = as_float_array(masses, "masses").astype(positions.dtype)
            if masses.shape != (n,):
                raise ValueError(
                    f"`masses` must have shape ({n},) to match `positions` {positions.shape}, "
                    f"got {masses.shape}."
                )
            masses = check_finite(masses, "masses")
            masses = check_values(masses, jnp.all(masses >= 0), "`masses` must be non-negative.")
            masses = check_values(
                masses, jnp.sum(masses) > 0, "`masses` sum to zero: there is nothing to transport."
            )
        self.positions = positions
        self.masses = masses

    @property
    def dim(self) -> int:
        return self.positions.shape[1]

    @property
    def size(self) -> int:
        return self.positions.shape[0]

    def total_mass(self) -> Float[Array, ""]:
        return jnp.sum(self.masses)
