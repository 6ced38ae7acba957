"""Problems whose solution is known in closed form.

Shapes are shared across the suite (2D: n = 16, 3D: n = 27) so that JAX compiles each solve once
per worker; one- and two-Dirac problems add one compilation each.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdot_jax import Box, SumOfDiracs, optimal_transport_plan


def box_second_moment(y, lo, hi):
    r"""$\frac{1}{|B|}\int_B |x - y|^2 dx$ for the box $B = [lo, hi]$: a sum of 1D integrals."""
    y, lo, hi = (np.asarray(v, float) for v in (y, lo, hi))
    return float(np.sum(((hi - y) ** 3 - (lo - y) ** 3) / (3 * (hi - lo))))


@pytest.mark.parametrize("d", [2, 3])
def test_one_dirac_takes_the_whole_box(d):
    lo = np.array([-1.0, 0.5, 2.0])[:d]
    size = np.array([2.0, 3.0, 0.5])[:d]
    y = np.array([[0.3, -0.2, 1.0]])[:, :d]
    plan = optimal_transport_plan(y, Box(origin=lo, frame=size), tol=1e-12)
    assert bool(plan.stats.converged)
    np.testing.assert_allclose(np.asarray(plan.cell_masses), [1.0], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(plan.barycenters)[0], lo + size / 2, rtol=0, atol=1e-13)
    expected = box_second_moment(y[0], lo, lo + size)
    np.testing.assert_allclose(float(plan.cost), expected, rtol=1e-13)
    np.testing.assert_allclose(float(plan.distance), np.sqrt(expected), rtol=1e-13)


def _two_dirac_expectations(a, s, h):
    """Diracs at (1/2 -+ s, h) with masses (a, 1 - a) on the unit square: the cells are split by
    the vertical line x = a."""
    y1, y2 = 0.5 - s, 0.5 + s
    t = a
    # Power bisector at x = t:  (t - y1)^2 - psi1 = (t - y2)^2 - psi2.
    dpsi = (t - y1) ** 2 - (t - y2) ** 2
    vertical = (h**3 + (1 - h) ** 3) / 3  # int_0^1 (x_2 - h)^2
    cost = ((t - y1) ** 3 - (0 - y1) ** 3) / 3 + ((1 - y2) ** 3 - (t - y2) ** 3) / 3 + vertical
    bary = np.array([[t / 2, 0.5], [(1 + t) / 2, 0.5]])
    return dpsi, cost, bary


def _solve_two(a, s, h):
    y = np.array([[0.5 - s, h], [0.5 + s, h]])
    return optimal_transport_plan(SumOfDiracs(y, np.array([a, 1 - a])), Box(), tol=1e-12)


def test_two_symmetric_diracs_split_at_the_bisector():
    s = 0.2
    plan = _solve_two(0.5, s, 0.5)
    dpsi, cost, bary = _two_dirac_expectations(0.5, s, 0.5)
    w = np.asarray(plan.weights)
    assert abs(w[0] - w[1]) <= 1e-14 and abs(dpsi) <= 1e-15
    np.testing.assert_allclose(np.asarray(plan.cell_masses), [0.5, 0.5], rtol=1e-13)
    np.testing.assert_allclose(np.asarray(plan.barycenters), bary, atol=1e-14)
    # Each half: int_0^{1/2} (x - 1/2 + s)^2 dx + 1/2 * 1/12, twice.
    closed = 2 * (s**3 + (0.5 - s) ** 3) / 3 + 1 / 12
    np.testing.assert_allclose(float(plan.cost), closed, rtol=1e-13)
    np.testing.assert_allclose(float(plan.cost), cost, rtol=1e-13)


@settings(max_examples=6, deadline=None)
@given(
    a=st.floats(0.05, 0.95),
    s=st.floats(0.01, 0.45),
    h=st.floats(0.0, 1.0),
)
def test_two_diracs_with_unequal_masses(a, s, h):
    plan = _solve_two(a, s, h)
    assert bool(plan.stats.converged)
    dpsi, cost, bary = _two_dirac_expectations(a, s, h)
    w = np.asarray(plan.weights)
    np.testing.assert_allclose(w[0] - w[1], dpsi, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(plan.barycenters), bary, atol=1e-12)
    np.testing.assert_allclose(float(plan.cost), cost, rtol=1e-12)


def _grid(k, d):
    axes = [(np.arange(k) + 0.5) / k] * d
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)


@pytest.mark.parametrize("k,d", [(4, 2), (3, 3)])
def test_regular_grid_gives_equal_weights_and_square_cells(k, d):
    y = _grid(k, d)
    n = y.shape[0]
    plan = optimal_transport_plan(y, Box(), tol=1e-12)
    w = np.asarray(plan.weights)
    assert np.max(np.abs(w - w.mean())) <= 1e-14
    np.testing.assert_allclose(np.asarray(plan.cell_masses), 1 / n, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(plan.barycenters), y, atol=1e-14)
    h = 1 / k
    np.testing.assert_allclose(float(plan.cost), d * h**2 / 12, rtol=1e-13)
    tensors = np.asarray(plan.second_order_moment_tensors)
    np.testing.assert_allclose(tensors, np.broadcast_to(np.eye(d) * h**2 / 12 / n, tensors.shape), atol=1e-15)
    cells = plan.cells
    vertices, valid = np.asarray(cells.vertices), np.asarray(cells.valid)
    for i in range(n):
        v = vertices[i][valid[i]]
        # Every vertex is a corner of the cube of side h about y_i, and every corner is a vertex.
        offsets = (v - y[i]) / (h / 2)
        np.testing.assert_allclose(np.abs(offsets), 1.0, atol=1e-12)
        corners = {tuple(c) for c in np.sign(np.round(offsets)).astype(int)}
        assert len(corners) == 2**d
    if d == 2:
        np.testing.assert_allclose(np.asarray(cells.volumes()), h**2, rtol=1e-13)

