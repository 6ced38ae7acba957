"""Positions picked without a comparison sort (`geometry.selection`), against numpy's sorts; and
`diagram._where_open`, which packs the open rows into chunks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import example, given, settings, strategies as st

from sdot_jax.geometry import selection
from sdot_jax.geometry.diagram import _where_open


#: Lengths about the 32-bit words' edges, and sizes: each pair compiles once (`_jitted`).
LENGTHS, SIZES = (0, 1, 31, 32, 33, 47, 64, 95, 96, 128, 140), (1, 3, 12, 40)


@functools.cache
def _jitted(first_true, size, batched):
    picks = functools.partial(first_true, size=size)
    return jax.jit(jax.vmap(picks) if batched else picks)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(LENGTHS).flatmap(lambda n: st.lists(st.booleans(), min_size=n, max_size=n)),
       st.sampled_from(SIZES))
@example([False] * 31 + [True], 3)
@example([False] * 32 + [True], 3)
@example([True] * 64, 40)
@example([False] * 64, 12)
@example([False] * 95 + [True], 1)
@example([], 3)
def test_first_true_lists_the_first_true_flags_in_order(flags, size):
    """`selection.first_true` (bit by bit over 32-bit words) and `first_true_ranked` (by
    popcounts) against numpy's nonzero, padded with the length: word edges, lengths that are
    multiples of 32, no flag at all; and under vmap, on rows that differ."""

    def want(flags):
        first = np.nonzero(flags)[0][:size]
        return np.concatenate([first, np.full(size - len(first), len(flags))])

    rows = np.asarray([flags, flags[::-1]], bool).reshape(2, len(flags))
    for first_true in (selection.first_true, selection.first_true_ranked):
        np.testing.assert_array_equal(np.asarray(_jitted(first_true, size, False)(jnp.asarray(flags, bool))),
                                      want(flags))
        batched = np.asarray(_jitted(first_true, size, True)(jnp.asarray(rows)))
        np.testing.assert_array_equal(batched[0], want(rows[0]))
        np.testing.assert_array_equal(batched[1], want(rows[1]))


def test_stable_order_is_a_stable_argsort():
    """`selection.stable_order` (a counting sort) against numpy's stable argsort, and its inverse:
    ties keep their order, keys 0 and ``largest`` included, one key only."""
    rng = np.random.default_rng(3)
    for keys, largest in ((rng.integers(0, 33, 1000), 32), (np.full(7, 4), 4), (np.array([3, 0, 3, 1, 0]), 3)):
        order = jax.jit(selection.stable_order, static_argnums=1)(jnp.asarray(keys, jnp.int32), largest)
        got, place = (np.asarray(a) for a in order)
        np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))
        np.testing.assert_array_equal(place[got], np.arange(len(keys)))  # the inverse permutation


@settings(max_examples=15, deadline=None)  # (each shape compiles anew)
@given(st.sampled_from([1, 3]), st.sampled_from([5, 40, 90]), st.lists(st.integers(1, 14), min_size=1, max_size=3),
       st.integers(0, 3), st.integers(0, 2**31 - 1))
@example(1, 5, [3, 4], 2, 0)  # fewer entries than asked for
def test_smallest_in_tiers_lists_a_prefix_of_the_sorted_scores(rows, p, tiers, slack, seed):
    """`selection.smallest_in_tiers` on distinct scores (some not finite, some rows with entries
    ahead): those ahead first, then tier by tier the next scores of numpy's sort of the others,
    each tier in position order and ending within ``slack`` below its end, then padding."""
    rng = np.random.default_rng(seed)
    score = rng.permutation(rows * p).reshape(rows, p).astype(np.float64) - rows * p / 3
    score[rng.uniform(size=score.shape) < 0.2] = np.inf
    ahead = (rng.uniform(size=score.shape) < 0.1) & (np.arange(rows) % 2 == 0)[:, None]
    f = jax.jit(selection.smallest_in_tiers, static_argnums=(1, 3))
    got = np.asarray(f(jnp.asarray(score, jnp.float32), tuple(tiers), jnp.asarray(ahead), slack))
    for r in range(rows):
        finite = np.isfinite(score[r])
        first = list(np.nonzero(finite & ahead[r])[0])
        others = [j for j in np.argsort(score[r]) if finite[j] and not ahead[r, j]]
        listed = [j for j in got[r] if j < p]
        assert all(j == p for j in got[r][len(listed):])  # padding last
        assert listed[: len(first)] == first[: sum(tiers)]  # (in position order, as many as fit)
        first = first[: sum(tiers)]
        assert _splits_in_tiers(listed[len(first):], others, len(first), np.cumsum(tiers), slack), (listed, others)


def _splits_in_tiers(rest, others, ahead, ends, slack):
    """Whether ``rest`` is, tier after tier, the next entries of ``others`` (sorted) in position
    order, each tier ending (counting ``ahead``) within ``slack`` below its end, or where
    ``others`` end."""
    if not len(ends):
        return not rest
    most = max(0, min(ends[0], ahead + len(others)) - ahead)  # (ahead entries may fill the tier)
    for count in range(min(most, len(rest)), max(0, most - slack) - 1, -1):
        if rest[:count] == sorted(others[:count]) and _splits_in_tiers(
                rest[count:], others[count:], ahead + count, ends[1:], slack):
            return True
    return False


def test_smallest_in_tiers_with_far_outliers():
    """Scores 1e-3 apart, then outliers up to the float32 maximum (or below -1e30): every row
    still lists exactly its 10 smallest (slack 0), tier by tier.  (The bracket's linear guesses
    stall here and halving in the float32 order takes over; without it the result would be the
    same, only after ~1000 passes: this test checks the answer, not the pass count.)"""
    rng = np.random.default_rng(0)
    score = np.concatenate([rng.permutation(40)[None].repeat(4, 0) * 1e-3, [[3e38], [1e30], [1e10], [-1e30]] * np.ones((4, 3))], 1)
    got = np.asarray(selection.smallest_in_tiers(jnp.asarray(score, jnp.float32), (4, 6), slack=0))
    for r in range(4):
        order = np.argsort(score[r])
        np.testing.assert_array_equal(got[r], np.concatenate([np.sort(order[:4]), np.sort(order[4:10])]))


@functools.cache
def _where_open_jitted(chunk):
    compute = lambda p: (2 * p + 1, p % 3 == 0)  # noqa: E731  (two outputs: any pytree)
    into = lambda m: (jnp.full(m, -1), jnp.zeros(m, bool))  # noqa: E731
    return jax.jit(lambda open_: _where_open(open_, compute, chunk=chunk, into=into(open_.shape[0])))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from((5, 40)).flatmap(lambda m: st.lists(st.booleans(), min_size=m, max_size=m)),
       st.sampled_from((8, 64)))
@example([False] * 40, 64)
@example([False] * 40, 8)
@example([True] * 40, 8)
def test_where_open_computes_the_open_rows_in_one_chunk_or_many(flags, chunk):
    """`diagram._where_open` writes ``compute``'s rows where open and keeps ``into`` elsewhere,
    with the rows in one chunk (a cond) or in several (a loop), none open included."""
    open_ = np.array(flags, bool)
    values, marks = _where_open_jitted(chunk)(jnp.asarray(open_))
    rows = np.arange(open_.size)
    np.testing.assert_array_equal(values, np.where(open_, 2 * rows + 1, -1))
    np.testing.assert_array_equal(marks, open_ & (rows % 3 == 0))
