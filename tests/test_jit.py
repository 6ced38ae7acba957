"""The library's own jit (`sdot_jax._jit`): XLA options at the top level, none when nested."""

import jax
import jax.numpy as jnp
import numpy as np

from sdot_jax._jit import CPU_OPTIONS, compiler_options, jit


def _energy(x, power: int):
    return jnp.sum(jnp.sin(x) ** power)


def test_options_apply_on_cpu_only():
    assert compiler_options() == (CPU_OPTIONS if jax.default_backend() == "cpu" else {})


def test_runs_at_top_level_and_under_every_transformation():
    # JAX refuses compiler options on a nested jit: each of these raised before the wrapper
    # checked whether a transformation is tracing.
    f = jit(_energy)
    x = np.linspace(0.0, 1.0, 5)
    expected = np.sum(np.sin(x) ** 2)
    np.testing.assert_allclose(f(jnp.asarray(x), 2), expected, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(lambda: f(x, 2))(), expected, rtol=1e-12)  # constants, outer jit
    np.testing.assert_allclose(jax.grad(lambda x: f(x, 2))(jnp.asarray(x)), 2 * np.sin(x) * np.cos(x), rtol=1e-12)
    batch = np.stack([x, 2 * x])
    np.testing.assert_allclose(jax.vmap(lambda x: f(x, 2))(jnp.asarray(batch)), np.sum(np.sin(batch) ** 2, 1),
                               rtol=1e-12)
