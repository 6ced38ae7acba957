"""A ``lax.cond`` that still skips its branch under ``jax.vmap``."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def cond_any(pred, true_fn: Callable, false_fn: Callable, *operands):
    """``lax.cond(pred, true_fn, false_fn, *operands)``.

    Under ``jax.vmap`` with a batched ``pred``, ``lax.cond`` becomes a select that runs both
    branches for every problem of the batch.  Here ``true_fn`` runs (for the whole batch, its
    result kept where ``pred`` holds) only when ``pred`` holds for some problem.  Use it for an
    expensive branch that is rarely taken (a fallback).

    ``true_fn`` and ``false_fn`` must not close over traced values: pass them in ``operands``.
    Not reverse-mode differentiable (``jax.custom_batching.custom_vmap``): use it inside loops
    whose derivatives come from elsewhere (implicit differentiation).
    """

    @jax.custom_batching.custom_vmap
    def branch(pred, *operands):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)

    @branch.def_vmap
    def rule(axis_size, in_batched, pred, *operands):
        pred_batched, *operands_batched = in_batched
        in_axes = tuple(jax.tree.map(lambda b: 0 if b else None, b) for b in operands_batched)

        def batched(fn):
            return jax.vmap(fn, in_axes=in_axes, axis_size=axis_size)

        if not pred_batched:
            out = jax.lax.cond(pred, batched(true_fn), batched(false_fn), *operands)
        else:

            def both(*operands):
                yes, no = batched(true_fn)(*operands), batched(false_fn)(*operands)
                return jax.tree.map(
                    lambda a, b: jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - 1)), a, b), yes, no)

            out = jax.lax.cond(jnp.any(pred), both, batched(false_fn), *operands)
        return out, jax.tree.map(lambda _: True, out)

    return branch(pred, *operands)
