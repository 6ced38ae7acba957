r"""Cells rebuilt from a nearby diagram's combinatorics instead of clipped (Newton's trial diagrams).

Between two Newton trials the weights move a little, and most cells keep their facets: only their
vertices move.  A vertex lies on d planes (a 3D cell is kept simple, `polyhedron`; a polygon's
vertex joins two edges), so at the new weights it is the solution of a d x d system (Cramer's
rule): no clipping, no compaction, no scatter.  Let Q be the cell clipped by every candidate and
by the domain.  If every rebuilt vertex satisfies every one of those half-spaces (up to the clip's
rounding), each lies in Q and on d of its planes, so it is a vertex of Q; each of its old edges
is a line of Q's boundary ending at another rebuilt vertex, which lies in Q on that line, so at
the other end of Q's edge.  The rebuilt vertices are then closed under Q's edges, and Q's graph
is connected: they are all of Q's vertices, with Q's adjacency -- the rebuilt polytope is Q.
(Degenerate positions are limits of simple ones, and the integrals are continuous.)  A violated
half-space, or a singular system (NaN), means that the combinatorics changed: the cell is clipped.

At the optimum of 1e4 uniform seeds in 3D, weights moved by 1e-3 / n, rebuilding and testing a
cell took 2.5 us against 43.9 us to clip it; 1e5 in 2D, 0.61 us against 1.72 us
(`benchmarks/rebuild.py`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from . import polygon, polyhedron


class Cells(eqx.Module):
    """The combinatorics of a diagram's first-pass cells (no positions), for `rebuilt`.

    - `planes`: plane ids of each vertex slot (``(n, V)`` edges of a polygon, ``(n, V, 3)`` in 3D):
      candidates ``0..k-1`` by their position in the diagram's candidate list, then the
      domain's (`diagram.clip_cell`); -1 where dead.
    - `links`: the 3D neighbour table ``(n, V, 3)``; ``None`` in 2D.
    - `live`: the live slots, ``(n, V)`` in 3D, the vertex count ``(n,)`` in 2D.
    - `ok`: the cells that may be rebuilt: certified in the first pass, not overflowed, not empty.
    """

    planes: Int[Array, "n V *three"]
    links: Int[Array, "n V 3"] | None
    live: Bool[Array, "n V"] | Int[Array, " n"]
    ok: Bool[Array, " n"]


def applies(d: int) -> bool:
    """Whether cells of dimension d can be rebuilt (the polygon and polyhedron kernels)."""
    return d in (2, 3)


def empty(n: int, d: int, slots: int) -> Cells:
    """Cells of which none may be rebuilt (Newton's state before its first diagram)."""
    if d == 2:
        return Cells(jnp.full((n, slots), -1, jnp.int16), None, jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool))
    return Cells(jnp.full((n, slots, 3), -1, jnp.int16), jnp.zeros((n, slots, 3), jnp.int8),
                 jnp.zeros((n, slots), bool), jnp.zeros((n,), bool))


def kept(poly, ok: Bool[Array, " n"]) -> Cells:
    """The combinatorics of a batch of polytopes (``(n, ...)`` leaves), in narrow integers (3D 1e5
    cells at 40 slots: 40 MB)."""
    if isinstance(poly, polygon.Polygon):
        return Cells(poly.planes.astype(jnp.int16), None, poly.count, ok)
    return Cells(poly.planes.astype(jnp.int16), poly.neighbours.astype(jnp.int8), poly.valid, ok)


def rebuilt(cell: Cells, place: Int[Array, " k"], normals: Float[Array, "K d"], offsets: Float[Array, " K"]):
    """One cell (a row of `Cells`) at new planes ``normals . z <= offsets`` (every plane id, in id
    order), its candidates renamed by ``place`` (old position -> new).  Returns the polytope and
    whether it is the cell those planes clip (see the module)."""
    k = place.shape[0]
    planes = cell.planes.astype(jnp.int32)
    planes = jnp.where((planes >= 0) & (planes < k), place[jnp.clip(planes, 0, k - 1)], planes)
    ids = jnp.clip(planes, 0, normals.shape[0] - 1)
    if cell.links is None:
        slots = planes.shape[0]
        live = jnp.arange(slots) < cell.live
        # Vertex v joins the edges of planes[v - 1] and planes[v].
        before = ids[(jnp.arange(slots) - 1) % jnp.maximum(cell.live, 1)]
        a, b, oa, ob = normals[before], normals[ids], offsets[before], offsets[ids]
        det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        x = jnp.stack([oa * b[:, 1] - ob * a[:, 1], a[:, 0] * ob - b[:, 0] * oa], -1)
    else:
        live = cell.live
        n0, n1, n2 = normals[ids[:, 0]], normals[ids[:, 1]], normals[ids[:, 2]]
        c0, c1, c2 = jnp.cross(n1, n2), jnp.cross(n2, n0), jnp.cross(n0, n1)
        det = jnp.sum(n0 * c0, -1)
        o = offsets[ids]
        x = o[:, 0, None] * c0 + o[:, 1, None] * c1 + o[:, 2, None] * c2
    x = jnp.where(live[:, None], x / jnp.where(live, det, 1.0)[:, None], 0.0)
    # The clip's rounding (`polyhedron.clip`): a vertex that close to a plane counts as on it.
    reach = jnp.max(jnp.sqrt(jnp.sum(x**2, -1)))
    tol = 64 * jnp.finfo(x.dtype).eps * (jnp.abs(offsets) + jnp.sqrt(jnp.sum(normals**2, -1)) * reach)
    excess = sum(x[:, None, a] * normals[None, :, a] for a in range(x.shape[1])) - offsets  # (fused)
    passed = cell.ok & jnp.all(~live[:, None] | (excess <= tol))  # (NaN fails)
    if cell.links is None:
        poly = polygon.Polygon(x, planes, cell.live.astype(jnp.int32), jnp.array(False))
    else:
        poly = polyhedron.Polyhedron(x, planes, cell.links.astype(jnp.int32), live, jnp.array(False))
    return poly, passed
