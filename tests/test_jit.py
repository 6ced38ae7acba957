"""The library's own jit (`sdot_jax._jit`): XLA options at the top level, none when nested."""

import jax
import jax.numpy as jnp
import numpy as np

from sdot_jax._jit import CPU_OPTIONS, YNN_OPTIONS, _accepted, compiler_options, jit


def _energy(x, power: int):
    return jnp.sum(jnp.sin(x) ** power)


def test_options_apply_on_cpu_only():
    if jax.default_backend() != "cpu":
        assert compiler_options() == {}
        return
    if not _accepted(YNN_OPTIONS):  # an XLA that does not know the option (jaxlib 0.10 does)
        assert compiler_options() == CPU_OPTIONS
        return
    assert compiler_options() == {**CPU_OPTIONS, **YNN_OPTIONS}

    def compiled(options):
        x = jnp.ones((1024, 1024))  # (a small reduction is XLA's own either way)
        return jax.jit(lambda x: jnp.max(x, 1), compiler_options=options).lower(x).compile().as_text()

    assert "ynn" in compiled({}) and "ynn" not in compiled(compiler_options())  # reductions stay XLA's own


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
