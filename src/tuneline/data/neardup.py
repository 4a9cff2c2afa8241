"""Exact all-pairs TF-IDF cosine search without comparing every pair (prefix filtering, AllPairs/L2AP).

The rule being computed is fixed and simple: rows i < j are near duplicates when the dot product of their
L2-normalized TF-IDF vectors (see `tfidf_vectorizer`) is >= threshold - COSINE_TOLERANCE, the dot product
taken in float64 and summed in ascending feature order. The tolerance (1e-6) absorbs the float32 rounding of
the stored vectors, so that identical texts meet even a threshold of 1.0. `brute_force_pairs` computes
exactly that with a blocked X @ X.T; the search below returns the same pairs (tests and bench/dedup.py check
it) while touching only a tiny fraction of them.

Why the search is exact. Order features globally by document frequency, most frequent first. For a row x let
U(x) be the longest prefix (in that order) with ||U(x)|| < t, and I(x) the remaining, rarest features. If
x·y >= t then x and y share a feature of I(x) ∩ I(y): otherwise every common feature lies in U of the row
whose boundary comes later — say y — and x·y <= ||x||·||U(y)|| < t. So only rows sharing an *indexed*
feature are candidates. The proof holds for any prefix with ||U|| < t, so the prefix is cut at
prefix_scale * t (a little shorter than needed): more candidates, but then a tight bound prunes almost all of
them before the exact dot product. With y the row whose boundary comes later, I(y) lies inside I(x), so
x·y = v + x·U(y) with v = I(x)·I(y), and by Cauchy-Schwarz twice (x restricted to the ranks of I(y) has norm
>= v/||I(y)||) x·y <= v + sqrt(||x||² - (v/||I(y)||)²)·||U(y)||. The prefix cut and the bound carry a small
safety margin so float rounding can only add candidates, never lose one.

Two engines compute it: "compiled" (numba; `tuneline.data.neardup_kernel`) walks inverted lists row by row;
"vectorized" (scipy only, used when numba is missing) forms the candidates by a blocked sparse product.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from tuneline.data.tfidf import MAX_N, char_wb_tfidf, document_frequency
from tuneline.progress import track

try:  # numba is optional: without it the scipy-only engine gives the same pairs, more slowly
    import numba  # noqa: F401

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

log = logging.getLogger(__name__)

# Safety margin on the prefix cut and on the pruning bound. Vectors are stored in float32 (their norms are
# 1 within ~1e-6); the margin is far above any rounding error and far below any similarity anyone sets.
_MARGIN = 1e-6
# Pairs within this distance below the threshold count as reaching it (float32 vectors: |x·x - 1| ~ 1e-7).
COSINE_TOLERANCE = 1e-6
# Prefix cut at prefix_scale * threshold: indexing a bit more than the minimum makes the pruning bound tight.
# Tuned on bench/dedup.py: the compiled engine pays little per candidate, the vectorized one a lot.
_PREFIX_SCALE = {"compiled": 0.95, "vectorized": 0.9}
# Candidate pairs produced per block of rows (bounds the memory of the sparse product).
_BLOCK_WORK = 4_000_000
# Row blocks of the compiled search, handed to its threads in turn (independent of the thread count).
_SEARCH_BLOCKS = 512
# Rows per float64 copy when the largest row norm is taken (bounds that temporary).
_NORM_ROWS = 20_000
# Smallest output buffer of a search thread, in pairs (it is at least the number of rows).
_OUT_MIN = 1 << 16
# Candidate pairs verified per vectorized chunk.
_VERIFY_CHUNK = 50_000


def tfidf_vectorizer(ngram_range: tuple[int, int] = (3, 3)) -> TfidfVectorizer:
    """The one TF-IDF definition every near-duplicate decision uses (dedup, split, validate_splits).

    Character n-grams inside word boundaries (`char_wb`), lowercased, sklearn's smoothed IDF, raw term
    counts, rows L2-normalized, stored as float32 (half the memory; products are taken in float64).
    Character n-grams need no tokenizer, so Chinese and other unspaced scripts work as they are.

    Args:
        ngram_range: smallest and largest n-gram length in characters.
    """
    return TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=tuple(ngram_range),
        lowercase=True,
        norm="l2",
        use_idf=True,
        smooth_idf=True,
        sublinear_tf=False,
        dtype=np.float32,
    )


def tfidf_matrix(
    texts: list[str], ngram_range: tuple[int, int] = (3, 3), release_texts: bool = False
) -> sp.csr_matrix:
    """The rows `tfidf_vectorizer(ngram_range).fit_transform(texts)` gives (CSR, sorted indices).

    For n-grams of up to 3 characters they are built by `tuneline.data.tfidf.char_wb_tfidf` (bit-identical,
    tested). Texts without any n-gram get an all-zero row. With `release_texts` the list is handed over:
    each text is replaced by None once vectorized, so its memory goes while the matrix grows.
    """
    if not texts:
        return sp.csr_matrix((0, 0), dtype=np.float32)
    try:
        if ngram_range[1] <= MAX_N:  # same rows as the sklearn vectorizer, several times faster and leaner
            x = char_wb_tfidf(texts, ngram_range, release_texts=release_texts)
        else:
            x = tfidf_vectorizer(ngram_range).fit_transform(texts)
            if release_texts:
                texts[:] = [None] * len(texts)
    except ValueError:  # "empty vocabulary": no text has a single n-gram, so nothing can be similar
        return sp.csr_matrix((len(texts), 0), dtype=np.float32)
    x = sp.csr_matrix(x)
    x.sort_indices()  # the summation order of every dot product below is ascending feature index
    return x


@dataclass
class SearchResult:
    """Near-duplicate pairs (i < j, sorted) with their cosine, plus counters of the search."""

    rows: np.ndarray
    cols: np.ndarray
    sims: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def pairs(self) -> set[tuple[int, int]]:
        return {(int(i), int(j)) for i, j in zip(self.rows.tolist(), self.cols.tolist(), strict=True)}


def exact_dots(x: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 dot products of row pairs, summed in ascending feature order (bit-identical to X @ X.T)."""
    out = np.empty(len(rows), dtype=np.float64)
    for lo in range(0, len(rows), _VERIFY_CHUNK):
        hi = min(lo + _VERIFY_CHUNK, len(rows))
        a = x[rows[lo:hi]].astype(np.float64)
        b = x[cols[lo:hi]].astype(np.float64)
        prod = sp.csr_matrix(a.multiply(b))
        # csr @ vector sums each row sequentially, in the same order as sparse matmul does.
        out[lo:hi] = prod @ np.ones(prod.shape[1], dtype=np.float64)
    return out


