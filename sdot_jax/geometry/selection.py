"""Picking positions without a comparison sort (XLA's CPU sort is serial and slow): the first
flags set, by the bits of 32-bit words; a counting sort of small keys.

(``lax.top_k``, also serial on CPU, was measured against a replacement here: each row's k-th
smallest score by bisection over its float32 bits, then the flags below it listed.  1e5 rows of
272 scores to 32 in two tiers: 0.76-0.78 s either way, and twice the CPU time.  The bisection
needed 13-27 passes per block of rows: the loop runs until the slowest row has separated its
k-th and (k+1)-th scores.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
