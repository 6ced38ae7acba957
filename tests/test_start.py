"""The starting weights (`sdot_jax.solve.start`): every cell non-empty, holding the point the
convex potential's gradient sends its Dirac to; exact where the separable map is the solution (1D,
lattices); and far closer to the solution than zero weights for Diracs drawn from a Gaussian."""

import jax.numpy as jnp
import numpy as np
from helpers import box_halfspaces, reference_diagram
from hypothesis import assume, given, settings, strategies as st

from sdot_jax import Box, Polytope
from sdot_jax.solve.start import initial_weights


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 3), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_every_dirac_owns_the_point_its_potential_sends_it_to(n, d, seed, lattice_axis, outside):
    """With $\\psi_i = |y_i|^2 - 2 u(y_i)$ for a convex $u$, $\\nabla u(y_i)$ lies in cell i: the
    power distances there, computed here by brute force, are least for i (ties only up to
    rounding).  Clouds with coordinates repeated along an axis (a kink of u) and Diracs outside
    the box (pulled in)."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, d)) * (3.0 if outside else 1.0) - (1.0 if outside else 0.0)
    if lattice_axis:
        y[:, 0] = np.round(4 * y[:, 0]) / 4
    y = np.unique(y, axis=0)
    assume(len(y) >= 2)
    box = Box().with_dim(d)
    psi = np.asarray(initial_weights(jnp.asarray(y), box))
    # grad u sends the k-th of n coordinates to (k + 1/2) / n (tied copies: any of their ranks).
    z = (np.argsort(np.argsort(y, axis=0, kind="stable"), axis=0) + 0.5) / len(y)
    assert np.all((z > 0) & (z < 1))  # in the box (no pull towards its centre), even from outside
    power = np.sum((z[:, None] - y[None]) ** 2, -1) - psi[None]
    own = np.diag(power)
    assert np.all(own <= power.min(1) + 1e-12 * (1 + np.abs(power).max()))


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 40), st.integers(0, 2**31 - 1), st.booleans())
def test_every_start_cell_has_mass(n, seed, outside):
    """Every cell of the starting diagram has positive mass (scipy's half-space intersection),
    for Diracs inside and far outside the square and a polytope."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, 2)) * (4.0 if outside else 1.0) - (1.5 if outside else 0.0)
    for density, (A, b) in ((Box().with_dim(2), box_halfspaces([0, 0], [1, 1])),
                            (Polytope([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], [1.0, 0.0, 0.0]),
                             (np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), np.array([1.0, 0.0, 0.0])))):
        psi = np.asarray(initial_weights(jnp.asarray(y), density))
        mass = reference_diagram(y, psi, A, b)["mass"]
        assert np.all(mass > 0), mass.min()


def test_in_1d_the_start_is_the_solution():
    """For a uniform density on a segment the separable map is the 1D optimal transport: cell
    boundaries at the chords' slopes $(k + 1) / n$, so every cell holds exactly its mass."""
    y = np.sort(np.random.default_rng(3).standard_normal(50))[:, None]
    psi = np.asarray(initial_weights(jnp.asarray(y), Box([0.0], [2.0])))
    order = np.argsort(y[:, 0])
    # The 1D power cells of sorted seeds are intervals between consecutive crossing points.
    ys, ps = y[order, 0], psi[order]
    cross = ((ys[1:] ** 2 - ps[1:]) - (ys[:-1] ** 2 - ps[:-1])) / (2 * (ys[1:] - ys[:-1]))
    lengths = np.diff(np.concatenate([[0.0], cross, [2.0]]))
    np.testing.assert_allclose(lengths, 2.0 / 50, rtol=1e-9)


def test_a_lattice_starts_at_its_solution():
    y = (np.stack(np.meshgrid(np.arange(8), np.arange(5)), -1).reshape(-1, 2) + 0.5) / [8, 5]
    psi = np.asarray(initial_weights(jnp.asarray(y), Box().with_dim(2)))
    mass = reference_diagram(y, psi, *box_halfspaces([0, 0], [1, 1]))["mass"]
    np.testing.assert_allclose(mass, 1 / 40, rtol=1e-10)


def test_gaussian_diracs_start_near_their_cells():
    """Diracs drawn from a Gaussian ($\\sigma = 0.1$) onto the unit square: zero weights give the
    sparse tails cells hundreds of times too large; the separable start spreads them over the
    box (measured, n = 500: worst relative mass error 44 from zero weights, 2.0 from the start)."""
    n = 500
    y = 0.5 + 0.1 * np.random.default_rng(5).standard_normal((n, 2))
    A, b = box_halfspaces([0, 0], [1, 1])
    start = reference_diagram(y, np.asarray(initial_weights(jnp.asarray(y), Box().with_dim(2))), A, b)["mass"]
    voronoi = reference_diagram(y, np.zeros(n), A, b)["mass"]
    worst = lambda m: np.max(np.abs(m * n - 1))  # noqa: E731
    assert worst(start) < 3 and worst(voronoi) > 10 * worst(start), (worst(start), worst(voronoi))
