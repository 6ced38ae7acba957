"""Branches that still skip their work under ``jax.vmap``."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

#: Under vmap the taken branch runs on sub-batches of ``ceil(B / CHUNKS)`` problems.
CHUNKS = 8


def cond_any(pred, true_fn: Callable, false_fn: Callable, *operands):
    """``lax.cond(pred, true_fn, false_fn, *operands)``.

    Under ``jax.vmap`` with a batched ``pred``, ``lax.cond`` becomes a select that runs both
    branches for every problem of the batch.  Here ``false_fn`` runs for the whole batch and
    ``true_fn`` only for the problems whose ``pred`` holds: they are gathered into sub-batches of
    ``ceil(B / CHUNKS)`` problems, one after another.  Use it for an expensive branch that is
    rarely taken (a fallback).

    ``true_fn`` and ``false_fn`` must not close over traced values: pass them in ``operands``.
    Not reverse-mode differentiable (``jax.custom_batching.custom_vmap``): use it inside loops
    whose derivatives come from elsewhere (implicit differentiation).
    """
    unbatched = lambda pred, *ops: jax.lax.cond(pred, true_fn, false_fn, *ops)  # noqa: E731
    return _batched_cond(unbatched, true_fn, false_fn)(pred, *operands)


def for_active(active, fn: Callable, inactive_fn: Callable, *operands):
    """``fn(*operands)`` in the body of a ``lax.while_loop`` that runs while ``active``.

    Unbatched, ``active`` holds whenever the body runs: ``fn`` runs, with no branch.  Under
    ``jax.vmap`` the loop runs until every problem of the batch has finished and discards the
    finished problems' lanes: those get ``inactive_fn`` (cheap), and ``fn`` runs only for the
    active problems, as ``cond_any``'s taken branch.  Same restrictions as ``cond_any``.
    """
    return _batched_cond(lambda _, *ops: fn(*ops), fn, inactive_fn)(active, *operands)


def _batched_cond(unbatched: Callable, true_fn: Callable, false_fn: Callable):
    """``unbatched(pred, *operands)``, vmapped as a cond on ``pred`` whose true branch runs only
    for the problems concerned."""

    @jax.custom_batching.custom_vmap
    def branch(pred, *operands):
        return unbatched(pred, *operands)

    @branch.def_vmap
    def rule(axis_size, in_batched, pred, *operands):
        pred_batched, *operands_batched = in_batched
        in_axes = tuple(jax.tree.map(lambda b: 0 if b else None, b) for b in operands_batched)

        def batched(fn):
            return jax.vmap(fn, in_axes=in_axes, axis_size=axis_size)

        if not pred_batched:
            out = jax.lax.cond(pred, batched(true_fn), batched(false_fn), *operands)
        else:
            otherwise = batched(false_fn)(*operands)
            out = _where_taken(pred, true_fn, otherwise, operands, in_axes, axis_size)
        return out, jax.tree.map(lambda _: True, out)

    return branch


def _where_taken(pred, true_fn, otherwise, operands, in_axes, size: int):
    """``otherwise`` with ``true_fn``'s results written in where ``pred`` holds, computed on
    sub-batches of the problems concerned, one after another.  (One compiled variant: a second,
    the whole batch at once when most problems need it, doubled the compilation of a vmapped
    solve, 18 s -> 33 s at n = 100, the branches being nested, for no gain on CPU.)"""
    chunk = -(-size // CHUNKS)
    taken = jnp.nonzero(pred, size=CHUNKS * chunk, fill_value=size)[0]  # problems concerned first
    count = jnp.sum(pred)

    def step(carry):
        c, out = carry
        rows = jax.lax.dynamic_slice_in_dim(taken, c * chunk, chunk)
        gather = jnp.where(rows < size, rows, taken[0])  # padding repeats a problem concerned
        sub = jax.tree.map(lambda axis, x: x if axis is None else x[gather], in_axes, operands,
                           is_leaf=lambda axis: axis is None)
        result = jax.vmap(true_fn, in_axes=in_axes, axis_size=chunk)(*sub)
        return c + 1, jax.tree.map(lambda o, r: o.at[rows].set(r, mode="drop"), out, result)

    return jax.lax.while_loop(lambda carry: carry[0] * chunk < count, step, (jnp.array(0), otherwise))[1]
