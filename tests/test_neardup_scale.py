"""The near-duplicate search at scale: same result on any number of threads, and memory near the matrix.

Faults covered: the search ran on one core only (no thread setting; `test_threads_*`); TF-IDF kept every
chunk's counts while the final matrix was filled, and `np.bincount` widened the int32 column numbers of the
whole matrix to int64 (each a temporary as large as the matrix: 11 GB peak on 1M Chinese documents;
`test_*_peak_memory_*`); texts stayed alive for the whole search (`test_release_texts_*`).
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest
from pydantic import ValidationError

from tuneline.config.dedup import DedupParams
from tuneline.data import neardup, tfidf
from tuneline.data.dedup import dedup_records
from tuneline.records import make_record

compiled_only = pytest.mark.skipif(not neardup.HAVE_NUMBA, reason="the threaded engine needs numba")
CJK = [chr(0x4E00 + k) for k in range(40)]  # few characters: 3-grams repeat, as in real Chinese text


def corpus(n: int, seed: int = 0) -> list[str]:
    """English-like and Chinese-like rows, a third of them edited copies of earlier rows, a few empty."""
    rng = random.Random(seed)
    words = "the a model data answer poem river city night light code list story short clear".split()
    texts: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if texts and roll < 0.33:
            tokens = list(rng.choice(texts))
            for _ in range(rng.randint(0, 3)):
                if tokens:
                    tokens[rng.randrange(len(tokens))] = rng.choice("xyz中文")
            texts.append("".join(tokens))
        elif roll < 0.36:
            texts.append("")
        elif roll < 0.6:
            texts.append("".join(rng.choice(CJK) for _ in range(rng.randint(5, 90))))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))))
    return texts


def matrix_bytes(x) -> int:
    return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes


@compiled_only
@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.95, 1.0])
def test_threads_give_brute_force_pairs_scores_and_order(threshold: float) -> None:
    """1, 2 and 3 threads: exactly brute force's pairs, in its order, with bit-identical cosines."""
    x = neardup.tfidf_matrix(corpus(700))
    truth = neardup.brute_force_matrix(x, threshold)
    assert len(truth.rows) > 50
    stats = []
    for threads in (1, 2, 3):
        found = neardup.search_matrix(x, threshold, engine="compiled", threads=threads)
        assert np.array_equal(found.rows, truth.rows) and np.array_equal(found.cols, truth.cols)
        assert np.array_equal(found.sims, truth.sims)
        stats.append(found.stats)
    assert stats[0] == stats[1] == stats[2]  # candidates and verified counts too


@compiled_only
def test_threads_when_output_buffers_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers of exactly n pairs: many identical rows make every block stop early and resume."""
    monkeypatch.setattr(neardup, "_OUT_MIN", 1)
    texts = ["the very same text"] * 90 + corpus(60)
    x = neardup.tfidf_matrix(texts)
    truth = neardup.brute_force_matrix(x, 1.0)
    for threads in (1, 2):
        found = neardup.search_matrix(x, 1.0, engine="compiled", threads=threads)
        assert np.array_equal(found.rows, truth.rows) and np.array_equal(found.cols, truth.cols)
        assert np.array_equal(found.sims, truth.sims)


def test_search_threads_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert neardup.search_threads(2) == 2  # an explicit value wins
    assert neardup.search_threads(0) == neardup.search_threads(None) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert neardup.search_threads(0) >= 1
    assert DedupParams().threads == 0
    with pytest.raises(ValidationError):
        DedupParams(threads=-1)


def test_two_pass_tfidf_over_many_chunks_is_bit_identical_to_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks: the vocabulary is merged many times and every row lands in the preallocated matrix."""
    monkeypatch.setattr(tfidf, "_CHUNK", 7)
    monkeypatch.setattr(tfidf, "_IDF_SLICE", 101)
    texts = corpus(300, seed=4)
    for ngram_range in [(1, 3), (3, 3)]:
        ref = neardup.tfidf_vectorizer(ngram_range).fit_transform(texts)
        ref.sort_indices()
        handed_over = list(texts)
        for ours in (tfidf.char_wb_tfidf(texts, ngram_range),
                     tfidf.char_wb_tfidf(handed_over, ngram_range, release_texts=True)):
            assert ours.shape == ref.shape and ours.dtype == np.float32
            for part in ("indptr", "indices", "data"):
                assert np.array_equal(getattr(ours, part), getattr(ref, part)), part
        assert handed_over == [None] * len(texts)


