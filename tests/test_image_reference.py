"""Issue 4's done-when: a 32×32 image, n = 1000 Diracs — weights, barycenters and W2² agree with an
independent reference to 1e-8.

The reference (tests/image_reference.py) shares no code with sdot_jax: power cells from qhull's
lifted lower hull clipped by hand, exact clipping of every cell against every pixel it overlaps,
shoelace moments, and its own damped Newton with a scipy sparse facet Laplacian, started from zero
weights.  The image has values uniform in [1, 10] (contrast up to 10:1, below the automatic
continuation threshold, so the plain Newton path is what is tested).

``pytest -m slow tests/test_image_reference.py`` runs the full 32×32 / n = 1000 case; the quick
8×8 / n = 60 case runs by default.
"""

import numpy as np
import pytest

import image_reference as ref
from helpers import box_halfspaces, reference_diagram
from sdot_jax import Image, SumOfDiracs, optimal_transport_plan

CASES = {
    "8x8-n60": (8, 60, 11),
    "32x32-n1000": (32, 1000, 12),
}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("8x8-n60"),
        pytest.param("32x32-n1000", marks=pytest.mark.slow),
    ],
)
def solved(request):
    pixels, n, seed = CASES[request.param]
    rng = np.random.default_rng(seed)
    values = 1 + 9 * rng.random((pixels, pixels))
    y = rng.random((n, 2))
    psi_ref, history, diag_ref = ref.solve_newton(y, values, tol=1e-13)
    plan = optimal_transport_plan(SumOfDiracs(y), Image(values), tol=1e-12)
    return dict(y=y, values=values, n=n, psi_ref=psi_ref, history=history, ref=diag_ref, plan=plan)


def test_reference_newton_converged(solved):
    assert solved["history"][-1] <= 1e-13, solved["history"]
    assert solved["ref"]["facet_asymmetry"] <= 1e-12


def test_plan_converged_and_certified_by_reference(solved):
    plan, n = solved["plan"], solved["n"]
    assert bool(plan.stats.converged)
    assert np.max(np.abs(np.asarray(plan.cell_masses) * n - 1)) <= 1e-12
    # The independent diagram evaluated at the solver's weights: every cell carries its mass.
    at_plan = ref.image_diagram(solved["y"], np.asarray(plan.weights), solved["values"])
    assert np.max(np.abs(at_plan["mass"] * n - 1)) <= 1e-10


def test_weights_match_reference(solved):
    psi = np.asarray(solved["plan"].weights)
    psi = psi - psi.mean()
    err = np.max(np.abs(psi - solved["psi_ref"]))
    print(f"\nmax |weights - reference| = {err:.3g} (max |psi| = {np.abs(psi).max():.3g})")
    assert err <= 1e-8


def test_barycenters_match_reference(solved):
    r = solved["ref"]
    bary = r["first"] / r["mass"][:, None]
    err = np.max(np.abs(np.asarray(solved["plan"].barycenters) - bary))
    print(f"\nmax |barycenters - reference| = {err:.3g}")
    assert err <= 1e-8


def test_cost_matches_reference(solved):
    plan, r = solved["plan"], solved["ref"]
    err = abs(float(plan.cost) - r["second"].sum())
    moments = np.max(np.abs(np.asarray(plan.second_order_moments) - r["second"]))
    print(f"\n|W2^2 - reference| = {err:.3g} (W2^2 = {r['second'].sum():.6g}); "
          f"per-cell second moments {moments:.3g}")
    assert err <= 1e-8
    assert moments <= 1e-8 / solved["n"]


# The reference checks itself (quick): cells and integrals against the qhull half-space helper on a
# constant image, and its facet Laplacian against finite differences of its own masses.

def test_reference_constant_image_matches_halfspace_helper():
    rng = np.random.default_rng(3)
    y = rng.random((40, 2))
    psi = 0.01 * rng.standard_normal(40)
    mine = ref.image_diagram(y, psi, np.ones((5, 7)))
    A, b = box_halfspaces([0, 0], [1, 1])
    other = reference_diagram(y, psi, A, b)
    np.testing.assert_allclose(mine["mass"], other["mass"], rtol=0, atol=1e-14)
    np.testing.assert_allclose(mine["first"], other["first"], rtol=0, atol=1e-14)
    np.testing.assert_allclose(mine["second"], other["second"], rtol=0, atol=1e-15)


def test_reference_laplacian_matches_finite_differences():
    rng = np.random.default_rng(4)
    n = 30
    y = rng.random((n, 2))
    psi = 0.01 * rng.standard_normal(n)
    values = 1 + 9 * rng.random((6, 6))
    L = ref.laplacian(y, ref.image_diagram(y, psi, values)["facet"]).toarray()
    h = 1e-6
    for j in range(0, n, 3):
        e = np.zeros(n)
        e[j] = h
        fd = (ref.image_diagram(y, psi + e, values)["mass"]
              - ref.image_diagram(y, psi - e, values)["mass"]) / (2 * h)
        np.testing.assert_allclose(L[:, j], fd, rtol=0, atol=1e-8 * np.abs(L).max())
