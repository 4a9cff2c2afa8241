"""A fast, lean builder of the same TF-IDF rows as `TfidfVectorizer(analyzer="char_wb", ngram_range<=3)`.

sklearn's vectorizer counts n-grams in a Python loop and keeps a dict of every distinct n-gram string: about
1 µs per n-gram and, for Chinese (millions of distinct 3-grams), gigabytes of vocabulary. Here each n-gram of
at most 3 characters becomes one int64 — its code points + 1 in 21-bit fields, zero-padded — whose numeric
order is exactly Python's string order, so sorting the integers reproduces sklearn's sorted vocabulary and
column numbering. The counts are then weighted as sklearn's `TfidfTransformer` weights them (smoothed IDF,
L2 rows; the same float32 operations, done in place), as `TfidfVectorizer.fit_transform` does.

char_wb n-grams, as sklearn defines them: lowercase the text, split it on whitespace, pad each word with one
space on both sides, and take every window of n characters inside a padded word. A padded word has at least 3
characters, so for n <= 3 there is no short-word special case.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.preprocessing import normalize

MAX_N = 3  # three 21-bit code point fields fit in an int64
_SPACE = ord(" ")
_CHUNK = 20_000
_IDF_SLICE = 10_000_000  # stored n-grams weighted per slice (bounds the temporary of the IDF product)


def _chunk_grams(texts: list[str], ngram_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(document index within the chunk, n-gram key) for every n-gram occurrence of `texts`."""
    padded = []
    for text in texts:
        words = text.lower().split()
        # "  " joins words and separates documents: no valid window contains two adjacent padding spaces.
        padded.append(" " + "  ".join(words) + " " if words else "")
    lengths = np.fromiter((len(p) + 1 for p in padded), dtype=np.int64, count=len(padded))
    raw = " ".join(padded).encode("utf-32-le", "surrogatepass")
    codes = np.frombuffer(raw, dtype=np.uint32).astype(np.int64)
    doc_of = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)[: len(codes)]
    space = codes == _SPACE
    double = np.zeros(len(codes), dtype=bool)  # position k starts a pair of spaces (k, k+1)
    double[:-1] = space[:-1] & space[1:]
    docs, keys = [], []
    for n in range(ngram_range[0], ngram_range[1] + 1):
        m = len(codes) - n + 1
        if m <= 0:
            continue
        valid = np.ones(m, dtype=bool)
        if n == 1:
            # A space unigram counts only as a word's padding, i.e. next to a non-space (not a separator).
            left = np.concatenate(([True], space[:-1]))
            right = np.concatenate((space[1:], [True]))
            valid &= ~(space & left & right)
        for k in range(n - 1):
            valid &= ~double[k : k + m]
        key = np.zeros(m, dtype=np.int64)
        for k in range(MAX_N):
            field = codes[k : k + m] + 1 if k < n else 0
            key |= np.left_shift(field, 21 * (MAX_N - 1 - k))
        docs.append(doc_of[:m][valid])
        keys.append(key[valid])
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(docs), np.concatenate(keys)


def _sorted_unique(values: np.ndarray, kind: str = "quicksort") -> np.ndarray:
    # Sort-based: numpy's hash-based np.unique is several times slower on millions of int64.
    # kind="stable" (timsort) merges already sorted runs in linear time.
    values = np.sort(values, kind=kind)
    keep = np.ones(len(values), dtype=bool)
    keep[1:] = values[1:] != values[:-1]
    return values[keep]


def char_wb_tfidf(
    texts: list[str | None], ngram_range: tuple[int, int] = (3, 3), release_texts: bool = False
) -> sp.csr_matrix:
    """TF-IDF rows equal to `TfidfVectorizer(analyzer="char_wb", ngram_range, dtype=float32).fit_transform`.

    Two passes over chunks of texts, so that no chunk's counts coexist with the final matrix: the first
    collects the vocabulary (and how many n-gram occurrences each chunk has, an upper bound of its stored
    values); the second recomputes each chunk's counts and writes them, with final column numbers, straight
    into the preallocated matrix, which is then trimmed in place to the stored values.

    Args:
        texts: the documents.
        ngram_range: smallest and largest n-gram length in characters (at most 3).
        release_texts: replace each text by None once its row is written (the caller no longer needs them):
            the texts' memory is freed while the matrix grows instead of after it is complete.

    Raises:
        ValueError: when max n > 3 (use sklearn), or "empty vocabulary" like sklearn when no text has n-grams.
    """
    if not 1 <= ngram_range[0] <= ngram_range[1] <= MAX_N:
        raise ValueError(f"char_wb_tfidf handles n-grams of 1..{MAX_N} characters, got {ngram_range}")
    n_docs = len(texts)
    vocab, capacity = _vocabulary(texts, ngram_range)
    if len(vocab) == 0:
        raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
    if len(vocab) > np.iinfo(np.int32).max:  # pragma: no cover - 2^31 distinct n-grams
        raise ValueError("more than 2^31 distinct n-grams: int32 column numbers do not fit")
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    indices = np.empty(capacity, dtype=np.int32)
    data = np.empty(capacity, dtype=np.float32)
    offset = 0
    for lo in range(0, n_docs, _CHUNK):
        hi = min(lo + _CHUNK, n_docs)
        ptr, distinct, local, counts = _chunk_counts(texts[lo:hi], ngram_range)
        if release_texts:
            texts[lo:hi] = [None] * (hi - lo)
        indptr[lo + 1 : hi + 1] = ptr[1:] + offset
        indices[offset : offset + len(local)] = np.searchsorted(vocab, distinct).astype(np.int32)[local]
        data[offset : offset + len(local)] = counts
        offset += len(local)
        del ptr, distinct, local, counts
    # Occurrences >= distinct (row, n-gram) pairs: give back the unused tail (realloc shrinks in place).
    indices.resize(offset, refcheck=False)
    data.resize(offset, refcheck=False)
    counts_matrix = sp.csr_matrix((data, indices, indptr), shape=(n_docs, len(vocab)), dtype=np.float32)
    return _weight_in_place(counts_matrix)


