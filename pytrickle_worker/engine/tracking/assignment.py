"""Optimal linear assignment (Hungarian, shortest augmenting path) and vectorised IoU.

numpy only. The solver is the O(n^2 m) potentials formulation (Kuhn-Munkres with
Dijkstra-like column scans, as in Jonker-Volgenant): plain Python for small matrices,
with the column scan vectorised for larger ones. :func:`linear_assignment` first splits
the admissible pairs into independent connected components, so a tracker's sparse
cost matrices (each detection overlaps a few tracks) only ever solve tiny problems.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "box_iou",
    "fuse_score",
    "iou_distance",
    "linear_assignment",
    "min_cost_assignment",
    "overlapping_pairs",
    "pair_iou",
    "sparse_linear_assignment",
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
    return _solve(_as_cost_matrix(cost))


def _solve(matrix: FloatArray) -> tuple[IndexArray, IndexArray]:
    """:func:`min_cost_assignment` of an already validated matrix."""
    n_rows, n_cols = matrix.shape
    if n_rows == 0 or n_cols == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty.copy()
    transposed = n_rows > n_cols
    c = matrix.T if transposed else matrix
    if c.size <= _SMALL_PROBLEM:
        owner = np.asarray(_owners_scalar(c.tolist()), dtype=np.intp)
    else:
        owner = _owners_vectorised(c)
    cols = np.flatnonzero(owner[1:]).astype(np.intp)
    rows = (owner[1:][cols] - 1).astype(np.intp)
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


# Up to this many entries (about 64 x 64) the plain-Python solver beats the vectorised
# one (numpy's per-call overhead dominates short scans; they break even near 100 x 100).
# Both run the same algorithm with the same floating-point operations and tie-breaking,
# so they return identical assignments.
_SMALL_PROBLEM = 4096


def _owners_vectorised(c: FloatArray) -> IndexArray:
    """Hungarian solve of ``c`` (n <= m); ``owner[j]``: 1-based row on column j (1-based)."""
    n, m = c.shape
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
    return owner


def _owners_scalar(c: list[list[float]]) -> list[int]:
    """:func:`_owners_vectorised` in plain Python, for small matrices (n <= m)."""
    n, m = len(c), len(c[0])
    inf = math.inf
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    owner = [0] * (m + 1)
    way = [0] * (m + 1)
    cols = range(1, m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = [inf] * (m + 1)  # index 0 (the virtual column) is always used
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0 = owner[j0]
            row = c[i0 - 1]
            u_i0 = u[i0]
            delta = inf
            j1 = 0
            for j in cols:
                if not used[j]:
                    reduced = row[j - 1] - u_i0 - v[j]
                    if reduced < minv[j]:
                        minv[j] = reduced
                        way[j] = j0
                    if minv[j] < delta or j1 == 0:  # the first minimum, as np.argmin
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0 != 0:  # augment along the alternating path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return owner


def _components(n_rows: int, n_cols: int, rows: IndexArray, cols: IndexArray) -> IndexArray:
    """Connected components of a bipartite graph given by its edges ``(rows[k], cols[k])``.

    Nodes are the rows ``0..n_rows-1`` followed by the columns ``n_rows..n_rows+n_cols-1``.
    Returns each node's label: the smallest node of its component. Vectorised union-find
    (hook every root onto the smallest root it touches, then pointer-jump until flat);
    each round at least halves the number of roots per component.
    """
    parent = np.arange(n_rows + n_cols, dtype=np.intp)
    a = rows
    b = cols + n_rows
    while True:
        root_a = parent[a]
        root_b = parent[b]
        differ = root_a != root_b
        if not differ.any():
            return parent
        root_a = root_a[differ]
        root_b = root_b[differ]
        a = a[differ]  # edges already inside one component stay there
        b = b[differ]
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def linear_assignment(
    cost: npt.ArrayLike, thresh: float
) -> tuple[npt.NDArray[np.int64], IndexArray, IndexArray]:
    """Optimal partial assignment with a cost limit (the ``lap.lapjv(cost_limit=...)`` model).

    A pair may be matched only when its cost is ``< thresh``; leaving a row and a column
    unmatched costs ``thresh`` (so a pair at exactly ``thresh`` gains nothing and is left
    unmatched). The matching minimises ``sum(cost[i, j] - thresh)`` over the matched
    pairs, i.e. it is the optimum of the extended problem that lapjv solves with
    ``extend_cost=True, cost_limit=thresh`` - never a greedy approximation.

    Solved by :func:`sparse_linear_assignment` on the admissible pairs.

    Returns ``(matches (K, 2) int64 of [row, col] sorted by row, unmatched_rows,
    unmatched_cols)``.
    """
    matrix = _as_cost_matrix(cost)
    edge_rows, edge_cols = np.nonzero(matrix < thresh)  # row-major order
    return sparse_linear_assignment(
        matrix.shape, edge_rows, edge_cols, matrix[edge_rows, edge_cols], thresh
    )


def sparse_linear_assignment(
    shape: tuple[int, int],
    rows: IndexArray,
    cols: IndexArray,
    costs: FloatArray,
    thresh: float,
) -> tuple[npt.NDArray[np.int64], IndexArray, IndexArray]:
    """:func:`linear_assignment` of a ``shape`` matrix given only its admissible pairs.

    ``(rows[k], cols[k])``, distinct and in any order, with cost ``costs[k] < thresh``;
    every other entry counts as ``>= thresh``. Same result as the dense call.

    The bipartite graph of admissible pairs is split into connected components, which
    are independent: a component with one row or one column takes its cheapest pair, and
    only larger components go to the exact solver, each on its own sub-matrix (rows and
    columns ascending; entries that are not pairs are 0, as the clipping of the dense
    problem makes them). Ties between equal optima are broken as the solver breaks them
    on that sub-matrix (in a one-row or one-column component: the lowest index).
    This is exactly optimal and fast when most rows touch few columns.
    """
    n_rows, n_cols = shape
    if rows.size == 0:
        return (
            np.zeros((0, 2), dtype=np.int64),
            np.arange(n_rows, dtype=np.intp),
            np.arange(n_cols, dtype=np.intp),
        )
    # Pairs above the limit are worth nothing (0 = same as unmatched), so a complete
    # assignment of the clipped matrix is an optimal partial assignment of the original.
    gain = costs - thresh  # < 0
    matched_rows: list[int] = []
    matched_cols: list[int] = []
    if rows.size <= _FEW_PAIRS:
        rows_list: list[int] = rows.tolist()
        cols_list: list[int] = cols.tolist()
        groups = _group_pairs(n_rows, rows_list, cols_list)
        picked = None
    else:
        label = _components(n_rows, n_cols, rows, cols)
        row_label = label[:n_rows]
        size = n_rows + n_cols
        rows_in = np.bincount(row_label, minlength=size)
        cols_in = np.bincount(label[n_rows:], minlength=size)
        edge_label = row_label[rows]
        star = (rows_in[edge_label] == 1) | (cols_in[edge_label] == 1)
        # One row (or one column): its cheapest pair, ties to the lowest index.
        star_edges = np.flatnonzero(star)
        order = star_edges[
            np.lexsort(
                (
                    cols[star_edges],
                    rows[star_edges],
                    gain[star_edges],
                    edge_label[star_edges],
                )
            )
        ]
        first = np.ones(order.size, dtype=bool)
        first[1:] = edge_label[order[1:]] != edge_label[order[:-1]]
        picked = order[first]
        big_edges = np.flatnonzero(~star)
        rows_list = rows[big_edges].tolist()
        cols_list = cols[big_edges].tolist()
        gain = gain[big_edges]
        groups: dict[int, list[int]] = {}
        for k, lab in enumerate(edge_label[big_edges].tolist()):
            groups.setdefault(lab, []).append(k)
    gain_list: list[float] = gain.tolist()
    for members in groups.values():
        _solve_component(members, rows_list, cols_list, gain_list, matched_rows, matched_cols)

    m_rows = np.asarray(matched_rows, dtype=np.intp)
    m_cols = np.asarray(matched_cols, dtype=np.intp)
    if picked is not None:
        m_rows = np.concatenate([rows[picked], m_rows])
        m_cols = np.concatenate([cols[picked], m_cols])
    order = np.argsort(m_rows, kind="stable")
    m_rows = m_rows[order]
    m_cols = m_cols[order]
    matches = np.stack([m_rows, m_cols], axis=1).astype(np.int64)
    row_mask = np.ones(n_rows, dtype=bool)
    row_mask[m_rows] = False
    col_mask = np.ones(n_cols, dtype=bool)
    col_mask[m_cols] = False
    return matches, np.flatnonzero(row_mask), np.flatnonzero(col_mask)


# Up to this many pairs, components are found and solved in plain Python (numpy's
# per-call overhead would dominate); above it, with vectorised union-find.
_FEW_PAIRS = 32


def _group_pairs(n_rows: int, rows: list[int], cols: list[int]) -> dict[int, list[int]]:
    """Pair indices grouped by connected component (plain-Python union-find)."""
    parent: dict[int, int] = {}

    def find(node: int) -> int:
        root = node
        while (up := parent.get(root, root)) != root:
            root = up
        while node != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    for r, c in zip(rows, cols, strict=True):
        a = find(r)
        b = find(n_rows + c)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for k, r in enumerate(rows):
        groups.setdefault(find(r), []).append(k)
    return groups


def _solve_component(
    members: list[int],
    rows: list[int],
    cols: list[int],
    gain: list[float],
    out_rows: list[int],
    out_cols: list[int],
) -> None:
    """Optimal matching of one connected component (pairs ``members``), appended to out."""
    if len(members) == 1:
        k = members[0]
        out_rows.append(rows[k])
        out_cols.append(cols[k])
        return
    sub_rows = sorted({rows[k] for k in members})
    sub_cols = sorted({cols[k] for k in members})
    n, m = len(sub_rows), len(sub_cols)
    if n == 1 or m == 1:  # the cheapest pair, ties to the lowest index (as the solver)
        k = min(members, key=lambda k: (gain[k], rows[k], cols[k]))
        out_rows.append(rows[k])
        out_cols.append(cols[k])
        return
    row_pos = {r: i for i, r in enumerate(sub_rows)}
    col_pos = {c: j for j, c in enumerate(sub_cols)}
    sub = [[0.0] * m for _ in range(n)]
    for k in members:
        sub[row_pos[rows[k]]][col_pos[cols[k]]] = gain[k]
    if n * m > _SMALL_PROBLEM:
        r_idx, c_idx = _solve(np.asarray(sub, dtype=np.float64))
        pairs: list[tuple[int, int]] = list(zip(r_idx.tolist(), c_idx.tolist(), strict=True))
    elif n <= m:
        owner = _owners_scalar(sub)
        pairs = [(owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j]]
    else:
        owner = _owners_scalar([list(column) for column in zip(*sub, strict=True)])
        pairs = [(j - 1, owner[j] - 1) for j in range(1, n + 1) if owner[j]]
    for i, j in pairs:
        if sub[i][j] < 0.0:  # an admissible pair, not a filler of the complete assignment
            out_rows.append(sub_rows[i])
            out_cols.append(sub_cols[j])


def box_iou(boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike) -> FloatArray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M). Degenerate boxes give 0."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    # One 2-D (N, M) array per coordinate: broadcasting over a trailing axis of 2 is
    # several times slower in numpy.
    ax1, ay1, ax2, ay2 = (a[:, k, None] for k in range(4))
    bx1, by1, bx2, by2 = (b[None, :, k] for k in range(4))
    inter_w = np.minimum(ax2, bx2)
    inter_w -= np.maximum(ax1, bx1)
    np.maximum(inter_w, 0.0, out=inter_w)
    inter_h = np.minimum(ay2, by2)
    inter_h -= np.maximum(ay1, by1)
    np.maximum(inter_h, 0.0, out=inter_h)
    inter = inter_w
    inter *= inter_h
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[:, None] + area_b[None, :]
    union -= inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0.0)
    return out


def overlapping_pairs(
    boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike
) -> tuple[IndexArray, IndexArray]:
    """Candidate pairs ``(i, j)`` of xyxy boxes whose x-extents overlap, in no set order.

    A superset of the pairs with a positive :func:`box_iou` (every other pair has IoU
    exactly 0), found by sorting instead of testing all N x M pairs: when ``a[i]`` starts
    (``x1``) no later than ``b[j]``, the extents overlap iff ``b[j]`` starts before
    ``a[i]`` ends, and symmetrically. Each pair is listed once. Boxes must be finite.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    n_a = a.shape[0]
    n_b = b.shape[0]
    if n_a == 0 or n_b == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty.copy()
    order_a = np.argsort(a[:, 0])
    order_b = np.argsort(b[:, 0])
    # a[i] first: the b starting in [a.x1, a.x2); b[j] first: the a starting in (b.x1, b.x2)
    lo_b = np.searchsorted(b[order_b, 0], a[:, 0], side="left")
    hi_b = np.searchsorted(b[order_b, 0], a[:, 2], side="left")
    lo_a = np.searchsorted(a[order_a, 0], b[:, 0], side="right")
    hi_a = np.searchsorted(a[order_a, 0], b[:, 2], side="left")
    # Both range lists index one table: order_b, then order_a (offset n_b).
    starts = np.concatenate([lo_b, lo_a + n_b])
    counts = np.maximum(np.concatenate([hi_b - lo_b, hi_a - lo_a]), 0)
    owner = np.repeat(np.arange(n_a + n_b, dtype=np.intp), counts)
    ends = np.cumsum(counts)
    position = np.arange(owner.size, dtype=np.intp) + np.repeat(starts - ends + counts, counts)
    other = np.concatenate([order_b, order_a])[position]
    a_first = owner < n_a
    return np.where(a_first, owner, other), np.where(a_first, other, owner - n_a)


def pair_iou(
    boxes_a: npt.ArrayLike, boxes_b: npt.ArrayLike, rows: IndexArray, cols: IndexArray
) -> FloatArray:
    """``box_iou(boxes_a, boxes_b)[rows, cols]``, computed for those pairs only."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    pa = a[rows]
    pb = b[cols]
    # The same floating-point operations as box_iou, so the values are identical.
    inter_w = np.minimum(pa[:, 2], pb[:, 2])
    inter_w -= np.maximum(pa[:, 0], pb[:, 0])
    np.maximum(inter_w, 0.0, out=inter_w)
    inter_h = np.minimum(pa[:, 3], pb[:, 3])
    inter_h -= np.maximum(pa[:, 1], pb[:, 1])
    np.maximum(inter_h, 0.0, out=inter_h)
    inter = inter_w
    inter *= inter_h
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    union = area_a[rows] + area_b[cols]
    union -= inter
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
