"""Which cell kernel clips cells in which dimension.

A kernel module provides ``box(lo, hi, capacity, first_id)``, ``clip(poly, normal, offset, id)``,
``integrate(poly, density, origin, num_facets)``, ``squared_radius``, ``live_mask`` and
``is_empty``, on a padded polytope whose ``vertices`` are relative to the seed, whose ``planes``
record plane ids (``(V, d)`` per-vertex ids in 3D and above) and whose ``overflow`` flags a
capacity overflow.

- 2D: :mod:`.polygon` (ordered polygon).
- 3D: :mod:`.polyhedron` (simple polyhedron with an explicit, oriented neighbour table).
- d >= 4: :mod:`.polytope` (simple polytope, adjacency from shared plane ids).
"""

from . import polygon, polyhedron, polytope


def kernel_for(d: int):
    if d == 2:
        return polygon
    if d == 3:
        return polyhedron
    return polytope
