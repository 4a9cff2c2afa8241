"""PLACEHOLDER (brute force) — being replaced by the scalable exact implementation.

Public API kept stable:
    near_duplicate_pairs(texts, threshold=0.95, ngram_range=(3, 3)) -> set[tuple[int, int]]
"""

from __future__ import annotations

from sklearn.feature_extraction.text import TfidfVectorizer


def tfidf_vectorizer(ngram_range: tuple[int, int] = (3, 3)) -> TfidfVectorizer:
    return TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, lowercase=True)


def near_duplicate_pairs(
    texts: list[str], threshold: float = 0.95, ngram_range: tuple[int, int] = (3, 3)
) -> set[tuple[int, int]]:
    if len(texts) < 2:
        return set()
    x = tfidf_vectorizer(ngram_range).fit_transform(texts)
    sim = (x @ x.T).tocoo()
    return {(int(i), int(j)) for i, j, v in zip(sim.row, sim.col, sim.data, strict=True) if i < j and v >= threshold}
