r"""Candidate neighbours of every seed: the seeds likeliest to bound its cell, clipped first.

Adding an affine function to the weights, $\tilde\psi_j = \psi_j - \psi_i + 2 \langle g_i,
y_j - y_i \rangle$, changes the diagram only by a translation: the cells of $\psi$ are those of
$\tilde\psi$ moved by $g_i$.  Optimal weights vary over the domain like an affine function (the
cells are displaced from their seeds by a slowly varying field) plus small local wiggles, so each
seed fits its own *gauge* $g_i$ to the weights of the seeds around it by least squares.  In its
gauge, seed j is ranked by the smaller of two squared distances, $|\delta_j|^2 + \min(\ell_j^2,
-\tilde\psi_j)$ with $\delta_j = y_j - y_i$:

- the distance between the lifted seeds $(y, \sqrt{M - \tilde\psi})$, $M = \max_j
  \tilde\psi_j$, so $\ell_j = \sqrt{M - \tilde\psi_j} - \sqrt{M}$: seeds close in the lifted
  space (in which the power distance is Euclidean) are likely neighbours;
- the power distance at $\hat x_i = y_i + g_i$, where the gauge puts the cell, $|\hat x_i - y_j|^2
  - \psi_j = |\delta_j|^2 - \tilde\psi_j + \text{const}_i$: this one finds the neighbours of
  cells far from their seeds (Diracs outside the support, the initial weights, which shrink every
  cell towards one point), where the lifted ranking missed seeds cutting the cell even among the
  512 first; alone it does worse than the lifted one on uniform points (154 vs 40 cells of 1e4
  with a cutting seed beyond the first 32 at the optimum; 73 with the smaller of both).

Ranking runs in float32 (``lax.top_k`` in float64 is 20-40x slower on CPU): it only orders the
clipping; the cells are certified in float64 (see ``diagram``).

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

from . import batches
from .gauge import AxisGauge
from .selection import first_true, smallest_in_tiers


class Candidates(eqx.Module):
    """k candidate neighbours per seed, likeliest first (module docstring); the seeds to
    check each cell against (``pool``, or every seed when None) and where the candidates sit in
    it (``slot``, padded with the pool's length); every seed outside the pool is at Euclidean
    distance >= ``reach`` (inf: the search proved by other means that none cuts the cell, see
    `open_block_pool`); ``shift`` is the seed's gauge."""

    index: Int[Array, "n k"]
    pool: Int[Array, "n p"] | None
    slot: Int[Array, "n k"]
    reach: Float[Array, " n"]
    shift: Float[Array, "n d"]  # the seed's gauge g_i


def _topk_nearest(offset, weight, shift, ok, k: int, known=None, tiers: tuple[int, ...] | None = None):
    r"""For a batch of seeds and their pools: ``offset`` $\delta_j = y_j - y_i$ ``(b, p, d)``,
    ``weight`` $\psi_j - \psi_i$ ``(b, p)``, each seed's gauge ``shift`` $g_i$ ``(b, d)``, ``ok``
    which pool slots hold a seed.  Returns the positions in the pool of the k seeds nearest by the
    smaller of the two distances of the module docstring (in the gauge, $\tilde\psi_j = \psi_j -
    \psi_i + 2 \langle g_i, \delta_j \rangle$), ``(b, k)``, padded with p where the pool holds
    fewer; the slots ``known`` ``(b, p)`` (known neighbours), if given, ahead of all others.
    With ``tiers`` (summing to k), about those k in tiers, each in pool order
    (`selection.smallest_in_tiers`: 2D pools of 272 slots, 1e5 seeds to 32 in tiers of 12 and
    20, 0.33-0.41 s against ``lax.top_k``'s 0.80-0.87 s); else all k in order.  (Written on whole batches:
    a vmapped version was 2x slower on CPU.)"""
    weight = weight + 2 * jnp.einsum("bpd,bd->bp", offset, shift.astype(offset.dtype)).astype(weight.dtype)
    offset, weight = offset.astype(jnp.float32), weight.astype(jnp.float32)
    height2 = jnp.maximum(0.0, jnp.max(jnp.where(ok, weight, -jnp.inf), -1))
    lift = jnp.sqrt(jnp.where(ok, height2[:, None] - weight, 0.0)) - jnp.sqrt(height2)[:, None]
    score = jnp.sum(offset**2, -1) + jnp.minimum(lift**2, -weight)
    if tiers is not None:
        return smallest_in_tiers(jnp.where(ok, score, jnp.inf), tiers, known)
    if known is not None:
        score = jnp.where(known, -jnp.finfo(score.dtype).max, score)
    neg, pos = jax.lax.top_k(jnp.where(ok, -score, -jnp.inf), min(k, score.shape[-1]))
    return _pad(jnp.where(jnp.isfinite(neg), pos, score.shape[-1]), k, score.shape[-1])


def _gauge(offset, weight, ok):
    r"""The slope $g$ ``(b, d)`` minimising $\sum_j (\psi_j - \psi_i + 2 \langle g, y_j - y_i
    \rangle)^2$ over each pool (float32 in, float32 out: any $g$ is a valid gauge)."""
    w = ok.astype(jnp.float32)
    gram = jnp.einsum("bpi,bpj,bp->bij", offset, offset, w)
    rhs = jnp.einsum("bpi,bp,bp->bi", offset, weight, w)
    d = offset.shape[-1]
    ridge = 1e-6 * jnp.trace(gram, axis1=-2, axis2=-1)[:, None, None] / d + jnp.finfo(jnp.float32).tiny
    return -0.5 * jnp.linalg.solve(gram + ridge * jnp.eye(d, dtype=gram.dtype), rhs[..., None])[..., 0]


def _batched(f, rows, size: int):
    """``f`` over ``rows`` in blocks of ``size`` (bounded temporaries), outputs concatenated."""
    b = min(size, rows.shape[0])
    blocks = -(-rows.shape[0] // b)
    padded = jnp.concatenate([rows, jnp.zeros((blocks * b - rows.shape[0],), rows.dtype)])
    out = jax.lax.map(f, padded.reshape(blocks, b))
    return jax.tree.map(lambda x: x.reshape((blocks * b,) + x.shape[2:])[: rows.shape[0]], out)


def brute_force(
    y: Float[Array, "n d"], psi: Float[Array, " n"], k: int, rows: Int[Array, " b"] | None = None
) -> Candidates:
    """The k candidates (ranked as in the module docstring) of each seed in ``rows`` (all seeds by
    default) among all seeds, in O(n) each; the gauge is fitted over the k seeds nearest to it."""
    n, d = y.shape
    y32 = y.astype(jnp.float32)
    rows = jnp.arange(n) if rows is None else rows

    def block(i):
        ok = jnp.arange(n)[None] != i[:, None]
        offset = y32[None] - y32[i][:, None]
        weight = psi[None] - psi[i][:, None]
        _, near = jax.lax.top_k(jnp.where(ok, -jnp.sum(offset**2, -1), -jnp.inf), min(k, n - 1))
        shift = _gauge(jnp.take_along_axis(offset, near[..., None], 1),
                       jnp.take_along_axis(weight, near, 1).astype(jnp.float32), jnp.ones(near.shape, bool))
        return _topk_nearest(offset, weight, shift, ok, k), shift.astype(y.dtype)

    index, shift = _batched(block, rows, 256)
    return Candidates(index, None, index, jnp.full(rows.shape, jnp.inf, y.dtype), shift)


def _pad(index, k, n):
    if index.shape[-1] == k:
        return index
    return jnp.concatenate([index, jnp.full(index.shape[:-1] + (k - index.shape[-1],), n, index.dtype)], -1)


class Grid(eqx.Module):
    """Seeds bucketed in a uniform grid, and for every seed a fixed-size pool of the seeds in the
    3^d grid cells around its own (its ring-1 pool), packed: ``width`` slots, the most seeds any
    such block holds (not 3^d
    times the fullest grid cell: 261 slots instead of 378 for 1e4 uniform seeds in 2D).
    Built once per solve: seeds do not move during Newton."""

    pool: Int[Array, "n p"]
    reach: Float[Array, " n"]  # every seed outside the pool is at Euclidean distance >= reach
    coords: Int[Array, "n d"]  # grid cell of each seed
    lo: Float[Array, " d"]  # grid cell (a, b, ...) is the box lo + size * [a, a+1] x [b, b+1] ...
    size: Float[Array, " d"]
    order: Int[Array, " n"]  # seeds sorted by grid cell...
    position: Int[Array, " n"]  # ... seed i is order[position[i]]
    start: Int[Array, " G"]  # ... grid cell c holds order[start[c] : start[c] + count[c]]
    count: Int[Array, " G"]
    axes: AxisGauge  # the seeds bucketed are axes.seeds(y) (`gauge`): `diagram.power_diagram` searches there
    cells: tuple[int, ...] = eqx.field(static=True)  # per axis
    width: int = eqx.field(static=True)  # pool slots


def scaled(grid: Grid, factor: Float[Array, ""]) -> Grid:
    """The grid of the seeds ``factor * y`` (factor > 0): the same buckets and pools, scaled."""
    return eqx.tree_at(lambda g: (g.lo, g.size, g.reach), grid,
                       (grid.lo * factor.astype(grid.lo.dtype), grid.size * factor.astype(grid.size.dtype),
                        grid.reach * factor.astype(grid.reach.dtype)))


def _coarse(cells: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(grid cells per coarse block along every axis, coarse blocks per axis): C ~ sqrt(g / 2),
    g the geometric mean of the cells per axis (`pool_bounds` tests the coarse blocks beyond a
    window of grid cells, `open_block_pool` all coarse blocks, then the grid cells of a few)."""
    c = max(2, round(math.sqrt(math.prod(cells) ** (1 / len(cells)) / 2)))
    return c, tuple(-(-g // c) for g in cells)


def _flat(coords: Int[Array, "... d"], cells: tuple[int, ...]) -> Int[Array, "..."]:
    """Flat index of grid coordinates on a ``cells[0] x cells[1] x ...`` grid (first axis
    fastest).  Summed axis by axis: an integer matrix product per cell is a dot of its own."""
    return sum(coords[..., k] * math.prod(cells[:k]) for k in range(len(cells)))


def _inside(coords: Int[Array, "... d"], cells: tuple[int, ...]) -> Bool[Array, "..."]:
    return jnp.all((coords >= 0) & (coords < jnp.array(cells, jnp.int32)), -1)


def _clip(coords: Int[Array, "... d"], cells: tuple[int, ...]) -> Int[Array, "... d"]:
    return jnp.clip(coords, 0, jnp.array(cells, jnp.int32) - 1)


class FarField(eqx.Module):
    r"""Upper bounds of the weights over every grid cell and every coarse block (C^d grid
    cells): $\psi_j \le$ ``top`` $+ 2 \langle$ ``slope``, $y_j - c_Q \rangle$
    (an affine bound, $c_Q$ the block's centre) and $\psi_j \le$ ``largest``, for the seeds of
    block Q.  Empty blocks hold -inf."""

    fine_top: Float[Array, " G"]
    fine_slope: Float[Array, "G d"]
    fine_largest: Float[Array, " G"]
    coarse_top: Float[Array, " Gc"]
    coarse_slope: Float[Array, "Gc d"]
    coarse_largest: Float[Array, " Gc"]


def _affine_bound(y, psi, block, count: int, centre):
    """Least-squares affine fit of ``psi`` per block, lifted by its largest residual."""
    d = y.shape[1]
    z = jnp.concatenate([jnp.ones_like(y[:, :1]), 2 * (y - centre[block])], 1)  # (n, d+1)
    gram = jax.ops.segment_sum(z[:, :, None] * z[:, None, :], block, count)
    rhs = jax.ops.segment_sum(z * psi[:, None], block, count)
    ridge = 1e-9 * (1.0 + jnp.trace(gram, axis1=1, axis2=2))[:, None, None] * jnp.eye(d + 1, dtype=y.dtype)
    coef = jnp.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
    residual = psi - jnp.sum(z * coef[block], 1)
    return coef[:, 0] + jax.ops.segment_max(residual, block, count), coef[:, 1:], jax.ops.segment_max(psi, block, count)


def far_field(grid: Grid, psi: Float[Array, " n"], y: Float[Array, "n d"]) -> FarField:
    g = grid.cells
    c, gc = _coarse(g)
    lo, size = grid.lo.astype(y.dtype), grid.size.astype(y.dtype)
    fine_centres = lo + (_unflat(g) + 0.5) * size
    coarse_centres = lo + (_unflat(gc) + 0.5) * c * size
    fine = _affine_bound(y, psi, _flat(grid.coords, g), math.prod(g), fine_centres)
    coarse = _affine_bound(y, psi, _flat(grid.coords // c, gc), math.prod(gc), coarse_centres)
    return FarField(*fine, *coarse)


def _unflat(cells: tuple[int, ...]) -> Int[Array, "G d"]:
    """Grid coordinates of every flat index, in order (inverse of `_flat`)."""
    flat = jnp.arange(math.prod(cells), dtype=jnp.int32)
    return jnp.stack([(flat // math.prod(cells[:k])) % g for k, g in enumerate(cells)], -1)


def _coarse_blocks(grid: Grid, field: FarField, dtype):
    """Every coarse block's coordinates and (top, slope, largest, lo, hi), its box widened by the
    bucketing slack (`_slack`); empty blocks have top = -inf."""
    c, gc = _coarse(grid.cells)
    lo, size = grid.lo.astype(dtype), grid.size.astype(dtype)
    slack = _slack(grid, dtype)
    blocks = _unflat(gc)
    flat = _flat(blocks, gc)
    return blocks, (field.coarse_top[flat], field.coarse_slope[flat], field.coarse_largest[flat],
                    lo + blocks * c * size - slack, lo + (blocks + 1) * c * size + slack)


def _fine_blocks(grid: Grid, field: FarField, coords, real, dtype):
    """The flat index of the grid cells at ``coords`` (clipped to the grid) and their (top, slope,
    largest, lo, hi), their boxes widened by the bucketing slack; cells outside the grid, or not
    ``real``, have top = -inf."""
    flat = _flat(_clip(coords, grid.cells), grid.cells)
    lo, size = grid.lo.astype(dtype), grid.size.astype(dtype)
    slack = _slack(grid, dtype)
    top = jnp.where(_inside(coords, grid.cells) & real, field.fine_top[flat], -jnp.inf)
    return flat, (top, field.fine_slope[flat], field.fine_largest[flat],
                  lo + coords * size - slack, lo + (coords + 1) * size + slack)


def _slack(grid: Grid, dtype):
    """How far a seed may lie outside its grid cell's box: it was bucketed in float32."""
    return 1e-5 * (jnp.max(jnp.abs(grid.lo.astype(dtype))) + max(grid.cells) * jnp.max(grid.size.astype(dtype)))


def squared_norms(v):
    """``|v|^2`` over the last axis, summed axis by axis: XLA fuses that into what follows, where
    a sum over the last axis is a reduction of its own on CPU (the diagram runs thousands)."""
    return sum(v[..., a] ** 2 for a in range(v.shape[-1]))


def _box_gap(lo_a, hi_a, lo_b, hi_b):
    """Distances between boxes (broadcast; the last axis is d); a point is the box [p, p]."""
    return jnp.sqrt(_squared_box_gap(lo_a, hi_a, lo_b, hi_b))


def live_box(vertices, live):
    """The bounding box ``(lo, hi)`` of the ``live`` vertices (lo = inf, hi = -inf when none)."""
    lo = jnp.min(jnp.where(live[:, None], vertices, jnp.inf), 0)
    return lo, jnp.max(jnp.where(live[:, None], vertices, -jnp.inf), 0)


def _squared_box_gap(lo_a, hi_a, lo_b, hi_b):
    return squared_norms(jnp.maximum(0.0, jnp.maximum(lo_b - hi_a, lo_a - hi_b)))


def _lower_bounds(lo, hi, top, slope, largest, block_lo, block_hi):
    r"""Lower bounds of $|x - y_j|^2 - \psi_j$ over every x of the box ``[lo, hi]`` (a point: lo =
    hi) and the seeds j of each block Q (see `_blocks_excluded_at`):
    $\mathrm{dist}(x + s_Q, Q)^2 - |s_Q|^2 - 2 \langle s_Q, x - c_Q \rangle - \mathrm{top}_Q$, with
    $\langle s, x \rangle \le \sum_a \max(s_a lo_a, s_a hi_a)$ over the box, and
    $\mathrm{dist}(x, Q)^2 - \mathrm{largest}_Q$.  The box broadcasts against the blocks."""
    d = block_lo.shape[-1]
    # Per block, then per box and block summed axis by axis (XLA fuses those sums into the test).
    constant = squared_norms(slope) - jnp.sum(slope * (block_lo + block_hi), -1) + top  # (B,)
    tilt = sum(jnp.maximum(lo[..., a] * slope[:, a], hi[..., a] * slope[:, a]) for a in range(d))
    affine = _squared_box_gap(lo + slope, hi + slope, block_lo, block_hi) - 2 * tilt - constant
    return jnp.maximum(affine, _squared_box_gap(lo, hi, block_lo, block_hi) - largest)


def _above(bound, own, top, slope, vertices):
    """Whether ``bound`` exceeds ``own`` beyond the rounding of both."""
    margin = 64 * jnp.finfo(vertices.dtype).eps * (jnp.abs(bound) + jnp.abs(top) + jnp.abs(own)
                                                  + jnp.sum(jnp.abs(slope), -1) * jnp.max(jnp.abs(vertices)))
    return bound > own + margin


def _blocks_excluded_at(top, slope, largest, block_lo, block_hi, vertices, live, own) -> Bool[Array, " B"]:
    r"""Whether each block Q (its `FarField` bounds and box) cannot cut the cell of seed i, whose
    ``vertices`` (absolute, where ``live``) have power distance ``own`` $= |x - y_i|^2 - \psi_i$.

    For the seeds j of Q, $f_j(x) = |x - y_j|^2 - \psi_j - |x - y_i|^2 + \psi_i$ is affine in
    $x$, so $f_j > 0$ on the cell (and on any part of it) when it is at every vertex: Q is
    excluded when, at every vertex, a lower bound of $|x - y_j|^2 - \psi_j$ over Q exceeds
    ``own``.  With $\psi_j \le$ top$_Q + 2 \langle s_Q, y_j - c_Q \rangle$ (s = slope$_Q$: the
    block's own gauge), $|x - y_j|^2 - \psi_j \ge \mathrm{dist}(x + s_Q, Q)^2 - |s_Q|^2 - 2
    \langle s_Q, x - c_Q \rangle - \mathrm{top}_Q$, and also $\ge \mathrm{dist}(x, Q)^2 -
    \mathrm{largest}_Q$.  Tight for cells stretched across many grid cells (the tails of a
    Gaussian mixture, Diracs near a line), where a ball around the cell covers every block.
    Empty blocks (top = -inf) are excluded."""
    at = vertices[:, None, :]
    bound = _lower_bounds(at, at, top, slope, largest, block_lo, block_hi)  # (V, B)
    return jnp.isneginf(top) | jnp.all(_above(bound, own[:, None], top, slope, vertices) | ~live[:, None], 0)


def _blocks_excluded(top, slope, largest, block_lo, block_hi, vertices, live, own, budget: int) -> Bool[Array, " B"]:
    """`_blocks_excluded_at`, vertex by vertex, on at most ``budget`` blocks: those that the same
    bounds over the polygon's bounding box do not exclude (O(d) per block); blocks beyond the
    budget count as not excluded."""
    if budget >= top.shape[0]:
        return _blocks_excluded_at(top, slope, largest, block_lo, block_hi, vertices, live, own)
    lo, hi = live_box(vertices, live)
    worst = jnp.max(jnp.where(live, own, -jnp.inf))  # own is convex: its maximum is at a vertex
    bound = _lower_bounds(lo, hi, top, slope, largest, block_lo, block_hi)  # (B,)
    boxed = jnp.isneginf(top) | _above(bound, worst, top, slope, vertices)
    pick = first_true(~boxed, budget)
    at = jnp.minimum(pick, top.shape[0] - 1)
    tested = _blocks_excluded_at(top[at], slope[at], largest[at], block_lo[at], block_hi[at], vertices, live, own)
    return boxed.at[pick].set(tested, mode="drop")


#: Blocks per level tested vertex by vertex in `_open_blocks` (after a bounding-box test), by
#: dimension: coarse blocks, then grid cells.  Trial diagram at the optimum, 1e4 Diracs: Gaussian
#: 2D 0.53 -> 0.41 s, near a line 0.33 -> 0.27 s, near a plane 2.44 -> 2.30 s (2.45 s with 3D's
#: 128 grid cells, all of them there), the same cells certified; uniform 2D 1e5 unchanged.
VERTEX_TESTED = {1: (8, 16), 2: (32, 48), 3: (24, 64)}
#: Coarse blocks (C^d grid cells, `_coarse`) that `_open_blocks` opens at most per cell (for the
#: block stage's pools and `within_ring_pool` in the first pass and the pool stage; measured on
#: the block stage).  3D: each costs C^3 grid-cell tests at 64 vertices (1e5 uniform Diracs, C =
#: 3: solve 100.9 s with 32, 93.5 s with 16, 91.0 s with 8; 1e4 near a plane 32.2 s with 32,
#: 30.9 s with 16).
OPEN_COARSE = {1: 4, 2: 16, 3: 16}


def _open_blocks(grid: Grid, field: FarField, seed, weight, vertices, live):
    """The grid cells that may cut a polygon (`_blocks_excluded_at`), in two levels: every coarse
    block, then the grid cells of the first `OPEN_COARSE` coarse blocks left open.  Returns their
    flat indices and coordinates (``(m C^d,)``, ``(m C^d, d)``), which of them are open (grid
    cells of the padding are not), and whether no other coarse block was open."""
    d = grid.coords.shape[1]
    dtype = vertices.dtype
    own = jnp.sum((vertices - seed) ** 2, -1) - weight
    c, _ = _coarse(grid.cells)
    blocks, coarse = _coarse_blocks(grid, field, dtype)
    budget_coarse, budget_fine = VERTEX_TESTED[min(d, 3)]
    open_coarse = ~_blocks_excluded(*coarse, vertices, live, own, budget_coarse)
    m = min(OPEN_COARSE[min(d, 3)], open_coarse.shape[0])
    picked = first_true(open_coarse, m)  # padded with the coarse block count
    offsets = jnp.asarray(np.array(list(itertools.product(range(c), repeat=d)), np.int32))
    coords = (blocks[jnp.minimum(picked, blocks.shape[0] - 1)][:, None, :] * c + offsets[None]).reshape(-1, d)
    flat, fine = _fine_blocks(grid, field, coords, jnp.repeat(picked < blocks.shape[0], offsets.shape[0]), dtype)
    return flat, coords, ~_blocks_excluded(*fine, vertices, live, own, budget_fine), jnp.sum(open_coarse) <= m


def open_block_pool(grid: Grid, field: FarField, seed, weight, vertices, live, width: int
                    ) -> tuple[Int[Array, " width"], Bool[Array, ""]]:
    r"""The seeds of every grid cell that may cut a polygon (one cell of seed i: ``seed``,
    ``weight``, ``vertices`` absolute where ``live``), packed into ``width`` slots padded with
    n, and whether the search is complete: no seed outside the pool cuts the polygon, nor any
    part of it (`_blocks_excluded_at`).  Two levels (`_open_blocks`): every coarse block, then
    the grid cells of the coarse blocks left open (at most `OPEN_COARSE`), so O(G / C^d + C^d)
    per cell over the whole grid, with no ring of grid cells fixed around the seed: the long
    cells of Diracs near a line defeat any such ring (1e4 Diracs, 2D, at the optimum: 6876
    cells left by the first pass before `within_ring_pool`, 1769 after; here at most 6 coarse
    blocks, 17 grid cells and 193 seeds)."""
    flat, _, open_fine, complete = _open_blocks(grid, field, seed, weight, vertices, live)
    pool, fits = _packed(grid, flat, jnp.where(open_fine, grid.count[flat], 0), width)
    return pool, fits & complete


def within_ring_pool(grid: Grid, field: FarField, coords, seed, weight, vertices, live) -> Bool[Array, ""]:
    """Whether no seed outside the ring-1 pool (the 3^d grid cells around ``coords``, the seed's
    grid cell) can cut a polygon: every grid cell that `_open_blocks` leaves open is one of them.
    The first pass's bounds per grid cell (`within_pool_bounds`) fail where the weights are far
    from a translation over a few grid cells (Diracs drawn from a Gaussian, at the optimum: 8318
    of 1e4 cells), and this per-vertex test, ~10x cheaper than the block stage's new pool and
    clipping, certifies most of them."""
    _, near, open_fine, complete = _open_blocks(grid, field, seed, weight, vertices, live)
    in_ring = jnp.all(jnp.abs(near - coords) <= 1, -1)
    return complete & jnp.all(in_ring | ~open_fine)


class PoolBounds(eqx.Module):
    r"""The far field of the first pass, per grid cell G rather than per seed: for two gauges $s$
    (the mean of G's seeds' gauges, and none), in which seed j's weight reads $\tilde\psi_j =
    \psi_j + 2 \langle s, y_j \rangle$ and a point $x$ reads $u = x - s$ (this changes every
    power distance by the same $2 \langle s, x \rangle - |s|^2$), the grid blocks outside G's
    ring-1 pool are split into the ``hard`` ones, nearest in that bound, kept for each cell to test
    on its own box (`within_pool_bounds`), and the rest, summarised by ``lower``: for every $u$ in
    G's box widened by ``widen[l]`` grid cells, $|u - y_j|^2 - \tilde\psi_j \ge$ ``lower[l]`` for
    the seeds j of the rest (the gauge moves the cells back towards their seeds: it is their
    displacement, fitted to the weights, see the module docstring).  Built in O(grid cells x
    blocks), shared by the ~24 seeds of a grid cell (2D): a per-seed test (the former `excluded`), on
    every block, cost as much as clipping (1e5 uniform seeds in 2D: 1.1 s of a 2.8 s first
    pass)."""

    gauge: Float[Array, "G 2 d"]
    lower: Float[Array, "G 2 L"]
    hard_bound: Float[Array, "G 2 K"]  # upper bound of tilde psi_j over each hard block
    hard_lo: Float[Array, "G 2 K d"]  # its box
    hard_hi: Float[Array, "G 2 K d"]
    hard_coarse: Bool[Array, "G 2 K"]  # a coarse block, whose seeds within the window are not its own
    widen: tuple[float, ...] = eqx.field(static=True)
    reach: int = eqx.field(static=True)  # the window: grid cells within `reach` of G


#: Grid cells of widening of each G's box in `PoolBounds` (a cell, moved by -s, must lie in one).
WIDEN = (0.125, 0.25, 0.5, 1.0)
#: Grid cells around the ring-1 pool whose blocks `pool_bounds` tests one by one (coarse blocks
#: beyond).
FINE_RING = 2
#: Blocks per grid cell and gauge that each cell tests on its own box, by dimension (at the optimum
#: of 1e5 uniform seeds in 2D, cells left uncertified by the first pass: 13866 with 4, 1752 with
#: 16, 1369 with 32; 1e4 in 3D: 3131 with 32, 2116 with 64, 2016 with 128).
HARD = {1: 32, 2: 32, 3: 64}


def _gap_to_block(u_lo, u_hi, block_lo, block_hi, coarse, window_lo, window_hi):
    """Lower bound of |u - y_j| for u in the box [u_lo, u_hi] and the seeds j of blocks: the gap
    between the boxes, and for a coarse block (whose seeds inside the window are counted by the
    fine blocks) at least the distance from the box to the window's outside."""
    outside = jnp.maximum(0.0, jnp.min(jnp.minimum(u_lo - window_lo, window_hi - u_hi), -1))
    gap = _box_gap(u_lo, u_hi, block_lo, block_hi)
    return jnp.where(coarse, jnp.maximum(gap, outside[..., None]), gap)


def _window(grid: Grid, coords, reach: int, slack, dtype):
    """The box of the grid cells within ``reach`` of ``coords``, shrunk by the bucketing slack: a
    seed bucketed outside them lies outside it."""
    lo, size = grid.lo.astype(dtype), grid.size.astype(dtype)
    return lo + (coords - reach) * size + slack, lo + (coords + reach + 1) * size - slack


def pool_bounds(grid: Grid, field: FarField, shift: Float[Array, "n d"], ring: int = 1, fine_ring: int = FINE_RING,
                widen: tuple[float, ...] = WIDEN, hard: int | None = None) -> PoolBounds:
    r"""The bounds of `PoolBounds`.  Over a block Q of centre $c_Q$ and half-widths $r_Q$,
    $\tilde\psi_j \le 2 \langle s, c_Q \rangle + \min(\mathrm{top}_Q + 2 h_Q(\mathrm{slope}_Q +
    s), \mathrm{largest}_Q + 2 h_Q(s))$ with $h_Q(v) = \sum_a |v_a| r_{Q,a}$ (the affine bound of
    `FarField` over the block's box), and $|u - y_j| \ge$ `_gap_to_block`.  Blocks: every grid
    cell within ``ring + fine_ring`` of G outside its pool, then every coarse block.  The
    ``hard`` blocks are those of least bound on the widest box."""
    g, d = grid.cells, grid.coords.shape[1]
    dtype = shift.dtype
    lo, size = grid.lo.astype(dtype), grid.size.astype(dtype)
    slack = _slack(grid, dtype)
    hard = HARD[min(d, 3)] if hard is None else hard
    cell = _flat(grid.coords, g)
    count = jax.ops.segment_sum(jnp.ones_like(cell), cell, math.prod(g))
    mean_shift = jax.ops.segment_sum(shift, cell, math.prod(g)) / jnp.maximum(count, 1)[:, None]
    gauges = jnp.stack([mean_shift, jnp.zeros_like(mean_shift)], 1)  # (G, 2, d)
    reach = ring + fine_ring
    offsets = np.array(list(itertools.product(range(-reach, reach + 1), repeat=d)), np.int32)
    offsets = jnp.asarray(offsets[np.abs(offsets).max(1) > ring])
    _, coarse = _coarse_blocks(grid, field, dtype)  # the same for every grid cell
    is_coarse = jnp.arange(offsets.shape[0] + coarse[0].shape[0]) >= offsets.shape[0]
    hard = min(hard, is_coarse.shape[0])
    widths = jnp.asarray(widen, dtype)

    def one(coords, gauge):
        _, fine = _fine_blocks(grid, field, coords + offsets, True, dtype)
        top, slope, largest, block_lo, block_hi = (jnp.concatenate(pair) for pair in zip(fine, coarse))
        mid, half = 0.5 * (block_lo + block_hi), 0.5 * (block_hi - block_lo)
        window = _window(grid, coords, reach, slack, dtype)
        own_lo, own_hi = lo + coords * size, lo + (coords + 1) * size

        def per_gauge(s):
            bound = 2 * mid @ s + jnp.minimum(top + 2 * jnp.sum(jnp.abs(slope + s) * half, -1),
                                              largest + 2 * jnp.abs(s) @ half.T)
            bound = jnp.where(jnp.isneginf(top), -jnp.inf, bound)  # empty blocks
            gaps = jax.vmap(lambda m: _gap_to_block(own_lo - m * size, own_hi + m * size, block_lo, block_hi,
                                                    is_coarse, *window))(widths)  # (L, B)
            values = gaps**2 - bound
            # (Selected in float32, which XLA's CPU top_k does without a sort: 93 of a 950 ms
            # trial diagram in float64, 1e5 seeds in 2D; any selection is sound.)
            _, worst = jax.lax.top_k(-values[-1].astype(jnp.float32), hard)
            rest = jnp.min(values.at[:, worst].set(jnp.inf), -1)
            return rest, bound[worst], block_lo[worst], block_hi[worst], is_coarse[worst]

        return jax.vmap(per_gauge)(gauge)

    out = jax.lax.map(lambda a: one(*a), (_unflat(g), gauges), batch_size=min(256, math.prod(g)))
    return PoolBounds(gauges, *out, widen=tuple(widen), reach=reach)


def within_pool_bounds(bounds: PoolBounds, grid: Grid, coords, seed, weight, vertices, live) -> Bool[Array, ""]:
    r"""Whether no seed outside the ring-1 pool of a cell can cut it (one cell; ``coords``,
    ``seed``, ``weight``: its seed's grid cell, position and weight; ``vertices`` absolute, where
    ``live``).  In one of the gauges $s$ of its grid cell (`PoolBounds`), the power distance of
    its own seed, $\max_x |x - s - y_i|^2 - \psi_i - 2 \langle s, y_i \rangle$ over the vertices
    (it is convex, so its maximum over the cell is at a vertex), is below the bound of the
    hard blocks over the cell's bounding box and below that of the rest over a widened box of
    its grid cell that holds the cell."""
    g = grid.cells
    dtype = vertices.dtype
    lo, size = grid.lo.astype(dtype), grid.size.astype(dtype)
    cell = _flat(coords, g)
    own_lo, own_hi = lo + coords * size, lo + (coords + 1) * size
    v_lo, v_hi = live_box(vertices, live)
    gauge = bounds.gauge[cell].astype(dtype)  # (2, d)
    beyond = jnp.maximum(own_lo - (v_lo - gauge), v_hi - gauge - own_hi)  # (2, d)
    fits = jnp.all(beyond[:, None] <= jnp.asarray(bounds.widen, dtype)[:, None] * size, -1)  # (2, L)
    moved = vertices[None] - gauge[:, None] - seed  # (2, V, d)
    power = jnp.max(jnp.where(live[None], jnp.sum(moved**2, -1), -jnp.inf), 1) - weight - 2 * jnp.sum(gauge * seed, -1)  # (2,)
    window = _window(grid, coords, bounds.reach, _slack(grid, dtype), dtype)
    gaps = jax.vmap(lambda s, b_lo, b_hi, coarse: _gap_to_block(v_lo - s, v_hi - s, b_lo, b_hi, coarse, *window))(
        gauge, bounds.hard_lo[cell], bounds.hard_hi[cell], bounds.hard_coarse[cell])  # (2, K)
    hard = gaps**2 - bounds.hard_bound[cell]
    rest = bounds.lower[cell]  # (2, L)
    scale = jnp.max(jnp.abs(vertices)) + jnp.max(jnp.abs(gauge)) + jnp.max(jnp.abs(seed))
    eps = 64 * jnp.finfo(dtype).eps
    base = (jnp.abs(power) + jnp.abs(weight) + scale**2)[:, None]  # (2, 1)
    hard_ok = jnp.all(hard >= power[:, None] + eps * (base + jnp.abs(hard)), -1)
    rest_ok = jnp.any(fits & (rest >= power[:, None] + eps * (base + jnp.abs(rest))), -1)
    return jnp.any(hard_ok & rest_ok)


#: The grid's longest to shortest axis ratio at most (Diracs on a segment or plane: the flat axes
#: are stretched to this, to keep the cell count finite).
MAX_ASPECT = 1e3


def cells_per_axis(extent: np.ndarray, n: int, per_cell: float) -> tuple[int, ...]:
    """Grid cells per axis for ``n`` seeds spread over a box of sides ``extent``: near-cubic grid
    cells holding ``per_cell`` seeds on average (a grid of equal counts per axis over a 10:1 box
    has 10:1 cells, whose ring-1 pools reach a tenth as far along the long axis)."""
    d = len(extent)
    extent = np.maximum(np.asarray(extent, np.float64), np.max(extent) / MAX_ASPECT)
    if not np.all(extent > 0):
        extent = np.ones(d)
    side = (np.prod(extent) * per_cell / n) ** (1.0 / d)
    return tuple(int(max(1, math.ceil(e / side - 1e-9))) for e in extent)


CROWDED = 1.5  # seeds that see this many times per_cell in their grid cell get finer cells


def grid_capacity(y: np.ndarray, per_cell: float) -> tuple[tuple[int, ...], int]:
    """(cells per axis, pool width) for concrete seeds, to size the grid's buffers: the most seeds
    in the 3^d grid cells around a seed's own, bucketed in float32 as `build_grid` does, plus a
    margin of 4."""
    n, d = y.shape
    y = np.asarray(y, np.float32)
    lo, hi = y.min(0), y.max(0)
    target = per_cell
    for _ in range(3):
        g = cells_per_axis(hi.astype(np.float64) - lo, n, target)
        cells = np.array(g, np.float32)
        size = np.where(hi > lo, (hi - lo) / cells, np.float32(1.0))
        coords = np.clip(np.floor((y - lo) / size).astype(np.int64), 0, np.array(g) - 1)
        counts = np.bincount(np.ravel_multi_index(coords.T, g), minlength=math.prod(g)).reshape(g)
        # The occupancy a seed sees, sum(count^2) / n (per_cell + 1 for uniform seeds), sets what
        # ranking and certifying its cell cost; a crowded cloud (a Gaussian's core) gets finer
        # cells, down to per_cell / 16.  (Refining until the fullest block, which sets the pools'
        # padded width, is uniform's made 1e4 Gaussian Diracs slower: 69 s against 56 s, tiny
        # cells in the tails failing their certificate.)
        seen = float(np.sum(counts.astype(np.float64) ** 2)) / n
        if seen < CROWDED * per_cell or target <= per_cell / 16:
            break
        target = max(target * per_cell / seen, per_cell / 16)
    padded = np.pad(counts, 1)
    block = sum(padded[tuple(slice(o, o + c) for o, c in zip(offset, g))]
                for offset in itertools.product(range(3), repeat=d))
    return g, int(block[counts > 0].max()) + 4


def build_grid(y: Float[Array, "n d"], cells_per_axis: tuple[int, ...], width: int,
               axes: AxisGauge | None = None) -> Grid:
    """Bucket the seeds, in the axis gauge ``axes`` if given (`gauge.axis_gauge`), and gather every
    seed's ring-1 pool (`_block_pools`); the cells per axis and pool width from
    `grid_capacity`."""
    n, d = y.shape
    axes = AxisGauge.identity(d, y.dtype) if axes is None else axes
    y = axes.seeds(y)
    g = tuple(cells_per_axis)
    y = y.astype(jnp.float32)
    lo, hi = y.min(0), y.max(0)
    size = jnp.where(hi > lo, (hi - lo) / jnp.array(g, jnp.float32), 1.0)
    coords = _clip(jnp.floor((y - lo) / size).astype(jnp.int32), g)
    cell = _flat(coords, g)
    order = jnp.argsort(cell).astype(jnp.int32)
    sorted_cell = cell[order]
    all_cells = jnp.arange(math.prod(g), dtype=jnp.int32)
    start = jnp.searchsorted(sorted_cell, all_cells, side="left").astype(jnp.int32)
    count = jnp.searchsorted(sorted_cell, all_cells, side="right").astype(jnp.int32) - start
    position = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    grid = Grid(jnp.zeros((n, 0), jnp.int32), jnp.zeros((n,), jnp.float32), coords, lo, size, order, position, start,
                count, axes, g, width)
    # Every seed of a grid cell has the same pool: packed once per grid cell, then copied (1e5
    # uniform seeds: the grid build 477 -> 92 ms in 2D, 2037 -> 322 ms in 3D).
    cell_pool, fits = _block_pools(grid, _unflat(g))
    reach = jnp.where(fits[cell], _reach(grid, y, coords), 0.0)
    return eqx.tree_at(lambda t: (t.pool, t.reach), grid, (cell_pool[cell], reach))


def _block_pools(grid: Grid, coords: Int[Array, "b d"]) -> tuple[Int[Array, "b p"], Bool[Array, " b"]]:
    """The seeds of the 3^d grid cells around each of ``coords``, grid cell by grid cell, each
    in `Grid.order`, in ``grid.width`` slots padded with n; and whether
    they all fit."""
    n, d = grid.coords.shape
    g = grid.cells
    width = grid.width
    offsets = jnp.array(list(itertools.product(range(-1, 2), repeat=d)), jnp.int32)
    around = coords[:, None, :] + offsets[None]  # (b, 3^d, d)
    inside = _inside(around, g)
    around_cell = _flat(_clip(around, g), g)
    count = jnp.where(inside, grid.count[around_cell], 0)
    return jax.vmap(lambda cells, count: _packed(grid, cells, count, width))(around_cell, count)


def _packed(grid: Grid, cells: Int[Array, " B"], count: Int[Array, " B"], width: int
            ) -> tuple[Int[Array, " width"], Bool[Array, ""]]:
    """The first ``count`` seeds of each grid cell of ``cells`` (flat), cell after cell, each in
    `Grid.order`, in ``width`` slots padded with n; and whether they all fit."""
    n = grid.coords.shape[0]
    end = jnp.cumsum(count)  # slots [end - count, end) hold the seeds of each grid cell
    slot = jnp.arange(width, dtype=jnp.int32)
    which = jnp.searchsorted(end, slot, side="right")
    ok = which < cells.shape[0]
    which = jnp.minimum(which, cells.shape[0] - 1)
    begin = (end - count)[which]
    pool = jnp.where(ok, grid.order[jnp.clip(grid.start[cells[which]] + slot - begin, 0, n - 1)], n)
    return pool, end[-1] <= width


def _reach(grid: Grid, y_rows, coords) -> Float[Array, " b"]:
    """The distance from each seed ``y_rows`` to the edge of the 3^d grid cells around its own
    (``coords``), inf at the grid's border."""
    ring = 1
    y_rows = y_rows.astype(jnp.float32)
    block_lo = grid.lo + (coords - ring) * grid.size
    block_hi = grid.lo + (coords + ring + 1) * grid.size
    gap_lo = jnp.where(coords - ring > 0, y_rows - block_lo, jnp.inf)
    gap_hi = jnp.where(coords + ring + 1 < jnp.array(grid.cells, jnp.int32), block_hi - y_rows, jnp.inf)
    return jnp.minimum(gap_lo.min(-1), gap_hi.min(-1))


def pool_slots(grid: Grid, rows: Int[Array, " b"], index: Int[Array, "b m"]) -> Int[Array, "b m"]:
    """Where the seeds ``index`` (padded with n) sit in the ring-1 pools of ``rows`` (as
    `_block_pools` packs them: grid cell by grid cell, each in `Grid.order`), or the pool's width
    when they are not in it.  O(m + 3^d) per row, where matching ids would cost O(m x pool)."""
    n, d = grid.coords.shape
    g = grid.cells
    width, ring = grid.width, 1
    side = 2 * ring + 1
    coords = grid.coords[rows]
    offsets = jnp.array(list(itertools.product(range(-ring, ring + 1), repeat=d)), jnp.int32)
    around = coords[:, None, :] + offsets[None]
    count = jnp.where(_inside(around, g), grid.count[_flat(_clip(around, g), g)], 0)
    begin = jnp.cumsum(count, -1) - count  # (b, side^d)
    member = jnp.minimum(index, n - 1)
    step = grid.coords[member] - coords[:, None, :]  # (b, m, d)
    near = (index < n) & jnp.all(jnp.abs(step) <= ring, -1)
    block = sum((step[..., a] + ring) * side ** (d - 1 - a) for a in range(d))  # (not a batched dot: see `_flat`)
    block = jnp.clip(block, 0, side**d - 1)
    within = grid.position[member] - grid.start[_flat(grid.coords[member], g)]
    slot = jnp.take_along_axis(begin, block, 1) + within
    return jnp.where(near & (slot < width), slot, width)


def pool_gauges(grid: Grid, y: Float[Array, "n d"], psi: Float[Array, " n"]) -> Float[Array, "G d"]:
    r"""The gauge of every grid cell $G$, shared by its seeds: $g_G = -s$ for the least-squares
    affine fit $\psi_j \approx c + 2 \langle s, y_j - x_G \rangle$ over the seeds of its ring-1
    pool (the $3^d$ grid cells around $G$, centred at $x_G$).  From sums of $z = y - x$ and $z
    z^\top$ per grid cell, moved to each neighbour's centre: O(n + 3^d G), where a fit per seed
    over its pool costs O(pool x d^2) per seed (`_gauge`; 3D 1e4 uniform seeds: 105 of the 325 ms
    of the candidate search)."""
    g, d = grid.cells, y.shape[1]
    count = math.prod(g)
    size = grid.size.astype(y.dtype)
    coords = _unflat(g)
    cell = _flat(grid.coords, g)
    z = y - (grid.lo.astype(y.dtype) + (grid.coords + 0.5) * size)  # about the seed's grid cell centre
    sums = [jax.ops.segment_sum(x, cell, count) for x in
            (jnp.ones_like(psi), z, z[:, :, None] * z[:, None, :], psi, z * psi[:, None])]
    offsets = jnp.asarray(np.array(list(itertools.product((-1, 0, 1), repeat=d)), np.int32))
    around = coords[:, None, :] + offsets[None]  # (G, 3^d, d)
    inside = _inside(around, g)
    ones, first, second, value, moment = (
        jnp.where(inside.reshape(inside.shape + (1,) * (x.ndim - 1)), x[_flat(_clip(around, g), g)], 0)
        for x in sums)
    t = offsets.astype(y.dtype) * size  # a neighbour's z about G's centre is z + t
    first_g = jnp.sum(first + ones[..., None] * t, 1)
    second_g = jnp.sum(second + first[..., :, None] * t[:, None, :] + t[:, :, None] * first[..., None, :]
                       + ones[..., None, None] * t[:, :, None] * t[:, None, :], 1)
    gram = jnp.concatenate([jnp.concatenate([jnp.sum(ones, 1)[:, None, None], first_g[:, None, :]], 2),
                            jnp.concatenate([first_g[:, :, None], second_g], 2)], 1)  # (G, d+1, d+1)
    rhs = jnp.concatenate([jnp.sum(value, 1)[:, None], jnp.sum(moment + value[..., None] * t, 1)], 1)
    ridge = 1e-6 * jnp.trace(second_g, axis1=-2, axis2=-1)[:, None, None] / d + jnp.finfo(y.dtype).tiny
    coef = jnp.linalg.solve(gram + ridge * jnp.eye(d + 1, dtype=y.dtype), rhs[..., None])[..., 0]
    return -0.5 * coef[:, 1:]


#: Pool slots per batch of seeds ranked together: small batches stay in cache (1e4 uniform seeds,
#: 2D pools of 378: 176 ms in batches of 2048 seeds, 141 ms in batches of 128-512; 3D pools of
#: ~1200: 737 ms in batches of 2048, 447 ms in batches of 128).  Times `batches.scale`.
SLOTS_PER_BATCH = 2**16


def from_grid(
    y: Float[Array, "n d"], psi: Float[Array, " n"], grid: Grid, k: int, first: Int[Array, "r m"] | None = None,
    tiers: tuple[int, ...] | None = None, rows: Int[Array, " r"] | None = None,
    shift: Float[Array, "n d"] | None = None,
) -> Candidates:
    """The k candidates (ranked as in the module docstring) of every seed of ``rows`` (all seeds
    by default) within its ring-1 pool, in the gauge of its grid cell (`pool_gauges`; ``shift``:
    those gauges, seed by seed, when known); the seeds ``first`` of each row (padded with n;
    e.g. its neighbours in the diagram of the last Newton step), where they are in the pool,
    ahead of the others; with ``tiers``, the others in tiers of nearest (`_topk_nearest`)."""
    n, d = y.shape
    y_pad = jnp.concatenate([y, jnp.zeros((1, d), y.dtype)])
    psi_pad = jnp.concatenate([psi, jnp.zeros((1,), psi.dtype)])
    if shift is None:
        shift = pool_gauges(grid, y, psi)[_flat(grid.coords, grid.cells)]
    if rows is None:
        pools, reach = grid.pool, grid.reach
    else:
        pools, reach, shift = grid.pool[rows], grid.reach[rows], shift[rows]
    ids = jnp.arange(n) if rows is None else rows

    def block(at):  # (positions in ``rows``)
        i, pool = ids[at], pools[at]
        ok = (pool < n) & (pool != i[:, None])
        offset = y_pad[pool] - y[i][:, None]
        weight = psi_pad[pool] - psi[i][:, None]
        known = None
        if first is not None:
            at_slots = pool_slots(grid, i, first[at])
            known = jax.vmap(lambda s: jnp.zeros((pool.shape[1],), bool).at[s].set(True, mode="drop"))(at_slots)
        slot = _topk_nearest(offset, weight, shift[at], ok, k, known, tiers)
        return jnp.take_along_axis(jnp.concatenate([pool, jnp.full_like(pool[:, :1], n)], 1), slot, 1), slot

    per_batch = max(8, SLOTS_PER_BATCH * batches.scale() // grid.width)
    index, slot = _batched(block, jnp.arange(ids.shape[0]), per_batch)
    return Candidates(index, pools, slot, reach.astype(y.dtype), shift)


def reused_places(known: Bool[Array, "n k"]) -> Int[Array, "n k"]:
    """Where `reused` puts each slot of the old list: those ``known`` first, then the others, each
    group in its old order.  (A stable partition by running counts: a top_k over all k slots
    sorted every row, 128 ms of a 1.15 s trial diagram, 1e5 seeds in 2D.)"""
    k = known.shape[1]
    ahead = jnp.cumsum(known, 1, dtype=jnp.int32)
    return jnp.where(known, ahead - 1, ahead[:, -1:] + jnp.arange(k, dtype=jnp.int32) - ahead)


def reused(y: Float[Array, "n d"], psi: Float[Array, " n"], grid: Grid, previous: Int[Array, "n k"],
           known: Bool[Array, "n k"]) -> Candidates:
    """The candidates of a diagram at nearby weights (``previous``, padded with n), not ranked
    again: those ``known`` (the neighbours they gave, e.g. where the cell had a facet) first,
    then the others, each group in its old order, in the ring-1 pools and grid-cell gauges of
    `from_grid`.  A seed that the new cell needs and the list lacks cuts it and fails its
    certificate: the cell goes to the fallback stages, never silently wrong.  Costs O(k) per seed
    where `from_grid` ranks the whole pool (at the optimum of 1e5 uniform seeds in 2D: 86 ms
    against 752 ms; 1e4 in 3D: 17 ms against 211 ms)."""
    n, k = previous.shape
    index = jnp.zeros_like(previous).at[jnp.arange(n)[:, None], reused_places(known)].set(previous)
    rows = jnp.arange(n)
    shift = pool_gauges(grid, y, psi)[_flat(grid.coords, grid.cells)]
    return Candidates(index, grid.pool, pool_slots(grid, rows, index), grid.reach.astype(y.dtype), shift)
