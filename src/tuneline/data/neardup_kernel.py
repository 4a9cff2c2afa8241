"""Compiled inner loops of the near-duplicate search (numba): prefix split, inverted lists, row search.

Same mathematics as the vectorized path in `tuneline.data.neardup` (which documents the proof); this one walks
the inverted lists of the indexed features row by row, so it never materializes the candidate pairs and runs
a few nanoseconds per posting instead of a few hundred.

Memory: the indexed part of a row is not stored apart from the matrix. Features are ranked globally (most
frequent first) and a row's prefix is the run of its features in rank order before its `boundary`, so an
entry (i, f) is indexed exactly when rank[f] >= boundary[i]. Only the inverted lists (row numbers in int32,
values in float32, as stored in the matrix) are built; every product is still taken in float64.

Rows are independent given the inverted lists: `search_rows` finds where row i's postings past i start by
binary search (no state carried from one row to the next), so row ranges can run on several threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def prefix_bounds(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rank: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, walk features by global rank: the prefix is the longest run with cumulated square < limit.

    Returns (prefix squared norm per row, indexed squared norm per row, boundary rank per row (the rank of
    the first indexed feature; len(rank) when none), number of rows indexing each feature).
    """
    n = indptr.shape[0] - 1
    m = rank.shape[0]
    prefix_sq = np.zeros(n, dtype=np.float64)
    indexed_sq = np.zeros(n, dtype=np.float64)
    boundary = np.full(n, m, dtype=rank.dtype)
    feature_rows = np.zeros(m, dtype=np.int64)
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        order = np.argsort(rank[indices[a:b]])
        cum = 0.0
        for k in order:
            p = a + k
            sq = np.float64(data[p]) * np.float64(data[p])
            if cum + sq >= limit:
                boundary[i] = rank[indices[p]]
                break
            cum += sq
        prefix_sq[i] = cum
        # Storage order (ascending feature), as a sparse row sum adds them.
        s = 0.0
        for p in range(a, b):
            if rank[indices[p]] >= boundary[i]:
                s += np.float64(data[p]) * np.float64(data[p])
                feature_rows[indices[p]] += 1
        indexed_sq[i] = s
    return prefix_sq, indexed_sq, boundary, feature_rows


@njit(cache=True, nogil=True)
def fill_inverted(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    rank: np.ndarray,
    boundary: np.ndarray,
    inv_indptr: np.ndarray,
    inv_rows: np.ndarray,
    inv_data: np.ndarray,
) -> None:
    """Feature -> (rows indexing it, ascending; their stored values): the transpose of the indexed part."""
    n = indptr.shape[0] - 1
    pos = inv_indptr[:-1].copy()
    for i in range(n):
        b = boundary[i]
        for p in range(indptr[i], indptr[i + 1]):
            f = indices[p]
            if rank[f] >= b:
                q = pos[f]
                inv_rows[q] = i
                inv_data[q] = data[p]
                pos[f] = q + 1


@njit(cache=True, nogil=True)
def search_rows(  # noqa: PLR0913 - flat arrays are what a compiled kernel takes
    start: int,
    stop: int,
    x_indptr: np.ndarray,
    x_indices: np.ndarray,
    x_data: np.ndarray,
    rank: np.ndarray,
    boundary: np.ndarray,
    inv_indptr: np.ndarray,
    inv_rows: np.ndarray,
    inv_data: np.ndarray,
    prefix_norm: np.ndarray,
    indexed_norm: np.ndarray,
    max_norm: float,
    threshold: float,
    margin: float,
    acc: np.ndarray,
    touched: np.ndarray,
    dense: np.ndarray,
    out_i: np.ndarray,
    out_j: np.ndarray,
    out_s: np.ndarray,
    counters: np.ndarray,
) -> tuple[int, int]:
    """Search rows start..stop-1 (or until the output might overflow); returns (next row, pairs written).

    Only pairs j > i are touched. counters[0] += candidates, counters[1] += verified. `acc` (float64, one per
    row), `touched` (one per row) and `dense` (one per feature) are a thread's workspace: all zeros on entry,
    left all zeros.

    Long because it is the compiled inner loop, kept whole: its two steps per row (gather the candidates from
    the inverted lists, then bound and verify them) as separate `njit` functions made the whole search 1.11x
    slower, and 1.67x with `inline="always"` (20,000 documents of bench/dedup.py's English corpus, threshold
    0.95, one thread, both kernels alternating in one process on a shared machine; same pairs). A quarter of
    its lines is the parameter list of flat arrays.
    """
    n = x_indptr.shape[0] - 1
    cap = out_i.shape[0]
    bound = threshold * (1.0 - margin)
    written = 0
    i = start
    while i < stop:
        if written + (n - i) > cap:
            break
        n_touched = 0
        b_i = boundary[i]
        for p in range(x_indptr[i], x_indptr[i + 1]):
            f = x_indices[p]
            if rank[f] < b_i:  # in the prefix: not indexed
                continue
            w = np.float64(x_data[p])
            # First posting of a row > i (rows ascending): binary search.
            lo = inv_indptr[f]
            end = inv_indptr[f + 1]
            hi = end
            while lo < hi:
                mid = (lo + hi) >> 1
                if inv_rows[mid] <= i:
                    lo = mid + 1
                else:
                    hi = mid
            for r in range(lo, end):
                j = inv_rows[r]
                if acc[j] == 0.0:
                    touched[n_touched] = j
                    n_touched += 1
                acc[j] += w * np.float64(inv_data[r])
        counters[0] += n_touched
        scattered = False
        for t in range(n_touched):
            j = touched[t]
            v = acc[j]
            acc[j] = 0.0
            later = i if boundary[i] >= boundary[j] else j
            seen = v / indexed_norm[later] * (1.0 - margin)
            rest2 = max_norm * max_norm - seen * seen
            rest = np.sqrt(rest2) if rest2 > 0.0 else 0.0
            if (v + rest * prefix_norm[later]) * (1.0 + margin) < bound:
                continue
            counters[1] += 1
            if not scattered:
                for p in range(x_indptr[i], x_indptr[i + 1]):
                    dense[x_indices[p]] = x_data[p]
                scattered = True
            # Ascending feature order, zero products add exactly nothing: bit-identical to sparse X @ X.T.
            # (`dense` holds the float32 values; widening them to float64 is exact.)
            s = 0.0
            for p in range(x_indptr[j], x_indptr[j + 1]):
                s += np.float64(dense[x_indices[p]]) * np.float64(x_data[p])
            if s >= threshold:
                out_i[written] = i
                out_j[written] = j
                out_s[written] = s
                written += 1
        if scattered:
            for p in range(x_indptr[i], x_indptr[i + 1]):
                dense[x_indices[p]] = 0.0
        i += 1
    return i, written
