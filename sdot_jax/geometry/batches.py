"""How much of a diagram one step of its loops handles, by backend.

The diagram maps over cells in batches (`diagram.CLIP_BATCH`, `diagram.PAIRS_PER_BATCH`,
`diagram.REDO_CHUNK`, `neighbours.SLOTS_PER_BATCH`) sized to stay in a 2-core CPU's caches.  A GPU
wants far more work per kernel launch: off the CPU every one of these sizes is multiplied by
`OFF_CPU_SCALE`.  On an H200 (float64, uniform Diracs, benchmarks/device.py) with 16: one fresh
diagram at the optimum in 258 ns per cell for 2D n = 1e5, 201 for 2D 1e6, 3505 for 3D 1e5; the
CPU's sizes were not measured there.  The backend is JAX's default one when a function is traced
(arrays placed on another device keep its sizes: only their speed depends on it, never a result).
"""

from __future__ import annotations

import jax

OFF_CPU_SCALE = 16
#: Set to force a scale on every backend (benchmarks, tests); None: `OFF_CPU_SCALE` off the CPU,
#: 1 on it.  Read when a function is traced.
FORCED: int | None = None


def scale() -> int:
    """The factor on the diagram's batch sizes for JAX's default backend."""
    if FORCED is not None:
        return FORCED
    return 1 if jax.default_backend() == "cpu" else OFF_CPU_SCALE
