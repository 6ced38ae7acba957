"""Continuation: automatic choice and a hard image solved through smoothed copies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdot_jax import Box, Capacities, SumOfDiracs, optimal_transport_plan
from sdot_jax.api import _solve
from sdot_jax.geometry.diagram import power_diagram
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


def test_a_target_built_from_concrete_arrays_under_jit_is_judged_as_outside():
    """Built inside a jitted function from concrete arrays, a density keeps them concrete (its
    checks run at once), so the automatic choice sees its zeros or its non-convex domain as it
    does outside jit; built from traced values, it cannot tell."""
    from sdot_jax.measures.mesh import Mesh

    zero_pixel = np.array([[0.0, 1.0], [1.0, 1.0]])
    l_nodes = np.array([[0.0, 0], [1, 0], [1, 0.5], [0.5, 0.5], [0.5, 1], [0, 1], [0, 0.5], [0.5, 0]])
    l_tris = np.array([[0, 7, 6], [7, 3, 6], [7, 1, 2], [7, 2, 3], [6, 3, 4], [6, 4, 5]])
    seen = []

    def judge(v):
        seen.extend([continuation.wanted(Image(zero_pixel)), continuation.wanted(SplineGrid(zero_pixel)),
                     continuation.wanted(Mesh(l_nodes, l_tris)), continuation.wanted(Image(v))])
        return v

    jax.make_jaxpr(judge)(jnp.asarray(zero_pixel))
    assert seen == [True, True, True, False]


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


@pytest.mark.slow
def test_continuation_under_jit_equals_eager():
    """Under jax.jit the image's contrasts are unknown, so continuation runs a fixed schedule
    (4 cells down to 1/4): the same optimum as the eager solve, whose schedule is chosen from the
    contrasts, and the cell masses checked by an independent power diagram."""
    rng = np.random.default_rng(0)
    values = np.where(rng.random((8, 8)) < 0.2, 0.0, 0.5 + 0.5 * rng.random((8, 8)))
    y = jnp.asarray(rng.random((100, 2)))
    caps = Capacities.default(100, 2)
    eager = optimal_transport_plan(y, Image(values), tol=1e-10, capacities=caps)
    traced = jax.jit(lambda v: optimal_transport_plan(y, Image(v), tol=1e-10, capacities=caps,
                                                      continuation=True).weights)(jnp.asarray(values))
    np.testing.assert_allclose(traced, eager.weights, atol=1e-8 * np.ptp(np.asarray(eager.weights)))
    mass = power_diagram(y, traced, Image(values), caps).mass
    np.testing.assert_allclose(mass / np.sum(mass), 1 / 100, rtol=1e-9)


def test_smoothed_hessian_changes_the_path_not_the_solution():
    """From the optimum of a blurred 90:1 image, Newton on the sharp image with the blurred
    image's Laplacian for its first directions takes another path to the same weights; the
    final masses are checked against an independent power diagram of the returned weights."""
    rng = np.random.default_rng(1)
    values = np.where(rng.random((8, 8)) < 0.5, 1.0, 90.0)
    y = rng.random((60, 2))
    image, blurred = Image(values), Image(values).smoothed(0.06)
    start = optimal_transport_plan(y, blurred, tol=1e-10).weights
    options = dict(tol=1e-11, max_iter=50, weights=start, verbose=False, capacities=None, throw=True)
    plain = _solve(SumOfDiracs(y), image, **options)
    smoothed = _solve(SumOfDiracs(y), image, hessian_density=blurred, **options)
    assert not np.allclose(plain.stats.residuals[1], smoothed.stats.residuals[1])
    np.testing.assert_allclose(smoothed.weights, plain.weights, atol=1e-9 * np.ptp(np.asarray(plain.weights)))
    mass = power_diagram(jnp.asarray(y), smoothed.weights, image, Capacities.default(60, 2)).mass
    np.testing.assert_allclose(mass / image.total_mass(), 1 / 60, rtol=1e-10)
