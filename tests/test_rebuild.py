"""Cells rebuilt from a nearby diagram's combinatorics (`geometry.rebuild`): equal to the clipped
cells where the test passes, clipped again where the combinatorics changed."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import box_halfspaces, reference_diagram

from sdot_jax import Box
from sdot_jax.geometry import diagram as dg, neighbours, rebuild
from sdot_jax.geometry.kernels import kernel_for


@functools.partial(jax.jit, static_argnums=(0, 3))
def _one_cell(d, psi, index, capacity=40):
    """Seed 0's cell among 40 random seeds, clipped by every other seed, and its planes."""
    rng = np.random.default_rng(1)
    y = jnp.asarray(rng.random((40, d)))
    box = Box().with_dim(d)
    y_pad = jnp.concatenate([y, jnp.zeros((1, d))])
    psi_pad = jnp.concatenate([psi, jnp.zeros(1)])
    poly = dg.clip_cell(y[0], psi[0], index, y_pad, psi_pad, box, capacity)
    planes = dg._cell_planes(y[0], psi[0], index, y_pad, psi_pad, box)
    return poly, planes


def _live_vertices(poly):
    live = np.asarray(kernel_for(poly.vertices.shape[1]).live_mask(poly))
    return np.asarray(poly.vertices)[live]


@pytest.mark.parametrize("d", [2, 3])
def test_a_cell_rebuilt_at_nearby_weights_is_the_cell_clipped_there(d):
    """Weights moved a little: the same facets, every vertex moved; the rebuilt cell passes its
    test and has the clipped cell's vertices.  Moved far: a facet appears or vanishes, and the
    test fails (the rebuilt vertices violate a half-space)."""
    rng = np.random.default_rng(2)
    index = jnp.arange(1, 40)
    psi = jnp.asarray(1e-3 * rng.standard_normal(40))
    before, _ = _one_cell(d, psi, index)
    cells = rebuild.kept(jax.tree.map(lambda a: a[None], before), jnp.ones((1,), bool))
    cell = jax.tree.map(lambda a: a[0], cells)
    same_place = jnp.arange(index.shape[0])
    for step, passes in [(1e-6, True), (3e-2, False)]:
        moved = psi + step * jnp.asarray(rng.standard_normal(40))
        clipped, (normals, offsets) = _one_cell(d, moved, index)
        poly, passed = rebuild.rebuilt(cell, same_place, normals, offsets)
        assert bool(passed) == passes
        if passes:
            got, want = _live_vertices(poly), _live_vertices(clipped)
            assert got.shape == want.shape
            gap = np.abs(got[:, None, :] - want[None, :, :]).max(-1).min(1)
            assert gap.max() < 1e-13
            np.testing.assert_allclose(kernel_for(d).integrate(poly, Box().with_dim(d), jnp.zeros(d), 39)[0],
                                       kernel_for(d).integrate(clipped, Box().with_dim(d), jnp.zeros(d), 39)[0],
                                       rtol=1e-13)


def test_an_empty_or_unmarked_cell_is_never_rebuilt():
    """A cell not marked ``ok`` (empty, overflowed or uncertified last time) is clipped."""
    for d in (2, 3):
        cell = jax.tree.map(lambda a: a[0], rebuild.empty(1, d, 16))
        _, (normals, offsets) = _one_cell(d, jnp.zeros(40), jnp.arange(1, 40))
        assert not bool(rebuild.rebuilt(cell, jnp.arange(39), normals, offsets)[1])


@pytest.mark.parametrize("d, n", [(2, 800), pytest.param(3, 500, marks=pytest.mark.slow)])  # (3D: 34 s)
def test_trial_diagrams_rebuilt_from_the_last_equal_the_clipped_ones(d, n):
    """Newton's use: a trial diagram from the cells of the last one (``last_cells``) equals the
    same trial clipped afresh (from cells none of which may be rebuilt), cell for cell: weights
    moved a little (most cells rebuilt), or by 3 squared spacings (many cells change facets and
    are clipped again).  A sample of the 2D masses against scipy's half-space intersection."""
    rng = np.random.default_rng(3)
    y = jnp.asarray(rng.random((n, d)))
    spacing2 = n ** (-2 / d)
    psi0 = jnp.asarray(0.3 * spacing2 * rng.standard_normal(n))
    box = Box().with_dim(d)
    default = dg.Capacities.default(n, d)
    caps = dg.Capacities(default.vertices, default.candidates, n, neighbours.grid_capacity(np.asarray(y), 24.0))
    grid = dg.grid_for(y, box, caps)
    none = dg.trial_cells(n, d, box, caps)

    @jax.jit
    def trial(psi, last, reuse):  # one program for every call (Newton's trial diagram)
        return dg.power_diagram(y, psi, box, caps, grid, prior=last.neighbours, loops=True, previous=last.candidates,
                                reuse=reuse, last_cells=last.cells)

    placeholder = dg.Diagram(jnp.zeros(n), jnp.zeros((n, d)), jnp.zeros((n, d, d)), jnp.zeros((n, caps.candidates)),
                             jnp.full((n, caps.candidates), n, jnp.int32), jnp.zeros(n, bool), jnp.zeros(n, bool),
                             jnp.array(False), none)
    first = trial(psi0, placeholder, False)
    assert np.mean(np.asarray(first.cells.ok)) > 0.75  # most cells may be rebuilt (others: uncertified by the first pass)
    for spread in (1e-4, 3.0):
        psi1 = psi0 + jnp.asarray(spread * spacing2 * rng.standard_normal(n))
        rebuilt = trial(psi1, first, True)
        clipped = trial(psi1, dataclasses.replace(first, cells=dataclasses.replace(first.cells, ok=none.ok)), True)
        assert np.asarray(rebuilt.certified).all() and np.asarray(clipped.certified).all()
        scale = float(jnp.max(clipped.mass))
        for got, want in [(rebuilt.mass, clipped.mass), (rebuilt.first_moment, clipped.first_moment),
                          (rebuilt.second_moment, clipped.second_moment), (rebuilt.facet_mass, clipped.facet_mass)]:
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * scale)
        np.testing.assert_allclose(jnp.sum(rebuilt.mass), 1.0, rtol=1e-12)
        if d == 2:
            sample = np.arange(0, n, n // 40)
            ref = reference_diagram(np.asarray(y), np.asarray(psi1), *box_halfspaces([0, 0], [1, 1]), cells=sample)
            np.testing.assert_allclose(np.asarray(rebuilt.mass)[sample], ref["mass"][sample], rtol=1e-10)
