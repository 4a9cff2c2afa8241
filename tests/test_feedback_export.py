"""Feedback export on a real sqlite feedback store into a real git + DVC repo, then through the data half."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from helpers import N_CORRECTIONS, N_POSITIVE, fill, git_dvc_repo
from tuneline.config import Config, load_config
from tuneline.config.ingest import IngestParams, Source
from tuneline.data.ingest import ingest_sources
from tuneline.data_half import run_data
from tuneline.errors import InputFileError
from tuneline.feedback.cli import feedback_app
from tuneline.feedback.export import (
    FeedbackExportError,
    classify,
    export_feedback,
    pending_count,
    pending_counts,
    should_retrain,
)
from tuneline.feedback.store import FeedbackStore
from tuneline.feedback.store import feedback as feedback_table
from tuneline.jsonio import read_json, read_jsonl
from tuneline.urls import anchored_url

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def config(tmp_path: Path, *overrides: str) -> Config:
    return load_config(None, [f"serve.store_url=sqlite:///{tmp_path / 'store' / 'feedback.db'}", *overrides])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeedbackStore]:
    db = FeedbackStore(f"sqlite:///{tmp_path / 'store' / 'feedback.db'}")
    yield db
    db.close()


def test_classify_rules() -> None:
    base = {"messages": [{"role": "user", "content": "q"}], "answer": "a", "finish_reason": "stop"}
    row = {**base, "thumb": None, "rating": None, "correction": None, "comment": None}
    assert classify({**row, "thumb": -1, "correction": "  right  "}, 4) == ("correction", None)
    assert classify({**row, "thumb": 1, "rating": 1}, 4) == ("positive", None)  # the thumb decides
    assert classify({**row, "thumb": -1, "rating": 5}, 4) == ("negative", None)
    assert classify({**row, "rating": 4}, 4) == ("positive", None)
    assert classify({**row, "rating": 3}, 4) == ("negative", None)
    assert classify({**row, "comment": "hm"}, 4) == ("skipped", "comment_only")
    assert classify({**row, "thumb": 1, "answer": " "}, 4) == ("skipped", "empty_answer")
    assert classify({**row, "thumb": 1, "messages": []}, 4) == ("skipped", "bad_conversation")
    ends_with_answer = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert classify({**row, "thumb": 1, "messages": ends_with_answer}, 4) == ("skipped", "bad_conversation")
    # A streamed answer whose client hung up is stored cut short: never a positive SFT target.
    assert classify({**row, "thumb": 1, "finish_reason": "cancelled"}, 4) == ("skipped", "truncated_answer")
    assert should_retrain(50, 50) and not should_retrain(49, 50)
    with pytest.raises(FeedbackExportError, match="at least 1"):
        should_retrain(3, 0)
    assert anchored_url("sqlite:///feedback.db", Path("/srv/ws")) == "sqlite:////srv/ws/feedback.db"
    assert anchored_url("sqlite:////abs/f.db", Path("/srv")) == "sqlite:////abs/f.db"


def test_export_writes_sft_and_negatives_marks_rows_and_dvc_adds(
    tmp_path: Path, store: FeedbackStore
) -> None:
    kinds = fill(store)
    repo = git_dvc_repo(tmp_path / "repo")
    cfg = config(tmp_path)
    assert pending_count(cfg, store) == N_CORRECTIONS + N_POSITIVE + 1
    summary = export_feedback(cfg, repo, store, now=NOW)

    n_sft = N_CORRECTIONS + N_POSITIVE + 1
    assert summary["counts"] == {
        "correction": N_CORRECTIONS, "positive": N_POSITIVE + 1, "negative": 3, "skipped": 2, "recovered": 0
    }
    assert summary["sft_rows"] == n_sft
    assert summary["skipped"] == {"comment_only": 1, "truncated_answer": 1}
    assert summary["sft_file"] == "data/raw/feedback/feedback-20250102T030405000000Z.jsonl"
    assert summary["negatives_file"] == "data/feedback/negative/negatives-20250102T030405000000Z.jsonl"

    rows = list(read_jsonl(repo / summary["sft_file"]))
    assert len(rows) == n_sft
    by_id = {r["provenance"]["request_id"]: r for r in rows}
    assert {k for k, v in kinds.items() if v in ("correction", "positive")} == set(by_id)
    for rid, row in by_id.items():
        ex = store.exchange(rid)
        prov = row["provenance"]
        assert row["category"] == "feedback"
        assert row["messages"][:-1] == ex["messages"]
        assert row["messages"][-1]["role"] == "assistant"
        assert prov["kind"] == kinds[rid]
        assert (prov["model_name"], prov["model_version"], prov["variant"]) == (
            ex["model_name"], ex["model_version"], ex["variant"]
        )
        assert prov["served_at"].startswith("2024-12-") and prov["feedback_at"] and prov["feedback_id"]
        if kinds[rid] == "correction":
            assert row["messages"][-1]["content"].startswith("Corrected: ")
        else:
            assert row["messages"][-1]["content"] == ex["answer"]

    negatives = list(read_jsonl(repo / summary["negatives_file"]))
    neg_ids = {k for k, v in kinds.items() if v == "negative"}
    assert {n["provenance"]["request_id"] for n in negatives} == neg_ids
    assert not neg_ids & set(by_id)  # a rejected answer is never an SFT target
    for n in negatives:
        assert n["rejected"] == store.exchange(n["provenance"]["request_id"])["answer"]
        assert n["prompt"][-1]["role"] == "user" and n["provenance"]["kind"] == "negative"

    # Marked: nothing is pending; each row names its file (skips their reason).
    assert store.exchanges_with_feedback(only_unexported=True) == []
    marks = {
        r["request_id"]: r for r in store.exchanges_with_feedback() if r["feedback_id"] is not None
    }
    assert all(marks[rid]["exported_at"] == NOW.timestamp() for rid in marks)
    latest = [m["feedback_id"] for m in marks.values()]
    query = select(feedback_table.c.request_id, feedback_table.c.export_file).where(
        feedback_table.c.id.in_(latest)
    )
    with store.engine.connect() as conn:
        files = {rid: name for rid, name in conn.execute(query)}
    assert {files[rid] for rid in by_id} == {Path(summary["sft_file"]).name}
    assert {files[rid] for rid in neg_ids} == {Path(summary["negatives_file"]).name}
    assert sorted(v for k, v in files.items() if kinds[k] == "skipped") == [
        "skipped:comment_only", "skipped:truncated_answer"
    ]

    # Versioned by DVC.
    assert summary["dvc_added"] == ["data/raw/feedback", "data/feedback/negative"]
    assert (repo / "data/raw/feedback.dvc").is_file() and (repo / "data/feedback/negative.dvc").is_file()
    assert yaml.safe_load((repo / "data/raw/feedback.dvc").read_text())["outs"][0]["nfiles"] == 1

    # A second export finds nothing and writes nothing.
    again = export_feedback(cfg, repo, store, now=datetime(2025, 1, 2, 4, tzinfo=UTC))
    assert again["sft_rows"] == 0 and again["sft_file"] is None and again["negatives_file"] is None
    assert again["dvc_added"] == [] and again["rows"] == 0
    assert len(list((repo / "data/raw/feedback").glob("*.jsonl"))) == 1

    # Later feedback on a skipped exchange is new: it comes back, into a new file.
    skipped_id = next(k for k, v in kinds.items() if v == "skipped")
    store.record_feedback(skipped_id, correction="The right answer, at last.")
    third = export_feedback(cfg, repo, store, now=datetime(2025, 1, 2, 5, tzinfo=UTC))
    assert third["sft_rows"] == 1 and third["counts"]["correction"] == 1
    assert len(list((repo / "data/raw/feedback").glob("*.jsonl"))) == 2


class CrashingStore(FeedbackStore):
    """The real store, except that the process 'dies' when it first tries to mark rows exported."""

    def mark_exported(self, feedback_ids: list[int], export_file: str, at: float | None = None) -> None:
        raise RuntimeError("power cut")


def test_crash_between_write_and_mark_neither_loses_nor_duplicates(
    tmp_path: Path, store: FeedbackStore
) -> None:
    fill(store)
    cfg = config(tmp_path, "feedback.dvc_add=false")
    root = tmp_path / "ws"
    crashing = CrashingStore(store.url)
    with pytest.raises(RuntimeError, match="power cut"):
        export_feedback(cfg, root, crashing, now=NOW)
    crashing.close()
    [written] = list((root / "data/raw/feedback").glob("*.jsonl"))
    pending_before = len(store.exchanges_with_feedback(only_unexported=True))
    assert pending_before == N_CORRECTIONS + N_POSITIVE + 1 + 3 + 2  # nothing was marked

    summary = export_feedback(cfg, root, store, now=datetime(2025, 1, 3, tzinfo=UTC))
    assert summary["counts"]["recovered"] == N_CORRECTIONS + N_POSITIVE + 1 + 3
    assert summary["sft_rows"] == 0 and summary["sft_file"] is None
    assert summary["counts"]["skipped"] == 2  # skips were never written: classified again
    assert sorted(summary["recovered_files"]) == sorted([written.name, summary_neg_name(root)])
    assert list((root / "data/raw/feedback").glob("*.jsonl")) == [written]
    assert store.exchanges_with_feedback(only_unexported=True) == []
    ids = [r["provenance"]["feedback_id"] for r in read_jsonl(written)]
    assert len(ids) == len(set(ids)) == N_CORRECTIONS + N_POSITIVE + 1


def summary_neg_name(root: Path) -> str:
    [neg] = list((root / "data/feedback/negative").glob("*.jsonl"))
    return neg.name


@pytest.mark.integration
def test_exported_rows_pass_the_data_half(tmp_path: Path, store: FeedbackStore) -> None:
    fill(store)
    root = tmp_path / "ws"
    summary = export_feedback(config(tmp_path, "feedback.dvc_add=false"), root, store, now=NOW)
    export = root / summary["sft_file"]
    out = tmp_path / "out"
    cfg = load_config(None, ["validate_raw.min_rows=10", "split.eval_dir=null"])
    run_data([export], out, cfg)
    report = read_json(out / "report.json")
    assert list(read_jsonl(out / "rejected.jsonl")) == []
    assert report["ledger"]["raw_rows"] == summary["sft_rows"] and report["ledger"]["balanced"]
    kept = [r for s in ("train", "val", "test") for r in read_jsonl(out / f"{s}.jsonl")]
    originals = [r for r in kept if not r.get("meta", {}).get("augmented_from")]
    assert len(originals) == summary["sft_rows"]
    assert all(r["category"] == "feedback" for r in originals)
    # Provenance survives into the canonical record (ingest keeps extra fields in meta).
    kinds = {r["meta"]["provenance"]["kind"] for r in originals}
    assert kinds == {"correction", "positive"}
    assert report["splits"]["test"]["rows"] > 0


def test_optional_missing_source_reads_nothing(tmp_path: Path) -> None:
    data = tmp_path / "seed.jsonl"
    msgs = [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Nile."}]
    data.write_text(json.dumps({"messages": msgs}) + "\n")
    missing = tmp_path / "raw" / "feedback"
    params = IngestParams(sources=[Source(path=missing, required=False), Source(path=data)])
    records, rejected, rows_in, extra = ingest_sources(params)
    assert (len(records), rejected, rows_in) == (1, [], 1)
    assert {"file": missing.as_posix(), "reason": "optional_missing"} in extra["skipped_files"]
    with pytest.raises(InputFileError, match="feedback"):
        ingest_sources(IngestParams(sources=[Source(path=missing)]))


def test_cli_status_and_export(tmp_path: Path, store: FeedbackStore) -> None:
    fill(store)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "serve": {"store_url": f"sqlite:///{tmp_path / 'store' / 'feedback.db'}"},
        "feedback": {"dvc_add": False, "retrain_threshold": 40},
    }))
    runner = CliRunner()
    root = tmp_path / "ws"
    status = runner.invoke(feedback_app, ["status", "--params", str(params), "--root", str(root)])
    assert status.exit_code == 0, status.output
    assert "correction=20 positive=21 negative=3 skipped=2" in status.output
    assert "pending SFT rows: 41 (threshold 40: would trigger a retrain)" in status.output
    done = runner.invoke(feedback_app, ["export", "--params", str(params), "--root", str(root)])
    assert done.exit_code == 0, done.output
    assert "41 SFT rows (20 corrections, 21 positive), 3 negatives, 2 skipped" in done.output
    assert "sft_file: data/raw/feedback/feedback-" in done.output
    assert pending_counts(load_config(params), root=root) == {
        "correction": 0, "positive": 0, "negative": 0, "skipped": 0
    }
    bad = runner.invoke(feedback_app, ["status", "--params", str(params), "--set", "serve.store_url=nope://"])
    assert bad.exit_code != 0 and "feedback store" in bad.output, bad.output
