"""Test helpers: references independent of sdot_jax (numpy + scipy/qhull), Monte Carlo estimates.

The reference power diagram builds every cell with ``scipy.spatial.HalfspaceIntersection`` against
*all* other seeds (no neighbour search, no certificate), finds an interior point by a Chebyshev-
centre linear program, and integrates by triangulating the cell's boundary with qhull and coning
from the vertex mean.  None of this shares code with the package.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.sparse
import scipy.sparse.linalg
import scipy.spatial


def box_halfspaces(lo, hi):
    """``A x <= b`` for the box ``[lo, hi]``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    d = lo.shape[0]
    return np.vstack([np.eye(d), -np.eye(d)]), np.concatenate([hi, -lo])


def simplex_moments(vertices: np.ndarray):
    """(volume, integral of x, integral of x x^T) over the simplex with rows ``vertices`` (d+1, d)."""
    d = vertices.shape[1]
    vol = abs(np.linalg.det(vertices[1:] - vertices[0])) / math.factorial(d)
    s = vertices.sum(0)
    first = vol * s / (d + 1)
    second = vol / ((d + 1) * (d + 2)) * (vertices.T @ vertices + np.outer(s, s))
    return vol, first, second


def polytope_moments(points: np.ndarray):
    """Moments of the uniform density over conv(points): (volume, int x, int x x^T)."""
    d = points.shape[1]
    hull = scipy.spatial.ConvexHull(points)
    c = points[hull.vertices].mean(0)
    vol, first, second = 0.0, np.zeros(d), np.zeros((d, d))
    for facet in hull.simplices:
        m0, m1, m2 = simplex_moments(np.vstack([c, points[facet]]))
        vol, first, second = vol + m0, first + m1, second + m2
    return vol, first, second


def facet_measure(points: np.ndarray, normal: np.ndarray) -> float:
    """(d-1)-measure of the convex hull of ``points`` lying in a hyperplane with this normal."""
    d = points.shape[1]
    if points.shape[0] < d:
        return 0.0
    if d == 2:
        diff = points[:, None] - points[None]
        return float(np.sqrt(np.max(np.sum(diff**2, -1))))
    # Orthonormal basis of the hyperplane.
    q, _ = np.linalg.qr(np.column_stack([normal, np.eye(d)]))
    flat = (points - points.mean(0)) @ q[:, 1:d]
    try:
        return float(scipy.spatial.ConvexHull(flat).volume)
    except scipy.spatial.QhullError:
        return 0.0


def reference_diagram(y, psi, A, b, *, hessian: bool = False, near: int = 40, cells=None):
    """Independent power diagram of seeds ``y`` with weights ``psi`` restricted to ``A x <= b``.

    Returns a dict with ``mass`` (n,), ``first`` (n, d) = int x, ``second`` (n,) =
    int |x - y_i|^2, and with ``hessian=True`` a sparse ``facet`` matrix (facet measures between
    cells).  Unnormalised (Lebesgue measure).  ``cells``: the indices to compute (default all);
    the other rows are left zero.
    """
    y, psi = np.asarray(y, float), np.asarray(psi, float)
    A, b = np.asarray(A, float), np.asarray(b, float)
    n, d = y.shape
    mass, first, second = np.zeros(n), np.zeros((n, d)), np.zeros(n)
    rows, cols, vals = [], [], []
    sq = np.sum(y**2, 1)
    for i in range(n) if cells is None else cells:
        # Candidates: the `near` nearest seeds; the cell they cut out is then checked against every
        # seed (all vertices must satisfy all bisectors), and rebuilt from 8 and 64 times as many,
        # then from all seeds, until it passes.
        order = np.argsort(np.sum((y - y[i]) ** 2, 1))
        for others in (order[1 : near + 1], order[1 : 8 * near + 1], order[1 : 64 * near + 1], order[1:]):
            cell = _cell(i, others, y, psi, A, b)
            if cell is None or len(others) == n - 1:
                break
            z = cell[1].intersections + y[i]
            excess = (sq[i] - psi[i] - 2 * z @ y[i])[:, None] - (sq - psi - 2 * z @ y.T)[None]
            if np.all(excess <= 1e-10 * (1 + sq.max() + np.abs(psi).max())):
                break
        if cell is None:
            continue  # empty (or flat) cell
        delta, hs = cell
        pts = hs.intersections
        m0, m1, m2 = polytope_moments(pts)
        mass[i] = m0
        first[i] = m1 + m0 * y[i]
        second[i] = np.trace(m2)
        if hessian:
            incident = np.zeros((pts.shape[0], delta.shape[0] + A.shape[0]), bool)
            for v, planes in enumerate(hs.dual_facets):
                incident[v, planes] = True
            for k, j in enumerate(others):
                on = incident[:, k]
                if on.sum() >= d:
                    area = facet_measure(pts[on], delta[k])
                    if area > 0:
                        rows.append(i)
                        cols.append(j)
                        vals.append(area)
    out = {"mass": mass, "first": first, "second": second}
    if hessian:
        out["facet"] = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    return out


