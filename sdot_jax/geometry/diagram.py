r"""The power diagram restricted to a density's support: every cell clipped, certified and integrated.

For seed i with candidates j (see :mod:`.neighbours`), and local coordinates $z = x - y_i$, the cell
is the bounding box clipped by the density's half-spaces and by the bisectors

$$ 2 \langle z, y_j - y_i \rangle \le |y_j - y_i|^2 + \psi_i - \psi_j . $$

A cell is *certified* when no other seed can cut it.  Seeds outside its pool: they are farther
than $\rho_i \ge r_i + \sqrt{r_i^2 + \max_j \psi_j - \psi_i}$, with $r_i$ the cell's radius
about $y_i$ (a seed at distance $\ge \rho_i$ has power distance above $r_i^2 - \psi_i$ on the
whole cell), or, at scale, their grid blocks are excluded by affine bounds of the weights: in the
first pass from bounds shared by the cells of a grid cell (`neighbours.pool_bounds`), in the
block stage vertex by vertex in each block's own gauge (`neighbours.open_block_pool`).  Seeds of
the pool: every vertex satisfies
their bisectors, up to rounding (O(vertices x pool) per cell).

Cells that fail are recomputed with more candidates: in 3D first from the same pool, then from
the grid cells that may cut them (over the whole grid, each bounded vertex by vertex), then with
an exhaustive search, and what still fails is reported in ``Diagram.certified`` -- never returned
as if it were right.
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import batches, neighbours, rebuild
from .gauge import axis_gauge
from .kernels import kernel_for
from .selection import first_true, first_true_ranked, stable_order


@eqx.filter_jit  # (one program: its operations one by one compiled ~15 each on a first call)
def _gauge_seeds(y, density):
    return axis_gauge(y, density).seeds(y)


class Capacities(eqx.Module):
    """Sizes of the padded buffers (static) and budgets of the fallback stages.  Overflows are
    detected and reported, never truncated.

    - `vertices`: vertex slots per cell.
    - `candidates`: candidate neighbours per cell (k).
    - `fallback`: cells per diagram that each fallback stage may re-search (in 3D from their
      pool, then from the grid cells that may cut them; exhaustively for small n) when not
      certified.
    - `grid`: ``(cells per axis, pool width)`` for the grid search (see
      `neighbours.grid_capacity`), or ``None`` for the exhaustive search (small n).
    - `window`: for grid densities (`Image`, `SplineGrid`, `PolynomialGrid`), the grid pieces per
      axis that one cell may span (their integrals cost O(window) per edge in 2D, more for
      higher degrees and in 3D); ``None``: the density's own ``window``.  A cell that spans more
      gets NaN moments, never a truncated integral.
    - `exhaustive`: with the grid search, cells per diagram that the last fallback stage may
      redo against every seed (O(n) each); ``None``: ~2^24 / n (a fixed budget of seed pairs),
      grown up to n by the eager driver when cells far longer than the grid's cells are more
      (Diracs drawn from a Gaussian, at the start: their sparse tails).

    `fallback` and `exhaustive` are budgets, not buffer sizes: the fallback stages run over the
    cells left, in chunks.  They are pytree leaves: the eager driver passes them as arrays
    (`traced_budgets`), so that growing them re-runs the compiled solve (2D 1e4 Diracs near a
    line: 4 growths, each a ~20 s compilation before); Python ints size the differentiable
    diagrams' loops.
    """

    vertices: int = eqx.field(static=True)
    candidates: int = eqx.field(static=True)
    fallback: int | Int[Array, ""]
    grid: tuple[tuple[int, ...], int] | None = eqx.field(static=True)
    window: int | None = eqx.field(static=True, default=None)
    exhaustive: int | Int[Array, ""] | None = None

    @staticmethod
    def default(n: int, d: int, y=None, density=None) -> "Capacities":
        """Sizes for n seeds in d dimensions; the grid's shape from the seeds ``y`` (numpy), in
        their axis gauge for ``density`` when it is given (as `power_diagram` searches them)."""
        vertices = {1: 4, 2: 16, 3: 64}.get(d, 2 ** (d + 4))
        candidates = min(n - 1, {1: 4, 2: 32, 3: 48}.get(d, 64)) if n > 1 else 1
        grid = None
        if n > 4096 and d <= 3:
            # Seeds per grid cell: the 3^d block around a seed must reach past ~2 cell radii for
            # the distance certificate (3D at 6 per cell left 65% of the cells uncertified; 1e4
            # uniform seeds at the optimum, their neighbours ranked first: 27 per cell left 1214
            # cells to the fallback, whole diagram 3.8 s; 40: 276, 3.0 s; 54: 20, 3.3 s).
            per_cell = {1: 8.0, 2: 24.0, 3: 40.0}[d]
            if y is not None:
                if density is not None:
                    y = np.asarray(_gauge_seeds(jnp.asarray(y), density))
                grid = neighbours.grid_capacity(y, per_cell)
            else:
                occupancy = int(per_cell * 4 + 8)
                grid = (neighbours.cells_per_axis(np.ones(d), n, per_cell), 3**d * occupancy)
        # Cells per diagram that may be re-searched.  Grid search: ~10% fail the first pass at
        # the optimum of uniform random points in 2D (the weights' long-range wiggles defeat the
        # far-field bound of the first ring of grid cells), more during the first Newton
        # steps.  Exhaustive search: 0-3 cells of 100 uniform points fail (k = 32), and the
        # stage costs as much as the first pass, every time under vmap.
        # 3D: 3n / 5 (n = 1e4 uniform: the first Newton trials left more than n / 6; near a
        # plane, the trials at t = 1 left 5244 and 5091 cells, beyond n / 3 and the exhaustive
        # stage's 1677, and were rejected: 8 diagrams, 23.0 s; at 3n / 5: 5 diagrams, 17.8 s, and
        # no change on uniform seeds, 1e4 and 1e5).  The stages cost what they redo, not their budget.
        fallback = min(n, max(64, n // 6 if d <= 2 else 3 * n // 5) if grid is not None else max(16, n // 16))
        return Capacities(vertices, max(candidates, 1), fallback, grid)

    def exhaustive_rows(self, n: int) -> int | Int[Array, ""]:
        """Cells per diagram the grid search's exhaustive stage may redo (see `exhaustive`)."""
        if self.exhaustive is None:
            return min(n, max(64, 2**24 // n))
        return min(n, self.exhaustive) if isinstance(self.exhaustive, int) else jnp.minimum(self.exhaustive, n)

    def traced_budgets(self, n: int) -> "Capacities":
        """The same capacities with `fallback` and `exhaustive` as arrays (see the class)."""
        return dataclasses.replace(self, fallback=jnp.asarray(self.fallback, jnp.int32),
                                   exhaustive=jnp.asarray(self.exhaustive_rows(n), jnp.int32))

    def grown(self, *, vertices: bool = False, candidates: bool = False, fallback: bool = False,
              exhaustive: bool = False, n: int = 0, window: int | None = None) -> "Capacities":
        """Doubled where asked (``window``: the new window, when it must change)."""
        return Capacities(
            self.vertices * 2 if vertices else self.vertices,
            min(self.candidates * 2, max(n - 1, 1)) if candidates else self.candidates,
            min(self.fallback * 2, n) if candidates or fallback else self.fallback,
            self.grid,
            self.window if window is None else window,
            min(2 * self.exhaustive_rows(n), n) if exhaustive and self.exhaustive_rows(n) < n else self.exhaustive,
        )


class Diagram(eqx.Module):
    """Integrals over every cell (unnormalised density, moments about each seed)."""

    mass: Float[Array, " n"]
    first_moment: Float[Array, "n d"]  # int (x - y_i) rho
    second_moment: Float[Array, "n d d"]  # int (x - y_i)(x - y_i)^T rho
    facet_mass: Float[Array, "n k"]  # int_{facet with candidate k} rho dsigma
    candidates: Int[Array, "n k"]  # padded with n
    certified: Bool[Array, " n"]
    overflow: Bool[Array, " n"]
    short: Bool[Array, ""]  # more cells needed a fallback stage than its `Capacities.fallback`
    # The first pass's cells, for the next trial to rebuild (`power_diagram` ``last_cells``).
    cells: rebuild.Cells | None = None

    @property
    def neighbours(self) -> Int[Array, "n k"]:
        """The candidates that share a facet of positive mass with the cell, the others as n (the
        ``prior`` of `power_diagram` for a diagram at nearby weights)."""
        return facet_neighbours(self.facet_mass, self.candidates, self.mass.shape[0])

    @property
    def incomplete(self) -> Bool[Array, ""]:
        """Whether a cell overflowed its vertex slots or was left uncertified (``short`` implies
        the latter: a stage short of budget does not run, and its cells stay uncertified)."""
        return jnp.any(self.overflow) | ~jnp.all(self.certified)

    def complete(self) -> "Diagram":
        """This diagram, raising when it is used if it is `incomplete` (``eqx.error_if``): for
        diagrams computed under ``jax.jit``, where the capacities cannot grow."""
        return eqx.error_if(self, self.incomplete, INCOMPLETE)


INCOMPLETE = ("a power cell overflowed its padded buffers or could not be "
              "certified complete: pass larger `capacities` (see `Capacities.grown`), or solve "
              "outside jax.jit once and reuse its `plan.capacities`.")


def facet_neighbours(facets: Float[Array, "r k"], candidates: Int[Array, "r k"], n: int) -> Int[Array, "r k"]:
    """The ``candidates`` (of some cells of n) whose facet with the cell has positive mass, the
    others as n."""
    return jnp.where(facets > 0, candidates, n)


def clip_cell(y_i, psi_i, index, y_pad, psi_pad, density, capacity: int):
    """The cell of one seed as a padded polygon/polytope, in coordinates relative to ``y_i``.

    Plane ids: candidates ``0..k-1``, the density's half-spaces ``k..k+p-1``, then the box.
    """
    normals, offsets = _bisectors(y_i, psi_i, index, y_pad, psi_pad)
    poly = _domain(y_i, density, capacity, index.shape[0])
    return _clip_by(poly, normals, offsets, jnp.arange(index.shape[0]))


def clip_cell_in_two(y_i, psi_i, index, y_pad, psi_pad, density, capacity: int, first, more: int,
                     loop: bool = False):
    """`clip_cell` by the first ``first`` candidates, then only by those of the others that cut
    that cell, in their order, up to ``more``: clipping only removes, so a plane that misses this
    cell misses the final one, and the cell is the same.  Returns the cell and whether it is
    complete (no more than ``more`` of the others cut it).  Most candidates beyond the first
    dozen miss the cell, and a clip costs the same whether it cuts or not.  With ``loop``, both
    rounds are loops: ``first`` may be traced (a count per cell: `_cells` ``known``), and the
    second round stops after the planes that cut (under vmap: after those of the cell that has
    most), so that it is nearly free when the true neighbours come first (Newton's
    `power_diagram` ``prior``); ``while_loop`` loops, which have no reverse-mode derivative."""
    kernel = kernel_for(y_i.shape[0])
    k = index.shape[0]
    normals, offsets = _bisectors(y_i, psi_i, index, y_pad, psi_pad)
    poly = _domain(y_i, density, capacity, k)
    ids = jnp.arange(k, dtype=jnp.int32)
    if loop:
        poly = _clip_while(poly, normals, offsets, first)
    else:
        poly = _clip_by(poly, normals[:first], offsets[:first], ids[:first])
    # Products summed axis by axis, fused into the test (see `polygon.clip`).
    s = sum(poly.vertices[:, None, a] * normals[None, :, a] for a in range(normals.shape[1])) - offsets
    cuts = jnp.any(kernel.live_mask(poly)[:, None] & (s > 0), 0) & (ids >= first)
    if loop:
        poly = _clip_while(poly, normals, offsets, jnp.minimum(jnp.sum(cuts), more), cuts)
    else:
        pick = first_true(cuts, more)
        # Padding: the plane 0 . x <= 1, which cuts nothing (so its id, k, is never recorded).
        normals = jnp.concatenate([normals, jnp.zeros_like(normals[:1])])[pick]
        offsets = jnp.concatenate([offsets, jnp.ones_like(offsets[:1])])[pick]
        poly = _clip_by(poly, normals, offsets, pick)
    return poly, jnp.sum(cuts) <= more


def _clip_while(poly, normals, offsets, count, flags=None):
    """`_clip_by` the first ``count`` (traced) planes, in a ``while_loop``; with ``flags``, the
    first ``count`` of those they mark, in their order, listed before the loop
    (`first_true_ranked`; plane ids: the planes' positions).  (Popping the lowest flag of packed
    words at each step instead: 3D 1e4 solve 4.86 against 4.54 s, CPU 8.29 against 7.73 s; 2D
    1e5 6.88 against 6.60 s, CPU 11.59 against 11.10 s; one pair each.)"""
    clip = kernel_for(normals.shape[1]).clip
    k = normals.shape[0]
    # (Past the last flag, k: only for cells done under vmap, whose results the loop discards.)
    listed = None if flags is None else jnp.minimum(first_true_ranked(flags, k), k - 1)

    def clip_next(state):
        t, poly = state
        at = t if flags is None else listed[t]
        return t + 1, clip(poly, normals[at], offsets[at], at)

    return jax.lax.while_loop(lambda state: state[0] < count, clip_next, (jnp.int32(0), poly))[1]


def _bisectors(y_i, psi_i, index, y_pad, psi_pad):
    """The half-spaces ``normal . x <= offset`` (relative to ``y_i``) of the power bisectors with
    the candidates ``index``; padding (index n) gives ``0 . x <= 1``."""
    n = psi_pad.shape[0] - 1
    ok = index < n
    delta = y_pad[index] - y_i
    normals = jnp.where(ok[:, None], delta, 0.0)
    offsets = jnp.where(ok, 0.5 * (jnp.sum(delta**2, -1) + psi_i - psi_pad[index]), 1.0)
    return normals, offsets


def _cell_planes(y_i, psi_i, index, y_pad, psi_pad, density):
    """Every half-space of a cell in plane-id order (`clip_cell`): the bisectors with the
    candidates ``index``, the density's half-spaces, then the box's faces (``x_a >= lo_a``,
    ``x_a <= hi_a`` for each axis a), relative to ``y_i``."""
    normals, offsets = _bisectors(y_i, psi_i, index, y_pad, psi_pad)
    a_dom, b_dom = density.half_spaces()
    lo, hi = density.bounding_box()
    d = y_i.shape[0]
    eye = jnp.eye(d, dtype=normals.dtype)
    box_normals = jnp.stack([sign * eye[a] for a in range(d) for sign in (-1.0, 1.0)])
    box_offsets = jnp.stack([v for a in range(d) for v in (y_i[a] - lo[a], hi[a] - y_i[a])])
    return (jnp.concatenate([normals, a_dom.astype(normals.dtype), box_normals]),
            jnp.concatenate([offsets, (b_dom - a_dom @ y_i).astype(offsets.dtype), box_offsets.astype(offsets.dtype)]))


def _domain(y_i, density, capacity: int, k: int):
    """The density's bounding box clipped by its half-spaces (ids from ``k``), relative to ``y_i``."""
    kernel = kernel_for(y_i.shape[0])
    lo, hi = density.bounding_box()
    a_dom, b_dom = density.half_spaces()
    p = a_dom.shape[0]
    poly = kernel.box(lo - y_i, hi - y_i, capacity, k + p)
    if p:
        poly = _clip_by(poly, a_dom, b_dom - a_dom @ y_i, k + jnp.arange(p))
    return poly


def _clip_by(poly, normals, offsets, ids):
    clip = kernel_for(normals.shape[1]).clip
    return jax.lax.scan(lambda poly, plane: (clip(poly, *plane), None), poly, (normals, offsets, ids))[0]


def cell_integrals(y, psi, density, candidates: Int[Array, "n k"], capacities: "Capacities"):
    """Masses ``(n,)`` and facet integrals ``(n, k)`` of the cells cut by known neighbours: the
    ``candidates`` of a certified `Diagram` at the same ``(y, psi)`` give the same cells, so a
    second density is integrated over them with no search and no certificate."""
    n, d = y.shape
    k = candidates.shape[1]
    if capacities.window is not None and hasattr(density, "with_window"):
        density = density.with_window(capacities.window)
    kernel = kernel_for(d)
    y_pad = jnp.concatenate([y, jnp.zeros((1, d), y.dtype)])
    psi_pad = jnp.concatenate([psi, jnp.zeros((1,), psi.dtype)])

    def one(args):
        i, index = args
        poly = clip_cell(y[i], psi[i], index, y_pad, psi_pad, density, capacities.vertices)
        mass, _, _, facets = kernel.integrate(poly, density, y[i], k)
        return mass, facets

    return jax.lax.map(one, (jnp.arange(n), candidates), batch_size=min(4096 if d <= 2 else 256, n))


def _excess(verts, live, radius, y_i, psi_i, ys, psis):
    r"""How deep each seed of ``ys`` cuts the cell (vertices ``verts`` where ``live``, at most
    ``radius`` from $y_i$): the largest excess $2 \langle z, \delta_j \rangle - |\delta_j|^2 -
    \psi_i + \psi_j$ over its vertices $z$ ($\delta_j = y_j - y_i$; positive: closer in power to
    j), and the rounding tolerance of that excess.  The cell's own facets have excess ~0."""
    delta = ys - y_i
    norm2 = neighbours.squared_norms(delta)
    # The support function of the cell in each direction delta_j (a max, then one comparison per
    # seed: ~2x faster on CPU than comparing every vertex), from products summed axis by axis:
    # XLA fuses them into the max, where `verts @ delta.T` is a matrix product per cell (2D, 1e5
    # cells, pools of 272 at the optimum: pool certificate 1308 -> 818 ms).
    dots = sum(verts[:, None, a] * delta[None, :, a] for a in range(verts.shape[1]))
    support = jnp.max(jnp.where(live[:, None], dots, -jnp.inf), 0)
    excess = 2 * support - norm2 - psi_i + psis
    return excess, _rounding(radius, y_i, psi_i, ys, psis, norm2)


def _rounding(radius, y_i, psi_i, ys, psis, norm2):
    """The rounding tolerance of `_excess`: delta = y_j - y_i carries an absolute error ~ eps |y|,
    so a vertex exactly on a bisector shows an excess up to ~ eps |z| |y|, on top of the
    relative errors of each term."""
    magnitude = jnp.max(jnp.abs(y_i)) + jnp.max(jnp.abs(ys), -1)
    scale = norm2 + 2 * radius * (jnp.sqrt(norm2) + magnitude) + jnp.abs(psi_i) + jnp.abs(psis)
    return 64 * jnp.finfo(ys.dtype).eps * scale


def _cut_by_pool(verts, live, radius, i, y_i, psi_i, pool, slot, y_pad, psi_pad, survivors: int | None = None,
                 largest=None):
    """Whether a seed of ``pool`` (all seeds when None), other than the clipped candidates at
    ``slot``, cuts the cell beyond rounding (see `_excess`).  With ``survivors``: only the seeds
    that `_may_cut` (with ``largest``) are tested, the first ``survivors`` of them; a cell with
    more is reported cut (the fallback stages redo it)."""
    n = psi_pad.shape[0] - 1
    ys = y_pad[:n] if pool is None else y_pad[pool]
    psis = psi_pad[:n] if pool is None else psi_pad[pool]
    ids = jnp.arange(n) if pool is None else pool
    other = ((ids < n) & (ids != i)).at[slot].set(False, mode="drop")
    if survivors is None or survivors >= ids.shape[0]:
        excess, tol = _excess(verts, live, radius, y_i, psi_i, ys, psis)
        return jnp.any(other & (excess > tol))
    maybe = other & _may_cut(verts, live, radius, y_i, psi_i, ys, psis, largest)
    picked = first_true_ranked(maybe, survivors)
    ys = jnp.concatenate([ys, jnp.zeros_like(ys[:1])])[picked]
    psis = jnp.concatenate([psis, jnp.zeros_like(psis[:1])])[picked]
    excess, tol = _excess(verts, live, radius, y_i, psi_i, ys, psis)
    return jnp.any((picked < ids.shape[0]) & (excess > tol)) | (jnp.sum(maybe) > survivors)


def _may_cut(verts, live, radius, y_i, psi_i, ys, psis, largest=None):
    r"""Whether each seed of ``ys`` may cut the cell: `_excess` with the cell's support function
    bounded from above by its bounding box's, O(d) per seed instead of O(vertices), kept down to
    minus the largest rounding tolerance of `_excess` over ``ys`` (which then flags excesses above
    their own).  At the optimum of 1e5 uniform seeds in 2D, 0.10 seeds per cell of ~177 in its
    pool are kept beyond its 32 candidates (at most 12); 1e4 in 3D: 12 of ~540 (at most 56).
    (The smaller of that and a bounding ball's, $\langle c, \delta \rangle + r |\delta|$ for the
    vertices' mean c and their largest distance r to it, left the solves as they were and cost a
    square root per seed: 2D 1e5 uniform 5.91 -> 5.79 s without it.)  ``largest``: upper bounds
    of ``max |ys|`` (per axis or overall), ``max |psis|`` and ``max |y_j - y_i|^2`` to use
    instead of the pool's own."""
    delta = ys - y_i
    norm2 = neighbours.squared_norms(delta)
    lo, hi = neighbours.live_box(verts, live)
    support = sum(jnp.maximum(lo[a] * delta[:, a], hi[a] * delta[:, a]) for a in range(verts.shape[1]))
    bound = 2 * support - norm2 - psi_i + psis
    if largest is None:
        largest = (jnp.max(jnp.abs(ys), 0, keepdims=True), jnp.max(jnp.abs(psis), keepdims=True),
                   jnp.max(norm2, keepdims=True))
    return ~(bound <= -_rounding(radius, y_i, psi_i, *largest))  # (NaN: may cut)


def _pool_may_cut(verts, live, radius, i, y_i, psi_i, pool, slot, y_pad, psi_pad, scale, heaviest):
    """Whether `_may_cut` keeps a seed of ``pool`` other than the clipped candidates at ``slot``:
    if not, no seed of the pool cuts the cell (`_cut_by_pool` is False), at O(d) per seed.  Its
    rounding from ``scale`` >= max |y| and ``heaviest`` >= max |psi| (the pool's own maxima cost
    as much as the bound: 68 ms of a 1.15 s trial diagram, 1e5 seeds in 2D)."""
    n = psi_pad.shape[0] - 1
    other = ((pool < n) & (pool != i)).at[slot].set(False, mode="drop")
    largest = _largest(y_i, scale, heaviest)
    return jnp.any(other & _may_cut(verts, live, radius, y_i, psi_i, y_pad[pool], psi_pad[pool], largest))


def _largest(y_i, scale, heaviest):
    """`_may_cut`'s ``largest`` from ``scale`` >= max |y| and ``heaviest`` >= max |psi|."""
    return scale[None], heaviest[None], y_i.shape[0] * (jnp.max(jnp.abs(y_i)) + scale[None]) ** 2


def _where_open(open_, compute, *, chunk: int, into=None):
    """``compute(positions)`` (a pytree with one row per position) written into ``into`` (rows
    for every position; by default booleans, False) at the positions where ``open_``: those
    positions packed into chunks of ``chunk``, a loop over the chunks that hold any (at the
    optimum of 1e5 uniform seeds in 2D, 17% of the cells for the pool test, with the former
    bounding ball's bound too).  (A loop, not a ``cond`` per chunk: its operands, the polygons
    and pools of every cell, were copied for each chunk, and the pass took longer than testing
    every cell.  Rows that fit in one chunk take a single ``cond``: see below.)"""
    m = open_.shape[0]
    chunks = -(-m // chunk)
    picked = jnp.nonzero(open_, size=chunks * chunk, fill_value=m)[0].reshape(chunks, chunk)

    def next_chunk(state):
        c, into = state
        at = picked[c]
        return c + 1, jax.tree.map(lambda a, b: a.at[at].set(b, mode="drop"), into, compute(jnp.minimum(at, m - 1)))

    count = -(-jnp.sum(open_) // chunk)
    into = jnp.zeros(m, bool) if into is None else into
    if chunks == 1:
        # One chunk: ``picked[c]`` is loop-invariant, and XLA hoisted ``compute`` out of a loop,
        # which then ran on every row with none open (the pool stage run alone on the 8363 cells
        # the first pass leaves at 3D 1e5, zero weights: its ring-pool test on chunks of 64 cells,
        # 5.5 -> 3.1 s; whole Newton solves unchanged, 3D 1e4 5.32 / 5.44 s, 1e5 56.7 / 55.7 s).
        # A cond runs it only when a row is open.
        return jax.lax.cond(count > 0, lambda into: next_chunk((jnp.int32(0), into))[1], lambda into: into, into)
    return jax.lax.while_loop(lambda state: state[0] < count, next_chunk, (jnp.int32(0), into))[1]


def _deepest_cuts(rows, cand: neighbours.Candidates, y, psi, density, capacity: int) -> neighbours.Candidates:
    """The candidates of ``rows`` re-ranked among all seeds on the cell clipped by ``cand``: its
    own facets first (excess ~0), then the seeds that cut it deepest.  The next polygon lies
    inside this one, and every true neighbour either bounds it already or cuts it, so a few
    rounds find neighbours that no ranking by distance reaches: along the long cells beyond the
    Diracs' convex hull (hull vertices far apart), where up to 2345 of 1e4 seeds cut the first
    polygon (Diracs clustered near a line), and the rare neighbour ranked beyond k (1e5 uniform
    seeds in 3D, at the optimum: 187 cells missed one, ~2.8 spacings away, among 96 candidates
    ranked by distance).  Clips with the plain scan: it runs for few cells, and clipping in two
    would add a copy of the clip to compile (3D diagram: 22.7 -> 21.6 s)."""
    n, d = y.shape
    k = cand.index.shape[1]
    kernel = kernel_for(d)
    y_pad = jnp.concatenate([y, jnp.zeros((1, d), y.dtype)])
    psi_pad = jnp.concatenate([psi, jnp.zeros((1,), psi.dtype)])

    def one(args):
        i, idx = args
        poly = clip_cell(y[i], psi[i], idx, y_pad, psi_pad, density, capacity)
        r = jnp.sqrt(kernel.squared_radius(poly))
        excess, tol = _excess(poly.vertices, kernel.live_mask(poly), r, y[i], psi[i], y, psi)
        # The polygon's own facets first (excess ~0: they keep the next polygon inside this one),
        # then the deepest cuts.  (float32: only an order; lax.top_k in float64 is 20-40x slower
        # on CPU.)
        score = jnp.where(jnp.abs(excess) <= tol, jnp.inf, excess)
        score = jnp.where(jnp.arange(n) == i, -jnp.inf, score).astype(jnp.float32)
        best, slot = jax.lax.top_k(score, k)
        none = jnp.isneginf(best)
        return jnp.where(none, n, slot).astype(idx.dtype)

    batch = max(8, min(1024, 2**24 // (n * capacity))) * batches.scale()
    index = jax.lax.map(one, (rows, cand.index), batch_size=min(batch, rows.shape[0]))
    return eqx.tree_at(lambda c: (c.index, c.slot), cand, (index, index))


def split_for(d: int, k: int, loop: bool = False) -> tuple[int, int] | None:
    """``(first, more)`` of `clip_cell_in_two` for the first pass of the grid search.  In 3D, the
    first k / 2 candidates, then at most k / 4 of the others.  1e4 uniform seeds, k = 48: more
    than 12 of the candidates after the first 24 cut 0.15% (zero weights) and 0.2% (optimum) of
    the cells; clipping 2.4 -> 1.9 s, first pass 3.2 -> 2.8 s.  None in 2D, which clips 32 small
    polygons (28 instead would save ~10 ms of 530).  With ``loop`` (a second round that stops
    after the planes that cut): FIRST_WITH_LOOP[d] candidates, then at most half of the others
    (Newton's first pass, with its cells' known neighbours: those, then any of the others, see
    `_cells`)."""
    if loop and d in FIRST_WITH_LOOP and k > FIRST_WITH_LOOP[d]:
        return FIRST_WITH_LOOP[d], (k - FIRST_WITH_LOOP[d]) // 2
    return (k // 2, k // 4) if d == 3 and k >= 8 else None


#: Candidates clipped in the first round when the second one is a loop (`split_for`).  1e5 uniform
#: seeds in 2D, k = 32, whole diagram at zero weights / at the optimum with its neighbours first:
#: no split 3995 / 3008 ms; 8 then <= 12 in a loop 2692 / 2278 ms (5759 cells left incomplete
#: at zero weights); 12 then <= 10: 2415 ms at zero weights (855 left).  1e4 in 3D, k = 48, at
#: the optimum: 16 then <= 16 2938 ms, 24 then <= 12 2488 ms (without the loop 2980 ms).
FIRST_WITH_LOOP = {2: 12, 3: 24}


def first_pass_vertices(d: int, capacity: int, half_spaces: int = 0) -> int:
    """Vertex slots of the grid search's first pass: in 3D, 5/8 of ``capacity`` (40 of 64 hold
    every cell of 1e4 uniform seeds at the optimum (at most 40 vertices, 23 on average), and clip
    and integrate ~1.5x faster); in 2D, 3/4 (12 of 16: 1e5 uniform seeds have at most 13 facets
    at zero weights, 26 cells 12 or more, at most 12 at the optimum; Newton's trial diagram there
    0.82 -> 0.67 s).  A cell that needs more is redone by the fallback stages with all
    ``capacity`` slots.  All of them when the domain itself (the box clipped by the density's
    ``half_spaces``: up to 4 + p vertices in 2D, 2p + 8 in 3D) may fill half the fewer: a
    14-gon filled every cell's 12 slots before its first bisector."""
    fewer = {2: capacity * 3 // 4, 3: capacity * 5 // 8}.get(d)
    domain = {2: 4 + half_spaces, 3: 2 * half_spaces + 8}.get(d)
    return capacity if fewer is None or 2 * domain > fewer else fewer


#: Vertex-seed pairs of the pool test per batch of cells (at most 4096 cells in 2D, 256 in 3D).
#: Smaller batches stay in cache: the first pass of 1e4 uniform cells took 464 ms at 2^24, 300
#: ms at 2^20 in 2D; 4.5 s at 2^24, 3.6 s at 2^22, 3.7 s at 2^20 in 3D.
PAIRS_PER_BATCH = 2**21
#: Pool seeds per cell tested vertex by vertex in the first pass, of those that `_may_cut` it
#: (none: all).  At the optimum, neighbours first, loops: first pass of 3D 1e4 882 -> 773 ms
#: (48: 779 ms, 2 more cells left); 2D 1e5 908 -> 897 ms with 32 (a vertex test of 16 slots
#: costs little more than the bound), so 2D bounds every seed and tests vertex by vertex only the
#: cells that a bound leaves open (`_pool_may_cut`), as does the block stage in every dimension.
SURVIVORS = {3: 64}
#: Dimensions where the fallback starts with `_pool_stage`.  3D 1e4 uniform Newton solve: the
#: five diagrams leave 3, 15, 4, 4, 4 cells to the block stage instead of 693, 619, 57, 51, 51;
#: medians of 6 interleaved in one process 5.49 against 6.09 s (CPU 9.64 against 10.53 s), and
#: ~8 s more compilation; 3D 1e5 60.5 against 59.8 s (3 each: no gain, reason unknown).  2D 1e5
#: 6.23 against 6.44 s, 2 s more compilation for every 2D grid diagram: not there.
POOL_STAGE = {3}
#: Cells per chunk of `_cells`' ``block_test``, run on the cells that the pool bounds leave.
BLOCK_TEST_CHUNK = 256
#: Cells clipped and integrated per batch (`_cells`; all these sizes times `batches.scale`).
CLIP_BATCH = {1: 4096, 2: 4096, 3: 1024}
#: Cells per chunk of those that `rebuild.rebuilt` leaves to be clipped (`_cells` ``last``).
REBUILD_LEFT_CHUNK = {2: 1024, 3: 256}
#: Beyond this fraction of cells left by `rebuild.rebuilt`, `_cells` clips every cell.
MANY_LEFT = 0.25


def _clipped(at, count, *, rows, index, y_pad, psi_pad, density, capacity: int, split, loop: bool, known: bool):
    """The cell at position ``at`` of `_cells`' rows, clipped (``count``: its first round, with
    ``known``); returns it and whether it is complete (`clip_cell_in_two`)."""
    i, idx = rows[at], index[at]
    if split is None:
        return clip_cell(y_pad[i], psi_pad[i], idx, y_pad, psi_pad, density, capacity), jnp.ones((), bool)
    # (After the known neighbours, any of the others may cut: weights move between diagrams.)
    rounds = (count, index.shape[1]) if known else split
    return clip_cell_in_two(y_pad[i], psi_pad[i], idx, y_pad, psi_pad, density, capacity, *rounds, loop)


def _integrated(poly, at, rows, y_pad, density, k: int):
    """The integrals of the cell at position ``at`` of `_cells`' rows (`kernel.integrate`)."""
    return kernel_for(poly.vertices.shape[-1]).integrate(poly, density, y_pad[rows[at]], k)


def _clip_all(poly, passed, order, first_round, rows, index, y_pad, psi_pad, density, *, batch: int, **config):
    """`_cells`' cells, every one clipped and integrated (in batches of ``batch``; one fused map),
    whatever `rebuild` gave (``poly``, ``passed``: unused)."""
    clipped = functools.partial(_clipped, rows=rows, index=index, y_pad=y_pad, psi_pad=psi_pad, density=density,
                                **config)

    def one(args):
        poly, complete = clipped(*args)
        return poly, complete, _integrated(poly, args[0], rows, y_pad, density, index.shape[1])

    return jax.lax.map(one, (order, first_round), batch_size=batch)


def _clip_left(poly, passed, order, first_round, rows, index, y_pad, psi_pad, density, *, chunk: int, batch: int,
               **config):
    """`_cells`' cells as `rebuild` gave them where it ``passed``, clipped elsewhere (in chunks),
    then integrated (in batches of ``batch``)."""
    clipped = functools.partial(_clipped, rows=rows, index=index, y_pad=y_pad, psi_pad=psi_pad, density=density,
                                **config)
    poly, complete = _where_open(~passed, lambda p: jax.vmap(clipped)(order[p], first_round[p]),
                                 into=(poly, jnp.ones_like(passed)), chunk=chunk)
    k = index.shape[1]
    return poly, complete, jax.lax.map(lambda args: _integrated(*args, rows, y_pad, density, k), (poly, order),
                                       batch_size=batch)


def _cells(rows, cand: neighbours.Candidates, y, psi, density, capacity: int, vertex_test=None,
           split: tuple[int, int] | None = None, loop: bool = False, known: Int[Array, " r"] | None = None,
           survivors: int | None = None, block_test=None, last: tuple[rebuild.Cells, Int[Array, "n k"]] | None = None,
           cond=jax.lax.cond):
    r"""Clip, integrate and certify the cells of ``rows`` given their candidates (``split``: with
    `clip_cell_in_two`, both rounds loops with ``loop``; a cell left incomplete is not
    certified).  ``known`` (with ``loop``): how many of each row's first candidates bound its
    cell in a nearby diagram (Newton's last one), the first round's count where > 0: the cells
    are clipped in batches of similar counts, as a loop runs for the largest count of its batch.
    ``survivors``: `_cut_by_pool`'s.  Without it, against a pool, each cell is first bounded by
    its bounding box (`_pool_may_cut`), and only the cells it leaves open are tested vertex by
    vertex (`_where_open`): at the optimum of 1e5 uniform seeds in 2D, 17% of them (with the
    former bounding ball's bound too), a Newton trial diagram 1.13 -> 1.02 s.  (In 3D, 90% of
    the cells of 1e4 uniform seeds stay open: ``survivors`` prunes seed by seed instead.)
    Seeds outside the pool are excluded by ``reach`` or by ``vertex_test(i, vertices, live)``,
    from its vertices (`neighbours.within_pool_bounds` in the first pass); where both fail, by
    ``block_test(i, vertices, live)`` (`neighbours.within_ring_pool`), run after the map on
    those cells only.  ``last``: the cells of a diagram at nearby weights and ``place`` (its
    candidate positions in ``cand``, per seed; ``rows`` must be all the seeds): each cell is
    rebuilt from them where they still hold (`rebuild.rebuilt`), clipped elsewhere (``cond``
    chooses how, see `power_diagram`), and the returned tuple ends with these cells'
    `rebuild.Cells`."""
    n, d = y.shape
    k = cand.index.shape[1]
    kernel = kernel_for(d)
    y_pad = jnp.concatenate([y, jnp.zeros((1, d), y.dtype)])
    psi_pad = jnp.concatenate([psi, jnp.zeros((1,), psi.dtype)])
    top = jnp.max(psi)
    scale = jnp.max(jnp.abs(y))
    heaviest = jnp.max(jnp.abs(psi))
    two_phase = cand.pool is not None and survivors is None  # bound first, exact test where open
    if known is None:
        order = jnp.arange(rows.shape[0])
        first_round = jnp.zeros_like(order)
    else:
        first_round = jnp.where(known > 0, known, split[0]).astype(jnp.int32)
        order, inverse = stable_order(first_round, cand.index.shape[1])
        first_round = first_round[order]

    config = dict(capacity=capacity, split=split, loop=loop, known=known is not None)

    def rebuilt(at):
        i = rows[at]
        normals, offsets = _cell_planes(y[i], psi[i], cand.index[at], y_pad, psi_pad, density)
        return rebuild.rebuilt(jax.tree.map(lambda a: a[i], last[0]), last[1][i], normals, offsets)

    def certified(args):
        """Whether the cell is certified (``ok``), and whether only the exact pool test can
        tell (``open``: `_cut_by_pool` decides it after this map, for those cells only)."""
        poly, complete, at = args
        i, slot, reach = rows[at], cand.slot[at], cand.reach[at]
        pool = None if cand.pool is None else cand.pool[at]
        verts, live = poly.vertices, kernel.live_mask(poly)
        r = jnp.sqrt(kernel.squared_radius(poly))
        # reach was measured in float32: keep a margin for its rounding.
        far = _shrink(reach, scale) >= r + jnp.sqrt(r**2 + top - psi[i])
        if vertex_test is not None:
            far = far | ((reach > 0) & vertex_test(i, y[i] + verts, live))
        # Clipping only removes: a cell already empty stays empty whatever else would cut it.
        empty = kernel.is_empty(poly)
        # For `block_test`: only the seeds beyond the pool are left to exclude.
        beyond = ~empty & ~far & complete & (reach > 0) & ~poly.overflow
        if not two_phase:
            cut = _cut_by_pool(verts, live, r, i, y[i], psi[i], pool, slot, y_pad, psi_pad, survivors,
                               _largest(y[i], scale, heaviest))
            return empty | (far & ~cut & complete), jnp.zeros((), bool), beyond & ~cut
        maybe = _pool_may_cut(verts, live, r, i, y[i], psi[i], pool, slot, y_pad, psi_pad, scale, heaviest)
        return empty | (far & complete & ~maybe), ~empty & far & complete & maybe, beyond

    def exact(at, poly):
        """Whether no seed of its pool cuts the cell at position ``at`` (`_cut_by_pool`)."""
        i = rows[at]
        r = jnp.sqrt(kernel.squared_radius(poly))
        return ~_cut_by_pool(poly.vertices, kernel.live_mask(poly), r, i, y[i], psi[i], cand.pool[at], cand.slot[at],
                             y_pad, psi_pad)

    # Clipping runs in large batches, the pool test in batches sized by its pairs (at the
    # optimum, neighbours first, loops: first pass of 3D 1e4 1918 -> 1585 ms, batches of 37
    # cells -> 1024 and 37; 2D 1e5 1116 -> 929 ms, 481 -> 4096 and 481).
    tested = (n if cand.pool is None else cand.pool.shape[1]) * capacity
    batch = min(max(8, min(CLIP_BATCH[min(d, 3)], PAIRS_PER_BATCH // max(tested, 1))) * batches.scale(), rows.shape[0])
    clip_batch = min(CLIP_BATCH[min(d, 3)] * batches.scale(), rows.shape[0])
    if last is None:
        poly, complete, (mass, first, second, facets) = _clip_all(
            None, None, order, first_round, rows, cand.index, y_pad, psi_pad, density, batch=clip_batch, **config)
    else:
        # Rebuilt from the last diagram where its combinatorics still hold, clipped elsewhere.
        poly, passed = jax.lax.map(rebuilt, order, batch_size=clip_batch)
        # Clip the cells left, or, when they are many, every cell in large batches: the chunks of a
        # loop over them kept the two cores less busy (3D 1e4 from zero weights to the optimum,
        # nearly every cell left: 1407 -> 1614 ms in chunks of 1024, 1892 ms in chunks of 64).
        many = jnp.sum(~passed) > MANY_LEFT * rows.shape[0]
        chunk = min(REBUILD_LEFT_CHUNK[d] * batches.scale(), rows.shape[0])
        poly, complete, (mass, first, second, facets) = cond(
            many, functools.partial(_clip_all, batch=clip_batch, **config),
            functools.partial(_clip_left, chunk=chunk, batch=clip_batch, **config),
            poly, passed, order, first_round, rows, cand.index, y_pad, psi_pad, density)
    ok, open_, beyond = jax.lax.map(certified, (poly, complete, order), batch_size=batch)
    if two_phase:
        ok = ok | _where_open(open_, lambda p: jax.vmap(exact)(order[p], jax.tree.map(lambda a: a[p], poly)),
                              chunk=batch)
    if block_test is not None:

        def blocked(p):
            at, cells = order[p], jax.tree.map(lambda a: a[p], poly)
            passed = jax.vmap(lambda at, cell: block_test(rows[at], y[rows[at]] + cell.vertices,
                                                          kernel.live_mask(cell)))(at, cells)
            return passed & jax.vmap(exact)(at, cells) if two_phase else passed

        ok = ok | _where_open(beyond, blocked, chunk=min(BLOCK_TEST_CHUNK * batches.scale(), rows.shape[0]))
    # An overflowed polygon's vertices are meaningless: its mass is no bound of the cell's, and the
    # cell is not certified (a later stage may redo it; Newton takes an uncertified cell's mass as
    # an upper bound otherwise).
    ok = ok & ~poly.overflow
    mass = jnp.where(poly.overflow, jnp.inf, mass)
    out = mass, first, second, facets, ok, poly.overflow
    if last is not None:
        out = out + (rebuild.kept(poly, ok & ~jax.vmap(kernel.is_empty)(poly)),)
    if known is None:
        return out
    return jax.tree.map(lambda x: x[inverse], out)


def _shrink(distance, scale):
    """A lower bound on a distance measured in float32 among coordinates of size ``scale``."""
    return distance * (1 - 1e-5) - 1e-6 * scale


def _redo(out, rows, search, y, psi, density, capacity: int, split=None, loop: bool = False, **certify):
    """Recompute the uncertified cells ``rows`` (padded with n) with the candidates
    ``search(rows)`` gives (more than k of them; clipped as `_cells` does with ``split`` and
    ``loop``, certified with ``certify``, `_cells`' keywords); facets are compacted back into k
    slots (else: uncertified), the other candidates after them in their order (Newton's next
    trial reuses the list: `neighbours.reused`)."""
    mass, first, second, facets, certified, overflow, index = out
    n = y.shape[0]
    k = index.shape[1]
    redo_ok = rows < n
    safe = jnp.where(redo_ok, rows, 0)
    found = search(safe)
    res = _cells(safe, found, y, psi, density, capacity, split=split, loop=loop, **certify)
    target = jnp.where(redo_ok, rows, n)
    mass, first, second, overflow = (
        old.at[target].set(new, mode="drop")
        for old, new in zip((mass, first, second, overflow), (res[0], res[1], res[2], res[5]))
    )
    live = (res[3] != 0) & (found.index < n)
    keep = jnp.argsort(~live, axis=1, stable=True)[:, :k]  # facets first, each group in candidate order
    kept = jnp.take_along_axis(live, keep, 1)
    new_facets = jnp.where(kept, jnp.take_along_axis(res[3], keep, 1), 0.0)
    new_index = jnp.take_along_axis(found.index, keep, 1)
    fits = jnp.sum(live, axis=1) <= k
    facets = facets.at[target].set(new_facets, mode="drop")
    index = index.at[target].set(new_index, mode="drop")
    certified = certified.at[target].set(res[4] & fits, mode="drop")
    return mass, first, second, facets, certified, overflow, index


def _pool_bounds_test(grid, bounds, y, psi):
    """Whether the seeds outside a cell's ring-1 pool are excluded (`neighbours.within_pool_bounds`)."""
    return lambda i, vertices, live: neighbours.within_pool_bounds(
        bounds, grid, grid.coords[i], y[i], psi[i], vertices, live)


def _ring_pool_test(grid, field, y, psi):
    """Whether the seeds outside a cell's ring-1 pool are excluded (`neighbours.within_ring_pool`)."""
    return lambda i, vertices, live: neighbours.within_ring_pool(grid, field, grid.coords[i], y[i], psi[i],
                                                                 vertices, live)


def _pool_stage(out, rows, y, psi, density, grid, field, bounds, shift, *, k: int, capacity: int, loop: bool = False):
    """Redo the cells ``rows`` with k candidates from their ring-1 pools (`neighbours.from_grid`),
    those that bound the cell now first, and all ``capacity`` vertex slots; certified as in the
    first pass (the pool test, its bounds, then `neighbours.within_ring_pool`); ``shift``: the
    first pass's gauges (`neighbours.Candidates`).  Most cells that the first pass leaves in 3D
    are cut by a seed of their pool beyond the first pass's candidates, or overflow its vertex
    slots (1e4 uniform seeds at zero weights: 571 and 142 of 691), and the block stage, which
    searches the whole grid, costs ~8 first passes per cell (see `POOL_STAGE`)."""
    n = y.shape[0]
    current, facets = out[6], out[3]

    def search(rows):
        ys, psis, shifts = jax.lax.stop_gradient((y, psi, shift))  # (the search only ranks)
        bounding = facet_neighbours(facets[rows], current[rows], n)
        return neighbours.from_grid(ys, psis, grid, k, first=bounding, rows=rows, shift=shifts)

    return _redo(out, rows, search, y, psi, density, capacity, split=split_for(y.shape[1], k, loop), loop=loop,
                 vertex_test=_pool_bounds_test(grid, bounds, y, psi), block_test=_ring_pool_test(grid, field, y, psi),
                 survivors=SURVIVORS.get(y.shape[1]))


def _block_stage(out, rows, y, psi, density, grid, field, *, k: int, capacity: int, loop: bool = False):
    """Redo the cells ``rows`` with k candidates from the seeds of every grid cell that may cut
    the polygon P0 their current candidates clip (`neighbours.open_block_pool`): P0's own facets
    first, then the pool's seeds that cut it deepest (as `_deepest_cuts`).  Certified with that
    pool, nothing else: the cell P clipped by its pool (certified against it by `_cells`) lies
    in P0, whose facets come first, and no seed outside the pool cuts P0.  An empty P0 keeps
    its candidates (the cell is empty).  A pool that does not fit, or a P0 that overflowed,
    leaves the cell uncertified for the next stage.  Long cells of non-uniform Diracs (near a
    line, a Gaussian's tails) need no ring of grid cells around the seed: the whole grid is
    searched in two levels.  (A ring stage before it, from the 5^d grid cells around the seed
    with ball and vertex bounds beyond, left 1954 of 6876 cells to the exhaustive stage at the
    optimum of 1e4 Diracs near a line, and nothing the block stage leaves in the solves
    measured: 2D 1e4 uniform, near a line, Gaussian, 2D 1e5 and 1e6, 3D 1e4; it cost 3.5-5.6 s of
    compilation.)"""
    n, d = y.shape
    kernel = kernel_for(d)
    width = grid.width
    current = out[6]
    ys, psis = jax.lax.stop_gradient((y, psi))  # the search only ranks and selects
    y_pad = jnp.concatenate([ys, jnp.zeros((1, d), y.dtype)])
    psi_pad = jnp.concatenate([psis, jnp.zeros((1,), psi.dtype)])

    def one(args):
        i, idx = args
        poly = clip_cell(ys[i], psis[i], idx, y_pad, psi_pad, density, capacity)
        verts, live = poly.vertices, kernel.live_mask(poly)
        pool, fits = neighbours.open_block_pool(grid, field, ys[i], psis[i], ys[i] + verts, live, width)
        r = jnp.sqrt(kernel.squared_radius(poly))
        ids = jnp.concatenate([idx, pool])
        excess, tol = _excess(verts, live, r, ys[i], psis[i], y_pad[ids], psi_pad[ids])
        boundary = (jnp.abs(excess) <= tol) | kernel.is_empty(poly)
        own = jnp.arange(ids.shape[0]) < idx.shape[0]
        # P0's facets (its own candidates on its boundary) first, then the pool's deepest cuts.
        score = jnp.where(own, jnp.where(boundary, jnp.inf, -jnp.inf), jnp.where(boundary, -jnp.inf, excess))
        score = jnp.where((ids == i) | (ids >= n), -jnp.inf, score).astype(jnp.float32)
        best, at = jax.lax.top_k(score, min(k, ids.shape[0]))
        best, at = neighbours._pad(best, k, -jnp.inf), neighbours._pad(at, k, 0)
        none = jnp.isneginf(best)
        # Where each candidate sits in the pool (P0's own facets too: their seeds' blocks are open),
        # so that the pool test skips the planes already clipped.
        in_pool = pool[None, :] == ids[at][:, None]
        slot = jnp.where(none | ~jnp.any(in_pool, 1), width, jnp.argmax(in_pool, 1))
        # (An empty P0 certifies nothing here: `_cells` certifies an empty cell by itself, and a
        # P0 empty by rounding may clip to a sliver elsewhere.)
        reach = jnp.where(fits & ~poly.overflow & ~kernel.is_empty(poly), jnp.inf, 0.0).astype(y.dtype)
        return jnp.where(none, n, ids[at]).astype(idx.dtype), slot.astype(jnp.int32), pool, reach

    def search(rows):
        index, slot, pool, reach = jax.vmap(one)((rows, current[rows]))
        return neighbours.Candidates(index, pool, slot, reach, jnp.zeros((rows.shape[0], d), y.dtype))

    return _redo(out, rows, search, y, psi, density, capacity, split=split_for(d, k, loop), loop=loop)


def _exhaustive_stage(out, rows, y, psi, density, *, k: int, capacity: int):
    """Redo the cells ``rows`` with k candidates among all seeds: the nearest (see
    `neighbours.brute_force`), then those that cut the cell they clip deepest (`_deepest_cuts`,
    twice: one copy of it in a loop, as it compiles a clip)."""

    def search(rows):
        cand = neighbours.brute_force(y, psi, k, rows=rows)
        return jax.lax.fori_loop(0, 2, lambda _, c: _deepest_cuts(rows, c, y, psi, density, capacity), cand)

    return _redo(out, rows, search, y, psi, density, capacity)


#: Uncertified cells are redone in chunks of about this many rows (times `batches.scale`).
REDO_CHUNK = 64


def _redo_uncertified(stage, out, *operands, size, hopeless, cond, loop: bool = False):
    """``stage(out, rows, *operands)`` on the uncertified cells, up to ``size`` of them (a budget,
    which may be traced), in chunks of ~`REDO_CHUNK` rows, each under ``cond`` (under vmap: the
    problems whose chunk is empty skip it): the stage costs what the cells left need, not its
    whole budget (1e4 uniform seeds, 2D, at the optimum: 894 cells left by the first pass, the
    former ring stage 260 ms for all 1666 rows of its budget at once, 103 ms in chunks of 64).  With ``loop``
    (Newton's trial diagrams), a ``while_loop`` over the chunks that hold cells; else a ``scan``
    over the budget's chunks (all n rows' when it is traced), which reverse-mode differentiation
    can go through.  Returns the diagram and whether more than ``hopeless`` cells were
    uncertified: then it stays uncertified whatever the stage does, is not run, and is reported
    so at once."""
    n = out[0].shape[0]
    if isinstance(size, int) and size == 0:  # no budget: the stage does not run
        return out, jnp.sum(~out[4]) > hopeless
    if isinstance(size, int) and not loop:
        chunks = -(-size // (REDO_CHUNK * batches.scale()))
        chunk = -(-size // chunks)
    else:  # (small n: chunks of 16 rows, the default budget of n <= 256)
        chunk = min(REDO_CHUNK * batches.scale(), max(16, -(-n // 16)), n)
        chunks = -(-n // chunk)
    left = jnp.sum(~out[4])
    beyond = left > hopeless
    rows = jnp.nonzero(~out[4], size=chunks * chunk, fill_value=n)[0]
    rows = jnp.where(jnp.arange(chunks * chunk) < size, rows, n).reshape(chunks, chunk)

    def step(out, rows):
        return cond((rows[0] < n) & ~beyond, stage, lambda out, *_: out, out, rows, *operands)

    if not loop:
        return jax.lax.scan(lambda out, rows: (step(out, rows), None), out, rows)[0], beyond
    count = jnp.where(beyond, 0, -(-jnp.minimum(left, size) // chunk))
    out = jax.lax.while_loop(lambda state: state[0] < count, lambda state: (state[0] + 1, step(state[1], rows[state[0]])),
                             (jnp.int32(0), out))[1]
    return out, beyond


def _overflow_to_next_stage(out):
    """The cells that overflowed their vertex slots (never certified, `_cells`), no longer
    overflowed: the next fallback stage, which has more slots, redoes them (and reports its own
    overflow)."""
    return out[:5] + (jnp.zeros_like(out[5]),) + out[6:]


QUADRATIC_GAUGE_FROM = 0.05  # fitted quadratic coefficients below this keep the seeds as they are


def quadratic_gauge(y: Float[Array, "n d"], psi: Float[Array, " n"]) -> Float[Array, ""]:
    r"""The factor $\Lambda = 1 - \alpha \in [0.1, 1]$ of the seeds' quadratic gauge.

    With $\psi_i = \alpha |y_i|^2 + \varphi_i$: $|x - y_i|^2 - \psi_i = \Lambda^{-1}(|x - z_i|^2 -
    \Lambda \varphi_i) + (1 - \Lambda^{-1}) |x|^2$, $z_i = \Lambda y_i$, so the power diagram of
    $(y, \psi)$ is, cell for cell, that of $(\Lambda y, \Lambda \varphi)$.  Weights with a large
    positive quadratic part (a target more concentrated than the Diracs: cells shrunk towards a
    point, e.g. the start for a Gaussian mixture) defeat the neighbour search's certificate,
    which bounds weights by affine functions over grid blocks; in the gauge of the least-squares
    $\alpha$ they are close to affine again.  Below `QUADRATIC_GAUGE_FROM`, $\Lambda = 1$ exactly.
    Not differentiated: the cells do not depend on it."""
    y, psi = jax.lax.stop_gradient(y), jax.lax.stop_gradient(psi)
    n, d = y.shape
    if n < d + 2:
        return jnp.ones((), y.dtype)
    centred = y - jnp.mean(y, 0)
    basis = jnp.concatenate([jnp.sum(centred**2, -1, keepdims=True), centred, jnp.ones((n, 1), y.dtype)], 1)
    coef = jnp.linalg.lstsq(basis, psi - jnp.mean(psi))[0]
    alpha = jnp.where(jnp.isfinite(coef[0]), coef[0], 0.0)
    return jnp.where(alpha > QUADRATIC_GAUGE_FROM, 1 - jnp.minimum(alpha, 0.9), 1.0).astype(y.dtype)


def _first_candidates(y, psi, grid, k: int, prior, previous, reuse, cond, split) -> neighbours.Candidates:
    """The first pass's candidates: ranked in the pools (`neighbours.from_grid`; in two tiers for
    the two rounds of ``split``, a whole tier where it is None), or, with
    ``reuse``, the list ``previous`` of a diagram at nearby weights with its facets (``prior``,
    aligned with it) first (`neighbours.reused`)."""
    n = y.shape[0]

    def rank(y, psi, grid, prior, previous):
        tiers = (k,) if split is None else (split[0], k - split[0])
        return neighbours.from_grid(y, psi, grid, k, first=prior, tiers=tiers)

    def keep(y, psi, grid, prior, previous):
        return neighbours.reused(y, psi, grid, previous, prior < n)

    if previous is None:
        return rank(y, psi, grid, prior, previous)

    # The ranking is the branch `cond` may skip (under vmap, `_batching.cond_any` runs it only for
    # the problems that need it).
    return cond(~jnp.asarray(reuse), rank, keep, y, psi, grid, prior, previous)


def power_diagram(
    y: Float[Array, "n d"],
    psi: Float[Array, " n"],
    density,
    capacities: Capacities,
    grid: neighbours.Grid | None = None,
    cond=jax.lax.cond,
    prior: Int[Array, "n m"] | None = None,
    loops: bool = False,
    previous: Int[Array, "n k"] | None = None,
    reuse: Bool[Array, ""] | bool = False,
    last_cells: rebuild.Cells | None = None,
) -> Diagram:
    """Clip, certify and integrate every power cell.  ``grid`` (from `grid_for`) is
    required when ``capacities.grid`` is set.  ``cond`` runs the fallback stages (`lax.cond`, or
    `_batching.cond_any` where no reverse-mode derivative is taken: under vmap it runs them only
    for the problems of the batch that need them).  ``prior``: likely neighbours of each cell
    (padded with n; Newton passes those of its last accepted diagram), clipped first by the grid
    search: the ranking by distance misses some neighbours that a nearby diagram has (1e4
    uniform seeds in 3D, at the optimum: 1129 cells cut by a seed of their pool beyond the 48
    ranked first, none with the optimum's own neighbours first).  The cells do not depend on
    it; with ``loops``, the first pass clips each cell by its prior neighbours, then by any
    other candidate that cuts it (`_cells` ``known``), so fewer cells are left uncertified.
    ``loops``: clip with loops whose trip count
    depends on the data (`clip_cell_in_two`): faster, not reverse-differentiable (Newton's
    trial diagrams).  ``previous``, with ``reuse`` (a traced flag): the grid search's first pass
    takes the candidate list of a diagram at nearby weights (``prior`` its facets, aligned with
    it) instead of ranking the pools again (`neighbours.reused`; 2D 1e5 uniform seeds: 86 ms
    against 752 ms, a Newton solve 24.0 -> 18.1 s); a neighbour it lacks fails the cell's
    certificate, and the fallback stages redo that cell.  ``last_cells`` (with ``loops``, the grid
    search, ``previous`` and ``reuse``; from `trial_cells`, then the `Diagram.cells` of the
    diagram that gave ``previous``): the first pass rebuilds each cell from them where they still
    hold (`rebuild`), and the diagram returns its own (near the optimum, weights moved by 1e-3 /
    n, medians of 7: 3D 1e4 uniform seeds 806 -> 626 ms, 2D 1e5 918 -> 765 ms)."""
    n, d = y.shape
    k = capacities.candidates
    if capacities.window is not None and hasattr(density, "with_window"):
        density = density.with_window(capacities.window)
    # The grid search runs in the axis gauge its grid was built in (`grid_for`, `gauge`): seeds
    # spread like the support along every axis; moments come back to the original coordinates.
    original, axes = y, None if grid is None else grid.axes
    if axes is not None:
        y, psi, density = axes.seeds(y), axes.weights(y, psi), axes.density(density)
    # The grid search certifies in the quadratic gauge (`quadratic_gauge`): the same cells, from
    # seeds whose weights are close to affine; moments are moved back to the y_i at the end.  The
    # exhaustive search (small n) needs no gauge: it checks every cell against every seed, and its
    # candidates rank better from the seeds themselves (the gauge magnifies the weights'
    # non-quadratic part by 1 / Lambda relative to the spacing).
    scale = jnp.ones((), y.dtype) if capacities.grid is None else quadratic_gauge(y, psi)
    seeds = y
    y, psi = scale * y, scale * (psi - (1 - scale) * jnp.sum(y**2, -1))
    if grid is not None:
        grid = neighbours.scaled(grid, scale)
    cells = None
    if capacities.grid is None:
        cand = neighbours.brute_force(y, psi, k)
        out = _cells(jnp.arange(n), cand, y, psi, density, capacities.vertices)
    else:
        split = split_for(d, k, loops)
        cand = _first_candidates(y, psi, grid, k, prior, previous, reuse, cond, split)
        field = neighbours.far_field(grid, psi, y)
        bounds = neighbours.pool_bounds(grid, field, cand.shift)
        # Both candidate lists put the prior's neighbours first (`from_grid` those in the pool).
        known = jnp.minimum(jnp.sum(prior < n, 1), k) if loops and split is not None and prior is not None else None
        slots = _first_pass_slots(d, capacities, density)
        last = None
        if last_cells is not None:
            last = eqx.tree_at(lambda c: c.ok, last_cells, last_cells.ok & reuse), neighbours.reused_places(prior < n)
        out = _cells(jnp.arange(n), cand, y, psi, density, slots,
                     vertex_test=_pool_bounds_test(grid, bounds, y, psi), split=split, loop=loops, known=known,
                     survivors=SURVIVORS.get(d), block_test=_ring_pool_test(grid, field, y, psi), last=last,
                     cond=cond)
        if last is not None:
            out, cells = out[:-1], out[-1]
        out = _overflow_to_next_stage(out)  # the fallback stages have all of the slots
    out = out + (cand.index,)
    # Re-search the uncertified cells (up to `fallback` of them: cells that seeds beyond their
    # ring-1 pool may cut, long cells of clustered seeds for most): in 3D first with 2x more
    # candidates from the same pool (`_pool_stage`); then with 2x more from the grid cells that
    # may cut the polygon, over the whole grid (`_block_stage`, twice); then with 4x more
    # exhaustively (O(n) each: ~2^24 / n cells at scale, a fixed budget of seed pairs per
    # diagram).  Each stage runs only when it can help.
    k2 = min(4 * k, n - 1) if n > 1 else k
    short = jnp.array(False)
    if k2 > k:
        if capacities.grid is not None:
            size = capacities.exhaustive_rows(n)
            if d in POOL_STAGE:  # (the block stage redoes what it leaves, and says when that is hopeless)
                stage = functools.partial(_pool_stage, k=2 * k, capacity=capacities.vertices, loop=loops)
                out, _ = _redo_uncertified(stage, out, y, psi, density, grid, field, bounds, cand.shift,
                                           size=capacities.fallback, hopeless=capacities.fallback + size, cond=cond,
                                           loop=loops)
                out = _overflow_to_next_stage(out)
            stage = functools.partial(_block_stage, k=2 * k, capacity=capacities.vertices, loop=loops)

            def block_pass(carry, _):
                out, short = carry
                out, beyond = _redo_uncertified(stage, out, y, psi, density, grid, field, size=capacities.fallback,
                                                hopeless=capacities.fallback + size, cond=cond, loop=loops)
                return (out, short | beyond), None

            # Twice: a cell whose pool did not fit takes the deepest cuts of what it held, and its
            # next polygon opens fewer blocks.
            (out, short), _ = jax.lax.scan(block_pass, (out, short), None, length=2)
            # The exhaustive stage has twice the slots (3D 1e5, the first Newton step from zero
            # weights: one cell overflowed 64 slots at t = 1/4 and 1/8, and each trial was rejected).
            out = _overflow_to_next_stage(out)
            slots = 2 * capacities.vertices
        else:
            size, slots = capacities.fallback, capacities.vertices
        stage = functools.partial(_exhaustive_stage, k=k2, capacity=slots)
        out, beyond = _redo_uncertified(stage, out, y, psi, density, size=size, hopeless=size, cond=cond, loop=loops)
        short = short | beyond
    mass, first, second, facets, certified, overflow, index = out
    first, second = _moved(mass, first, second, y - seeds)  # about the seeds, from z_i = scale * seeds
    if axes is not None:  # x - y_i = (x' - y'_i) / s + (y'_i / s - y_i)
        s = axes.scale
        first, second = _moved(mass, first / s, second / s[:, None] / s[None, :], seeds / s - original)
    return Diagram(mass, first, second, facets, index, certified, overflow, short, cells)


def trial_cells(n: int, d: int, density, capacities: Capacities) -> rebuild.Cells | None:
    """The ``last_cells`` of a first Newton trial (none may be rebuilt), shaped as the cells its
    diagrams return; ``None`` where `power_diagram` does not rebuild (exhaustive search, d > 3)."""
    if capacities.grid is None or not rebuild.applies(d):
        return None
    return rebuild.empty(n, d, _first_pass_slots(d, capacities, density))


def _first_pass_slots(d: int, capacities: Capacities, density) -> int:
    """The vertex slots of `power_diagram`'s first pass (and of its `Diagram.cells`)."""
    return first_pass_vertices(d, capacities.vertices, density.half_spaces()[0].shape[0])


def _moved(mass, first, second, v):
    r"""Moments about p_i from moments about q_i = p_i + v_i: $\int (x - p_i) = \int (x - q_i) +
    m v_i$, and likewise for the second moments."""
    second = (second + first[:, :, None] * v[:, None, :] + v[:, :, None] * first[:, None, :]
              + mass[:, None, None] * v[:, :, None] * v[:, None, :])
    return first + mass[:, None] * v, second


def grid_for(y: Float[Array, "n d"], density, capacities: Capacities) -> neighbours.Grid | None:
    """The grid search's buckets for `power_diagram`: of the seeds in their axis gauge (`gauge`);
    ``None`` for the exhaustive search.  Not differentiated."""
    if capacities.grid is None:
        return None
    y = jax.lax.stop_gradient(y)
    return neighbours.build_grid(y, *capacities.grid, axes=axis_gauge(y, density))
