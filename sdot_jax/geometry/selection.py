"""Picking positions without a comparison sort (XLA's CPU sort and ``top_k`` run on one thread,
with serial comparisons): the first flags set, by the bits of 32-bit words; a counting sort of
small keys; about the k smallest scores of each row, by counting below thresholds."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int


def packed_flags(flags: Bool[Array, " N"]) -> Int[Array, " W"]:
    """``flags`` as 32-bit words, flag i in bit i % 32 of word i // 32 (see `pop_lowest`)."""
    n = flags.shape[0]
    words_n = -(-n // 32)
    bits = jnp.concatenate([flags, jnp.zeros((words_n * 32 - n,), bool)]).reshape(words_n, 32)
    return jnp.sum(bits.astype(jnp.uint32) << jnp.arange(32, dtype=jnp.uint32), 1, dtype=jnp.uint32)


def pop_lowest(words: Int[Array, " W"], n: int) -> tuple[Int[Array, ""], Int[Array, " W"]]:
    """The index of the first flag set in ``words`` (`packed_flags` of n flags; n when none is),
    and the words with that flag cleared."""
    start = jnp.arange(words.shape[0], dtype=jnp.int32) * 32  # index of each word's bit 0
    one = jnp.uint32(1)
    below = (words & (~words + one)) - one  # the bits below the lowest set one
    index = jnp.min(jnp.where(words != 0, start + jax.lax.population_count(below).astype(jnp.int32), n), initial=n)
    return index, jnp.where(start == (index & ~31), words & (words - one), words)  # (index n: all words are 0)


def first_true(flags: Bool[Array, " N"], size: int) -> Int[Array, " size"]:
    """Indices of the first ``size`` True entries of ``flags``, padded with ``len(flags)``.

    The flags are packed into 32-bit words, and each step takes the lowest set bit of the first
    nonzero word, then clears it: no scatter, which under vmap was 5-6x slower (1024 cells: 120
    flags to 13 indices 590 -> 115 us, 48 to 12 220 -> 57 us; 1100 to 64 4.8 -> 2.6 ms)."""
    n = flags.shape[0]

    def take_lowest(p, state):
        words, out = state
        index, words = pop_lowest(words, n)
        return words, out.at[p].set(index)

    return jax.lax.fori_loop(0, size, take_lowest, (packed_flags(flags), jnp.full((size,), n, jnp.int32)))[1]


def first_true_ranked(flags: Bool[Array, " N"], size: int) -> Int[Array, " size"]:
    """`first_true` without a loop, for many flags: output p finds the word that holds the
    (p+1)-th set bit from the words' running popcounts, then that bit within its word by halving
    (five popcounts).  1e4 rows of 544 flags to 64 indices: 9.2 ms against `first_true`'s 41 ms.
    Picking the pool test's survivors (`diagram._cut_by_pool`, ~540 flags to 64), a 3D 1e4 solve
    6.45 -> 5.98 s and 5.48 -> 5.16 s (two pairs, CPU 11.0 -> 10.2 and 9.3 -> 8.8 s); in the 3D
    clip instead of `first_true` (64 flags to 21), 6.4 -> 7.7 s."""
    n = flags.shape[0]
    words = packed_flags(flags)
    if words.shape[0] == 0:
        return jnp.full((size,), n, jnp.int32)
    counts = jax.lax.population_count(words).astype(jnp.int32)
    ends = jnp.cumsum(counts)  # set bits up to the end of each word
    p = jnp.arange(size, dtype=jnp.int32)
    word_of = jnp.sum(ends[None, :] <= p[:, None], 1)  # the word holding set bit p (W when none does)
    w = jnp.minimum(word_of, words.shape[0] - 1)
    rank, word = p - (ends[w] - counts[w]), words[w]
    bit = jnp.zeros_like(p)
    for width in (16, 8, 4, 2, 1):
        low = jax.lax.population_count(word & jnp.uint32((1 << width) - 1)).astype(jnp.int32)
        high = rank >= low
        rank, word, bit = jnp.where(high, rank - low, rank), jnp.where(high, word >> width, word), bit + high * width
    return jnp.where(word_of < words.shape[0], 32 * w + bit, n).astype(jnp.int32)


def stable_order(keys: Int[Array, " m"], largest: int) -> tuple[Int[Array, " m"], Int[Array, " m"]]:
    """``jnp.argsort(keys, stable=True)`` for keys in ``[0, largest]``, by counting: O(m largest)
    with no comparison sort (XLA's CPU sort of 1e5 keys: ~35 ms; 2D Newton solve of 1e5 seeds,
    one per diagram: 220 ms of 8.3 s); and its inverse, each key's place in that order."""
    onehot = keys[:, None] == jnp.arange(largest + 1, dtype=keys.dtype)
    before = jnp.cumsum(onehot, 0, dtype=jnp.int32)  # keys equal to each, up to this one
    counts = before[-1]
    place = (jnp.cumsum(counts) - counts)[keys] + jnp.take_along_axis(before, keys[:, None], 1)[:, 0] - 1
    order = jnp.zeros_like(keys).at[place].set(jnp.arange(keys.shape[0], dtype=keys.dtype), unique_indices=True)
    return order, place.astype(keys.dtype)


def _orderable(x: Float[Array, "..."]) -> Int[Array, "..."]:
    """float32 as int32 in the same order (-0.0 below 0.0)."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def _from_orderable(key: Int[Array, "..."]) -> Float[Array, "..."]:
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ 0x7FFFFFFF, key), jnp.float32)


def smallest_in_tiers(score: Float[Array, "b p"], tiers: Sequence[int], ahead: Bool[Array, "b p"] | None = None,
                      slack: int = 2) -> Int[Array, "b k"]:
    """Positions of about the ``k = sum(tiers)`` smallest finite entries of each row, padded with
    p: those ``ahead`` first (whatever their score; e.g. known neighbours), then the others in
    tiers, each in position order.  Tier t ends at a threshold: the entries up to it (those
    ahead included) number at most ``e = tiers[0] + ... + tiers[t]``, and at least ``e - slack``
    unless the row has fewer finite entries or float32 cannot split its ties, so a row may
    list a few of its k smallest less.  What ``lax.top_k(-score, k)`` ranks, up to the order
    within each tier and the ``slack``, without its sort.  Each threshold is bracketed by
    counts and found by regula falsi (the count at the guess against the counts at the bracket's
    ends, clamped to its inner 7/8): ~10 counting passes over the row, on every thread, where
    XLA's CPU ``top_k`` costs O(p k) per row on one.  1e5 rows of 272 uniform 2D squared
    distances to tiers of 12 and 20 (slack 2): 0.33-0.41 s against ``top_k``'s 0.80-0.87 s; 91%
    of the rows list 32, 8% 31, 0.5% 30, and the first tier is ``top_k``'s first 12 in 94%.
    (Halving the bracket instead: 0.54-0.59 s.  Exact k-th
    scores, by halving over their bits made distinct by the position: 0.76 s, ~20 passes: the
    loop runs until the slowest row of a block has split its k-th and (k+1)-th scores.)"""
    b, p = score.shape
    ends = np.cumsum(tiers)
    k = int(ends[-1])
    finite = jnp.isfinite(score)
    first = jnp.zeros_like(finite) if ahead is None else finite & ahead
    ranked = finite & ~first
    s = jnp.where(ranked, score, jnp.inf).astype(jnp.float32)
    n_first = jnp.sum(first, -1, dtype=jnp.int32)[:, None]
    want = jnp.minimum(jnp.asarray(ends, jnp.int32), jnp.sum(finite, -1, dtype=jnp.int32)[:, None])  # (b, t)

    def count_up_to(bound):  # (b, t)
        return n_first + jnp.sum(s[:, None, :] <= bound[:, :, None], -1, dtype=jnp.int32)

    least = jnp.min(s, -1, keepdims=True)
    most = jnp.max(jnp.where(ranked, s, -jnp.inf), -1, keepdims=True)
    below = least - jnp.abs(least) * 2.0**-20 - jnp.finfo(jnp.float32).tiny  # nothing ranked up to it
    at_most = count_up_to(jnp.broadcast_to(most, want.shape))
    everything = at_most <= want  # (b, t)
    lo = jnp.where(everything, most, below)
    hi = jnp.broadcast_to(most, lo.shape)

    def next_guess(lo, hi, at_lo, at_hi, moves):
        """Regula falsi; after two moves of the same end, halving of the float32 order instead (at
        most 32 of those, whatever the spread of the scores)."""
        share = (want - 0.5 - at_lo) / jnp.maximum(at_hi - at_lo, 1)
        falsi = lo + (hi - lo) * jnp.clip(share, 0.0625, 0.9375)
        k_lo, k_hi = _orderable(lo), _orderable(hi)
        halved = _from_orderable((k_lo >> 1) + (k_hi >> 1) + (k_lo & k_hi & 1))
        return jnp.where(jnp.abs(moves) >= 2, halved, falsi)

    def with_guess(lo, hi, at_lo, at_hi, moves):
        return lo, hi, at_lo, at_hi, moves, next_guess(lo, hi, at_lo, at_hi, moves)

    def splitting(state):  # until every row lists at least want - slack (or cannot split)
        lo, hi, at_lo, _, _, mid = state
        return jnp.any((at_lo < want - slack) & (lo < mid) & (mid < hi))

    def narrow(state):
        lo, hi, at_lo, at_hi, moves, mid = state
        at_mid = count_up_to(mid)
        fits = at_mid <= want
        # moves: +m after m moves of lo in a row, -m of hi.
        moves = jnp.where(fits, jnp.maximum(moves, 0) + 1, jnp.minimum(moves, 0) - 1)
        return with_guess(jnp.where(fits, mid, lo), jnp.where(fits, hi, mid), jnp.where(fits, at_mid, at_lo),
                          jnp.where(fits, at_hi, at_mid), moves)

    state = with_guess(lo, hi, jnp.where(everything, at_most, n_first), at_most, jnp.zeros(lo.shape, jnp.int32))
    threshold = jax.lax.while_loop(splitting, narrow, state)[0]  # (b, t)
    # The flags of each group (ahead, then every tier) one after the other: their first k true
    # are the groups' positions, group after group (a reordering afterwards: 2x slower).
    upto = s[:, None, :] <= threshold[:, :, None]  # (b, t, p)
    groups = [first, upto[:, 0]] + [upto[:, t] & ~upto[:, t - 1] for t in range(1, len(tiers))]
    picked = jax.vmap(lambda flags: first_true_ranked(flags, k))(jnp.concatenate(groups, -1))
    return jnp.where(picked < len(groups) * p, picked % p, p)
