r"""The Newton system: the weighted graph Laplacian of the power diagram, and its solve.

For cells i, j sharing a facet, $\partial m_i / \partial \psi_j = -w_{ij}$ (a larger $\psi_j$ takes mass from cell i) with
$w_{ij} = \int_{\mathrm{Lag}_i \cap \mathrm{Lag}_j} \rho\, d\sigma / (2 |y_i - y_j|)$, and
$\partial m_i / \partial \psi_i = \sum_j w_{ij}$.  So $Dm = L$ with $L$ the Laplacian of the
weights $w$: symmetric, positive semi-definite, constant on its kernel when the support is
connected.  Each cell reports $w$ for its own candidates, and both cells of a facet list it: the
padded operator uses the symmetric part $(W + W^T)/2$, the compact one (`compact`) $W$ itself,
equal up to rounding.

The solve fixes the gauge by working with zero-mean vectors: the right-hand side is projected to
sum zero, and the dense path adds the rank-one term $\bar\delta\,\mathbf{1}\mathbf{1}^T / n$.

Solvers, chosen by n (``method="auto"``): dense Cholesky up to ``DENSE_LIMIT`` cells, beyond that
conjugate gradients preconditioned by an aggregation multigrid V-cycle (:mod:`.multigrid`), whose
iteration count stays nearly flat in n (Jacobi-preconditioned CG needs O(sqrt(n)) iterations).
The nonzero facet weights are compacted into a COO list (in 2D a planar graph has at most 3n
edges, so 6n directed entries always suffice), from which the multigrid's finest level applies
the operator as fixed-width rows (`multigrid.Rows`).  If the list or a level would overflow its
static size, the solve is Jacobi-CG on the compact list, or on the padded layout when the list
itself overflowed: never a truncated operator.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Bool, Float, Int

from .._batching import cond_any
from . import multigrid


class Laplacian(eqx.Module):
    """Weighted Laplacian given by per-cell neighbour lists ``index`` (padded with n) and weights."""

    weights: Float[Array, "n k"]
    index: Int[Array, "n k"]
    order: Int[Array, " n"] | None = None  # spatial (Morton) order of the seeds, for multigrid
    dim: int = eqx.field(static=True, default=2)

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
    facet_mass: Float[Array, "n k"], index: Int[Array, "n k"], y: Float[Array, "n d"], scale, order=None
) -> Laplacian:
    """Build $L$ from the facet integrals reported by the cells (divided by ``scale``, the total
    mass of the density).  ``order``: ``multigrid.morton_order(y)`` if already computed (it is
    needed by the multigrid solve, computed here otherwise when n > ``DENSE_LIMIT``)."""
    n = y.shape[0]
    y_pad = jnp.concatenate([y, jnp.zeros((1, y.shape[1]), y.dtype)])
    dist = jnp.linalg.norm(y_pad[index] - y[:, None, :], axis=-1)
    ok = (index < n) & (dist > 0)
    w = jnp.where(ok, facet_mass / jnp.where(ok, 2 * dist * scale, 1.0), 0.0)
    if order is None and n > DENSE_LIMIT:
        order = multigrid.morton_order(jax.lax.stop_gradient(y))
    return Laplacian(w, index, order, y.shape[1])


DENSE_LIMIT = 2048


def compact_capacity(n: int, k: int, d: int) -> int:
    """Static number of nonzero (cell, candidate) facet entries kept in the COO list."""
    per = {1: 2, 2: 6, 3: 24}.get(d, k)
    return n * min(k, per) + 16


class CompactLaplacian(eqx.Module):
    """The Laplacian as a COO list sorted by rows (see `compact`), plus the padded layout to
    fall back on when the list overflowed."""

    padded: Laplacian
    rows: Int[Array, " e"]
    cols: Int[Array, " e"]
    weights: Float[Array, " e"]
    diag: Float[Array, " n"]
    overflow: Bool[Array, ""]

    def mv(self, x):
        return jax.lax.cond(
            self.overflow,
            lambda x: self.padded.mv(x),
            lambda x: multigrid.coo_mv(self.rows, self.cols, self.weights, self.diag, x),
            x,
        )


def compact(lap: Laplacian, d: int) -> CompactLaplacian:
    """The nonzero entries of the cells' own lists, in row order: every facet is listed by both
    of its cells (a certified cell has every neighbour among its candidates), so this is the
    symmetric part up to rounding, with no sort.  The diagonal is the row sums, so the
    constants stay exactly in the kernel."""
    n, k = lap.weights.shape
    ok = (lap.index < n) & (lap.weights != 0)
    cap = _capacity(n, k, d)
    # Entry (i, j) goes to (entries of the rows before i) + (entries before it in row i): prefix
    # sums over the n rows and along each row's k, not one over all n k entries as `jnp.nonzero`
    # does (an int64 cumsum 48M long at 3D 1e6; the whole compaction there: compile 5.0 -> 2.4 s,
    # run 1.88 -> 1.67 s on 2 CPU cores).  Same list, same order.
    count = jnp.sum(ok, 1, dtype=jnp.int32)
    place = (jnp.cumsum(count) - count)[:, None] + jnp.cumsum(ok, 1, dtype=jnp.int32) - 1
    place = jnp.where(ok, place, cap)  # out of range: dropped
    rows = jnp.full((cap,), n - 1, jnp.int32)  # padding last: still sorted
    rows = rows.at[place].set(jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, k)), mode="drop")
    cols = jnp.zeros((cap,), jnp.int32).at[place].set(lap.index.astype(jnp.int32), mode="drop")
    weights = jnp.zeros((cap,), lap.weights.dtype).at[place].set(lap.weights, mode="drop")
    overflow = jnp.sum(count) > cap
    # (Overflowed: the operator is the padded one, and so must the Jacobi fallback's diagonal be.)
    diag = jnp.where(overflow, lap.degree(), jax.ops.segment_sum(weights, rows, n, indices_are_sorted=True))
    return CompactLaplacian(lap, rows, cols, weights, diag, overflow)


class SolveInfo(eqx.Module):
    ok: Bool[Array, ""]
    steps: Int[Array, ""]
    coarse: multigrid.Hierarchy | None = None  # the multigrid's coarse levels (`solve_with_info`)


def _capacity(n: int, k: int, d: int) -> int:
    return min(compact_capacity(n, k, d), n * k)


def empty_coarse(n: int, k: int, d: int, dtype) -> multigrid.Hierarchy:
    """`SolveInfo.coarse` for n cells of k candidates, as zeros (flagged overflowed: not to be
    kept), a placeholder before the first solve."""
    index = jax.ShapeDtypeStruct((_capacity(n, k, d),), jnp.int32)
    shapes = jax.eval_shape(lambda r, c, w, o: multigrid.build(r, c, w, o, d).coarse_part(), index, index,
                            jax.ShapeDtypeStruct(index.shape, dtype), jax.ShapeDtypeStruct((n,), jnp.int32))
    empty = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
    return eqx.tree_at(lambda h: h.coarse_overflow, empty, jnp.array(True))


def pcg(mv, precond, b, rtol, max_steps: int):
    r"""Preconditioned CG on zero-mean vectors, stopped on $\|r\|_2 \le$ ``rtol`` $\|b\|_2$.

    Returns ``(x, steps, converged)``.
    """
    bnorm = jnp.linalg.norm(b)
    target = rtol * bnorm
    x = jnp.zeros_like(b)
    r = b
    z = precond(r)
    z = z - jnp.mean(z)
    p = z
    gamma = jnp.vdot(r, z)

    def cond(c):
        x, r, p, gamma, k = c
        return (jnp.linalg.norm(r) > target) & (k < max_steps) & (gamma > 0)

    def body(c):
        x, r, p, gamma, k = c
        q = mv(p)
        alpha = gamma / jnp.vdot(p, q)
        x = x + alpha * p
        r = r - alpha * q
        z = precond(r)
        z = z - jnp.mean(z)
        gamma_new = jnp.vdot(r, z)
        p = z + (gamma_new / gamma) * p
        return x, r, p, gamma_new, k + 1

    x, r, _, _, k = jax.lax.while_loop(cond, body, (x, r, p, gamma, jnp.array(0)))
    done = (jnp.linalg.norm(r) <= target) | (bnorm == 0)
    return x, k, done & jnp.all(jnp.isfinite(x))


def _jacobi(diag: Float[Array, " n"]):
    """The diagonal preconditioner (no gradient flows through it), with a floor on tiny entries."""
    diag = jax.lax.stop_gradient(diag)
    scale = jnp.maximum(jnp.mean(diag), jnp.finfo(diag.dtype).tiny)
    inv_diag = 1.0 / jnp.maximum(diag, 1e-12 * scale)
    return lambda r: inv_diag * jax.lax.stop_gradient(r)


def preconditioner_operator(lap: CompactLaplacian, order, d: int) -> lx.AbstractLinearOperator:
    """The multigrid V-cycle as a lineax operator (tagged positive semi-definite, gradient
    stopped), Jacobi when the hierarchy or the compact list overflowed their static sizes, for
    ``lx.CG(..., stabilise_every=None)`` via ``options={"preconditioner": ...}``.  (It chooses
    at every application; `solve_with_info` chooses once per solve.)"""
    lap = jax.lax.stop_gradient(lap)
    h = multigrid.build(lap.rows, lap.cols, lap.weights, order, d)
    jacobi = _jacobi(lap.diag)

    def apply(r):
        r = jax.lax.stop_gradient(r)
        return jax.lax.cond(h.overflow | lap.overflow, jacobi, lambda r: multigrid.v_cycle(h, r), r)

    n = lap.diag.shape[0]
    return lx.FunctionLinearOperator(
        apply, jax.ShapeDtypeStruct((n,), lap.diag.dtype), lx.positive_semidefinite_tag
    )


def solve(
    lap: Laplacian,
    rhs: Float[Array, " n"],
    rtol=1e-8,
    *,
    method: str = "auto",
) -> tuple[Float[Array, " n"], Array]:
    """Solve ``L x = rhs`` for zero-mean x (rhs projected to zero mean first).

    ``method``: ``"auto"`` (dense Cholesky up to ``DENSE_LIMIT`` cells, multigrid-CG beyond),
    ``"dense"``, ``"multigrid"`` or ``"jacobi"`` (CG with a diagonal preconditioner).
    Returns ``(x, ok)``; ``ok`` is False when the solve failed.
    """
    x, info = solve_with_info(lap, rhs, rtol, method=method)
    return x, info.ok


def solve_with_info(lap: Laplacian, rhs, rtol=1e-8, *, method: str = "auto",
                    coarse: multigrid.Hierarchy | None = None, keep_coarse: Bool[Array, ""] | bool = True):
    """As `solve`, returning ``(x, SolveInfo(ok, steps, coarse))`` (steps: CG iterations, 0 if
    dense; the multigrid's coarse levels, else None).  ``coarse``: an earlier multigrid solve's
    `SolveInfo.coarse` on the same seeds, kept where ``keep_coarse`` (which may be traced) and
    not flagged overflowed (see `multigrid.build`): Newton builds them once per solve (2D 1e5
    uniform solve, best of 3: 5.46 -> 5.07 s, 83 -> 90 CG steps).

    The multigrid path falls back to Jacobi-CG (at most 2000 steps, as multigrid-CG) when the
    compact list or the hierarchy overflowed; under vmap, only for the problems concerned."""
    n = lap.size
    rhs = rhs - jnp.mean(rhs)
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "multigrid"
    if method == "dense":
        deg = lap.degree()
        scale = jnp.maximum(jnp.mean(deg), jnp.finfo(rhs.dtype).tiny)
        # Rank-one term fixes the gauge; a relative 1e-12 shift keeps isolated cells (no facet
        # with positive density) from making the factorisation fail.
        matrix = lap.dense() + scale / n + 1e-12 * scale * jnp.eye(n, dtype=rhs.dtype)
        # (jnp directly: lineax's Cholesky path took 2.7 s at n = 1000 where this takes 0.07 s.)
        factor = jnp.linalg.cholesky(matrix)
        x = jax.scipy.linalg.cho_solve((factor, True), rhs)
        x = x - jnp.mean(x)
        ok = jnp.all(jnp.isfinite(x))
        return x, SolveInfo(ok, jnp.array(0))
    d = lap.dim
    comp = compact(lap, d)
    if method == "jacobi":
        x, steps, ok = pcg(comp.mv, _jacobi(comp.diag), rhs, rtol, 20 * n + 100)
        return x - jnp.mean(x), SolveInfo(ok, steps)
    if method != "multigrid":
        raise ValueError(f"unknown linear solve method {method!r}.")
    if lap.order is None:
        raise ValueError("method='multigrid' needs the Laplacian's `order` (build it with `laplacian`).")
    lists = comp.rows, comp.cols, comp.weights, lap.order
    if coarse is None:
        h = multigrid.build(*lists, d)
    else:  # (cond_any: under vmap, the fresh build only for the problems that need it)
        keep = jnp.asarray(keep_coarse) & ~coarse.coarse_overflow
        h = cond_any(~keep, lambda *a: multigrid.build(*a[:4], d), lambda *a: multigrid.build(*a[:4], d, a[4]),
                     *lists, jax.lax.stop_gradient(coarse))
    # (A truncated list's coarse levels are not to be kept either.)
    h = eqx.tree_at(lambda h: h.coarse_overflow, h, h.coarse_overflow | comp.overflow)
    # One branch per solve, not one per CG step in the operator and the preconditioner: each
    # copied its operands, the lists and the hierarchy (2D 1e5 uniform solve: 184 ms of 83 CG
    # steps).  Under vmap, Jacobi-CG runs only for the problems whose lists overflowed.
    x, steps, ok = cond_any(h.overflow | comp.overflow, _with_jacobi, _with_multigrid, rhs, rtol, comp, h)
    return x - jnp.mean(x), SolveInfo(ok, steps, h.coarse_part())


def _with_multigrid(rhs, rtol, comp: CompactLaplacian, h: multigrid.Hierarchy):
    """Multigrid-CG, whose operator is the finest level's (the same as ``comp.mv``)."""
    stopped = jax.lax.stop_gradient(h)
    return pcg(h.levels[0].mv, lambda r: multigrid.v_cycle(stopped, jax.lax.stop_gradient(r)), rhs, rtol, 2000)


def _with_jacobi(rhs, rtol, comp: CompactLaplacian, h: multigrid.Hierarchy):
    """Jacobi-CG on the compact list (the padded operator where it overflowed)."""
    return pcg(comp.mv, _jacobi(comp.diag), rhs, rtol, 2000)
