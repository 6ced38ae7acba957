"""The persistent compilation cache helper: a later process finds the programs on disk."""

import subprocess
import sys

from sdot_jax.compilation_cache import default_directory

PROGRAM = """
import sys
import jax.numpy as jnp, jax
from sdot_jax import enable_compilation_cache
enable_compilation_cache(sys.argv[1], min_compile_seconds=0)
print(float(jax.jit(lambda x: jnp.sum(jnp.sin(x) ** 2))(jnp.arange(5.0))))
"""


def test_compiled_programs_are_written_to_the_directory_and_reused(tmp_path):
    cache = tmp_path / "xla"
    run = lambda: subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], check=True,  # noqa: E731
                                 capture_output=True, text=True).stdout
    first = run()
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "nothing was cached"
    second = run()
    assert first == second
    assert sorted(p.name for p in cache.iterdir()) == entries  # found, not compiled again


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SDOT_JAX_CACHE", str(tmp_path / "mine"))
    assert default_directory() == tmp_path / "mine"
    monkeypatch.delenv("SDOT_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "sdot_jax" / "xla"
