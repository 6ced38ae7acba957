"""The library's own ``jit``: ``eqx.filter_jit`` with XLA options that shorten its compilations.

XLA's CPU pipeline repeats its simplification passes until nothing changes.  Over the nested
loops of a solve (Newton's ``while_loop`` around the diagram's maps, scans and clipping loops)
two of them, loop-invariant code motion and the while-loop simplifier, ran some forty rounds and
took ~5 s of the ~7 s of HLO optimisation of a 2D solve (the rest of a compilation is LLVM).
Without them (2-core CPU, a Newton solve to 1e-6 from the initial weights, compilation / run):

| case | with | without |
|---|---|---|
| 2D, n = 3e4 | 23.5 s / 5.27 s | 16.1 s / 5.31 s |
| 3D, n = 1e4 | 39.5 s / 14.05 s | 26.2 s / 14.74 s (13.6-14.9 s between runs) |

The loops' invariants are hoisted by hand already (padded arrays, grids and bounds are built
before the loops).  Measured on CPU only: on other backends the options are left as they are.
"""

from __future__ import annotations

import functools
from typing import Callable

import equinox as eqx
import jax

CPU_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion,simplify-while-loops"}
#: XLA's CPU backend hands reductions to YNNPACK, at a fixed cost of ~0.2 ms a call that the
#: diagram's many small reductions (per batch of cells, per clip) pay thousands of times; kept for
#: matrix products only.  Trial diagram at the optimum (1e5 uniform seeds in 2D, 1e4 in 3D):
#: 0.78 -> 0.66 s, 0.89 -> 0.80 s.  Only where the running XLA knows the option.
YNN_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
    """`CPU_OPTIONS` and `YNN_OPTIONS` when JAX's default backend is the CPU, else none."""
    if jax.default_backend() != "cpu":
        return {}
    return {**CPU_OPTIONS, **(YNN_OPTIONS if _accepted(YNN_OPTIONS) else {})}


def _accepted(options: dict[str, str]) -> bool:
    """Whether XLA compiles a trivial program with ``options`` (it refuses unknown ones)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # noqa: BLE001 -- XLA's errors for unknown options vary by version
        return False
    return True


def _top_level() -> bool:
    """Whether no JAX transformation is tracing: JAX refuses ``compiler_options`` on a jit nested
    in another jit or under ``jax.grad``.  (A private function of JAX: without it, no options.)"""
    try:
        from jax._src.core import trace_state_clean
    except ImportError:
        return False
    return trace_state_clean()


def jit(fn: Callable) -> Callable:
    """``eqx.filter_jit(fn)``, compiled with `compiler_options` when called at the top level
    (chosen at the first such call, so that importing the library starts no JAX backend); under
    another transformation, the plain ``eqx.filter_jit(fn)``."""
    nested = eqx.filter_jit(fn)

    @functools.cache
    def top():
        return eqx.filter_jit(fn, compiler_options=compiler_options())

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return (top() if _top_level() else nested)(*args, **kwargs)

    return call
