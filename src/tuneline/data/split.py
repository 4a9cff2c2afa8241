"""`split` stage: stratified, seeded train/val/test split that never leaks.

Rows that belong together — one near-duplicate cluster (TF-IDF cosine >= dedup.threshold, searched again
here: IDF weights depend on the corpus, so a pair just under the threshold among all rows can reach it
among the rows dedup kept, where `validate_splits` measures) or one source conversation
(`meta.conversation`) — form a group, and a group never straddles splits. Groups are shuffled per stratum
with a seed derived from `seed` and the stratum name, then dealt to test, val and train until each split
holds its share (rounded half up) of the stratum. Strata smaller than `split.min_stratum_rows` go to train
whole and are reported. Optionally rows that duplicate a fixed eval set (`split.eval_dir`) are removed
first (decontamination) and rejected with reason `eval_contamination`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tuneline.config import Config
from tuneline.config.ingest import IngestParams, Source
from tuneline.config.split import SplitParams
from tuneline.data.dedup import near_duplicate_pairs
from tuneline.data.ingest import ingest_sources
from tuneline.jsonio import read_jsonl
from tuneline.layout import SPLITS, Layout
from tuneline.ledger import Ledger, finish_stage
from tuneline.records import record_text, reject

log = logging.getLogger(__name__)
NO_STRATUM = "(none)"


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)


def stratum_of(record: dict[str, Any], field: str) -> str:
    value = record.get(field, record.get("meta", {}).get(field))
    return NO_STRATUM if value in (None, "") else str(value)


def group_rows(
    records: list[dict[str, Any]], threshold: float | None, ngram_range: tuple[int, int]
) -> list[int]:
    """Group label per row: the smallest row index of its near-dup cluster / source conversation.

    `threshold=None` skips the near-dup search (dedup already removed every pair at its threshold).
    """
    uf = _UnionFind(len(records))
    if threshold is not None:
        for i, j in near_duplicate_pairs([record_text(r) for r in records], threshold, ngram_range):
            uf.union(i, j)
    first_of: dict[str, int] = {}
    for i, rec in enumerate(records):
        conv = rec.get("meta", {}).get("conversation")
        if conv is not None:
            uf.union(first_of.setdefault(str(conv), i), i)
    return [uf.find(i) for i in range(len(records))]


def _seed_for(seed: int, stratum: str) -> int:
    digest = hashlib.sha256(f"{seed}:{stratum}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def assign_splits(
    records: list[dict[str, Any]], groups: list[int], params: SplitParams, seed: int
) -> tuple[list[str], dict[str, Any]]:
    """Pure assignment: the split name of each row, and facts for the report."""
    by_stratum: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for i in range(len(records)):
        stratum = stratum_of(records[groups[i]], params.stratify_field)  # a group follows its first row
        by_stratum[stratum].setdefault(groups[i], []).append(i)
    assignment = ["train"] * len(records)
    tiny: dict[str, int] = {}
    for stratum in sorted(by_stratum):
        stratum_groups = list(by_stratum[stratum].values())  # in order of first appearance
        n = sum(len(g) for g in stratum_groups)
        if n < params.min_stratum_rows:
            tiny[stratum] = n
            continue
        order = np.random.default_rng(_seed_for(seed, stratum)).permutation(len(stratum_groups))
        want = {"test": _half_up(n * params.test), "val": _half_up(n * params.val)}
        have = {"test": 0, "val": 0}
        left_for_train = n
        for gi in order:
            members = stratum_groups[gi]
            # Deal to test, then val, until each holds its share; train always keeps at least one row.
            target = next(
                (s for s in ("test", "val") if have[s] < want[s] and left_for_train > len(members)), "train"
            )
            if target != "train":
                have[target] += len(members)
                left_for_train -= len(members)
            for i in members:
                assignment[i] = target
    facts = {
        "tiny_strata": tiny,
        "groups": len(set(groups)),
        "multi_row_groups": sum(1 for c in Counter(groups).values() if c > 1),
    }
    return assignment, facts


def _eval_texts(eval_dir: Path, category_field: str) -> tuple[list[str], list[str]]:
    """Texts of the fixed eval sets — any format ingest reads, converted by the same code — and the files."""
    params = IngestParams(sources=[Source(path=eval_dir)], category_field=category_field)
    records, rejected, _, extra = ingest_sources(params)
    if rejected:
        log.warning("split: %d eval rows could not be read (see their files): %s", len(rejected),
                    sorted({r["source"]["file"] for r in rejected}))
    return [record_text(r) for r in records], sorted(extra["files"])


def decontaminate(
    records: list[dict[str, Any]], eval_texts: list[str], threshold: float, ngram_range: tuple[int, int]
) -> dict[int, tuple[int, str]]:
    """Row index -> (eval row index, how) for rows that duplicate a fixed eval row."""
    if not eval_texts or not records:
        return {}
    texts = eval_texts + [record_text(r) for r in records]
    n_eval = len(eval_texts)
    hits: dict[int, tuple[int, str]] = {}
    exact = {" ".join(t.split()).casefold(): k for k, t in enumerate(eval_texts)}
    for i, t in enumerate(texts[n_eval:]):
        k = exact.get(" ".join(t.split()).casefold())
        if k is not None:
            hits[i] = (k, "exact")
    for a, b in sorted(near_duplicate_pairs(texts, threshold, ngram_range)):
        if a < n_eval <= b and (b - n_eval) not in hits:
            hits[b - n_eval] = (a, "near")
    return hits


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    records = list(read_jsonl(layout.interim("dedup")))
    ledger = Ledger("split", rows_in=len(records))
    rejected: list[dict[str, Any]] = []
    eval_dir = cfg.split.eval_dir
    eval_files: list[str] = []
    if eval_dir is not None and Path(eval_dir).exists():
        eval_texts, eval_files = _eval_texts(Path(eval_dir), cfg.ingest.category_field)
        hits = decontaminate(records, eval_texts, cfg.dedup.threshold, cfg.dedup.ngram_range)
        for i, (k, how) in sorted(hits.items()):
            ledger.rejected_by_reason["eval_contamination"] += 1
            rejected.append(reject("split", "eval_contamination", records[i]["source"],
                                   f"{how} duplicate of eval row {k}", record=records[i], eval_row=k))
        records = [r for i, r in enumerate(records) if i not in hits]
    ledger.rows_kept = len(records)
    # Even after near-dedup: removing rows changes the IDF weights, so kept pairs can cross the threshold.
    grouping = cfg.split.group_near_duplicates
    groups = group_rows(records, cfg.dedup.threshold if grouping else None, cfg.dedup.ngram_range)
    assignment, facts = assign_splits(records, groups, cfg.split, cfg.seed)
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    per_stratum: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    field = cfg.split.stratify_field
    for rec, split in zip(records, assignment, strict=True):  # no Path built per row: 1 s per 100k rows
        by_split[split].append(rec)
        per_stratum[split][stratum_of(rec, field)] += 1
    outputs: dict[Any, list[dict[str, Any]]] = {layout.split_file(s): by_split[s] for s in SPLITS}
    if facts["tiny_strata"]:
        log.warning("split: strata too small to split went to train: %s", facts["tiny_strata"])
    ledger.extra = {
        "splits": {s: len(outputs[layout.split_file(s)]) for s in SPLITS},
        "strata": {s: dict(sorted(per_stratum[s].items())) for s in SPLITS},
        "eval_files": eval_files,
        "near_dup_grouping": grouping,
        **facts,
    }
    return finish_stage(layout, ledger, rejected, outputs)
