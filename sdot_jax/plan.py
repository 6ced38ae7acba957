"""The transport plan: the problem, the optimal weights, and every quantity derived from them."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._extremes import largest
from .geometry.diagram import Capacities, Diagram, clip_cell, grid_for, power_diagram
from .geometry.kernels import kernel_for
from .measures._density import AbstractDensity
from .measures.diracs import SumOfDiracs
from .solve.newton import SolveStats


class Cells(eqx.Module):
    """Geometry of every power cell, as padded arrays (absolute coordinates).

    - `vertices`: ``(n, V, d)``; only the slots where `valid` is True are vertices.
    - `valid`: ``(n, V)``.
    - `neighbours`: in 2D ``(n, V)``, the cell across the edge from vertex k to vertex k+1
      (vertices are in counter-clockwise order); in d dimensions ``(n, V, d)``, the cells across
      the d facets that meet at each vertex.  ``-1`` marks the boundary of the support.
    """

    vertices: Float[Array, "n V d"]
    valid: Bool[Array, "n V"]
    neighbours: Int[Array, "n V ..."]

    def polygon(self, i: int) -> np.ndarray:
        """Vertices of cell i as a numpy array (in order in 2D)."""
        return np.asarray(self.vertices[i])[np.asarray(self.valid[i])]

    def volumes(self) -> Float[Array, " n"]:
        """Lebesgue measure of every cell (2D: shoelace formula on the ordered vertices)."""
        if self.vertices.shape[-1] != 2:
            raise NotImplementedError("Cells.volumes is 2D only; use plan.cell_volumes.")
        v = jnp.where(self.valid[..., None], self.vertices, 0.0)
        count = self.valid.sum(1)
        nxt = v[jnp.arange(v.shape[0])[:, None], (jnp.arange(v.shape[1])[None] + 1) % jnp.maximum(count, 1)[:, None]]
        cross = v[..., 0] * nxt[..., 1] - v[..., 1] * nxt[..., 0]
        return 0.5 * jnp.sum(jnp.where(self.valid, cross, 0.0), 1)


class BackwardMap(eqx.Module):
    r"""The Brenier map from the continuous measure to the Diracs: $x \mapsto y_{\sigma(x)}$ with
    $\sigma(x) = \arg\min_i |x - y_i|^2 - \psi_i$, the gradient of the convex potential
    $u(x) = \max_i \langle x, y_i \rangle - (|y_i|^2 - \psi_i)/2$."""

    positions: Float[Array, "n d"]
    weights: Float[Array, " n"]

    def _affine(self, x):
        y = self.positions
        return x @ y.T - 0.5 * (jnp.sum(y**2, -1) - self.weights)

    def brenier_potential(self, x: Float[Array, "... d"]) -> Float[Array, "..."]:
        r"""$u(x)$; its gradient is $y_{\sigma(x)}$, the Dirac `assignment` picks (`_extremes.largest`)."""
        return largest(self._affine(jnp.asarray(x)), -1)

    def assignment(self, x: Float[Array, "... d"]) -> Int[Array, "..."]:
        return jnp.argmax(self._affine(jnp.asarray(x)), -1)

    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        return self.positions[self.assignment(x)]

    def plot(self, box=None, resolution: int = 200, ax=None):
        from .plot import plot_potential

        return plot_potential(self, box, resolution, ax)


class TransportPlan(eqx.Module):
    r"""Optimal transport between ``source`` (Diracs, masses normalised to sum 1) and ``target``
    (a density, normalised to mass 1): the weights $\psi$ and the cells' integrals.

    Every array is a JAX array, differentiable with respect to the inputs.
    """

    source: SumOfDiracs
    target: AbstractDensity
    weights: Float[Array, " n"]
    stats: SolveStats
    diagram: Diagram
    capacities: Capacities

    @property
    def positions(self) -> Float[Array, "n d"]:
        return self.source.positions

    @property
    def masses(self) -> Float[Array, " n"]:
        """Dirac masses (normalised)."""
        return self.source.masses

    @property
    def cell_masses(self) -> Float[Array, " n"]:
        r"""$m_i = \int_{\mathrm{Lag}_i} \rho$ (equal to `masses` at convergence)."""
        return self.diagram.mass / self.target.total_mass()

    @property
    def barycenters(self) -> Float[Array, "n d"]:
        r"""$b_i = \int_{\mathrm{Lag}_i} x \rho / m_i$."""
        mass = self.diagram.mass
        safe = jnp.where(mass > 0, mass, 1.0)
        return self.positions + jnp.where(mass[:, None] > 0, self.diagram.first_moment / safe[:, None], 0.0)

    @property
    def second_order_moment_tensors(self) -> Float[Array, "n d d"]:
        r"""$\int_{\mathrm{Lag}_i} (x - y_i)(x - y_i)^T \rho$."""
        return self.diagram.second_moment / self.target.total_mass()

    @property
    def second_order_moments(self) -> Float[Array, " n"]:
        r"""$\int_{\mathrm{Lag}_i} |x - y_i|^2 \rho$."""
        return jnp.trace(self.second_order_moment_tensors, axis1=1, axis2=2)

    @property
    def cost(self) -> Float[Array, ""]:
        r"""$W_2^2 = \sum_i \int_{\mathrm{Lag}_i} |x - y_i|^2 \rho$."""
        return jnp.sum(self.second_order_moments)

    @property
    def distance(self) -> Float[Array, ""]:
        return jnp.sqrt(self.cost)

    @property
    def backward_map(self) -> BackwardMap:
        return BackwardMap(self.positions, self.weights)

    def assignment(self, x: Float[Array, "... d"]) -> Int[Array, "..."]:
        """Index of the cell containing each point: the forward (semi-discrete) map."""
        return self.backward_map.assignment(x)

    @property
    def cells(self) -> Cells:
        """Vertices and neighbours of every cell (recomputed from the weights)."""
        return cell_geometry(
            self.positions, self.weights, self.target, self.capacities, self.diagram.candidates
        )

    def plot(self, ax=None, **kwargs):
        from .plot import plot_plan

        return plot_plan(self, ax=ax, **kwargs)


def cell_geometry(y, psi, density, capacities: Capacities, candidates=None) -> Cells:
    """Vertices of every cell, clipped by the certified candidates of a diagram at ``psi``
    (``candidates``, e.g. ``plan.diagram.candidates``; searched again when omitted)."""
    n, d = y.shape
    k = capacities.candidates
    index = candidates
    if index is None:
        index = power_diagram(y, psi, density, capacities, grid_for(y, density, capacities)).complete().candidates
    y_pad = jnp.concatenate([y, jnp.zeros((1, d), y.dtype)])
    psi_pad = jnp.concatenate([psi, jnp.zeros((1,), psi.dtype)])

    def one(args):
        i, idx = args
        poly = clip_cell(y[i], psi[i], idx, y_pad, psi_pad, density, capacities.vertices)
        cell_of_plane = jnp.concatenate([jnp.where(idx < n, idx, -1), jnp.array([-1])])
        nbrs = cell_of_plane[jnp.where((poly.planes >= 0) & (poly.planes < k), poly.planes, k)]
        valid = kernel_for(d).live_mask(poly)
        return poly.vertices + y[i], valid, nbrs

    vertices, valid, nbrs = jax.lax.map(one, (jnp.arange(n), index), batch_size=min(n, 1024))
    return Cells(vertices, valid, nbrs)
