r"""Candidate neighbours of every seed, ranked by distance in the lifted space.

With $M \ge \psi_j$ and $h_j = \sqrt{M - \psi_j}$, the power distance
$|x - y_j|^2 - \psi_j = |(x, 0) - (y_j, h_j)|^2 - M$ is a Euclidean distance to lifted seeds
$\hat y_j = (y_j, h_j)$: the seeds nearest in that space are the likeliest to bound a cell, and
the k nearest are clipped first.  Each seed lifts its own pool with $M_i$ = the largest weight in
it (``Candidates.lift``), which keeps the heights small where the weights vary across the domain,
and reports ``gap``, the lifted distance to the nearest pool seed that is not a candidate: the
cell certifies itself from it (see ``diagram``).  Ranking runs in float32 (``lax.top_k`` in
float64 is 20-40x slower on CPU) and ``gap`` carries that rounding, for which the certificate
keeps a margin.

Padding uses the out-of-range index n.
"""

from __future__ import annotations

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


class Candidates(eqx.Module):
    """k candidate neighbours per seed, nearest first in the seed's lift; the seeds to check
    each cell against (``pool``, or every seed when None); every seed outside the pool is at
    Euclidean distance >= ``reach``; every pool seed that is not a candidate is at lifted
    distance >= ``gap`` (float32, rounded) in the lift by ``lift`` = the pool's largest weight."""

    index: Int[Array, "n k"]
    pool: Int[Array, "n p"] | None
    reach: Float[Array, " n"]
    gap: Float[Array, " n"]
    lift: Float[Array, " n"]


def _topk_lifted(y_i, psi_i, pool_y, pool_psi, pool_ok, k: int):
    """For a batch of seeds ``(b, d)`` and their pools ``(b, p, ...)``: positions in the pool of
    the k lifted-nearest seeds ``(b, k)`` and their distances, the lifted distance of the next one
    ``(b,)`` (inf when there is none) and the lift $M_i$ ``(b,)``.  (Written on whole batches: a
    vmapped version was 2x slower on CPU.)"""
    top = jnp.maximum(psi_i, jnp.max(jnp.where(pool_ok, pool_psi, -jnp.inf), -1))
    h_i = jnp.sqrt((top - psi_i).astype(jnp.float32))
    h = jnp.sqrt(jnp.where(pool_ok, top[:, None] - pool_psi, 0.0).astype(jnp.float32))
    d2 = jnp.sum((pool_y - y_i[:, None]) ** 2, -1) + (h - h_i[:, None]) ** 2
    d2 = jnp.where(pool_ok, d2, jnp.inf)
    m = min(k + 1, d2.shape[-1])
    neg, pos = jax.lax.top_k(-d2, m)
    gap = jnp.sqrt(-neg[:, k]) if m > k else jnp.full(top.shape, jnp.inf, jnp.float32)
    return pos[:, :k], jnp.sqrt(-neg[:, :k]), gap, top


