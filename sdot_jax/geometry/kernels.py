"""Which cell kernel clips cells in which dimension.

A kernel module provides ``box(lo, hi, capacity, first_id)``, ``clip(poly, normal, offset, id)``,
``integrate(poly, density, origin, num_facets)``, ``squared_radius``, ``live_mask`` and
``is_empty``, on a padded polytope whose ``vertices`` are relative to the seed, whose ``planes``
record plane ids and whose ``overflow`` flags a capacity overflow.
"""

from . import polygon, polytope


def kernel_for(d: int):
    return polygon if d == 2 else polytope
