import numpy as np

from sdot_jax import Box, optimal_transport_plan


def test_masses_match_in_2d_and_3d():
    for d, n in [(2, 50), (3, 30)]:
        y = np.random.default_rng(d).random((n, d))
        plan = optimal_transport_plan(y, Box(), tol=1e-11)
        assert bool(plan.stats.converged)
        np.testing.assert_allclose(np.asarray(plan.cell_masses), 1.0 / n, rtol=1e-11)
