r"""An aggregation multigrid preconditioner for the Newton Laplacian, in pure JAX with static shapes.

**Hierarchy.** Seeds are sorted once along a Morton (Z-order) curve; level $l$ groups
``ratio**l`` consecutive seeds of that order into one aggregate, so the aggregates of every level
are spatially compact and nested, and their sizes are static.  The prolongation $P_l$ is piecewise
constant on aggregates, and the coarse operator is the Galerkin product $A_{l+1} = P_l^T A_l P_l$:
for a graph Laplacian that is the Laplacian of the contracted graph, computed by mapping every
edge $(i, j, w)$ to $(\mathrm{agg}(i), \mathrm{agg}(j), w)$, sorting, and summing duplicates with
``segment_sum`` (edges inside an aggregate drop out).  The finest level's products use its rows
at a fixed width (`Rows`: gathers, no scatter).  Each level keeps at most a fixed number of
edges (the finest, a fixed number beyond the width); when a level would need more, the solve
falls back to Jacobi (flag ``overflow``) -- slower, never wrong.

**Cycle.** A symmetric V-cycle: Chebyshev smoothing on $D^{-1} A$ over the interval
$[\lambda_{\max}/\kappa, \lambda_{\max}]$ with $\lambda_{\max} = 2$ (a bound for any Laplacian's
$D^{-1} L$), restriction by aggregate sums, coarse correction scaled by ``boost`` (a classic
remedy for the energy lost by piecewise-constant prolongation; any boost > 0 keeps the cycle
symmetric positive semi-definite, all CG needs), dense Cholesky at the coarsest level with the
gauge fixed by a rank-one term.

CG steps to a relative residual of 1e-6 on the Newton Laplacian of 2D uniform seeds at zero
weights (throw-away script; 1e-2 and 1e-4 grow alike): boost 1: 39, 63, 110 at n = 1e4, 1e5, 1e6
(2.8x); boost 1.5: 31, 41, 54 (1.7x); 1.7 gained one or two steps more.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

RATIO = 4  # seeds per aggregate (2x2 quads along a 2D Morton order)
COARSEST = 400  # dense Cholesky below this size


def morton_order(y: Float[Array, "n d"]) -> Int[Array, " n"]:
    """Permutation sorting the seeds along a Z-order curve (30-bit codes, int32) on a cube around
    them (the same scale on every axis: aggregates of consecutive seeds stay round in an elongated
    cloud, where a curve per axis would make them as elongated as the cloud)."""
    n, d = y.shape
    bits = max(1, 30 // d)
    lo, hi = jnp.min(y, 0), jnp.max(y, 0)
    side = jnp.max(hi - lo)
    scaled = (y - lo) / jnp.where(side > 0, side, 1.0)
    q = jnp.clip((scaled * (2**bits)).astype(jnp.int32), 0, 2**bits - 1)
    code = jnp.zeros((n,), jnp.int32)
    for b in range(bits):
        for k in range(d):
            code = code | (((q[:, k] >> b) & 1) << (b * d + k))
    return jnp.argsort(code).astype(jnp.int32)


class Rows(eqx.Module):
    """A weight matrix W as rows of fixed width: entry ``c`` of row ``r`` is ``weights[c, r]`` at
    column ``cols[c, r]`` (padding: weight 0, column 0) for the first ``width`` entries of each
    row, the others in a short COO ``tail`` sorted by rows.  The product is ``width`` gathers
    summed column by column, which XLA fuses, and a segment sum over the tail only, where a COO
    list is a segment sum (a scatter) over every entry: a 2D Delaunay graph of 1e5 nodes, 0.53
    against 1.06 ms; the multigrid-CG solve of a 2D 1e5 Newton Laplacian 0.53 -> 0.41 s, of a 3D
    3e4 one 0.28 -> 0.18 s (with the coarse levels too: 0.31 s and 0.15 s, and 1.5-4 s more
    compilation)."""

    cols: Int[Array, "w m"]
    weights: Float[Array, "w m"]
    tail_rows: Int[Array, " t"]
    tail_cols: Int[Array, " t"]
    tail_weights: Float[Array, " t"]

    def product(self, x: Float[Array, " m"]) -> Float[Array, " m"]:
        """$W x$."""
        packed = sum(self.weights[c] * x[self.cols[c]] for c in range(self.cols.shape[0]))
        tail = jax.ops.segment_sum(self.tail_weights * x[self.tail_cols], self.tail_rows, x.shape[0],
                                   indices_are_sorted=True)
        return packed + tail


def as_rows(rows, cols, weights, m: int, width: int, tail: int) -> tuple[Rows, Bool[Array, ""]]:
    """The COO list ``(rows, cols, weights)`` of an m x m matrix (sorted by rows; padding with
    weight 0 last) as `Rows` of ``width`` with room for ``tail`` more entries; and whether the
    tail overflowed (entries are then missing: the caller must not use them)."""
    e = rows.shape[0]
    count = jax.ops.segment_sum(jnp.ones_like(rows), rows, m, indices_are_sorted=True)
    end = jnp.cumsum(count, dtype=jnp.int32)
    first = end - count  # each row's first entry in the list
    at = first[None, :] + jnp.arange(width, dtype=jnp.int32)[:, None]  # (width, m)
    inside = at < end[None, :]
    at = jnp.minimum(at, e - 1)
    extra = (jnp.arange(e, dtype=jnp.int32) - first[rows] >= width) & (weights != 0)
    picked = jnp.nonzero(extra, size=tail, fill_value=e)[0]
    kept = picked < e
    picked = jnp.minimum(picked, e - 1)
    packed = Rows(jnp.where(inside, cols[at], 0), jnp.where(inside, weights[at], 0.0),
                  jnp.where(kept, rows[picked], m - 1),  # (padding last: still sorted)
                  jnp.where(kept, cols[picked], 0), jnp.where(kept, weights[picked], 0.0))
    return packed, jnp.sum(extra) > tail


def row_width(d: int) -> int:
    """Static width of the finest level's `Rows` (Voronoi-like graphs: at the optimum of 1e5
    uniform seeds in 2D, 99.9% of the rows hold at most 10 entries, all of them 12; 3e4 in 3D:
    24, 28).  The coarse levels stay COO lists: contracted, their rows are longer (2D: 14 and 17)
    and as long as the lists' capacities per row."""
    return {1: 2, 2: 10, 3: 24}.get(d, 64)


