"""Feedback -> raw training data: rated exchanges of the feedback store become SFT rows for the next run.

Every exchange whose LATEST feedback is not exported yet is classified once:

    correction  the user gave the right answer          -> SFT row, assistant turn = the correction
    positive    thumb up, or no thumb and a rating of at least `ab.min_rating`
                                                       -> SFT row, assistant turn = the served answer
    negative    thumb down, or no thumb and a lower rating, no correction
                                                       -> NOT SFT: a record (prompt, rejected answer,
                                                          provenance) in `feedback.negatives_dir`, kept
                                                          for preference data later
    skipped     nothing usable (a comment only, a positive on an empty or cut-off answer, a malformed
                conversation)                          -> counted by reason in the summary

A thumb, when given, decides over a rating (it is the explicit verdict). Skipped feedback is marked
exported too (export file `skipped:<reason>`): the store keys on the LATEST feedback of an exchange,
so a later thumb or correction on the same exchange is a new, unexported row and comes back on its own;
re-reading a comment every hour would change nothing.

SFT rows are OpenAI `messages` JSONL (ingest's `messages` format; `provenance` lands in the record's
`meta`), written atomically to a new immutable `<export_dir>/feedback-<UTC stamp>.jsonl`; negatives go
to `<negatives_dir>/negatives-<UTC stamp>.jsonl`. Nothing is written when there is nothing to write.

Crash safety. The order is: write the files (temp + rename), then mark the rows exported, then
`dvc add`. A crash after the rename and before the mark leaves rows on disk that the store still calls
unexported; the next export first scans the existing export files for the `provenance.feedback_id` of
every pending row and marks those as exported in the file that already holds them (`recovered` in the
summary) instead of writing them again. So a row is never lost (it is on disk before it is marked) and
never duplicated (a row on disk is recognised by its feedback id). One export runs at a time per
workspace (`.tuneline/feedback-export.lock`).

No `reports/feedback_export.json`: reports/ holds the outputs of DVC stages, and the export is not one
(it reads a live database). The summary is returned; the CLI prints it and the flow publishes it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneline import filelock
from tuneline.config import Config
from tuneline.errors import TunelineError
from tuneline.feedback.store import FeedbackStore
from tuneline.jsonio import read_jsonl, write_jsonl
from tuneline.urls import anchored_url

log = logging.getLogger(__name__)

SFT_PREFIX = "feedback-"
NEGATIVE_PREFIX = "negatives-"
SKIPPED_PREFIX = "skipped:"
LOCK_FILE = ".tuneline/feedback-export.lock"
LOCK_WAIT_S = 60.0
PROMPT_END_ROLES = ("user", "tool")  # the conversation as sent ends with what the answer replies to


class FeedbackExportError(TunelineError):
    """The export cannot proceed (busy, `dvc add` failed, bad threshold); the message says what to do."""


# ---------------------------------------------------------------- classification (pure)


def classify(row: dict[str, Any], min_rating: int) -> tuple[str, str | None]:
    """The kind of one exchange-with-feedback row: ("correction" | "positive" | "negative", None) or
    ("skipped", reason).

    Args:
        row: one dict of `FeedbackStore.exchanges_with_feedback`.
        min_rating: a rating without a thumb counts positive from this value up (`ab.min_rating`).
    """
    if not _conversation_ok(row.get("messages")):
        return "skipped", "bad_conversation"
    correction = (row.get("correction") or "").strip()
    if correction:
        return "correction", None
    thumb, rating = row.get("thumb"), row.get("rating")
    if thumb is not None:
        positive = thumb > 0
    elif rating is not None:
        positive = rating >= min_rating
    else:
        return "skipped", "comment_only" if row.get("comment") else "no_verdict"
    if not positive:
        return "negative", None
    if not (row.get("answer") or "").strip():
        return "skipped", "empty_answer"
    if row.get("finish_reason") in ("length", "cancelled"):
        # A thumb up on an answer cut at max_tokens (or by a client that hung up mid-stream) would teach
        # the model to stop mid-sentence.
        return "skipped", "truncated_answer"
    return "positive", None


def _conversation_ok(messages: Any) -> bool:
    if not isinstance(messages, list) or not messages:
        return False
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages):
        return False
    return messages[-1]["role"] in PROMPT_END_ROLES


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def provenance(row: dict[str, Any], kind: str) -> dict[str, Any]:
    """Where an exported row came from: the exchange, the model that answered, the feedback."""
    return {
        "request_id": row["request_id"],
        "model_name": row["model_name"],
        "model_version": row["model_version"],
        "variant": row["variant"],
        "served_at": _iso(row["created_at"]),
        "feedback_at": _iso(row["feedback_at"]),
        "feedback_id": row["feedback_id"],
        "kind": kind,
    }


def sft_row(row: dict[str, Any], kind: str, category: str) -> dict[str, Any]:
    """One SFT row: the conversation as sent, then the corrected (or the served) answer."""
    answer = row["correction"].strip() if kind == "correction" else row["answer"]
    return {
        "messages": [*row["messages"], {"role": "assistant", "content": answer}],
        "category": category,
        "provenance": provenance(row, kind),
    }


def negative_record(row: dict[str, Any]) -> dict[str, Any]:
    """A rejected answer kept for preference data: prompt, the answer users disliked, why, provenance."""
    return {
        "prompt": row["messages"],
        "rejected": row["answer"],
        "thumb": row["thumb"],
        "rating": row["rating"],
        "comment": row["comment"],
        "finish_reason": row["finish_reason"],
        "provenance": provenance(row, "negative"),
    }


def should_retrain(new_rows: int, threshold: int) -> bool:
    """True when `new_rows` exported SFT rows reach `threshold` (`feedback.retrain_threshold`).

    Raises:
        FeedbackExportError: threshold below 1 or a negative row count.
    """
    if threshold < 1:
        raise FeedbackExportError(f"retrain threshold must be at least 1, got {threshold}")
    if new_rows < 0:
        raise FeedbackExportError(f"new row count cannot be negative, got {new_rows}")
    return new_rows >= threshold


# ---------------------------------------------------------------- I/O


def _anchored(path: Path, root: Path) -> Path:
    return path if path.is_absolute() else root / path


def _open_store(cfg: Config, root: Path, store: FeedbackStore | None) -> tuple[FeedbackStore, bool]:
    if store is not None:
        return store, False
    return FeedbackStore(anchored_url(cfg.serve.store_url, root)), True


def pending_count(cfg: Config, store: FeedbackStore | None = None, root: Path | None = None) -> int:
    """How many unexported feedback rows would become SFT rows (corrections + positives) now."""
    counts = pending_counts(cfg, store, root)
    return counts["correction"] + counts["positive"]


def pending_counts(
    cfg: Config, store: FeedbackStore | None = None, root: Path | None = None
) -> dict[str, int]:
    """Unexported feedback by kind: correction, positive, negative, skipped."""
    db, owned = _open_store(cfg, Path(root or "."), store)
    try:
        rows = db.exchanges_with_feedback(only_unexported=True)
    finally:
        if owned:
            db.close()
    counts = Counter(classify(r, cfg.ab.min_rating)[0] for r in rows)
    return {k: counts.get(k, 0) for k in ("correction", "positive", "negative", "skipped")}


def _stamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _new_file(directory: Path, prefix: str, stamp: str) -> Path:
    # Files are immutable: never reuse a name, even when two exports share a stamp.
    path = directory / f"{prefix}{stamp}.jsonl"
    n = 1
    while path.exists():
        path = directory / f"{prefix}{stamp}-{n}.jsonl"
        n += 1
    return path


def _already_written(directory: Path, prefix: str, wanted: set[int]) -> dict[int, str]:
    """feedback id -> file name, for pending ids found in earlier export files (a crash before marking)."""
    found: dict[int, str] = {}
    if not wanted or not directory.is_dir():
        return found
    for path in sorted(directory.glob(f"{prefix}*.jsonl")):
        for rec in read_jsonl(path):
            fid = (rec.get("provenance") or {}).get("feedback_id")
            if fid in wanted:
                found[fid] = path.name
    return found


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def dvc_add(root: Path, paths: list[Path]) -> list[str]:
    """`dvc add` the existing `paths` in `root` (this interpreter's dvc first on PATH); the names added.

    Raises:
        FeedbackExportError: dvc failed; the message carries its output and the command to rerun.
    """
    names = [_relative(p, root) for p in paths if p.is_dir()]
    if not names:
        return []
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    cmd = ["dvc", "add", *names]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        raise FeedbackExportError(
            f"`{' '.join(cmd)}` failed in {root} (exit {proc.returncode}); the rows are exported and "
            f"marked, rerun the command there once fixed:\n{(proc.stderr or proc.stdout)[-2000:]}"
        )
    return names


def export_feedback(
    cfg: Config, root: Path, store: FeedbackStore | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Export every exchange whose latest feedback is unexported: SFT rows, negatives, skips.

    Args:
        cfg: the config (`feedback`, `ab.min_rating`, `serve.store_url`).
        root: the workspace; relative paths of `feedback` and a relative sqlite store URL are under it.
        store: an open store (default: `serve.store_url`, opened and closed here).
        now: the export time (default: now, UTC); names the files and stamps `exported_at`.

    Returns:
        {"rows": total handled, "counts": {correction, positive, negative, skipped, recovered},
        "sft_rows": SFT rows written now, "skipped": {reason: n}, "sft_file", "negatives_file" (relative
        to root, or None), "recovered_files", "dvc_added": [dirs]}.

    Raises:
        FeedbackExportError: another export holds the lock, or `dvc add` failed (rows stay exported).
        StoreError: the store cannot be opened.
    """
    root = Path(root)
    now = now or datetime.now(UTC)
    lock = root / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+", encoding="utf-8") as handle:
        if not filelock.acquire(handle, LOCK_WAIT_S):
            raise FeedbackExportError(f"another feedback export holds {lock}; retry when it ends")
        try:
            db, owned = _open_store(cfg, root, store)
            try:
                return _export(cfg, root, db, now)
            finally:
                if owned:
                    db.close()
        finally:
            filelock.release(handle)


def _export(cfg: Config, root: Path, db: FeedbackStore, now: datetime) -> dict[str, Any]:
    fb = cfg.feedback
    export_dir, negatives_dir = _anchored(fb.export_dir, root), _anchored(fb.negatives_dir, root)
    at = now.timestamp()
    rows = db.exchanges_with_feedback(only_unexported=True)
    ids = {r["feedback_id"] for r in rows}
    # Recovery first: rows an interrupted export wrote but did not mark are marked, not written again.
    recovered = {
        **_already_written(export_dir, SFT_PREFIX, ids),
        **_already_written(negatives_dir, NEGATIVE_PREFIX, ids),
    }
    by_file: dict[str, list[int]] = {}
    for fid, name in recovered.items():
        by_file.setdefault(name, []).append(fid)
    sft: list[dict[str, Any]] = []
    negatives: list[dict[str, Any]] = []
    skipped: dict[str, list[int]] = {}
    counts: Counter[str] = Counter()
    for row in rows:
        if row["feedback_id"] in recovered:
            continue
        kind, reason = classify(row, cfg.ab.min_rating)
        counts[kind] += 1
        if kind in ("correction", "positive"):
            sft.append(sft_row(row, kind, fb.category))
        elif kind == "negative":
            negatives.append(negative_record(row))
        else:
            skipped.setdefault(str(reason), []).append(row["feedback_id"])
            log.debug("feedback %s on %s skipped: %s", row["feedback_id"], row["request_id"], reason)
    stamp = _stamp(now)
    sft_file = neg_file = None
    if sft:
        sft_file = _new_file(export_dir, SFT_PREFIX, stamp)
        write_jsonl(sft_file, sft)
    if negatives:
        neg_file = _new_file(negatives_dir, NEGATIVE_PREFIX, stamp)
        write_jsonl(neg_file, negatives)
    # Files are on disk before any row is marked: a crash from here on is repaired by the recovery scan.
    for name, fids in by_file.items():
        db.mark_exported(fids, name, at=at)
    if sft_file is not None:
        db.mark_exported([r["provenance"]["feedback_id"] for r in sft], sft_file.name, at=at)
    if neg_file is not None:
        db.mark_exported([r["provenance"]["feedback_id"] for r in negatives], neg_file.name, at=at)
    for reason, fids in skipped.items():
        db.mark_exported(fids, SKIPPED_PREFIX + reason, at=at)
    dvc_added: list[str] = []
    if fb.dvc_add and (sft_file or neg_file or recovered):
        dvc_added = dvc_add(root, [export_dir, negatives_dir])
    summary = {
        "rows": len(rows),
        "counts": {
            "correction": counts["correction"],
            "positive": counts["positive"],
            "negative": counts["negative"],
            "skipped": counts["skipped"],
            "recovered": len(recovered),
        },
        "sft_rows": len(sft),
        "skipped": {reason: len(fids) for reason, fids in sorted(skipped.items())},
        "sft_file": None if sft_file is None else _relative(sft_file, root),
        "negatives_file": None if neg_file is None else _relative(neg_file, root),
        "recovered_files": sorted(by_file),
        "dvc_added": dvc_added,
    }
    c = summary["counts"]
    log.info(
        "feedback export: %d SFT rows (%d corrections, %d positive), %d negatives, %d skipped%s, "
        "%d recovered",
        len(sft), c["correction"], c["positive"], c["negative"], c["skipped"],
        f" ({', '.join(f'{k}: {v}' for k, v in summary['skipped'].items())})" if summary["skipped"] else "",
        c["recovered"],
    )
    return summary
