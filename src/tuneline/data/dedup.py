"""The `dedup` stage: drop exact duplicates, then near duplicates, keeping the first row of each group.

Exact duplicates: two rows are equal when their messages (role + normalized content, in order) are equal.
Normalization (`normalize_content`): Unicode NFKC, casefold, every punctuation character (Unicode category P*)
replaced by a space, whitespace runs collapsed to one space, ends stripped. So "Hello,  World!" equals
"hello world" and a full-width "ＡＢＣ。" equals "abc".

Near duplicates: TF-IDF cosine >= `dedup.threshold` over `record_text` (see `tuneline.data.neardup` for the
vectorizer and the exact sub-quadratic search).

One deterministic survivor: rows are processed in input order and a row is dropped when it is an exact or
near duplicate of an earlier *kept* row; its rejected entry names that row (`duplicate_of`, the earliest such
kept row) and the `similarity` (1.0 for exact duplicates).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import unicodedata
from functools import cache
from typing import TYPE_CHECKING, Any

from tuneline.config import Config
from tuneline.jsonio import read_jsonl
from tuneline.layout import Layout
from tuneline.ledger import Ledger, finish_stage
from tuneline.progress import track
from tuneline.records import record_text, reject

if TYPE_CHECKING:
    from tuneline.data.neardup import SearchResult

__all__ = [
    "brute_force_pairs",
    "dedup_records",
    "exact_key",
    "near_duplicate_pairs",
    "normalize_content",
    "run",
]

log = logging.getLogger(__name__)

STAGE = "dedup"
TOP_CLUSTERS = 10
MAX_CLUSTER_MEMBERS = 20
SAMPLE_CHARS = 160


def __getattr__(name: str) -> Any:
    # The near-dup engine pulls in scikit-learn, SciPy and numba (seconds per process): `dedup`, `split` and
    # `validate_splits` import this module even when they only compare exact keys, so it loads on first use.
    if name in ("search", "tfidf_vectorizer"):
        from tuneline.data import neardup  # lazy: sklearn+scipy+numba ~10 s, near-dup only

        return getattr(neardup, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def near_duplicate_pairs(
    texts: list[str],
    threshold: float = 0.95,
    ngram_range: tuple[int, int] = (3, 3),
    threads: int | None = None,
) -> set[tuple[int, int]]:
    """Every pair i < j of `texts` whose TF-IDF cosine (`tfidf_vectorizer`) is >= threshold.

    Exact — the same pairs as `brute_force_pairs` — but found by prefix filtering, not by comparing all pairs.

    Args:
        texts: the documents.
        threshold: cosine at or above which two texts are near duplicates, in (0, 1].
        ngram_range: character n-gram sizes of the TF-IDF.
        threads: threads of the search (`tuneline.data.neardup.search_threads`); the pairs do not
            depend on it.
    """
    from tuneline.data.neardup import search  # lazy: sklearn+scipy+numba ~10 s

    return search(texts, threshold, ngram_range, threads=threads).pairs()


def brute_force_pairs(
    texts: list[str], threshold: float = 0.95, ngram_range: tuple[int, int] = (3, 3)
) -> set[tuple[int, int]]:
    """The same pairs as `near_duplicate_pairs`, by a blocked X @ X.T (O(N²): tests and benchmarks only)."""
    if len(texts) < 2:
        return set()
    from tuneline.data.neardup import brute_force_matrix, tfidf_matrix  # lazy: sklearn+scipy+numba ~10 s

    return brute_force_matrix(tfidf_matrix(texts, ngram_range), threshold).pairs()


# Unicode has punctuation (category P*) only in planes 0 and 1; the table covers every plane up to the last
# one that has any (tests check the planes above hold none), built in a tenth of the time of a full scan.
_PUNCTUATION_PLANES_END = 0x20000


@cache
def _punctuation_table() -> dict[int, str]:
    """Every Unicode punctuation code point (category P*) -> space, for str.translate (C speed)."""
    return {c: " " for c in range(_PUNCTUATION_PLANES_END) if unicodedata.category(chr(c)).startswith("P")}


@cache
def _punctuation_list() -> list[int]:
    """`_punctuation_table` as a list indexed by code point (str.translate looks a list up twice as fast as
    a dict; code points past its end raise LookupError, which translate reads as "unchanged")."""
    table = list(range(_PUNCTUATION_PLANES_END))
    for c in _punctuation_table():
        table[c] = ord(" ")
    return table


@cache
def _ascii_punctuation_table() -> bytes:
    """The ASCII part of `_punctuation_table` as a bytes.translate table (ASCII punctuation -> space)."""
    return bytes(b" "[0] if c in _punctuation_table() else c for c in range(256))


def normalize_content(text: str) -> str:
    """NFKC, casefold, punctuation -> space, whitespace collapsed, stripped (the exact-duplicate view)."""
    if text.isascii():
        # NFKC leaves ASCII alone and casefold is lower() there: bytes do both at memory speed.
        text = text.encode("ascii").lower().translate(_ascii_punctuation_table()).decode("ascii")
    else:
        text = unicodedata.normalize("NFKC", text).casefold().translate(_punctuation_list())
    return " ".join(text.split())


def exact_key(record: dict[str, Any]) -> str:
    """Hash of the record's messages (role + normalized content, in order): equal keys = exact duplicates."""
    canon = [[m["role"], normalize_content(m["content"])] for m in record["messages"]]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode("utf-8")).hexdigest()


