r"""Initial weights under which every cell is non-empty.

With $z_i = \Lambda y_i + T$ ($\Lambda > 0$), the weights $\psi_i = |y_i - c|^2 - |z_i - c|^2 /
\Lambda$ (any $c$) make the power diagram of the $y_i$ equal to the Voronoi diagram of the $z_i$
(expand: $|x - y_i|^2 - \psi_i = |x - z_i|^2 / \Lambda$ + a term independent of $i$).

1. Where the density knows its mean and spread (`AbstractDensity.mean_and_spread`, e.g. a
   Gaussian mixture, whose bounding box is far larger than where its mass is), the Diracs' cloud
   is first moved and scaled onto them: $z_i = m_\rho + \lambda (y_i - m_y)$ with $\lambda$ the
   ratio of the rms radii.  Cell masses then start near the Dirac masses instead of most of the
   mass falling in a few cells.
2. Then the $z_i$ are pulled towards a point $c$ inside the support, $z_i \to c + t (z_i - c)$
   with the largest $t \in (0, 1]$ that puts every $z_i$ in the support's bounding polytope: every
   Dirac gets a cell of positive volume, even Diracs far outside.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def initial_weights(y: Float[Array, "n d"], density) -> Float[Array, " n"]:
    c = density.interior_point().astype(y.dtype)
    z, scale = y, jnp.ones((), y.dtype)
    spread = density.mean_and_spread()
    if spread is not None:
        mean, radius = (jnp.asarray(v, y.dtype) for v in spread)
        y_mean = jnp.mean(y, 0)
        y_radius = jnp.sqrt(jnp.mean(jnp.sum((y - y_mean) ** 2, -1)))
        scale = jnp.where(y_radius > 0, radius / jnp.where(y_radius > 0, y_radius, 1.0), 1.0)
        z = mean + scale * (y - y_mean)
    lo, hi = density.bounding_box()
    a_dom, b_dom = density.half_spaces()
    d = y.shape[1]
    normals = jnp.concatenate([-jnp.eye(d, dtype=y.dtype), jnp.eye(d, dtype=y.dtype), a_dom])
    offsets = jnp.concatenate([-lo, hi, b_dom]).astype(y.dtype)
    slack = offsets - normals @ c  # > 0 for an interior c
    reach = (z - c) @ normals.T  # (n, planes)
    limit = jnp.where(reach > 0, slack / jnp.where(reach > 0, reach, 1.0), jnp.inf)
    t_max = jnp.min(limit)
    t = jnp.where(t_max >= 1, 1.0, 0.9 * t_max)
    z = c + t * (z - c)
    return jnp.sum((y - c) ** 2, -1) - jnp.sum((z - c) ** 2, -1) / (t * scale)
