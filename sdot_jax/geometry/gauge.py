r"""The axis gauge: the same power diagram, computed where the Diracs' cloud has the support's shape.

For a positive diagonal $S$, any $c$, $x' = S x$, $y'_i = S^{-1} y_i + c$ and $\psi'_i = \psi_i
+ |y'_i|^2 - |y_i|^2$,

$$ |x' - y'_i|^2 - \psi'_i = |x - y_i|^2 - \psi_i + \big(|x'|^2 - |x|^2 - 2 \langle x', c \rangle\big), $$

and the bracket is the same for every seed: cell i of $(y', \psi')$ under the density
$\rho'(x') = \rho(S^{-1} x') / \det S$ is $S$ times cell i of $(y, \psi)$ under $\rho$, with the
same mass.  The grid neighbour search certifies cells by bounds that hold near their seeds; a
cloud much narrower than the support along some axis (Diracs near a line, drawn from a narrow
Gaussian) has cells stretched far from their seeds along it.  With $s_k = (\sigma_{y,k} /
\sigma_{\rho,k})^{1/2}$ (the per-axis spreads of the cloud and of the support) and $c$ matching
the means, both have spread $(\sigma_{y,k} \sigma_{\rho,k})^{1/2}$ along every axis, and the
optimal cells lie near their seeds again.  Cloud and support within a factor `FROM` of each other
along every axis keep $S = 1$, $c = 0$ exactly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..measures._density import AbstractDensity

FROM = 2.0  # spread ratios of cloud and support between 1 / FROM and FROM keep the identity


class AxisGauge(eqx.Module):
    """$x' = $ ``scale`` $\\cdot x$ and $y' = y /$ ``scale`` $+$ ``shift`` (module docstring)."""

    scale: Float[Array, " d"]
    shift: Float[Array, " d"]

    @staticmethod
    def identity(d: int, dtype) -> "AxisGauge":
        return AxisGauge(jnp.ones((d,), dtype), jnp.zeros((d,), dtype))

    def seeds(self, y: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return y / self.scale + self.shift

    def weights(self, y: Float[Array, "n d"], psi: Float[Array, " n"]) -> Float[Array, " n"]:
        """$\\psi'$; exactly ``psi`` for the identity."""
        return psi + (jnp.sum(self.seeds(y) ** 2, -1) - jnp.sum(y**2, -1))

    def density(self, density: AbstractDensity) -> AbstractDensity:
        return _Stretched(density, self.scale)


def axis_gauge(y: Float[Array, "n d"], density: AbstractDensity) -> AxisGauge:
    """The axis gauge of the seeds ``y`` and ``density`` (not differentiated: no cell depends on it).

    The identity where the density does not know its per-axis spread
    (`AbstractDensity.axis_spread`: images, splines and meshes, whose box says nothing of where
    their mass is) and in float32 (the gauge's weights add $|y'|^2 - |y|^2$ terms much larger
    than the weights: 1000 Diracs near a line lost two digits of their masses)."""
    known = density.axis_spread()
    if known is None or y.dtype != jnp.float64:
        return AxisGauge.identity(y.shape[1], y.dtype)
    y = jax.lax.stop_gradient(y)
    mean, spread = (jax.lax.stop_gradient(v).astype(y.dtype) for v in known)
    cloud_mean, cloud_spread = jnp.mean(y, 0), jnp.std(y, 0)
    ratio = cloud_spread / spread
    usable = jnp.all((ratio > 0) & jnp.isfinite(ratio))
    keep = ~usable | jnp.all((ratio > 1 / FROM) & (ratio < FROM))
    scale = jnp.where(keep, 1.0, jnp.sqrt(ratio))
    shift = jnp.where(keep, 0.0, scale * mean - cloud_mean / scale)
    return AxisGauge(scale, shift)


class _Stretched(AbstractDensity):
    r"""$\rho'(x') = \rho(x' / s) / \prod_k s_k$: the density in the gauge's coordinates.

    Private to `diagram.power_diagram`: ``facet_mass`` returns the facet's integral in the
    *original* coordinates, $\int_F \rho\, d\sigma$ with $F = S^{-1} F'$, which is what the
    Newton Laplacian, assembled with the original seeds, needs (the diagram's facets come back
    in the original coordinates with no conversion)."""

    inner: AbstractDensity
    scale: Float[Array, " d"]

    @property
    def dim(self) -> int:
        return self.inner.dim

    def bounding_box(self):
        lo, hi = self.inner.bounding_box()
        return lo * self.scale.astype(lo.dtype), hi * self.scale.astype(hi.dtype)

    def half_spaces(self):
        a, b = self.inner.half_spaces()
        return a / self.scale.astype(a.dtype), b

    def total_mass(self):
        return self.inner.total_mass()

    def simplex_moments(self, origin, simplex):
        s = self.scale.astype(simplex.dtype)
        mass, first, second = self.inner.simplex_moments(origin / s, simplex / s)
        return mass, s * first, s[:, None] * second * s[None, :]

    def facet_mass(self, origin, facet):
        s = self.scale.astype(facet.dtype)
        return self.inner.facet_mass(origin / s, facet / s)

    def polygon_moments(self, origin, vertices, following, live):
        """The inner density's one-pass polygon moments (2D grids), moved to the gauge's
        coordinates; its edge integrals are already the original facets'."""
        inner = getattr(self.inner, "polygon_moments", None)
        s = self.scale.astype(vertices.dtype)
        out = None if inner is None else inner(origin / s, vertices / s, following / s, live)
        if out is None:
            return None
        mass, first, second, edges = out
        return mass, s * first, s[:, None] * second * s[None, :], edges

    def interior_point(self):
        point = self.inner.interior_point()
        return point * self.scale.astype(point.dtype)
