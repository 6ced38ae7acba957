"""The persistent compilation cache helper: a later process loads the programs from disk."""

import subprocess
import sys

from sdot_jax.compilation_cache import default_directory

PROGRAM = """
import sys
import jax, jax.numpy as jnp
from jax import monitoring
from sdot_jax import enable_compilation_cache
monitoring.register_event_listener(
    lambda event, **_: print(event.rsplit("/", 1)[-1]) if event.startswith("/jax/compilation_cache/cache_") else None)
enable_compilation_cache(sys.argv[1], min_compile_seconds=0)
print(float(jax.jit(lambda x: jnp.sum(jnp.sin(x) ** 2))(jnp.arange(5.0))))
"""


def test_compiled_programs_are_written_to_the_directory_and_loaded_by_a_later_process(tmp_path):
    cache = tmp_path / "xla"
    run = lambda: subprocess.run([sys.executable, "-c", PROGRAM, str(cache)], check=True,  # noqa: E731
                                 capture_output=True, text=True).stdout.split()
    first = run()
    assert "cache_misses" in first and "cache_hits" not in first and any(cache.iterdir())
    second = run()
    assert "cache_hits" in second and "cache_misses" not in second
    assert first[-1] == second[-1]


def test_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SDOT_JAX_CACHE", str(tmp_path / "mine"))
    assert default_directory() == tmp_path / "mine"
    monkeypatch.delenv("SDOT_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_directory() == tmp_path / "sdot_jax" / "xla"