def tail_capacity(m: int) -> int:
    """Room for the entries of the finest level's rows beyond `row_width`: more make the solve
    fall back to Jacobi (`Hierarchy.overflow`)."""
    return m // 8 + 64


class Level(eqx.Module):
    """One level: the Laplacian as a COO list of directed edges (both directions stored once
    each, or summed duplicates), its diagonal, and the map to the next level's aggregates; on the
    finest level, the same list as `Rows` for its products."""

    rows: Int[Array, " e"]
    cols: Int[Array, " e"]
    weights: Float[Array, " e"]
    diag: Float[Array, " m"]
    aggregate: Int[Array, " m"]  # aggregate (next level node) of each node of this level
    packed: Rows | None  # (the finest level's)

    def mv(self, x: Float[Array, " m"]) -> Float[Array, " m"]:
        """$(D - W) x$."""
        if self.packed is None:
            return coo_mv(self.rows, self.cols, self.weights, self.diag, x)
        return self.diag * x - self.packed.product(x)


class Hierarchy(eqx.Module):
    levels: list[Level]
    coarse_factor: Float[Array, "c c"]  # Cholesky factor at the coarsest level
    overflow: Bool[Array, ""]  # some level does not fit its static sizes: do not use it
    coarse_overflow: Bool[Array, ""]  # the coarse levels' part of it (not to be kept: `build`)

    def coarse_part(self) -> "Hierarchy":
        """The part `build`'s ``coarse`` reads: the finest level dropped (None)."""
        return Hierarchy([None] + self.levels[1:], self.coarse_factor, self.overflow, self.coarse_overflow)


def coo_mv(rows, cols, weights, diag, x):
    """$(D - W) x$ for the weight matrix W (symmetric up to rounding: each facet listed by both
    cells) given as a COO list sorted by rows (a sorted segment sum is 2x faster on CPU)."""
    return diag * x - jax.ops.segment_sum(weights * x[cols], rows, diag.shape[0], indices_are_sorted=True)


def level_sizes(n: int) -> list[int]:
    sizes = [n]
    while sizes[-1] > COARSEST:
        sizes.append(math.ceil(sizes[-1] / RATIO))
    return sizes


def edge_capacity(m: int, d: int, fine_edges: int) -> int:
    per = {1: 4, 2: 10, 3: 32}.get(d, 64)
    return min(fine_edges, per * m + 64)


