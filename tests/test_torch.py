"""The PyTorch bridge: same numbers and gradients as JAX, gradcheck, float64 kept, zero-copy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdot_jax import Box, Capacities, SumOfDiracs, optimal_transport_plan  # noqa: E402
from sdot_jax import torch as sdt  # noqa: E402

N, D = 8, 2
OPTIONS = dict(tol=1e-12, capacities=Capacities.default(N, D))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(21)
    return rng.uniform(0.05, 0.95, (N, D)), rng.uniform(0.5, 1.5, N)


def test_distance_gradients_are_the_envelope_formula(problem):
    """W2 and its gradient from torch equal sqrt(cost) and 2 a_i (y_i - b_i) / (2 W2), with the
    cost and barycenters from the torch plan (the distance's backward never solves a system)."""
    y_np, m_np = problem
    y = torch.tensor(y_np, requires_grad=True)
    m = torch.tensor(m_np, requires_grad=True)
    w = sdt.distance(y, Box(), m, **OPTIONS)
    assert w.dtype == torch.float64 and w.shape == ()
    w.backward()
    plan = sdt.optimal_transport_plan(torch.tensor(y_np), Box(), torch.tensor(m_np), **OPTIONS)
    np.testing.assert_allclose(w.item(), plan.cost.sqrt().item(), rtol=1e-10)
    a = m_np / m_np.sum()
    expected = a[:, None] * (y_np - plan.barycenters.numpy()) / w.item()
    np.testing.assert_allclose(y.grad.numpy(), expected, rtol=0, atol=1e-10)
    # d W2 / d masses: the weights (zero-mean gauge) through the normalisation a = m / sum(m).
    psi = plan.weights.numpy()
    expected_m = (psi - a @ psi) / m_np.sum() / (2 * w.item())
    np.testing.assert_allclose(m.grad.numpy(), expected_m, rtol=0, atol=1e-10)


def test_plan_outputs_and_backward(problem):
    y_np, m_np = problem
    y = torch.tensor(y_np, requires_grad=True)
    plan = sdt.optimal_transport_plan(y, Box(), torch.tensor(m_np), **OPTIONS)
    plan.barycenters.sum().backward()

    def f(y):
        ref = optimal_transport_plan(SumOfDiracs(y, jnp.asarray(m_np)), Box(), **OPTIONS)
        return ref.barycenters.sum(), (ref.weights, ref.barycenters)

    expected, (weights, barycenters) = jax.jit(jax.grad(f, has_aux=True))(jnp.asarray(y_np))
    np.testing.assert_allclose(plan.weights.detach().numpy(), np.asarray(weights), atol=1e-11)
    np.testing.assert_allclose(plan.barycenters.detach().numpy(), np.asarray(barycenters), atol=1e-11)
    np.testing.assert_allclose(y.grad.numpy(), np.asarray(expected), rtol=1e-10, atol=1e-12)


def test_gradcheck(problem):
    y_np, m_np = problem
    y = torch.tensor(y_np, requires_grad=True)
    m = torch.tensor(m_np, requires_grad=True)
    fn = lambda y, m: sdt.distance(y, Box(), m, **OPTIONS)
    assert torch.autograd.gradcheck(fn, (y, m), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_dlpack_zero_copy_and_float64_guard():
    t = torch.rand(5, 2, dtype=torch.float64)
    a = sdt.to_jax(t)
    assert a.dtype == jnp.float64 and a.unsafe_buffer_pointer() == t.data_ptr()
    back = sdt.to_torch(a)
    assert back.dtype == torch.float64 and back.data_ptr() == t.data_ptr()
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(TypeError, match="jax_enable_x64"):
            sdt.to_jax(t)
    finally:
        jax.config.update("jax_enable_x64", True)