def brute_force(
    y: Float[Array, "n d"], psi: Float[Array, " n"], k: int, rows: Int[Array, " b"] | None = None
) -> Candidates:
    """The k lifted-nearest seeds of each seed in ``rows`` (all seeds by default), in O(n) each."""
    n = y.shape[0]
    y32 = y.astype(jnp.float32)
    rows = jnp.arange(n) if rows is None else rows
    k_eff = min(k, n)

    def block(i):
        ok = jnp.arange(n)[None] != i[:, None]
        pos, dist, gap, top = _topk_lifted(y32[i], psi[i], y32[None], psi[None], ok, k_eff)
        return _pad(jnp.where(jnp.isfinite(dist), pos, n), k, n), gap, top

    b = min(256, rows.shape[0])
    blocks = -(-rows.shape[0] // b)
    padded = jnp.concatenate([rows, jnp.zeros((blocks * b - rows.shape[0],), rows.dtype)])
    index, gap, lift = (x.reshape((blocks * b,) + x.shape[2:])[: rows.shape[0]]
                        for x in jax.lax.map(block, padded.reshape(blocks, b)))
    return Candidates(index, None, jnp.full(rows.shape, jnp.inf, y.dtype), gap.astype(y.dtype), lift)


def _pad(index, k, n):
    if index.shape[-1] == k:
        return index
    return jnp.concatenate([index, jnp.full(index.shape[:-1] + (k - index.shape[-1],), n, index.dtype)], -1)


class Grid(eqx.Module):
    """Seeds bucketed in a uniform grid, and for every seed a fixed-size pool of the seeds in the
    3^d grid cells around its own.  Built once per solve: seeds do not move during Newton."""

    pool: Int[Array, "n p"]
    reach: Float[Array, " n"]  # every seed outside the pool is at Euclidean distance >= reach
    coords: Int[Array, "n d"]  # grid cell of each seed
    lo: Float[Array, " d"]  # grid cell (a, b, ...) is the box lo + size * [a, a+1] x [b, b+1] ...
    size: Float[Array, " d"]
    cells: int = eqx.field(static=True)  # per axis


def _coarse(cells: int) -> tuple[int, int]:
    """(grid cells per coarse block along an axis, coarse blocks per axis), balancing the
    (g/C)^d coarse and (2C)^d fine tests of `excluded`."""
    c = max(2, round(math.sqrt(cells / 2)))
    return c, -(-cells // c)


def _flat(coords: Int[Array, "... d"], cells: int) -> Int[Array, "..."]:
    """Flat index of grid coordinates on a ``cells^d`` grid (first axis fastest)."""
    d = coords.shape[-1]
    return coords @ jnp.array([cells**k for k in range(d)], jnp.int32)


class FarField(eqx.Module):
    """The largest weight in every grid cell and every coarse block (C^d grid cells), for
    `excluded`.  Empty blocks hold -inf."""

    fine: Float[Array, " G"]
    coarse: Float[Array, " Gc"]


def far_field(grid: Grid, psi: Float[Array, " n"]) -> FarField:
    g, d = grid.cells, grid.coords.shape[1]
    c, gc = _coarse(g)
    fine = jax.ops.segment_max(psi, _flat(grid.coords, g), g**d)
    coarse = jax.ops.segment_max(psi, _flat(grid.coords // c, gc), gc**d)
    return FarField(fine, coarse)


def excluded(grid: Grid, field: FarField, coords, centre, radius, power) -> Bool[Array, ""]:
    r"""Whether no seed outside the pool of a cell can cut it (one cell; ``coords`` its seed's
    grid cell).  The cell lies in the ball (``centre``, ``radius``) and its vertices have power
    distance at most ``power`` to their own seed; a seed j in a block Q has power at least
    $(\mathrm{dist}(centre, Q) - radius)_+^2 - \max_Q \psi$ on that ball, so Q is excluded when
    this exceeds ``power``.  Tested against every grid cell of a window of $2^d$ coarse blocks
    around the pool (minus the pool itself), and against every coarse block outside the window.
    """
    g, d = grid.cells, coords.shape[0]
    c, gc = _coarse(g)
    dtype = centre.dtype
    lo, size = grid.lo.astype(dtype), grid.size.astype(dtype)
    slack = 1e-5 * (jnp.max(jnp.abs(lo)) + g * jnp.max(size))  # float32 bucketing of the seeds
    base = (coords - 1) // c

    def ok(top, block_lo, block_hi):
        gap = jnp.linalg.norm(jnp.maximum(0.0, jnp.maximum(block_lo - slack - centre, centre - block_hi - slack)), axis=-1)
        near = jnp.maximum(gap - radius, 0.0)
        margin = 64 * jnp.finfo(dtype).eps * (near**2 + jnp.abs(top) + jnp.abs(power) + radius**2)
        return jnp.all(jnp.isneginf(top) | (near**2 - top > power + margin))

    offsets = jnp.asarray(np.array(list(itertools.product(range(2 * c), repeat=d)), np.int32))
    f = base * c + offsets
    in_grid = jnp.all((f >= 0) & (f < g), -1)
    in_pool = jnp.all(jnp.abs(f - coords) <= 1, -1)
    top = jnp.where(in_grid & ~in_pool, field.fine[_flat(jnp.clip(f, 0, g - 1), g)], -jnp.inf)
    fine_ok = ok(top, lo + f * size, lo + (f + 1) * size)

    blocks = jnp.asarray(np.array(list(itertools.product(range(gc), repeat=d)), np.int32)[:, ::-1])
    in_window = jnp.all((blocks - base >= 0) & (blocks - base <= 1), -1)
    top = jnp.where(in_window, -jnp.inf, field.coarse[_flat(blocks, gc)])
    coarse_ok = ok(top, lo + blocks * c * size, lo + (blocks + 1) * c * size)
    return fine_ok & coarse_ok


def grid_capacity(y: np.ndarray, per_cell: float) -> tuple[int, int]:
    """(cells per axis, max seeds in one cell) for concrete seeds, to size the grid's buffers."""
    n, d = y.shape
    g = max(1, int(math.ceil((n / per_cell) ** (1.0 / d))))
    lo, hi = y.min(0), y.max(0)
    size = (hi - lo) / g
    size = np.where(size > 0, size, 1.0)
    coords = np.clip(np.floor((y - lo) / size).astype(np.int64), 0, g - 1)
    ids = np.ravel_multi_index(coords.T, (g,) * d)
    return g, int(np.bincount(ids).max())


def build_grid(y: Float[Array, "n d"], cells_per_axis: int, occupancy: int) -> Grid:
    """Pools of candidates from the 3^d grid cells around each seed's cell.

    A grid cell holding more than ``occupancy`` seeds makes the pools that touch it incomplete:
    their ``reach`` is 0, so the certificate fails for those cells and they are recomputed by the
    fallback search, never silently.
    """
    n, d = y.shape
    g = cells_per_axis
    y = y.astype(jnp.float32)
    lo, hi = y.min(0), y.max(0)
    size = jnp.where(hi > lo, (hi - lo) / g, 1.0)
    coords = jnp.clip(jnp.floor((y - lo) / size).astype(jnp.int32), 0, g - 1)
    cell = _flat(coords, g)
    order = jnp.argsort(cell).astype(jnp.int32)
    sorted_cell = cell[order]
    all_cells = jnp.arange(g**d, dtype=jnp.int32)
    start = jnp.searchsorted(sorted_cell, all_cells, side="left").astype(jnp.int32)
    count = jnp.searchsorted(sorted_cell, all_cells, side="right").astype(jnp.int32) - start

    offsets = jnp.array(list(itertools.product((-1, 0, 1), repeat=d)), jnp.int32)
    around = coords[:, None, :] + offsets[None]  # (n, 3^d, d)
    inside = jnp.all((around >= 0) & (around < g), -1)
    around_cell = _flat(jnp.clip(around, 0, g - 1), g)
    slot = jnp.arange(occupancy, dtype=jnp.int32)
    ok = inside[..., None] & (slot < count[around_cell][..., None])
    pool = jnp.where(ok, order[jnp.clip(start[around_cell][..., None] + slot, 0, n - 1)], n)
    pool = pool.reshape(n, -1)

    # Distance from each seed to the edge of the searched block; no seed lies beyond the grid.
    block_lo = lo + (coords - 1) * size
    block_hi = lo + (coords + 2) * size
    gap_lo = jnp.where(coords - 1 > 0, y - block_lo, jnp.inf)
    gap_hi = jnp.where(coords + 2 < g, block_hi - y, jnp.inf)
    reach = jnp.minimum(gap_lo.min(-1), gap_hi.min(-1))
    overfull = jnp.any(inside & (count[around_cell] > occupancy), -1)
    return Grid(pool, jnp.where(overfull, 0.0, reach), coords, lo, size, g)


def from_grid(
    y: Float[Array, "n d"], psi: Float[Array, " n"], grid: Grid, k: int, rows: Int[Array, " b"] | None = None
) -> Candidates:
    """The k lifted-nearest seeds within the pool of each seed of ``rows`` (all by default)."""
    n = y.shape[0]
    y32 = jnp.concatenate([y.astype(jnp.float32), jnp.zeros((1, y.shape[1]), jnp.float32)])
    psi_pad = jnp.concatenate([psi, jnp.zeros((1,), psi.dtype)])
    k_eff = min(k, grid.pool.shape[1])

    if rows is None:  # (slices, not gathers: this is the hot path)
        pool, y_rows, psi_rows, reach, ids = grid.pool, y32[:n], psi, grid.reach, jnp.arange(n)
    else:
        pool, y_rows, psi_rows, reach, ids = grid.pool[rows], y32[rows], psi[rows], grid.reach[rows], rows
    ok = (pool < n) & (pool != ids[:, None])
    pos, dist, gap, lift = _topk_lifted(y_rows, psi_rows, y32[pool], psi_pad[pool], ok, k_eff)
    index = _pad(jnp.where(jnp.isfinite(dist), jnp.take_along_axis(pool, pos, 1), n), k, n)
    return Candidates(index, pool, reach.astype(y.dtype), gap.astype(y.dtype), lift)
