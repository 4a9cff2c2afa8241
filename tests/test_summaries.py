"""The stage summaries published on a run's page (`tuneline.summaries`).

`tests/data/summaries_golden.json` holds what the Prefect layer published for these reports before the
builders moved into the library (kind, artifact key, markdown or table rows, description): the move must
not change a character of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneline.summaries import (
    approval_request_markdown,
    export_markdown,
    funnel_description,
    funnel_table,
    stage_summaries,
)

GOLDEN = json.loads((Path(__file__).parent / "data" / "summaries_golden.json").read_text(encoding="utf-8"))
REPORTS: dict[str, dict[str, Any]] = {
    "ingest": {"rows_in": 12, "rows_kept": 10, "rows_rejected": 2,
               "rejected_by_reason": {"empty": 1, "bad|json": 1}},
    "validate_raw": {"success": False, "expectations_passed": 3, "expectations_evaluated": 4, "rows": 10,
                     "expectations": [{"name": "ok", "success": True},
                                      {"name": "len", "success": False, "critical": True,
                                       "unexpected_count": 2, "description": "too\nlong | a"}]},
    "augment": {"rows_in": 10, "rows_kept": 10, "rows_rejected": 0, "rows_added": 0, "skipped": True,
                "reason": "disabled"},
    "build_base": {"parameters": 123456, "vocab_size": 512, "loss_before": 6.123456, "loss_after": 1.5},
    "train": {"steps": 3, "lr": 0.002, "health_status": "ok", "unrelated": 1, "early_stopped": False},
    "train_health": {"status": "warning", "diagnosis": "lr too high",
                     "alerts": [{"kind": "flat_loss", "severity": "warning", "step": 9, "message": "flat"}]},
    "evaluate": {"test_rows": 7, "comparison": {"loss": {
        "direction": "lower", "base": 5.0, "candidate": 4.5, "champion": None, "delta_vs_base": -0.5,
        "delta_vs_champion": None}}},
    "promote": {"model_name": "demo", "version": "3", "champion_before": None, "champion_after": "3",
                "decision": {"status": "promote", "rows": [
                    {"criterion": "parity", "value": 0.9, "threshold": 0.8, "passed": True, "reason": "ok"}]},
                "result": {"status": "promoted", "reason": "gate passed"}},
    "data": {"funnel": [{"stage": "ingest", "rows_in": 12, "rows_kept": 10, "rows_rejected": 2,
                         "rejected_by_reason": {"empty": 2}}],
             "ledger": {"raw_rows": 12, "final_rows": 10, "rejected": 2, "augmented": 0, "balanced": True},
             "splits": {"train": {"rows": 8}, "test": {"rows": 2}}},
}
EXPORT = {"counts": {"correction": 1, "positive": 2, "negative": 3, "skipped": 1, "recovered": 0},
          "sft_rows": 3, "skipped": {"no_text": 1}, "sft_file": "data/raw/feedback/x.jsonl",
          "negatives_file": None, "dvc_added": ["data/raw/feedback"]}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "reports").mkdir()
    for stage, report in REPORTS.items():
        (tmp_path / "reports" / f"{stage}.json").write_text(json.dumps(report), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("stage", ["ingest", "validate_raw", "augment", "build_base", "train", "evaluate",
                                   "promote", "serve"])
def test_stage_summaries_are_what_the_run_page_showed(workspace: Path, stage: str) -> None:
    got = [[s.kind, s.name.lower().replace("_", "-"), s.content, s.description]
           for s in stage_summaries(workspace, stage)]
    assert got == GOLDEN[stage]


def test_funnel_approval_and_export_text_unchanged() -> None:
    assert [funnel_table(REPORTS["data"]), funnel_description(REPORTS["data"])] == GOLDEN["funnel"]
    assert approval_request_markdown(REPORTS["promote"], 600) == GOLDEN["approval"]
    assert export_markdown(EXPORT) == GOLDEN["export"]


def test_no_report_no_summary(tmp_path: Path) -> None:
    assert stage_summaries(tmp_path, "train") == []