def build(
    rows: Int[Array, " e"],
    cols: Int[Array, " e"],
    weights: Float[Array, " e"],
    order: Int[Array, " n"],
    d: int,
    coarse: Hierarchy | None = None,
) -> Hierarchy:
    """Aggregation hierarchy from a COO Laplacian (``rows, cols, weights``: each unordered edge
    stored in both directions, with weights equal up to rounding, sorted by rows; padding entries
    have weight 0).  Every level's list is sorted by rows too.

    ``coarse``: a hierarchy built the same way from another Laplacian on the same seeds (an
    earlier Newton step's, or its `Hierarchy.coarse_part`), whose coarse levels are kept: only
    the finest level is new (unless there is only one level, n <= `COARSEST`: then it is
    ignored).  The cycle then smooths the new operator and corrects with the old coarse ones,
    still a symmetric positive semi-definite preconditioner.  CG steps to 1e-2 / 1e-6 on the
    Laplacians of a 2D 1e5 uniform solve halfway and at its optimum, with the coarse levels of
    its start: 13 / 42 and 17 / 45, against 13 / 42 and 16 / 43 with their own (the old finest
    level too: 33 / 82)."""
    n = order.shape[0]
    sizes = level_sizes(n)
    rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    dtype = weights.dtype
    levels = []
    fine_overflow = coarse_overflow = jnp.array(False)
    node_rank = rank  # position of each node of the current level along the curve
    for l, m in enumerate(sizes):
        diag = jax.ops.segment_sum(weights, rows, m, indices_are_sorted=True)  # (every level is sorted by rows)
        packed = None
        if l == 0:
            packed, fine_overflow = as_rows(rows, cols, weights, m, row_width(d), tail_capacity(m))
        if l + 1 == len(sizes):
            levels.append(Level(rows, cols, weights, diag, jnp.zeros((m,), jnp.int32), packed))
            break
        agg = node_rank // RATIO
        levels.append(Level(rows, cols, weights, diag, agg, packed))
        if coarse is not None:
            return Hierarchy(levels + coarse.levels[1:], coarse.coarse_factor, fine_overflow | coarse.coarse_overflow,
                             coarse.coarse_overflow)
        mc = sizes[l + 1]
        cap = edge_capacity(mc, d, rows.shape[0])
        rows, cols, weights, count = _contract(agg[rows], agg[cols], weights, mc, cap, key_kind(mc, rows.shape[0]))
        coarse_overflow = coarse_overflow | (count > cap)
        node_rank = jnp.arange(mc, dtype=jnp.int32)  # aggregates are numbered along the curve
    # Coarsest level: dense, gauge fixed by a rank-one term, tiny ridge for isolated nodes.
    last = levels[-1]
    m = last.diag.shape[0]
    dense = jnp.zeros((m, m), dtype).at[last.rows, last.cols].add(-last.weights)
    dense = dense + jnp.diag(last.diag)
    scale = jnp.maximum(jnp.mean(last.diag), jnp.finfo(dtype).tiny)
    dense = dense + scale / m + 1e-10 * scale * jnp.eye(m, dtype=dtype)
    factor = jnp.linalg.cholesky(dense)
    coarse_overflow = coarse_overflow | ~jnp.all(jnp.isfinite(factor))
    return Hierarchy(levels, factor, fine_overflow | coarse_overflow, coarse_overflow)


def key_kind(m: int, e: int):
    """How `_contract` sorts e edges between m nodes: ``"packed"`` (one int64 per edge, its key
    ``row * m + col`` shifted left past its position: the sort gives the permutation too), else
    int32 keys, else int64 keys (both then find each edge's key number by binary search), else
    None (sort the pairs; without x64).  2D 1e5 at the optimum, 6e5 edges: the first contraction
    58 -> 40 ms packed against int32 keys.  Packed needs x64 and ``(m * m + 1) * 2**bits(e) <
    2**63`` (3D 1e6: m = 2.5e5 and 2.4e7 edges, where the limit is m < 5.2e5)."""
    x64 = jax.dtypes.canonicalize_dtype(jnp.int64) == jnp.int64
    if x64 and (m * m + 1) << max(e, 1).bit_length() < 2**63:
        return "packed"
    if m * m < 2**31 - 1:
        return jnp.int32
    return jnp.int64 if x64 else None


