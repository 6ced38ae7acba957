"""Keep compiled programs on disk, so that a later process skips XLA's compilation.

A solve compiles one program per problem shape (n, d, density type, capacities): ~28 s for 2D
n = 1e4 on a 2-core CPU, ~60 s in 3D.  JAX's persistent compilation cache stores the compiled
executables in a directory; a later process that solves a problem of the same shapes loads them
instead (2D 1e4: 28 s -> 5 s, the rest being tracing).  The cache is trusted code: keep it in a
directory only you can write to.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_directory() -> Path:
    """``$SDOT_JAX_CACHE``, else ``$XDG_CACHE_HOME/sdot_jax/xla`` (``~/.cache/sdot_jax/xla``)."""
    if os.environ.get("SDOT_JAX_CACHE"):
        return Path(os.environ["SDOT_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdot_jax" / "xla"


def enable_compilation_cache(directory: str | os.PathLike | None = None, min_compile_seconds: float = 1.0) -> Path:
    """Turn on JAX's persistent compilation cache in ``directory`` (`default_directory` if None)
    for every program that took at least ``min_compile_seconds`` to compile; returns the directory.

    It is a process-wide JAX setting: call it before the first solve (JAX fixes the cache when it
    first compiles with a directory set)."""
    path = Path(directory) if directory is not None else default_directory()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