def _ranks(x: sp.csr_matrix, threshold: float, prefix_scale: float) -> tuple[np.ndarray, float, float]:
    """Global feature ranks (most frequent first), the prefix limit on a squared norm, and the largest norm.

    Ranks are int32 where the number of features fits (one value per feature: 128 MB at 32 M features).
    """
    n, m = x.shape
    df = document_frequency(x).astype(np.int32 if n < 2**31 else np.int64)
    df *= -1
    order = np.argsort(df, kind="stable")  # most frequent first, ties by feature index: deterministic
    del df
    rank = np.empty(m, dtype=np.int32 if m < 2**31 else np.int64)
    rank[order] = np.arange(m, dtype=rank.dtype)
    del order
    step = _NORM_ROWS
    max_norm = max((_max_row_norm(x[lo : lo + step]) for lo in range(0, n, step)), default=1.0)
    # ||U(x)||·||y|| < t must hold for every y: cut where the prefix norm would reach t / max||y||.
    # A shorter prefix (prefix_scale < 1) indexes more features: more candidates, but a much tighter bound.
    limit = (prefix_scale * threshold * (1.0 - _MARGIN) / max(max_norm, 1e-30)) ** 2
    return rank, limit, max_norm


def _prefix_split(
    x: sp.csr_matrix, threshold: float, prefix_scale: float
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, float]:
    """Split each row into its prefix U (frequent features) and indexed part I (rarest features).

    Returns the indexed part as a CSR matrix (float64), each row's prefix norm ||U(x)||, each row's boundary
    (the global rank of its first indexed feature; n_features for an all-zero row) and the largest row norm.
    """
    n, m = x.shape
    rank, limit, max_norm = _ranks(x, threshold, prefix_scale)
    keep, prefix_sq, boundary = _prefix_split_numpy(x, rank, limit)
    counts = np.add.reduceat(np.append(keep, False).astype(np.int64), x.indptr[:-1]) if n else np.zeros(0)
    counts[np.diff(x.indptr) == 0] = 0
    indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    # float64: the partial dot products feed an upper bound that must not round below the truth.
    indexed = sp.csr_matrix((x.data[keep].astype(np.float64), x.indices[keep], indptr), shape=(n, m))
    return indexed, np.sqrt(prefix_sq), boundary, max_norm


