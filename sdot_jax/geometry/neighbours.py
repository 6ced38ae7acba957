r"""Candidate neighbours of every seed, ranked by distance in the lifted space.

With $M = \max_j \psi_j$ and $h_j = \sqrt{M - \psi_j}$, the power distance
$|x - y_j|^2 - \psi_j = |(x, 0) - (y_j, h_j)|^2 - M$ is a Euclidean distance to lifted seeds
$\hat y_j = (y_j, h_j)$: the seeds nearest in that space are the likeliest to bound a cell, and
the k nearest are clipped first.  Ranking runs in float32 (``lax.top_k`` in float64 is 20-40x
slower on CPU); it only orders the work, since every cell is then checked exactly (see
``diagram``) against the seeds of its pool, and by a distance bound against the rest.

Padding uses the out-of-range index n.
"""

from __future__ import annotations

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


class Candidates(eqx.Module):
    """k candidate neighbours per seed, nearest first; the seeds to check each cell against
    (``pool``, or every seed when None); every other seed is at Euclidean distance >= ``reach``."""

    index: Int[Array, "n k"]
    pool: Int[Array, "n p"] | None
    reach: Float[Array, " n"]


def lifted_heights(psi: Float[Array, " n"]) -> Float[Array, " n"]:
    return jnp.sqrt(jnp.max(psi) - psi)


def _topk_lifted(y_i, h_i, pool_y, pool_h, pool_ok, k: int):
    d2 = jnp.sum((pool_y - y_i) ** 2, -1) + (pool_h - h_i) ** 2
    d2 = jnp.where(pool_ok, d2, jnp.inf)
    neg, pos = jax.lax.top_k(-d2, k)
    return pos, jnp.sqrt(-neg)


def brute_force(
    y: Float[Array, "n d"], psi: Float[Array, " n"], k: int, rows: Int[Array, " b"] | None = None
) -> Candidates:
    """The k lifted-nearest seeds of each seed in ``rows`` (all seeds by default), in O(n) each."""
    n = y.shape[0]
    y32 = y.astype(jnp.float32)
    h32 = lifted_heights(psi).astype(jnp.float32)
    rows = jnp.arange(n) if rows is None else rows
    k_eff = min(k, n)

    def one(i):
        ok = jnp.arange(n) != i
        pos, dist = _topk_lifted(y32[i], h32[i], y32, h32, ok, k_eff)
        return _pad(jnp.where(jnp.isfinite(dist), pos, n), k, n)

    index = jax.lax.map(one, rows, batch_size=256)
    return Candidates(index, None, jnp.full(rows.shape, jnp.inf, y.dtype))


def _pad(index, k, n):
    if index.shape[-1] == k:
        return index
    return jnp.concatenate([index, jnp.full(index.shape[:-1] + (k - index.shape[-1],), n, index.dtype)], -1)


class Grid(eqx.Module):
    """Seeds bucketed in a uniform grid, and for every seed a fixed-size pool of the seeds in the
    3^d grid cells around its own.  Built once per solve: seeds do not move during Newton."""

    pool: Int[Array, "n p"]
    reach: Float[Array, " n"]  # every seed outside the pool is at Euclidean distance >= reach


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
    strides = jnp.array([g**k for k in range(d)], jnp.int32)
    cell = coords @ strides
    order = jnp.argsort(cell).astype(jnp.int32)
    sorted_cell = cell[order]
    all_cells = jnp.arange(g**d, dtype=jnp.int32)
    start = jnp.searchsorted(sorted_cell, all_cells, side="left").astype(jnp.int32)
    count = jnp.searchsorted(sorted_cell, all_cells, side="right").astype(jnp.int32) - start

    offsets = jnp.array(list(itertools.product((-1, 0, 1), repeat=d)), jnp.int32)
    around = coords[:, None, :] + offsets[None]  # (n, 3^d, d)
    inside = jnp.all((around >= 0) & (around < g), -1)
    around_cell = jnp.clip(around, 0, g - 1) @ strides
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
    return Grid(pool, jnp.where(overfull, 0.0, reach))


def from_grid(
    y: Float[Array, "n d"], psi: Float[Array, " n"], grid: Grid, k: int, rows: Int[Array, " b"] | None = None
) -> Candidates:
    """The k lifted-nearest seeds within the pool of each seed of ``rows`` (all by default)."""
    n = y.shape[0]
    y32 = jnp.concatenate([y.astype(jnp.float32), jnp.zeros((1, y.shape[1]), jnp.float32)])
    h32 = jnp.concatenate([lifted_heights(psi).astype(jnp.float32), jnp.zeros((1,), jnp.float32)])
    k_eff = min(k, grid.pool.shape[1])

    def one(i, pool):
        ok = (pool < n) & (pool != i)
        pos, dist = _topk_lifted(y32[i], h32[i], y32[pool], h32[pool], ok, k_eff)
        return _pad(jnp.where(jnp.isfinite(dist), pool[pos], n), k, n)

    if rows is None:
        index = jax.vmap(one)(jnp.arange(n), grid.pool)
        return Candidates(index, grid.pool, grid.reach.astype(y.dtype))
    index = jax.vmap(one)(rows, grid.pool[rows])
    return Candidates(index, grid.pool[rows], grid.reach[rows].astype(y.dtype))
