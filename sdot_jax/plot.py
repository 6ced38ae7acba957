"""Matplotlib helpers (optional dependency: ``pip install sdot_jax[plot]``)."""

from __future__ import annotations

import numpy as np


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 6))
    return ax


def plot_plan(plan, ax=None, *, slice_at: float | None = None, resolution: int = 300,
              show_barycenters: bool = True, cmap: str = "tab20"):
    """Draw the power cells of a 2D plan (polygons, Diracs, lines Dirac -> barycenter), or, in
    3D, the cells cut by the plane ``z = slice_at`` (default: the middle of the support)."""
    from matplotlib.collections import PolyCollection

    ax = _axes(ax)
    y = np.asarray(plan.positions)
    d = y.shape[1]
    if d == 2:
        cells = plan.cells
        vertices, valid = np.asarray(cells.vertices), np.asarray(cells.valid)
        polygons = [v[m] for v, m in zip(vertices, valid) if m.any()]
        colours = np.arange(len(polygons)) % 20
        ax.add_collection(PolyCollection(polygons, array=colours, cmap=cmap, alpha=0.5,
                                         edgecolors="k", linewidths=0.5))
        ax.plot(y[:, 0], y[:, 1], "k.", ms=3)
        if show_barycenters:
            b = np.asarray(plan.barycenters)
            ax.plot(np.stack([y[:, 0], b[:, 0]]), np.stack([y[:, 1], b[:, 1]]), "r-", lw=0.5)
        lo, hi = (np.asarray(v) for v in plan.target.bounding_box())
        lo, hi = np.minimum(lo, y.min(0)), np.maximum(hi, y.max(0))
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
    elif d == 3:
        lo, hi = (np.asarray(v) for v in plan.target.bounding_box())
        z = (lo[2] + hi[2]) / 2 if slice_at is None else slice_at
        xs = np.linspace(lo[0], hi[0], resolution)
        ys = np.linspace(lo[1], hi[1], resolution)
        grid = np.stack(np.meshgrid(xs, ys, indexing="xy") + [np.full((resolution, resolution), z)], -1)
        label = np.asarray(plan.assignment(grid.reshape(-1, 3))).reshape(resolution, resolution)
        ax.imshow(label % 20, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap=cmap)
        ax.set_title(f"power cells in the plane z = {z:.3g}")
    else:
        raise NotImplementedError("plots are for 2D plans and 3D slices.")
    ax.set_aspect("equal")
    return ax


def plot_potential(backward_map, box=None, resolution: int = 200, ax=None):
    """Image of the Brenier potential of a 2D plan on ``box = (lo, hi)`` (default: around the
    Diracs)."""
    ax = _axes(ax)
    y = np.asarray(backward_map.positions)
    if y.shape[1] != 2:
        raise NotImplementedError("plot_potential is for 2D plans.")
    if box is None:
        lo, hi = y.min(0), y.max(0)
        pad = 0.1 * (hi - lo)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = (np.asarray(v, float) for v in box)
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    grid = np.stack(np.meshgrid(xs, ys, indexing="xy"), -1)
    u = np.asarray(backward_map.brenier_potential(grid.reshape(-1, 2))).reshape(resolution, resolution)
    image = ax.imshow(u, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label="Brenier potential u")
    ax.set_aspect("equal")
    return ax
