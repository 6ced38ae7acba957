"""Positions picked without a comparison sort (`geometry.selection`), against numpy's sorts."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import example, given, settings, strategies as st

from sdot_jax.geometry import selection


@settings(max_examples=25, deadline=None)  # (each length compiles anew)
@given(st.lists(st.booleans(), min_size=0, max_size=140), st.integers(1, 40))
@example([False] * 31 + [True], 3)
@example([False] * 32 + [True], 3)
@example([True] * 64, 40)
@example([False] * 64, 5)
@example([False] * 95 + [True], 2)
@example([], 4)
def test_first_true_lists_the_first_true_flags_in_order(flags, size):
    """`selection.first_true` (bit by bit over 32-bit words) and `first_true_ranked` (by
    popcounts) against numpy's nonzero, padded with the length: word edges, lengths that are
    multiples of 32, no flag at all; and under vmap, on rows that differ."""

    def want(flags):
        first = np.nonzero(flags)[0][:size]
        return np.concatenate([first, np.full(size - len(first), len(flags))])

    rows = np.asarray([flags, flags[::-1]], bool).reshape(2, len(flags))
    for first_true in (selection.first_true, selection.first_true_ranked):
        np.testing.assert_array_equal(np.asarray(first_true(jnp.asarray(flags, bool), size)), want(flags))
        batched = np.asarray(jax.vmap(lambda f: first_true(f, size))(jnp.asarray(rows)))
        np.testing.assert_array_equal(batched[0], want(rows[0]))
        np.testing.assert_array_equal(batched[1], want(rows[1]))


def test_stable_order_is_a_stable_argsort():
    """`selection.stable_order` (a counting sort) against numpy's stable argsort, and its inverse:
    ties keep their order, keys 0 and ``largest`` included, one key only."""
    rng = np.random.default_rng(3)
    for keys, largest in ((rng.integers(0, 33, 1000), 32), (np.full(7, 4), 4), (np.array([3, 0, 3, 1, 0]), 3)):
        got, place = (np.asarray(a) for a in jax.jit(selection.stable_order, static_argnums=1)(jnp.asarray(keys, jnp.int32),
                                                                                     largest))
        np.testing.assert_array_equal(got, np.argsort(keys, kind="stable"))
        np.testing.assert_array_equal(place[got], np.arange(len(keys)))  # the inverse permutation
