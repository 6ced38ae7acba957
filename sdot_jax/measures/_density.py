"""The interface every continuous target density implements."""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractDensity(eqx.Module):
    r"""A non-negative density $\rho$ on $\mathbb{R}^d$ whose support lies in a convex polytope.

    Power cells are built by clipping the polytope $\{x : lo \le x \le hi,\ A x \le b\}$
    (``bounding_box`` and ``half_spaces``) and integrated simplex by simplex: a cell is cut into
    simplices (a fan in 2D, the barycentric subdivision in d dimensions), and the density integrates
    its moments over each one.  Every integral here is of the *unnormalised* density; the solver
    divides by :meth:`total_mass`.
    """

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Dimension d of the ambient space."""

    @abc.abstractmethod
    def bounding_box(self) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
        """Corners ``(lo, hi)`` of an axis-aligned box containing the support."""

    def half_spaces(self) -> tuple[Float[Array, "p d"], Float[Array, " p"]]:
        """Extra half-spaces ``A x <= b`` that, with the bounding box, contain the support."""
        dtype = self.bounding_box()[0].dtype
        return jnp.zeros((0, self.dim), dtype), jnp.zeros((0,), dtype)

    @abc.abstractmethod
    def total_mass(self) -> Float[Array, ""]:
        r"""$\int \rho$."""

    @abc.abstractmethod
    def simplex_moments(
        self, origin: Float[Array, " d"], simplex: Float[Array, "d+1 d"]
    ) -> tuple[Float[Array, ""], Float[Array, " d"], Float[Array, "d d"]]:
        r"""Moments of $\rho$ over one simplex, in coordinates relative to ``origin``.

        With $S = origin + \mathrm{conv}(simplex)$ and $z = x - origin$, returns
        $(\int_S \rho,\ \int_S z \rho,\ \int_S z z^T \rho)$.
        """

    @abc.abstractmethod
    def facet_mass(self, origin: Float[Array, " d"], facet: Float[Array, "d d"]) -> Float[Array, ""]:
        r"""$\int_F \rho\, d\sigma$ over the $(d-1)$-simplex $F = origin + \mathrm{conv}(facet)$."""

    #: Whether the density's support is its bounding box cut by `half_spaces` (convex): the start
    #: may then send Diracs anywhere in that box (`sdot_jax.solve.start`).  Meshes say no.
    convex_support: ClassVar[bool] = True

    def interior_point(self) -> Float[Array, " d"]:
        """A point where the density is positive, towards which outside Diracs are pulled at start."""
        lo, hi = self.bounding_box()
        return (lo + hi) / 2

    def mean_and_spread(self) -> tuple[Float[Array, " d"], Float[Array, ""]] | None:
        r"""The density's mean $m$ and rms radius $(\int |x - m|^2 \rho / \int \rho)^{1/2}$, where
        cheap: the starting weights move and scale the Diracs' cloud onto them
        (`sdot_jax.solve.start.initial_weights`).  None: start from the support's box alone."""
        return None

    def axis_spread(self) -> tuple[Float[Array, " d"], Float[Array, " d"]] | None:
        """The density's mean and standard deviation along each axis, where cheap: the grid search
        runs where the Diracs' cloud has them (`sdot_jax.geometry.gauge`).  None: it runs where
        the Diracs are (a concentrated image would be mistaken for its whole box)."""
        return None

    def with_dim(self, dim: int) -> "AbstractDensity":
        """Resolve defaults that depend on the source's dimension (e.g. ``Box()``)."""
        if dim != self.dim:
            raise ValueError(
                f"dimension mismatch: the Diracs live in {dim}D but the density in {self.dim}D."
            )
        return self


def box_spread(density: AbstractDensity) -> tuple[Float[Array, " d"], Float[Array, " d"]]:
    """Mean and per-axis standard deviation of the uniform density on the bounding box (that of
    a uniform axis-aligned box exactly; of a uniform polytope, roughly: `axis_spread`)."""
    lo, hi = density.bounding_box()
    return (lo + hi) / 2, (hi - lo) / jnp.sqrt(12.0)


def uniform_simplex_moments(
    simplex: Float[Array, "d+1 d"],
) -> tuple[Float[Array, ""], Float[Array, " d"], Float[Array, "d d"]]:
    r"""Exact moments of the constant density 1 over a simplex with vertices $v_0..v_d$.

    $|S| = |\det(v_1 - v_0, \dots, v_d - v_0)| / d!$, $\int_S z = |S|\,\bar v$, and
    $\int_S z z^T = \frac{|S|}{(d+1)(d+2)} (\sum_k v_k v_k^T + (\sum_k v_k)(\sum_k v_k)^T)$.
    """
    d = simplex.shape[-1]
    edges = simplex[1:] - simplex[0]
    volume = jnp.abs(det(edges)) / _factorial(d)
    total = simplex.sum(0)
    first = volume * total / (d + 1)
    # Products summed elementwise: under vmap a (d+1) x d matrix product is a batched dot of its own.
    products = jnp.sum(simplex[:, :, None] * simplex[:, None, :], 0)  # sum_k v_k v_k^T
    second = volume / ((d + 1) * (d + 2)) * (products + jnp.outer(total, total))
    return volume, first, second


def simplex_measure(facet: Float[Array, "k d"]) -> Float[Array, ""]:
    r"""$(k-1)$-dimensional measure of the simplex with the k given vertices: $\sqrt{\det G}/(k-1)!$."""
    k = facet.shape[0]
    if k == 1:
        return jnp.ones((), facet.dtype)
    edges = facet[1:] - facet[0]
    gram = jnp.sum(edges[:, None, :] * edges[None, :, :], -1)
    gram_det = det(gram)
    # sqrt has an infinite derivative at 0 (degenerate facets): clamp inside, zero outside.
    safe = jnp.where(gram_det > 0, gram_det, 1.0)
    return jnp.where(gram_det > 0, jnp.sqrt(safe), 0.0) / _factorial(k - 1)


def det(m: Float[Array, "k k"]) -> Float[Array, ""]:
    """Determinant, written out for k <= 3 (faster under vmap and smooth at singular matrices)."""
    k = m.shape[0]
    if k == 1:
        return m[0, 0]
    if k == 2:
        return m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if k == 3:
        return jnp.sum(m[0] * jnp.cross(m[1], m[2]))
    return jnp.linalg.det(m)


def _factorial(k: int) -> int:
    out = 1
    for i in range(2, k + 1):
        out *= i
    return out

