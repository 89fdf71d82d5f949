"""Clustering used by the nodes (average linkage) and the peduncles and the stem's top (single
linkage as connected components): scipy's, with a cap on the points clustered."""

from __future__ import annotations

import numpy as np


def _average_linkage(x: np.ndarray, cut: float, max_points: int = 3000, w: np.ndarray | None = None):
    """Labels [M] from scipy's average-linkage clustering cut at distance `cut`. Above `max_points`
    the heaviest `max_points` are clustered and the rest join the cluster of their nearest one."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial import cKDTree

    if len(x) == 1:
        return np.zeros(1, np.int64)
    sel = np.arange(len(x))
    if len(x) > max_points:
        sel = np.argsort(-(w if w is not None else np.ones(len(x))))[:max_points]
    lab_sel = fcluster(linkage(x[sel], method="average"), t=cut, criterion="distance") - 1
    if len(sel) == len(x):
        return lab_sel
    _, nn = cKDTree(x[sel]).query(x)
    return lab_sel[nn]


def _components(x: np.ndarray, link: float) -> np.ndarray:
    """Single-linkage labels [M] at distance `link`: connected components of the graph joining
    points closer than `link` (scipy cKDTree + csgraph; the same partition as scipy's
    fcluster(linkage(x, 'single'), link, 'distance') without its M^2 distance matrix)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if len(x) == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(x).query_pairs(link, output_type="ndarray")
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(x), len(x)))
    return connected_components(g, directed=False)[1]
