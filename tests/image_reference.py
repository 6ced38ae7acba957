"""Independent reference for semi-discrete OT against a piecewise-constant image on the unit square.

Nothing here shares code with sdot_jax (numpy + scipy only):

- **Power cells**: the regular triangulation is the lower convex hull (qhull) of the lifted seeds
  ``(y_i, |y_i|^2 - psi_i)``; cell i is the unit square clipped (Sutherland-Hodgman, written
  here) by the bisectors of its regular-triangulation neighbours.  Every vertex of every cell is
  then checked against *all* seeds (its power distance to its own seed must be minimal), so a
  wrong neighbour set cannot go unnoticed.
- **Integrals**: every cell polygon is clipped exactly against each pixel square it overlaps
  (first by pixel columns, then rows); on each piece the density is constant and the area, the
  first moment and the second moment about the seed are exact polygon (shoelace) formulas.
  Edges keep the id of the bisector that made them, so the same pieces give the facet integrals
  ``int_{Lag_i ∩ Lag_j} rho dsigma`` (piece edge length × pixel value).
- **Newton**: damped Newton of Kitagawa–Mérigot–Thibert on the masses, Hessian = facet Laplacian
  ``L_ij = -F_ij / (2 |y_i - y_j|)`` as a scipy sparse matrix, solved by a sparse LU with one
  weight grounded (then shifted to the zero-mean gauge).

Image convention (as documented for ``sdot_jax.Image``): ``values[i_x, i_y]`` is the density on
the pixel ``[i_x/n_x, (i_x+1)/n_x] x [i_y/n_y, (i_y+1)/n_y]``; the density is normalised to mass 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import scipy.spatial

BOUNDARY = -1  # edge label: the unit square's boundary
PIXEL = -2  # edge label: a pixel line (interior of the cell)


def clip(poly, labels, normal, offset, label):
    """Clip a convex polygon to ``{z : <normal, z> <= offset}``.

    ``poly``: list of ``(x, y)`` vertices (counter-clockwise); ``labels[k]`` is the label of the
    edge ``poly[k] -> poly[k+1]``.  The new edge along the clipping line gets ``label``.
    """
    nx, ny = normal
    s = [nx * p[0] + ny * p[1] - offset for p in poly]
    m = len(poly)
    out, out_lab = [], []
    for k in range(m):
        q = k + 1 if k + 1 < m else 0
        sp, sq = s[k], s[q]
        p0, p1 = poly[k], poly[q]
        if sp <= 0:
            out.append(p0)
            out_lab.append(labels[k])
            if sq > 0:
                t = sp / (sp - sq)
                out.append((p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1])))
                out_lab.append(label)
        elif sq <= 0:
            t = sp / (sp - sq)
            out.append((p0[0] + t * (p1[0] - p0[0]), p0[1] + t * (p1[1] - p0[1])))
            out_lab.append(labels[k])
    return out, out_lab


def polygon_moments(poly):
    """Exact (area, int z (2,), int |z|^2) of the uniform density over a simple CCW polygon."""
    p = np.asarray(poly, float)
    x, y = p[:, 0], p[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    c = x * y1 - x1 * y
    area = c.sum() / 2
    first = np.array([((x + x1) * c).sum(), ((y + y1) * c).sum()]) / 6
    second = ((x * x + x * x1 + x1 * x1 + y * y + y * y1 + y1 * y1) * c).sum() / 12
    return area, first, second


def regular_neighbours(y, psi):
    """Neighbour sets of the power diagram of ``(y, psi)`` in the whole plane: edges of the lower
    convex hull of the lifted seeds (qhull).  Seeds not on the lower hull have empty cells."""
    n = y.shape[0]
    lifted = np.column_stack([y, np.sum(y**2, 1) - psi])
    hull = scipy.spatial.ConvexHull(lifted)
    lower = hull.simplices[hull.equations[:, 2] < 0]
    nbrs = [set() for _ in range(n)]
    for a, b, c in lower:
        nbrs[a].update((b, c))
        nbrs[b].update((a, c))
        nbrs[c].update((a, b))
    return [np.array(sorted(s), int) for s in nbrs]


def power_cells(y, psi, *, check=True):
    """Cells of the power diagram restricted to the unit square, in coordinates relative to each
    seed: a list of ``(vertices, edge_labels)`` (labels: neighbour id, or ``BOUNDARY``)."""
    y, psi = np.asarray(y, float), np.asarray(psi, float)
    n = y.shape[0]
    cells = []
    for i, nb in enumerate(regular_neighbours(y, psi)):
        yi = y[i]
        lo, hi = -yi, 1 - yi
        poly = [(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])]
        lab = [BOUNDARY] * 4
        if len(nb) == 0:
            cells.append(([], []))
            continue
        delta = y[nb] - yi
        # 2 <z, y_j - y_i> <= |y_j - y_i|^2 + psi_i - psi_j
        offsets = np.sum(delta**2, 1) + psi[i] - psi[nb]
        for j, d, o in zip(nb, 2 * delta, offsets):
            poly, lab = clip(poly, lab, d, o, int(j))
            if not poly:
                break
        cells.append((poly, lab))
    if check:
        check_cells(y, psi, cells)
    return cells


def check_cells(y, psi, cells, rtol=1e-12):
    """Every vertex of cell i minimises the power distance over *all* seeds (up to round-off)."""
    sq = np.sum(y**2, 1) - psi
    scale = 1 + np.abs(sq).max()
    for i, (poly, _) in enumerate(cells):
        if not poly:
            continue
        v = np.asarray(poly) + y[i]
        power = sq[None] - 2 * v @ y.T  # |v - y_j|^2 - psi_j - |v|^2
        excess = power[:, i] - power.min(1)
        if excess.max() > rtol * scale:
            raise AssertionError(f"cell {i}: a vertex is closer to another seed by {excess.max():.3g}")


def image_diagram(y, psi, values, *, check=True):
    """Masses, first moments ``int x rho``, second moments ``int |x - y_i|^2 rho`` and the facet
    integrals ``F_ij = int_{Lag_i ∩ Lag_j} rho`` (sparse, symmetrised) for the normalised image
    density ``values`` on the unit square."""
    y, psi = np.asarray(y, float), np.asarray(psi, float)
    values = np.asarray(values, float)
    nx_, ny_ = values.shape
    rho = values / (values.sum() / (nx_ * ny_))  # mass 1
    n = y.shape[0]
    mass, first, second = np.zeros(n), np.zeros((n, 2)), np.zeros(n)
    rows, cols, vals = [], [], []
    for i, (poly, lab) in enumerate(power_cells(y, psi, check=check)):
        if len(poly) < 3:
            continue
        yi = y[i]
        pa = np.asarray(poly)
        gx = pa[:, 0] + yi[0]
        gy = pa[:, 1] + yi[1]
        ix0, ix1 = max(int(np.floor(gx.min() * nx_)), 0), min(int(np.ceil(gx.max() * nx_)), nx_)
        iy0, iy1 = max(int(np.floor(gy.min() * ny_)), 0), min(int(np.ceil(gy.max() * ny_)), ny_)
        facet = {}
        m0, m1, m2 = 0.0, np.zeros(2), 0.0
        for ix in range(ix0, ix1):
            # Column strip  ix/nx <= x <= (ix+1)/nx, in local coordinates.
            col, cl = clip(poly, lab, (-1.0, 0.0), -(ix / nx_ - yi[0]), PIXEL)
            col, cl = clip(col, cl, (1.0, 0.0), (ix + 1) / nx_ - yi[0], PIXEL)
            if len(col) < 3:
                continue
            for iy in range(iy0, iy1):
                piece, pl = clip(col, cl, (0.0, -1.0), -(iy / ny_ - yi[1]), PIXEL)
                piece, pl = clip(piece, pl, (0.0, 1.0), (iy + 1) / ny_ - yi[1], PIXEL)
                if len(piece) < 3:
                    continue
                r = rho[ix, iy]
                a, f, s = polygon_moments(piece)
                m0 += r * a
                m1 += r * f
                m2 += r * s
                for k, j in enumerate(pl):
                    if j >= 0:
                        p, q = piece[k], piece[(k + 1) % len(piece)]
                        facet[j] = facet.get(j, 0.0) + r * np.hypot(q[0] - p[0], q[1] - p[1])
        mass[i], first[i], second[i] = m0, m1 + m0 * yi, m2
        for j, v in facet.items():
            rows.append(i)
            cols.append(j)
            vals.append(v)
    F = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    asym = abs(F - F.T).max() if F.nnz else 0.0
    F = 0.5 * (F + F.T)
    return dict(mass=mass, first=first, second=second, facet=F, facet_asymmetry=asym)


def laplacian(y, F):
    """``dm/dpsi``: ``L_ij = -F_ij / (2 |y_i - y_j|)`` off the diagonal, rows summing to zero."""
    F = F.tocoo()
    n = y.shape[0]
    w = F.data / (2 * np.linalg.norm(y[F.row] - y[F.col], axis=1))
    off = scipy.sparse.csr_matrix((-w, (F.row, F.col)), shape=(n, n))
    return (off - scipy.sparse.diags(np.asarray(off.sum(1)).ravel())).tocsc()


def solve_newton(y, values, *, masses=None, psi=None, tol=1e-13, max_iter=60):
    """Damped Newton (KMT) for the weights of the OT from ``values`` to the Diracs ``y``.

    Stops when ``max_i |m_i - a_i| / a_i <= tol``.  Returns ``(psi (zero mean), history of the
    worst relative mass error, diagram at psi)``.
    """
    y = np.asarray(y, float)
    n = y.shape[0]
    a = np.full(n, 1.0 / n) if masses is None else np.asarray(masses, float) / np.sum(masses)
    psi = np.zeros(n) if psi is None else np.asarray(psi, float).copy()
    diag = image_diagram(y, psi, values)
    eps0 = min(a.min(), diag["mass"].min()) / 2
    if eps0 <= 0:
        raise ValueError("an initial cell is empty")
    history = []
    for _ in range(max_iter):
        m = diag["mass"]
        err = np.max(np.abs(m - a) / a)
        history.append(err)
        if err <= tol:
            break
        L = laplacian(y, diag["facet"])
        r = a - m
        r = r - r.mean()
        step = np.zeros(n)
        step[1:] = scipy.sparse.linalg.spsolve(L[1:, 1:], r[1:])
        norm0 = np.linalg.norm(a - m)
        t = 1.0
        for _ in range(40):
            trial = psi + t * step
            new = image_diagram(y, trial, values)
            if new["mass"].min() >= eps0 and np.linalg.norm(a - new["mass"]) <= (1 - t / 2) * norm0:
                break
            t /= 2
        else:
            break  # no decrease possible at round-off level
        psi, diag = trial, new
    return psi - psi.mean(), history, diag
