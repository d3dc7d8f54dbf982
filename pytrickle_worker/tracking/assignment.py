"""Optimal linear assignment (Hungarian, shortest augmenting path) and vectorised IoU.

numpy only. The matrices a tracker sees are small (< 300 x 300); the solver is the
O(n^2 m) potentials formulation (Kuhn-Munkres with Dijkstra-like column scans, as in
Jonker-Volgenant), with the inner scan over columns vectorised.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "box_iou",
    "fuse_score",
    "iou_distance",
    "linear_assignment",
    "min_cost_assignment",
]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]


def _as_cost_matrix(cost: npt.ArrayLike) -> FloatArray:
    matrix = np.asarray(cost, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"cost matrix must be 2-D, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("cost matrix must contain only finite values (no NaN/inf)")
    return matrix


def min_cost_assignment(cost: npt.ArrayLike) -> tuple[IndexArray, IndexArray]:
    """Minimum-cost complete assignment of a rectangular matrix.

    Every row is assigned when rows <= columns (every column otherwise), each to a
    distinct column, so that the summed cost is minimal. Returns ``(rows, cols)``,
    sorted by row, of length ``min(n, m)``. Raises ``ValueError`` for a matrix that is
    not 2-D or holds NaN/inf.
    """
    matrix = _as_cost_matrix(cost)
    n_rows, n_cols = matrix.shape
    if n_rows == 0 or n_cols == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty.copy()
    transposed = n_rows > n_cols
    c = matrix.T if transposed else matrix
    n, m = c.shape  # n <= m

    # 1-based potentials/assignment, index 0 of the column arrays is a virtual column.
    u = np.zeros(n + 1, dtype=np.float64)
    v = np.zeros(m + 1, dtype=np.float64)
    owner = np.zeros(m + 1, dtype=np.intp)  # owner[j]: row (1-based) on column j, 0 = free
    way = np.zeros(m + 1, dtype=np.intp)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = np.full(m, np.inf, dtype=np.float64)  # for real columns 1..m
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = int(owner[j0])
            free = ~used[1:]
            reduced = c[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv)
            minv[better] = reduced[better]
            way[1:][better] = j0
            masked = np.where(free, minv, np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = float(masked[j1 - 1])
            used_cols = np.flatnonzero(used)
            u[owner[used_cols]] += delta
            v[used_cols] -= delta
            minv[free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0 != 0:  # augment along the alternating path
            j1 = int(way[j0])
            owner[j0] = owner[j1]
            j0 = j1

    cols = np.flatnonzero(owner[1:]).astype(np.intp)
    rows = (owner[1:][cols] - 1).astype(np.intp)
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def linear_assignment(
    cost: npt.ArrayLike, thresh: float
) -> tuple[npt.NDArray[np.int64], IndexArray, IndexArray]:
    """Optimal partial assignment with a cost limit (the ``lap.lapjv(cost_limit=...)`` model).

    A pair may be matched only when its cost is ``<= thresh``; leaving a row and a column
    unmatched costs ``thresh``. The matching minimises ``sum(cost[i, j] - thresh)`` over
    the matched pairs, i.e. it is the optimum of the extended problem that lapjv solves
    with ``extend_cost=True, cost_limit=thresh`` - never a greedy approximation.

    Returns ``(matches (K, 2) int64 of [row, col], unmatched_rows, unmatched_cols)``.
    """
    matrix = _as_cost_matrix(cost)
    n_rows, n_cols = matrix.shape
    if n_rows == 0 or n_cols == 0:
        return (
            np.zeros((0, 2), dtype=np.int64),
            np.arange(n_rows, dtype=np.intp),
            np.arange(n_cols, dtype=np.intp),
        )
    # Pairs above the limit are worth nothing (0 = same as unmatched), so a complete
    # assignment of the clipped matrix is an optimal partial assignment of the original.
    rows, cols = min_cost_assignment(np.minimum(matrix - thresh, 0.0))
    keep = matrix[rows, cols] <= thresh
    rows = rows[keep]
    cols = cols[keep]
    matches = np.stack([rows, cols], axis=1).astype(np.int64)
    row_mask = np.ones(n_rows, dtype=bool)
    row_mask[rows] = False
    col_mask = np.ones(n_cols, dtype=bool)
    col_mask[cols] = False
    return matches, np.flatnonzero(row_mask), np.flatnonzero(col_mask)


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M). Degenerate boxes give 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0.0, None) * np.clip(a[:, 3] - a[:, 1], 0.0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0.0, None) * np.clip(b[:, 3] - b[:, 1], 0.0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0.0)
    return out


def iou_distance(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """``1 - IoU`` cost matrix."""
    return 1.0 - box_iou(boxes_a, boxes_b)


def fuse_score(cost: FloatArray, det_scores: FloatArray) -> FloatArray:
    """ByteTrack's score fusion: ``1 - (1 - iou_cost) * det_score`` per detection column."""
    if cost.size == 0:
        return cost
    return 1.0 - (1.0 - cost) * det_scores[None, :]
