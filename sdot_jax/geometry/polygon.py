r"""Convex polygons as fixed-size padded arrays, clipped by half-planes (the 2D cell kernel).

A polygon holds ``V`` vertex slots in counter-clockwise order, of which the first ``count`` are
live; ``planes[k]`` is the id of the half-plane whose boundary carries the edge from vertex k to
vertex k+1.  Clipping keeps the contiguous run of vertices inside $\{a \cdot x \le b\}$, rotated to
the front, and appends the exit and entry points: a gather, no scatter.  A clip that would need
more than ``V`` slots sets ``overflow`` instead of truncating silently.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class Polygon(NamedTuple):
    vertices: Float[Array, "V 2"]
    planes: Int[Array, " V"]
    count: Int[Array, ""]
    overflow: Bool[Array, ""]


def box(lo: Float[Array, " 2"], hi: Float[Array, " 2"], capacity: int, first_id: int) -> Polygon:
    """The box ``[lo, hi]`` as a polygon; its four edges get ids ``first_id .. first_id + 3``."""
    corners = jnp.stack([lo, jnp.stack([hi[0], lo[1]]), hi, jnp.stack([lo[0], hi[1]])])
    vertices = jnp.zeros((capacity, 2), lo.dtype).at[:4].set(corners)
    # Edge k -> k+1: bottom (y >= lo_y), right (x <= hi_x), top (y <= hi_y), left (x >= lo_x).
    ids = jnp.array([2, 1, 3, 0], jnp.int32) + first_id
    planes = jnp.full((capacity,), -1, jnp.int32).at[:4].set(ids)
    return Polygon(vertices, planes, jnp.array(4, jnp.int32), jnp.array(False))


def clip(poly: Polygon, normal: Float[Array, " 2"], offset: Float[Array, ""], plane_id) -> Polygon:
    """Intersect with the half-plane ``normal . x <= offset``."""
    vertices, planes, count, overflow = poly
    capacity = vertices.shape[0]
    idx = jnp.arange(capacity)
    live = idx < count
    # Products summed axis by axis: XLA fuses them into what follows, where a matrix-vector
    # product per cell is a kernel of its own (2D 1e5 solve, with the same in 3D and in
    # `clip_cell_in_two`: 5.66 -> 5.17 s; 3D 1e4 4.81 -> 4.58 s).
    s = vertices[:, 0] * normal[0] + vertices[:, 1] * normal[1] - offset
    out = live & (s > 0)
    n_in = count - jnp.sum(out)
    cuts = (n_in < count) & (n_in > 0)

    safe_count = jnp.maximum(count, 1)
    # out[(idx - 1) % count] on the live slots (all that `start` reads): a shift, and one element
    # for idx = 0 (a gather of all V slots cost more).
    before = jnp.concatenate([jnp.any(out & (idx == safe_count - 1), keepdims=True), out[:-1]])
    start = jnp.argmax(live & ~out & before)
    order = (start + idx) % safe_count
    rv, rp, rs = vertices[order], planes[order], s[order]

    def crossing(k_in, k_out):
        # The point where the edge from rv[k_in] (inside) to rv[k_out] (outside) meets the line.
        s_in, s_out = rs[k_in], rs[k_out]
        t = s_in / jnp.where(cuts, s_in - s_out, -1.0)
        return rv[k_in] + t * (rv[k_out] - rv[k_in])

    exit_point = crossing(n_in - 1, n_in)
    entry_point = crossing(0, count - 1)
    # Written through masks, not `.at[].set`: under vmap, a scatter of one element per cell cost
    # more (2D 1e5 uniform solve 6.06 -> 5.91 s).
    kept, is_exit, is_entry = idx < n_in, idx == n_in, idx == n_in + 1
    clipped_vertices = jnp.where(kept[:, None], rv, 0.0)
    clipped_vertices = jnp.where(is_entry[:, None], entry_point, clipped_vertices)
    clipped_vertices = jnp.where(is_exit[:, None], exit_point, clipped_vertices)
    clipped_planes = jnp.where(kept, rp, -1)
    clipped_planes = jnp.where(is_exit, jnp.asarray(plane_id, planes.dtype), clipped_planes)
    clipped_planes = jnp.where(is_entry, rp[count - 1], clipped_planes)

    new_vertices = jnp.where(cuts, clipped_vertices, vertices)
    new_planes = jnp.where(cuts, clipped_planes, planes)
    new_count = jnp.where(cuts, n_in + 2, jnp.where(n_in == 0, 0, count))
    new_overflow = overflow | (cuts & (n_in + 2 > capacity))
    return Polygon(new_vertices, new_planes, new_count.astype(jnp.int32), new_overflow)


def integrate(poly: Polygon, density, origin: Float[Array, " 2"], num_facets: int):
    """Moments of ``density`` over the polygon (by its ``polygon_moments`` where it has one, else
    over a fan of triangles from the vertex mean) and the density's line integral over each edge,
    summed per plane id ``0 .. num_facets - 1``.

    The polygon's vertices are relative to ``origin``; so are the returned moments.
    """
    vertices, planes, count, _ = poly
    capacity = vertices.shape[0]
    idx = jnp.arange(capacity)
    live = idx < count
    following = vertices[(idx + 1) % jnp.maximum(count, 1)]
    boundary = getattr(density, "polygon_moments", None)
    moments = boundary(origin, vertices, following, live) if boundary is not None else None
    if moments is not None:  # one pass over the boundary (piecewise-constant images)
        mass, first, second, edge_mass = moments
        return mass, first, second, jax.ops.segment_sum(jnp.where(live, edge_mass, 0.0),
                                                        jnp.where(live, planes, -1), num_facets)
    centre = jnp.sum(jnp.where(live[:, None], vertices, 0.0), 0) / jnp.maximum(count, 1)
    triangles = jnp.stack([jnp.broadcast_to(centre, vertices.shape), vertices, following], axis=1)
    # Dead slots become degenerate triangles at the centre: no work for grid densities, no NaN.
    triangles = jnp.where(live[:, None, None], triangles, centre)
    m0, m1, m2 = jax.vmap(density.simplex_moments, (None, 0))(origin, triangles)
    mass = jnp.sum(jnp.where(live, m0, 0.0))
    first = jnp.sum(jnp.where(live[:, None], m1, 0.0), 0)
    second = jnp.sum(jnp.where(live[:, None, None], m2, 0.0), 0)
    edges = jnp.stack([vertices, following], axis=1)
    edge_mass = jnp.where(live, jax.vmap(density.facet_mass, (None, 0))(origin, edges), 0.0)
    facets = jax.ops.segment_sum(edge_mass, jnp.where(live, planes, -1), num_facets)
    return mass, first, second, facets


def squared_radius(poly: Polygon) -> Float[Array, ""]:
    """Largest squared distance from the origin (the seed) to a vertex."""
    live = jnp.arange(poly.vertices.shape[0]) < poly.count
    return jnp.max(jnp.where(live, jnp.sum(poly.vertices**2, -1), 0.0))


def live_mask(poly: Polygon) -> Bool[Array, " V"]:
    return jnp.arange(poly.vertices.shape[0]) < poly.count


def is_empty(poly: Polygon) -> Bool[Array, ""]:
    return poly.count == 0