def _vocabulary(texts: list[str | None], ngram_range: tuple[int, int]) -> tuple[np.ndarray, int]:
    """First pass: the sorted distinct n-gram keys of all texts, and the number of n-gram occurrences."""
    vocab = np.zeros(0, dtype=np.int64)
    pending: list[np.ndarray] = []
    pending_size = occurrences = 0
    for lo in range(0, len(texts), _CHUNK):
        _, keys = _chunk_grams(texts[lo : lo + _CHUNK], ngram_range)
        occurrences += len(keys)
        pending.append(_sorted_unique(keys))
        pending_size += len(pending[-1])
        del keys
        # Merge when the pending keys outgrow the vocabulary so far: each key is merged O(log chunks) times
        # and the pending lists never hold much more than the vocabulary itself.
        if pending_size > max(len(vocab), 4 * _CHUNK):
            vocab = _sorted_unique(np.concatenate([vocab, *pending]), kind="stable")
            pending, pending_size = [], 0
    if pending:
        vocab = _sorted_unique(np.concatenate([vocab, *pending]), kind="stable")
    return vocab, occurrences


def _chunk_counts(
    texts: list[str | None], ngram_range: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Second pass on one chunk: (row pointers, distinct keys, each stored value's key number, its count).

    Each row's values come in key order, i.e. in final column order.
    """
    docs, keys = _chunk_grams(texts, ngram_range)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    del keys
    first = np.ones(len(sorted_keys), dtype=bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    distinct = sorted_keys[first]
    del sorted_keys
    local = np.empty(len(order), dtype=np.int64)
    local[order] = np.cumsum(first) - 1
    del order, first
    width = max(len(distinct), 1)
    # One int64 sort of (document, local id) gives each row's distinct n-grams in vocabulary order.
    pair = np.sort(docs * width + local)
    del docs, local
    new = np.ones(len(pair), dtype=bool)
    new[1:] = pair[1:] != pair[:-1]
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(pair))).astype(np.float32)
    pair = pair[starts]
    indptr = np.searchsorted(pair // width, np.arange(len(texts) + 1))
    return indptr, distinct, (pair % width).astype(np.int32), counts


def document_frequency(x: sp.csr_matrix) -> np.ndarray:
    """Rows holding each column (int64), counted in slices of the stored values.

    `np.bincount(x.indices)` first widens the int32 indices to int64: a temporary as large as the whole
    matrix (4 GB at 500 M stored n-grams), which was the peak of the whole near-duplicate search.
    """
    df = np.zeros(x.shape[1], dtype=np.int64)
    for lo in range(0, x.nnz, _IDF_SLICE):
        df += np.bincount(x.indices[lo : lo + _IDF_SLICE], minlength=x.shape[1])
    return df


def _weight_in_place(x: sp.csr_matrix) -> sp.csr_matrix:
    """What `TfidfTransformer(norm="l2", smooth_idf=True).fit(x).transform(x, copy=False)` does, in place.

    Same float32 operations in the same order (so the same bits), but the IDF is applied in slices: sklearn's
    `x.data *= idf[x.indices]` builds a temporary as large as `x.data` (2 GB at 500 M stored n-grams).
    """
    df = document_frequency(x).astype(np.float32)
    df += 1.0  # smooth_idf: as if one more document held every n-gram
    idf = np.full_like(df, fill_value=x.shape[0] + 1, dtype=np.float32)
    idf /= df
    np.log(idf, out=idf)
    idf += 1.0
    for lo in range(0, x.nnz, _IDF_SLICE):
        x.data[lo : lo + _IDF_SLICE] *= idf[x.indices[lo : lo + _IDF_SLICE]]
    return normalize(x, norm="l2", copy=False)