def _dropped(record: dict[str, Any], kept: dict[str, Any], reason: str, similarity: float) -> dict[str, Any]:
    what = "exact duplicate (normalized content)" if reason == "exact_duplicate" else "near duplicate"
    return reject(
        STAGE,
        reason,
        record.get("source", {}),
        detail=f"{what} of {kept.get('id')} (similarity {similarity:.4f})",
        record=record,
        duplicate_of=kept.get("id"),
        duplicate_of_source=kept.get("source"),
        similarity=round(float(similarity), 6),
    )


def dedup_records(
    records: list[dict[str, Any]],
    exact: bool = True,
    near: bool = True,
    threshold: float = 0.95,
    ngram_range: tuple[int, int] = (3, 3),
    threads: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Split `records` into kept rows and rejected duplicates (first row of each group survives).

    `threads` is the near-duplicate search's (`tuneline.data.neardup.search_threads`): same result for any.

    Returns:
        (kept, rejected, extra) where extra holds the counts by kind, search counters and largest clusters.
    """
    survivor_of: dict[int, tuple[int, str, float]] = {}  # dropped index -> (kept index, reason, similarity)
    candidates = list(range(len(records)))
    if exact:
        first_by_key: dict[str, int] = {}
        candidates = []
        for i, rec in enumerate(track(records, "dedup: exact duplicates")):
            key = exact_key(rec)
            if key in first_by_key:
                survivor_of[i] = (first_by_key[key], "exact_duplicate", 1.0)
            else:
                first_by_key[key] = i
                candidates.append(i)
    stats: dict[str, Any] = {}
    if near and len(candidates) > 1:
        from tuneline.data.neardup import search  # lazy: sklearn+scipy+numba ~10 s

        started = time.perf_counter()
        # The texts are built for the search alone: it may free each one once vectorized.
        texts = [record_text(records[i]) for i in candidates]
        found: SearchResult = search(texts, threshold, ngram_range, threads=threads, release_texts=True)
        del texts
        stats = dict(found.stats)  # no wall time in the report: DVC metrics stay identical across reruns
        log.info("dedup: near-dup search over %d rows took %.2fs", len(candidates),
                 time.perf_counter() - started)
        # Pairs come sorted by (i, j); walking them in order drops j only if i is still kept, so each dropped
        # row points at its earliest kept near duplicate.
        dropped_near: set[int] = set()
        for a, b, sim in zip(found.rows.tolist(), found.cols.tolist(), found.sims.tolist(), strict=True):
            if a in dropped_near or b in dropped_near:
                continue
            dropped_near.add(b)
            survivor_of[candidates[b]] = (candidates[a], "near_duplicate", sim)
    # An exact copy of a row that was then dropped as a near duplicate points at that row's kept survivor
    # (keeping the original reason; `via` names the copy it equals), so duplicate_of is always a kept row.
    via: dict[int, int] = {}
    for i, (k, reason, _) in list(survivor_of.items()):
        if reason == "exact_duplicate" and k in survivor_of:
            root, _, sim = survivor_of[k]
            survivor_of[i] = (root, reason, sim)
            via[i] = k
    kept, rejected = [], []
    members: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        if i in survivor_of:
            k, reason, sim = survivor_of[i]
            row = _dropped(rec, records[k], reason, sim)
            if i in via:
                row["via"] = records[via[i]].get("id")
                row["detail"] += f", via its exact copy {row['via']}"
            rejected.append(row)
            members.setdefault(k, []).append(i)
        else:
            kept.append(rec)
    extra = {
        "duplicates": {
            "exact": sum(1 for v in survivor_of.values() if v[1] == "exact_duplicate"),
            "near": sum(1 for v in survivor_of.values() if v[1] == "near_duplicate"),
        },
        "near_search": stats,
        "clusters": _largest_clusters(records, members),
    }
    return kept, rejected, extra


def _largest_clusters(records: list[dict[str, Any]], members: dict[int, list[int]]) -> list[dict[str, Any]]:
    top = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:TOP_CLUSTERS]
    out = []
    for k, idx in top:
        text = record_text(records[k])
        out.append({
            "survivor_id": records[k].get("id"),
            "size": 1 + len(idx),
            "member_ids": [records[i].get("id") for i in idx[:MAX_CLUSTER_MEMBERS]],
            # Exact copies share their content id; the source tells them apart.
            "member_sources": [records[i].get("source") for i in idx[:MAX_CLUSTER_MEMBERS]],
            "members_truncated": len(idx) > MAX_CLUSTER_MEMBERS,
            "sample": text[:SAMPLE_CHARS] + ("…" if len(text) > SAMPLE_CHARS else ""),
        })
    return out


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """Read data/interim/clean.jsonl, write data/interim/dedup.jsonl, rejected rows and reports/dedup.json."""
    params = cfg.dedup
    records = list(read_jsonl(layout.interim("clean")))
    kept, rejected, extra = dedup_records(
        records, exact=params.exact, near=params.near, threshold=params.threshold,
        ngram_range=params.ngram_range, threads=params.threads,
    )
    ledger = Ledger(stage=STAGE, rows_in=len(records), rows_kept=len(kept))
    for row in rejected:
        ledger.rejected_by_reason[row["reason"]] += 1
    ledger.extra.update(
        {"threshold": params.threshold, "ngram_range": list(params.ngram_range), "exact": params.exact,
         "near": params.near, **extra}
    )
    log.info("dedup: %d exact, %d near duplicates dropped", extra["duplicates"]["exact"],
             extra["duplicates"]["near"])
    return finish_stage(layout, ledger, rejected, {layout.interim(STAGE): kept})
