r"""The Newton system: the weighted graph Laplacian of the power diagram, and its solve.

For cells i, j sharing a facet, $\partial m_i / \partial \psi_j = -w_{ij}$ (a larger $\psi_j$ takes mass from cell i) with
$w_{ij} = \int_{\mathrm{Lag}_i \cap \mathrm{Lag}_j} \rho\, d\sigma / (2 |y_i - y_j|)$, and
$\partial m_i / \partial \psi_i = \sum_j w_{ij}$.  So $Dm = L$ with $L$ the Laplacian of the
weights $w$: symmetric, positive semi-definite, constant on its kernel when the support is
connected.  Each cell reports $w$ for its own candidates; the operator uses the symmetric part
$(W + W^T)/2$, which equals $W$ up to rounding.

The solve fixes the gauge by working with zero-mean vectors: the right-hand side is projected to
sum zero, and the dense path adds the rank-one term $\bar\delta\,\mathbf{1}\mathbf{1}^T / n$.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float, Int


class Laplacian(eqx.Module):
    """Weighted Laplacian given by per-cell neighbour lists ``index`` (padded with n) and weights."""

    weights: Float[Array, "n k"]
    index: Int[Array, "n k"]

    @property
    def size(self) -> int:
        return self.weights.shape[0]

    def degree(self) -> Float[Array, " n"]:
        n = self.size
        incoming = jax.ops.segment_sum(self.weights.reshape(-1), self.index.reshape(-1), n)
        return 0.5 * (self.weights.sum(1) + incoming)

    def mv(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        n = self.size
        x_pad = jnp.concatenate([x, jnp.zeros((1,), x.dtype)])
        gathered = jnp.sum(self.weights * x_pad[self.index], 1)
        scattered = jax.ops.segment_sum((self.weights * x[:, None]).reshape(-1), self.index.reshape(-1), n)
        return self.degree() * x - 0.5 * (gathered + scattered)

    def dense(self) -> Float[Array, "n n"]:
        n = self.size
        rows = jnp.broadcast_to(jnp.arange(n)[:, None], self.index.shape)
        w = jnp.zeros((n, n + 1), self.weights.dtype).at[rows, self.index].add(self.weights)[:, :n]
        w = 0.5 * (w + w.T)
        return jnp.diag(w.sum(1)) - w


def laplacian(
    facet_mass: Float[Array, "n k"], index: Int[Array, "n k"], y: Float[Array, "n d"], scale
) -> Laplacian:
    """Build $L$ from the facet integrals reported by the cells (divided by ``scale``, the total
    mass of the density)."""
    n = y.shape[0]
    y_pad = jnp.concatenate([y, jnp.zeros((1, y.shape[1]), y.dtype)])
    dist = jnp.linalg.norm(y_pad[index] - y[:, None, :], axis=-1)
    ok = (index < n) & (dist > 0)
    w = jnp.where(ok, facet_mass / jnp.where(ok, 2 * dist * scale, 1.0), 0.0)
    return Laplacian(w, index)


DENSE_LIMIT = 2048


def solve(lap: Laplacian, rhs: Float[Array, " n"], rtol: float = 1e-8) -> tuple[Float[Array, " n"], Array]:
    """Solve ``L x = rhs`` for zero-mean x (rhs projected to zero mean first).

    Dense Cholesky (through lineax) up to ``DENSE_LIMIT`` cells, Jacobi-preconditioned CG beyond.
    Returns ``(x, ok)``; ``ok`` is False when the solve failed.
    """
    n = lap.size
    rhs = rhs - jnp.mean(rhs)
    deg = lap.degree()
    scale = jnp.maximum(jnp.mean(deg), jnp.finfo(rhs.dtype).tiny)
    if n <= DENSE_LIMIT:
        # Rank-one term fixes the gauge; a relative 1e-12 shift keeps isolated cells (no facet
        # with positive density) from making the factorisation fail.
        matrix = lap.dense() + scale / n + 1e-12 * scale * jnp.eye(n, dtype=rhs.dtype)
        op = lx.MatrixLinearOperator(matrix, lx.positive_semidefinite_tag)
        sol = lx.linear_solve(op, rhs, lx.Cholesky(), throw=False)
    else:
        op = lx.FunctionLinearOperator(
            lap.mv, jax.ShapeDtypeStruct((n,), rhs.dtype), lx.positive_semidefinite_tag
        )
        inv_diag = 1.0 / jnp.maximum(deg, 1e-12 * scale)
        precond = lx.DiagonalLinearOperator(jax.lax.stop_gradient(inv_diag))
        solver = lx.CG(rtol=rtol, atol=0.0, max_steps=20 * n + 100, stabilise_every=None)
        sol = lx.linear_solve(op, rhs, solver, options={"preconditioner": precond}, throw=False)
    x = sol.value - jnp.mean(sol.value)
    ok = (sol.result == lx.RESULTS.successful) & jnp.all(jnp.isfinite(x))
    return x, ok
