"""Continuation: automatic choice and a hard image solved through smoothed copies."""

import numpy as np
import pytest

from sdot_jax import Box, optimal_transport_plan
from sdot_jax.measures.gaussians import SumOfGaussians
from sdot_jax.measures.polynomial_grid import Image
from sdot_jax.measures.spline_grid import SplineGrid
from sdot_jax.solve import continuation


def test_wanted_decides_from_the_target():
    assert not continuation.wanted(Box())
    assert not continuation.wanted(SplineGrid(np.ones((4, 4))))
    assert continuation.wanted(Image(np.array([[0.0, 1.0], [1.0, 1.0]])))
    assert continuation.wanted(Image(np.array([[90.0, 1.0], [1.0, 1.0]])))
    assert not continuation.wanted(SumOfGaussians(np.zeros((1, 2)), 1.0))


def test_smoothed_keeps_type_mass_and_fills_zeros():
    values = np.zeros((8, 8))
    values[2:4, 5:7] = 1.0
    image = Image(values)
    blurred = image.smoothed(0.125)
    assert type(blurred) is Image
    assert np.all(np.asarray(blurred.values) > 0)
    np.testing.assert_allclose(blurred.total_mass(), image.total_mass(), rtol=0.5)  # edge extension
    const = SplineGrid(np.full((5, 5), 3.0), degree=2).smoothed(0.3)
    np.testing.assert_allclose(const.values, 3.0, rtol=1e-14)


@pytest.mark.slow
def test_image_with_zero_pixels_converges():
    rng = np.random.default_rng(0)
    values = np.where(rng.random((8, 8)) < 0.2, 0.0, 0.5 + 0.5 * rng.random((8, 8)))
    y = rng.random((100, 2))
    plan = optimal_transport_plan(y, Image(values), tol=1e-10)  # continuation chosen automatically
    assert bool(plan.stats.converged)
    np.testing.assert_allclose(plan.cell_masses, 1 / 100, rtol=1e-9)
