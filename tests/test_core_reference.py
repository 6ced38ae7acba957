"""The issue's done-when: n = 1000 random Diracs against the unit square and the unit cube.

The plan is checked against a reference independent of sdot_jax (tests/helpers.py: every cell by
qhull's half-space intersection against all seeds, integrated by qhull triangulations; a Newton
solve with facet measures from the same construction).
"""

import numpy as np
import pytest

from helpers import box_halfspaces, gauge, reference_diagram, reference_newton
from sdot_jax import Box, optimal_transport_plan

N = 1000
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[2, 3], ids=["square", "cube"])
def solved(request):
    d = request.param
    y = np.random.default_rng(100 + d).random((N, d))
    plan = optimal_transport_plan(y, Box(), tol=1e-12)
    A, b = box_halfspaces(np.zeros(d), np.ones(d))
    ref = reference_diagram(y, np.asarray(plan.weights), A, b)
    return y, plan, ref, (A, b)


def test_done_when_worst_relative_mass_error(solved):
    y, plan, ref, _ = solved
    assert bool(plan.stats.converged)
    err = np.max(np.abs(np.asarray(plan.cell_masses) * N - 1))
    assert err <= 1e-12
    # The independent diagram at the solver's weights agrees.
    assert np.max(np.abs(ref["mass"] * N - 1)) <= 1e-10


def test_done_when_barycenters_and_cost_match_reference(solved):
    y, plan, ref, _ = solved
    bary = ref["first"] / ref["mass"][:, None]
    np.testing.assert_allclose(np.asarray(plan.barycenters), bary, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(plan.second_order_moments), ref["second"], rtol=1e-8)
    np.testing.assert_allclose(float(plan.cost), ref["second"].sum(), rtol=1e-10)


def test_done_when_weights_match_reference_newton(solved):
    y, plan, _, (A, b) = solved
    psi = gauge(plan.weights)
    # Start the reference away from the solver's answer; it must come back on its own.
    start = psi + 1e-3 * np.std(psi) * np.random.default_rng(0).standard_normal(N)
    ref_psi, history = reference_newton(y, np.ones(N), A, b, start, tol=1e-13)
    assert history[-1] <= 1e-13, history
    assert np.max(np.abs(ref_psi - psi)) <= 1e-8 * np.max(np.abs(psi))