def _contract(rows, cols, weights, m: int, cap: int, key=None):
    """The edges ``(rows, cols, weights)`` between m nodes with duplicates summed and self-loops
    dropped, sorted by rows and padded to ``cap`` (padding: row m - 1, weight 0); and how many
    distinct edges there are (more than ``cap``: truncated, the caller reports it).  ``key``:
    see `key_kind`."""
    keep = (rows != cols) & (weights != 0)
    weights = jnp.where(keep, weights, 0.0)
    if key is not None:
        # One integer key per edge, sorted alone (~6x faster on CPU than sorting the edges with
        # their weights); dropped edges get the key m * m, which sorts last.
        packed_keys = key == "packed"
        wide = jnp.int64 if packed_keys else key
        code = jnp.where(keep, rows.astype(wide) * m + cols, m * m)
        if packed_keys:
            bits = max(rows.shape[0], 1).bit_length()
            packed = jnp.sort((code << bits) | jnp.arange(rows.shape[0], dtype=wide))
            order, weights = packed >> bits, weights[(packed & ((1 << bits) - 1)).astype(jnp.int32)]
        else:
            order = jnp.sort(code)
        new = jnp.concatenate([jnp.array([True]), order[1:] != order[:-1]])
        seg = jnp.cumsum(new, dtype=jnp.int32) - 1
        # Packed, the weights follow the sorted keys; else each edge finds its key's number by
        # binary search.
        summed = jax.ops.segment_sum(weights, seg if packed_keys else seg[jnp.searchsorted(order, code)], cap,
                                     indices_are_sorted=packed_keys)
        first = jax.ops.segment_min(order, seg, cap, indices_are_sorted=True)
        count = jnp.sum(new & (order < m * m))
        first_r, first_c = first // m, first % m
        valid = first < m * m
    else:
        big = jnp.int32(m)
        sr, sc, sw = jax.lax.sort((jnp.where(keep, rows, big), jnp.where(keep, cols, big), weights), num_keys=2)
        new = jnp.concatenate([jnp.array([True]), (sr[1:] != sr[:-1]) | (sc[1:] != sc[:-1])])
        seg = jnp.cumsum(new) - 1
        count = jnp.sum(new & (sr < big))
        summed = jax.ops.segment_sum(sw, seg, cap)
        first_r = jax.ops.segment_min(sr, seg, cap)
        first_c = jax.ops.segment_min(sc, seg, cap)
        valid = first_r < big
    rows = jnp.where(valid, first_r, m - 1).astype(jnp.int32)  # padding last: still sorted
    cols = jnp.where(valid, first_c, 0).astype(jnp.int32)
    return rows, cols, jnp.where(valid, summed, 0.0).astype(weights.dtype), count


def _chebyshev(level: Level, b, x, degree: int, lmax: float = 2.0, kappa: float = 8.0):
    """``degree`` steps of Chebyshev iteration for $A x = b$ preconditioned by the diagonal,
    from ``x`` (None: from zero, saving a product with the operator)."""
    inv_d = 1.0 / jnp.where(level.diag > 0, level.diag, 1.0)
    lmin = lmax / kappa
    theta, delta = 0.5 * (lmax + lmin), 0.5 * (lmax - lmin)
    sigma = theta / delta
    rho = 1.0 / sigma
    r = inv_d * (b if x is None else b - level.mv(x))
    dx = r / theta
    x = dx if x is None else x + dx
    for _ in range(degree - 1):
        r = inv_d * (b - level.mv(x))
        rho_new = 1.0 / (2 * sigma - rho)
        dx = rho_new * rho * dx + 2 * rho_new / delta * r
        rho = rho_new
        x = x + dx
    return x


def v_cycle(h: Hierarchy, b: Float[Array, " n"], degree: int = 2, boost: float = 1.5) -> Float[Array, " n"]:
    """One symmetric V-cycle applied to ``b`` (an approximation of $A^+ b$)."""

    def cycle(l, b):
        level = h.levels[l]
        if l + 1 == len(h.levels):
            bb = b - jnp.mean(b)
            z = jax.scipy.linalg.cho_solve((h.coarse_factor, True), bb)
            return z - jnp.mean(z)
        x = _chebyshev(level, b, None, degree)
        r = b - level.mv(x)
        mc = h.levels[l + 1].diag.shape[0]
        rc = jax.ops.segment_sum(r, level.aggregate, mc)
        x = x + boost * cycle(l + 1, rc)[level.aggregate]
        return _chebyshev(level, b, x, degree)

    return cycle(0, b)