def test_tfidf_peak_memory_stays_near_the_final_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak traced memory of building the matrix: 3.7x the matrix before (chunk counts + final matrix +
    an int64 copy of the column numbers), 1.6x now (the matrix, trimmed, plus one chunk's work)."""
    monkeypatch.setattr(tfidf, "_CHUNK", 200)
    monkeypatch.setattr(tfidf, "_IDF_SLICE", 50_000)
    rng = random.Random(0)
    texts = ["".join(rng.choice(CJK) for _ in range(rng.randint(150, 250))) for _ in range(4000)]
    tracemalloc.start()
    try:
        x = tfidf.char_wb_tfidf(texts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.0 * matrix_bytes(x)


@compiled_only
def test_search_peak_memory_is_a_fraction_of_the_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's own structures (ranks, inverted lists, workspaces) next to an existing matrix.

    Before: an int64 copy of every column number (1x the matrix), the indexed part copied in float64 and
    its transpose (12 bytes per indexed value each), int64 per-feature arrays.
    """
    monkeypatch.setattr(tfidf, "_IDF_SLICE", 50_000)
    monkeypatch.setattr(neardup, "_NORM_ROWS", 200)
    monkeypatch.setattr(neardup, "_OUT_MIN", 1)
    rng = random.Random(1)
    texts = ["".join(rng.choice(CJK) for _ in range(rng.randint(150, 250))) for _ in range(4000)]
    x = neardup.tfidf_matrix(texts)
    neardup.search_matrix(x[:50], 0.95, engine="compiled")  # compile outside the measurement
    tracemalloc.start()
    try:
        neardup.search_matrix(x, 0.95, engine="compiled", threads=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.8 * matrix_bytes(x)  # 0.57 now; the int64 copy of the column numbers alone was 1.0


@pytest.mark.parametrize("engine", ["vectorized"] + (["compiled"] if neardup.HAVE_NUMBA else []))
def test_release_texts_frees_them_and_changes_nothing(engine: str) -> None:
    texts = corpus(200, seed=2)
    kept = neardup.search(texts, 0.9, engine=engine)
    handed_over = list(texts)
    released = neardup.search(handed_over, 0.9, engine=engine, threads=2, release_texts=True)
    assert handed_over == [None] * len(texts)
    assert np.array_equal(kept.rows, released.rows) and np.array_equal(kept.cols, released.cols)
    assert np.array_equal(kept.sims, released.sims)
    longer = list(texts)  # n-grams beyond 3 characters: sklearn's vectorizer, released after it
    assert neardup.search(longer, 0.9, (2, 4), release_texts=True).pairs() == neardup.search(
        texts, 0.9, (2, 4)).pairs()
    assert longer == [None] * len(texts)


def test_dedup_records_same_rows_on_any_thread_count() -> None:
    records = [
        make_record([{"role": "user", "content": "q"}, {"role": "assistant", "content": t or "x"}],
                    source={"file": "t.jsonl", "line": i + 1})
        for i, t in enumerate(corpus(150, seed=3))
    ]
    one = dedup_records(records, threshold=0.9, threads=1)
    two = dedup_records(records, threshold=0.9, threads=2)
    assert [r["id"] for r in one[0]] == [r["id"] for r in two[0]]
    assert one[1] == two[1] and one[2] == two[2]
    assert one[2]["duplicates"]["near"] > 0
