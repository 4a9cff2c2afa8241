"""split: stratified, deterministic, leak-free; tiny strata reported; decontamination."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tuneline.config import load_config
from tuneline.data import split
from tuneline.jsonio import read_json, read_jsonl, write_jsonl
from tuneline.layout import SPLITS, Layout
from tuneline.records import make_record

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
         "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def rec(i: int, category: str | None, text: str | None = None, **meta) -> dict:
    rng = random.Random(i)
    text = text or " ".join(rng.choice(WORDS) for _ in range(30)) + f" {i}"
    msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": f"answer {i}"}]
    return make_record(msgs, {"file": "x.jsonl", "line": i + 1}, category, meta)


def corpus() -> list[dict]:
    cats = ["qa"] * 500 + ["math"] * 300 + ["zh"] * 150 + ["rare"] * 2 + [None] * 48
    return [rec(i, c) for i, c in enumerate(cats)]


def assign(records: list[dict], seed: int = 42, **overrides) -> list[str]:
    cfg = load_config(None, [f"split.{k}={v}" for k, v in overrides.items()])
    groups = split.group_rows(records, cfg.dedup.threshold, cfg.dedup.ngram_range)
    return split.assign_splits(records, groups, cfg.split, seed)[0]


def test_stratified_shares_per_category() -> None:
    records = corpus()
    names = assign(records)
    by_cat: dict[str, Counter] = {}
    for r, s in zip(records, names, strict=True):
        by_cat.setdefault(split.stratum_of(r, "category"), Counter())[s] += 1
    assert by_cat["qa"] == Counter(train=400, val=50, test=50)
    assert by_cat["math"] == Counter(train=240, val=30, test=30)
    assert by_cat["zh"] == Counter(train=120, val=15, test=15)
    assert by_cat["(none)"]["test"] == 5  # 48 * 0.1 rounded half up
    assert by_cat["rare"] == Counter(train=2)  # below min_stratum_rows: train only


def test_seeded_and_deterministic() -> None:
    records = corpus()
    assert assign(records, seed=1) == assign(records, seed=1)
    assert assign(records, seed=1) != assign(records, seed=2)


def test_near_duplicate_cluster_never_straddles() -> None:
    base = " ".join(WORDS) * 3
    records = [rec(i, "qa") for i in range(60)]
    cluster = [rec(100 + k, "qa", text=base + f" v{k}") for k in range(6)]  # cosine >= 0.95 with each other
    records = records + cluster
    for seed in range(8):
        names = assign(records, seed=seed)
        assert len({names[i] for i in range(60, 66)}) == 1


def test_conversation_group_never_straddles() -> None:
    records = [rec(i, "qa", conversation=f"c{i // 4}") for i in range(200)]
    names = assign(records, seed=3)
    for c in range(50):
        assert len({names[i] for i in range(4 * c, 4 * c + 4)}) == 1
    assert Counter(names)["test"] == 20


def test_train_keeps_a_row_of_every_splittable_stratum() -> None:
    records = [rec(i, "small") for i in range(3)]
    names = assign(records, **{"test": 0.4, "val": 0.4})
    assert "train" in names


def test_run_writes_splits_report_and_decontaminates(workspace: Path) -> None:
    layout = Layout(workspace)
    records = corpus()
    write_jsonl(layout.interim("dedup"), records)
    eval_dir = workspace / "data" / "eval"
    leaked = records[10]
    write_jsonl(eval_dir / "fixed.jsonl", [{"messages": leaked["messages"]}])
    cfg = load_config(None)
    report = split.run(cfg, layout)
    assert report["rows_in"] == len(records)
    assert report["rejected_by_reason"] == {"eval_contamination": 1}
    assert sum(report["splits"].values()) == len(records) - 1
    assert report["tiny_strata"] == {"rare": 2}
    rejected = list(read_jsonl(layout.rejected("split")))
    assert rejected[0]["id"] == leaked["id"] and rejected[0]["source"] == leaked["source"]
    ids = [r["id"] for s in SPLITS for r in read_jsonl(layout.split_file(s))]
    assert len(ids) == len(set(ids)) == len(records) - 1 and leaked["id"] not in ids
    assert read_json(layout.report("split"))["splits"] == report["splits"]


def test_run_groups_near_duplicates_unless_turned_off(workspace: Path) -> None:
    layout = Layout(workspace)
    base = " ".join(WORDS) * 3
    records = [rec(i, "qa") for i in range(40)] + [rec(100 + k, "qa", text=base + f" v{k}") for k in range(8)]
    write_jsonl(layout.interim("dedup"), records)
    report = split.run(load_config(None, ["dedup.near=false", "split.eval_dir=null"]), layout)
    assert report["near_dup_grouping"] is True and report["multi_row_groups"] == 1
    placed = {s: {r["id"] for r in read_jsonl(layout.split_file(s))} for s in SPLITS}
    cluster_ids = {r["id"] for r in records[40:]}
    assert sum(1 for s in SPLITS if placed[s] & cluster_ids) == 1
    off = load_config(None, ["split.eval_dir=null", "split.group_near_duplicates=false"])
    report = split.run(off, layout)
    assert report["near_dup_grouping"] is False and report["multi_row_groups"] == 0


def test_near_duplicates_are_grouped_even_after_near_dedup(workspace: Path) -> None:
    """Near-dedup judged the pair among all rows; without them the IDF weights change and the pair can
    reach the threshold (the demo's "Who made you?" / "Who created you?" answers did): before, split did
    not search when `dedup.near` was on, and validate_splits then failed on a cross-split pair."""
    layout = Layout(workspace)
    base = " ".join(WORDS) * 3
    records = [rec(i, "qa") for i in range(40)] + [rec(100 + k, "qa", text=base + f" v{k}") for k in range(8)]
    write_jsonl(layout.interim("dedup"), records)
    report = split.run(load_config(None, ["split.eval_dir=null"]), layout)  # dedup.near is on by default
    assert report["near_dup_grouping"] is True and report["multi_row_groups"] == 1
    placed = {s: {r["id"] for r in read_jsonl(layout.split_file(s))} for s in SPLITS}
    assert sum(1 for s in SPLITS if placed[s] & {r["id"] for r in records[40:]}) == 1
