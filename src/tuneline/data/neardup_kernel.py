"""Compiled inner loop of the near-duplicate search (numba): candidates, bound, exact verification.

Same mathematics as the vectorized path in `tuneline.data.neardup` (which documents the proof); this one walks
the inverted lists of the indexed features row by row, so it never materializes the candidate pairs and runs
a few nanoseconds per posting instead of a few hundred.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def search_rows(  # noqa: PLR0913 - flat arrays are what a compiled kernel takes
    start: int,
    stop: int,
    x_indptr: np.ndarray,
    x_indices: np.ndarray,
    x_data: np.ndarray,
    ind_indptr: np.ndarray,
    ind_indices: np.ndarray,
    ind_data: np.ndarray,
    inv_indptr: np.ndarray,
    inv_rows: np.ndarray,
    inv_data: np.ndarray,
    inv_ptr: np.ndarray,
    prefix_norm: np.ndarray,
    indexed_norm: np.ndarray,
    boundary: np.ndarray,
    max_norm: float,
    threshold: float,
    margin: float,
    dense: np.ndarray,
    out_i: np.ndarray,
    out_j: np.ndarray,
    out_s: np.ndarray,
    counters: np.ndarray,
) -> tuple[int, int]:
    """Search rows start..stop-1 (or until the output might overflow); returns (next row, pairs written).

    `inv_ptr[f]` is advanced past rows <= i as i grows, so only pairs j > i are ever touched; it must persist
    between calls. counters[0] += candidates, counters[1] += verified. `dense` must be all zeros (length =
    number of features) and is left all zeros.
    """
    n = x_indptr.shape[0] - 1
    acc = np.zeros(n, dtype=np.float64)
    touched = np.empty(n, dtype=np.int64)
    cap = out_i.shape[0]
    bound = threshold * (1.0 - margin)
    written = 0
    i = start
    while i < stop:
        if written + (n - i) > cap:
            break
        n_touched = 0
        for p in range(ind_indptr[i], ind_indptr[i + 1]):
            f = ind_indices[p]
            w = ind_data[p]
            q = inv_ptr[f]
            end = inv_indptr[f + 1]
            while q < end and inv_rows[q] <= i:
                q += 1
            inv_ptr[f] = q
            for r in range(q, end):
                j = inv_rows[r]
                if acc[j] == 0.0:
                    touched[n_touched] = j
                    n_touched += 1
                acc[j] += w * inv_data[r]
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
                    dense[x_indices[p]] = np.float64(x_data[p])
                scattered = True
            # Ascending feature order, zero products add exactly nothing: bit-identical to sparse X @ X.T.
            s = 0.0
            for p in range(x_indptr[j], x_indptr[j + 1]):
                s += dense[x_indices[p]] * np.float64(x_data[p])
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


@njit(cache=True, nogil=True)
def prefix_split(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rank: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, walk features by global rank and mark those past the prefix (cumulated square < limit).

    Returns (mask of indexed entries in storage order, prefix squared norm per row, boundary rank per row,
    number of indexed entries per row).
    """
    n = indptr.shape[0] - 1
    keep = np.zeros(indices.shape[0], dtype=np.bool_)
    counts = np.zeros(n, dtype=np.int64)
    prefix_sq = np.zeros(n, dtype=np.float64)
    boundary = np.full(n, rank.shape[0], dtype=np.int64)
    for i in range(n):
        a = indptr[i]
        b = indptr[i + 1]
        order = np.argsort(rank[indices[a:b]])
        cum = 0.0
        in_prefix = True
        for k in order:
            p = a + k
            if in_prefix:
                sq = np.float64(data[p]) * np.float64(data[p])
                if cum + sq < limit:
                    cum += sq
                    continue
                in_prefix = False
                boundary[i] = rank[indices[p]]
            keep[p] = True
            counts[i] += 1
        prefix_sq[i] = cum
    return keep, prefix_sq, boundary, counts