def _max_row_norm(rows: sp.csr_matrix) -> float:
    """Largest L2 norm among `rows`, in float64 (called on slices: no full-size temporary)."""
    sq = rows.astype(np.float64)
    sq.data **= 2
    return float(np.sqrt(np.asarray(sq.sum(axis=1)).max())) if rows.shape[0] else 0.0


def _prefix_split_numpy(
    x: sp.csr_matrix, rank: np.ndarray, limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`neardup_kernel.prefix_split` without numba: the same marks, row chunks of vectorized numpy."""
    n, m = x.shape
    keep = np.zeros(x.nnz, dtype=bool)
    prefix_sq = np.zeros(n, dtype=np.float64)
    boundary = np.full(n, m, dtype=np.int64)
    step = 20_000
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        start, stop = x.indptr[lo], x.indptr[hi]
        counts = np.diff(x.indptr[lo : hi + 1])
        local = np.repeat(np.arange(hi - lo, dtype=np.int64), counts)
        frank = rank[x.indices[start:stop]]
        perm = np.argsort(local * m + frank, kind="stable")  # by row, then by global rank
        local, frank = local[perm], frank[perm]
        vals = x.data[start:stop][perm].astype(np.float64)
        sq = vals * vals
        row_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
        cum = np.cumsum(sq)
        before = np.zeros(hi - lo)  # the running sum before each row starts
        filled = counts > 0
        before[filled] = cum[row_start[filled]] - sq[row_start[filled]]
        in_prefix = (cum - np.repeat(before, counts)) < limit
        prefix_sq[lo:hi] = np.bincount(local[in_prefix], weights=sq[in_prefix], minlength=hi - lo)
        idx = ~in_prefix
        keep[start + perm[idx]] = True
        r_idx = local[idx]
        first = np.ones(len(r_idx), dtype=bool)
        first[1:] = r_idx[1:] != r_idx[:-1]
        boundary[lo + r_idx[first]] = frank[idx][first]
    return keep, prefix_sq, boundary


def _blocks(work: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose summed work stays under `budget` (a heavy row gets its own block)."""
    out, lo, acc = [], 0, 0
    for i, w in enumerate(work.tolist()):
        if acc and acc + w > budget:
            out.append((lo, i))
            lo, acc = i, 0
        acc += w
    if lo < len(work):
        out.append((lo, len(work)))
    return out


def search(
    texts: list[str],
    threshold: float = 0.95,
    ngram_range: tuple[int, int] = (3, 3),
    engine: str = "auto",
    threads: int | None = None,
    release_texts: bool = False,
) -> SearchResult:
    """All pairs i < j with TF-IDF cosine >= threshold, exactly, without an O(N²) comparison.

    Args:
        texts: the documents.
        threshold: cosine at or above which a pair is reported (0 < threshold <= 1).
        ngram_range: character n-gram sizes of `tfidf_vectorizer`.
        engine: "auto", "compiled" or "vectorized" (see `search_matrix`); all give the same pairs.
        threads: threads of the compiled search (see `search_threads`); the result does not depend on it.
        release_texts: the caller hands `texts` over: each is replaced by None once vectorized (less memory).

    Returns:
        SearchResult with the pairs sorted by (i, j), their float64 cosine, and search counters.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    empty = np.zeros(0, dtype=np.int64)
    if len(texts) < 2:
        return SearchResult(empty, empty, np.zeros(0), {"documents": len(texts)})
    x = tfidf_matrix(texts, ngram_range, release_texts=release_texts)
    return search_matrix(x, threshold, engine=engine, threads=threads)


def search_threads(threads: int | None = None) -> int:
    """How many threads the compiled search uses: `threads` when > 0, else OMP_NUM_THREADS, else all cores."""
    if threads is not None and threads > 0:
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def search_matrix(
    x: sp.csr_matrix,
    threshold: float,
    prefix_scale: float | None = None,
    engine: str = "auto",
    threads: int | None = None,
) -> SearchResult:
    """`search` on precomputed TF-IDF rows (CSR with sorted indices, as `tfidf_matrix` returns).

    Args:
        x: TF-IDF rows.
        threshold: cosine at or above which a pair is reported.
        prefix_scale: cut the prefix at prefix_scale * threshold (None: the engine's tuned default).
        engine: "compiled" (numba), "vectorized" (scipy only) or "auto" (compiled when numba is installed).
        threads: threads of the compiled engine (`search_threads`); pairs, scores and order do not
            depend on it.
    """
    if engine == "auto":
        engine = "compiled" if HAVE_NUMBA else "vectorized"
    if engine not in ("compiled", "vectorized"):
        raise ValueError(f"engine must be auto, compiled or vectorized, got {engine!r}")
    if prefix_scale is None:
        prefix_scale = _PREFIX_SCALE[engine]
    threshold = _cut(threshold)
    n = x.shape[0]
    stats = {"documents": n, "features": x.shape[1], "candidates": 0, "verified": 0, "pairs": 0}
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or x.nnz == 0:
        return SearchResult(empty, empty, np.zeros(0), stats)
    if engine == "compiled":
        rows, cols, sims = _search_compiled(x, threshold, prefix_scale, stats, search_threads(threads))
    else:
        indexed, prefix_norm, boundary, max_norm = _prefix_split(x, threshold, prefix_scale)
        indexed_norm = np.sqrt(np.asarray(indexed.multiply(indexed).sum(axis=1)).ravel())
        stats["indexed_entries"] = int(indexed.nnz)
        inverted = sp.csr_matrix(indexed.T)  # feature -> rows holding it in their indexed part, ascending
        inverted.sort_indices()
        split = _Split(indexed, inverted, prefix_norm, indexed_norm, boundary, max_norm)
        rows, cols, sims = _search_vectorized(x, split, threshold, stats)
    order = np.lexsort((cols, rows))
    stats["pairs"] = len(rows)
    log.info("near-dup search (%s): %s", engine, stats)
    return SearchResult(rows[order].astype(np.int64), cols[order].astype(np.int64), sims[order], stats)


@dataclass
class _Split:
    indexed: sp.csr_matrix
    inverted: sp.csr_matrix
    prefix_norm: np.ndarray
    indexed_norm: np.ndarray
    boundary: np.ndarray
    max_norm: float


class _Workspace:
    """One thread's scratch arrays for `search_rows` (all zeros between rows) and its output buffers."""

    def __init__(self, n: int, m: int) -> None:
        index = np.int32 if n < 2**31 else np.int64
        self.acc = np.zeros(n, dtype=np.float64)
        self.touched = np.empty(n, dtype=index)
        self.dense = np.zeros(m, dtype=np.float32)
        cap = max(n, _OUT_MIN)  # >= n: a call always completes at least one row
        self.out_i = np.empty(cap, dtype=index)
        self.out_j = np.empty(cap, dtype=index)
        self.out_s = np.empty(cap, dtype=np.float64)
        self.counters = np.zeros(2, dtype=np.int64)


def _search_compiled(
    x: sp.csr_matrix, threshold: float, prefix_scale: float, stats: dict[str, int], threads: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The compiled engine: inverted lists of the indexed entries, then blocks of rows on `threads` threads.

    Each block's pairs depend only on its rows, and blocks are gathered in row order, so the result is the
    same for any number of threads (the kernel releases the GIL: threads run in parallel).
    """
    from tuneline.data.neardup_kernel import (  # lazy: numba is optional; used only when HAVE_NUMBA
        fill_inverted,
        prefix_bounds,
        search_rows,
    )

    n, m = x.shape
    rank, limit, max_norm = _ranks(x, threshold, prefix_scale)
    prefix_sq, indexed_sq, boundary, feature_rows = prefix_bounds(x.indptr, x.indices, x.data, rank, limit)
    inv_indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(feature_rows, out=inv_indptr[1:])
    del feature_rows
    inv_rows = np.empty(inv_indptr[-1], dtype=np.int32 if n < 2**31 else np.int64)
    inv_data = np.empty(inv_indptr[-1], dtype=np.float32)  # the stored values; products are taken in float64
    fill_inverted(x.indptr, x.indices, x.data, rank, boundary, inv_indptr, inv_rows, inv_data)
    prefix_norm, indexed_norm = np.sqrt(prefix_sq), np.sqrt(indexed_sq)
    del prefix_sq, indexed_sq
    stats["indexed_entries"] = int(inv_indptr[-1])

    local = threading.local()
    spaces: list[_Workspace] = []

    def run_block(lo: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        ws = getattr(local, "ws", None)
        if ws is None:
            ws = local.ws = _Workspace(n, m)
            spaces.append(ws)
        parts, i, hi = [], lo, min(lo + step, n)
        while i < hi:
            # The kernel stops early when its output buffers might fill; collect and go on from there.
            nxt, written = search_rows(
                i, hi, x.indptr, x.indices, x.data, rank, boundary, inv_indptr, inv_rows, inv_data,
                prefix_norm, indexed_norm, max_norm, threshold, _MARGIN, ws.acc, ws.touched, ws.dense,
                ws.out_i, ws.out_j, ws.out_s, ws.counters,
            )
            parts.append((ws.out_i[:written].copy(), ws.out_j[:written].copy(), ws.out_s[:written].copy()))
            i = nxt
        return parts

    # Many more blocks than threads: early rows scan longer posting lists, so blocks are handed out in turn.
    step = max(1, -(-n // _SEARCH_BLOCKS))
    starts = range(0, n, step)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if threads == 1:
        for parts in track(map(run_block, starts), "dedup: near-duplicate search", total=len(starts)):
            found.extend(parts)
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="neardup") as pool:
            blocks = pool.map(run_block, starts)  # results come back in block order
            for parts in track(blocks, "dedup: near-duplicate search", total=len(starts)):
                found.extend(parts)
    stats["candidates"] = int(sum(int(ws.counters[0]) for ws in spaces))
    stats["verified"] = int(sum(int(ws.counters[1]) for ws in spaces))
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
    return tuple(np.concatenate(part) for part in zip(*found, strict=True))


def _search_vectorized(
    x: sp.csr_matrix, sp_: _Split, threshold: float, stats: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indexed, inverted = sp_.indexed, sp_.inverted
    # Upper bound on the candidates each row produces: how many rows hold each of its indexed features.
    feature_df = np.diff(inverted.indptr)
    work = np.add.reduceat(np.append(feature_df[indexed.indices], 0), indexed.indptr[:-1])
    work[np.diff(indexed.indptr) == 0] = 0
    bound = threshold * (1.0 - _MARGIN)
    empty = np.zeros(0, dtype=np.int64)
    found_r, found_c, found_s = [empty], [empty], [np.zeros(0)]
    for lo, hi in track(_blocks(work, _BLOCK_WORK), "dedup: near-duplicate search"):
        partial = sp.coo_matrix(indexed[lo:hi] @ inverted)  # v = I(x)·I(y) for every pair sharing a feature
        r = partial.row.astype(np.int64) + lo
        c = partial.col.astype(np.int64)
        upper = c > r
        r, c, v = r[upper], c[upper], partial.data[upper]
        stats["candidates"] += len(r)
        # y = the row whose boundary comes later: I(y) lies inside I(x), so x·y = v + x·U(y), and
        # x·U(y) <= ||x restricted to ranks before y's boundary|| * ||U(y)||
        # <= sqrt(max||x||² - (v/||I(y)||)²) * ||U(y)|| (Cauchy-Schwarz twice).
        # Rounding only loosens it: v/||I(y)|| is shrunk by the margin.
        later = np.where(sp_.boundary[r] >= sp_.boundary[c], r, c)
        seen = v / sp_.indexed_norm[later] * (1.0 - _MARGIN)
        rest = np.sqrt(np.maximum(sp_.max_norm**2 - seen**2, 0.0))
        ok = (v + rest * sp_.prefix_norm[later]) * (1.0 + _MARGIN) >= bound
        r, c = r[ok], c[ok]
        if not len(r):
            continue
        stats["verified"] += len(r)
        sims = exact_dots(x, r, c)
        hit = sims >= threshold
        found_r.append(r[hit])
        found_c.append(c[hit])
        found_s.append(sims[hit])
    return np.concatenate(found_r), np.concatenate(found_c), np.concatenate(found_s)


def _cut(threshold: float) -> float:
    """The value a computed cosine is compared with (kept positive: the search's proof needs t > 0)."""
    return max(threshold - COSINE_TOLERANCE, threshold / 2)


def brute_force_matrix(x: sp.csr_matrix, threshold: float, block: int = 2000) -> SearchResult:
    """The definition, computed the slow way: blocked X @ X.T in float64 (O(N²); for tests and benchmarks)."""
    threshold = _cut(threshold)
    n = x.shape[0]
    x64 = x.astype(np.float64)
    xt = sp.csr_matrix(x64.T)
    rows, cols, sims = [], [], []
    for lo in range(0, n, block):
        prod = sp.coo_matrix(x64[lo : lo + block] @ xt)
        r = prod.row.astype(np.int64) + lo
        c = prod.col.astype(np.int64)
        keep = (c > r) & (prod.data >= threshold)
        rows.append(r[keep])
        cols.append(c[keep])
        sims.append(prod.data[keep])
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    s = np.concatenate(sims) if sims else np.zeros(0)
    order = np.lexsort((c, r))
    return SearchResult(r[order], c[order], s[order], {"documents": n, "pairs": len(r)})
