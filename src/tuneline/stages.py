"""The stage registry: one verb = params section = DVC stage = CLI command = module = report."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from tuneline.config import Config
from tuneline.jsonio import write_json, write_jsonl
from tuneline.layout import Layout
from tuneline.ledger import Ledger, LedgerError

log = logging.getLogger(__name__)

DATA_STAGES = ("ingest", "validate_raw", "clean", "dedup", "split", "augment", "validate_splits")

DESCRIPTIONS = {
    "ingest": "Read raw sources (alpaca, sharegpt, OpenAI messages, CSV, parquet) into canonical JSONL.",
    "validate_raw": "Great Expectations contract on the ingested records; stops on critical failures.",
    "clean": "Strip HTML/URL/e-mail noise, normalize text, drop low-quality rows.",
    "dedup": "Drop exact and near duplicates (TF-IDF cosine >= dedup.threshold).",
    "split": "Stratified, seeded train/val/test split with no leaks across splits.",
    "augment": "Synonym / back-translation augmentation when train is small (never LLM-generated).",
    "validate_splits": "Great Expectations contract on train/val/test: the gate before training.",
}


def run_stage(name: str, cfg: Config, layout: Layout) -> dict[str, Any]:
    """Run one data stage on the workspace `layout`; returns its report (also written to reports/)."""
    if name not in DATA_STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(DATA_STAGES)}")
    module = importlib.import_module(f"tuneline.data.{name}")
    log.info("stage %s: start", name)
    report: dict[str, Any] = module.run(cfg, layout)
    log.info("stage %s: %s", name, _summary(report))
    return report


def finish_stage(
    layout: Layout,
    ledger: Ledger,
    rejected: list[dict[str, Any]],
    outputs: dict[Any, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Check the ledger, then write every output, the stage's rejected file and its report, atomically."""
    if len(rejected) != ledger.rows_rejected:
        raise LedgerError(
            f"{ledger.stage}: {len(rejected)} rejected rows written but {ledger.rows_rejected} counted"
        )
    report = ledger.report()
    for path, rows in outputs.items():
        write_jsonl(path, rows)
    write_jsonl(layout.rejected(ledger.stage), rejected)
    write_json(layout.report(ledger.stage), report)
    return report


def _summary(report: dict[str, Any]) -> str:
    keys = ("rows_in", "rows_kept", "rows_rejected", "rows_added")
    return ", ".join(f"{k}={report[k]}" for k in keys if k in report)