def _cell(i, others, y, psi, A, b):
    """Cell i cut by the bisectors of ``others`` and by ``A x <= b`` (local coordinates), or None
    when empty: ``(delta, HalfspaceIntersection)``."""
    d = y.shape[1]
    # Local coordinates z = x - y_i:  2 <z, y_j - y_i> <= |y_j - y_i|^2 + psi_i - psi_j.
    delta = y[others] - y[i]
    normals = np.vstack([2 * delta, A])
    offsets = np.concatenate([np.sum(delta**2, 1) + psi[i] - psi[others], b - A @ y[i]])
    norms = np.linalg.norm(normals, axis=1)
    # The seed itself when it lies well inside (most cells: skips the LP, ~3 ms per cell).
    if np.min(offsets / norms) > 1e-3 * np.sqrt(np.min(np.sum(delta**2, 1))):
        return delta, scipy.spatial.HalfspaceIntersection(np.column_stack([normals, -offsets]), np.zeros(d))
    # Chebyshev centre: max r s.t. normals z + r |normal| <= offsets.
    lp = scipy.optimize.linprog(
        np.concatenate([np.zeros(d), [-1.0]]),
        A_ub=np.column_stack([normals, norms]),
        b_ub=offsets,
        bounds=[(None, None)] * d + [(0, None)],
        method="highs",
    )
    if lp.status != 0 or lp.x[-1] <= 1e-12:
        return None
    centre = lp.x[:d]
    return delta, scipy.spatial.HalfspaceIntersection(np.column_stack([normals, -offsets]), centre)


def reference_newton(y, a, A, b, psi, *, tol=1e-13, max_iter=20):
    """Independent damped-free Newton on the dual, from ``psi`` (must be close to the optimum).

    Uses ``reference_diagram`` for masses and facet measures; the Hessian is the facet Laplacian
    ``L_ij = -|F_ij| / (2 |y_i - y_j| vol)``.  Returns zero-mean weights and the history of the
    worst relative mass error.
    """
    y = np.asarray(y, float)
    a = np.asarray(a, float) / np.sum(a)
    psi = np.asarray(psi, float).copy()
    n = y.shape[0]
    history = []
    for _ in range(max_iter):
        ref = reference_diagram(y, psi, A, b, hessian=True)
        vol = ref["mass"].sum()
        m = ref["mass"] / vol
        err = np.max(np.abs(m - a) / a)
        history.append(err)
        if err <= tol:
            break
        f = ref["facet"].tocoo()
        f = 0.5 * (f + f.T).tocoo()  # each facet seen from both sides
        dist = np.linalg.norm(y[f.row] - y[f.col], axis=1)
        w = f.data / (2 * dist * vol)
        off = scipy.sparse.csr_matrix((-w, (f.row, f.col)), shape=(n, n))
        lap = off - scipy.sparse.diags(np.asarray(off.sum(1)).ravel())
        # dm/dpsi = L (PSD Laplacian): solve L d = a - m with the zero-mean gauge.
        dense = lap.toarray() + np.ones((n, n)) / n
        psi = psi + np.linalg.solve(dense, a - m)
    return psi - psi.mean(), history


def monte_carlo(y, psi, samples, *, weights=None):
    """Cell masses, barycenters and W2^2 estimated from ``samples`` (uniform in the support), with
    their standard errors. Assignment by brute-force argmin of the power distance (numpy)."""
    y, psi = np.asarray(y, float), np.asarray(psi, float)
    n = y.shape[0]
    idx = assign(y, psi, samples)
    count = np.bincount(idx, minlength=n)
    N = samples.shape[0]
    mass = count / N
    mass_se = np.sqrt(mass * (1 - mass) / N)
    sums = np.zeros((n, y.shape[1]))
    np.add.at(sums, idx, samples)
    bary = sums / np.maximum(count, 1)[:, None]
    cost = np.sum((samples - y[idx]) ** 2, 1)
    return dict(idx=idx, mass=mass, mass_se=mass_se, bary=bary, cost=cost.mean(),
                cost_se=cost.std() / np.sqrt(N), counts=count)


def assign(y, psi, x, chunk=20000):
    """argmin_i |x - y_i|^2 - psi_i, brute force in numpy."""
    y, psi, x = np.asarray(y, float), np.asarray(psi, float), np.asarray(x, float)
    out = np.empty(x.shape[0], np.int64)
    c = np.sum(y**2, 1) - psi
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        out[s : s + chunk] = np.argmin(c[None] - 2 * xs @ y.T, 1)
    return out


def gauge(psi):
    psi = np.asarray(psi, float)
    return psi - psi.mean()
