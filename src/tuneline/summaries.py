"""Each stage's report summarized for the run's page in the orchestrator's UI: markdown, or table rows.

Pure builders: a stage's `reports/<stage>.json` content in, markdown or table rows out. `stage_summaries`
says which summaries a stage's report gives (kind, name, text or rows, description); the orchestration
layer publishes them as it likes (`tasks/artifacts.py` as Prefect artifacts, keyed by the name with
dashes, so the Artifacts page keeps one history per key across runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tuneline.layout import Layout
from tuneline.stages import DATA_STAGES

VALIDATION_STAGES = ("validate_raw", "validate_splits")
TRAIN_METRICS = (
    "train_rows",
    "val_rows",
    "steps",
    "epochs",
    "lr",
    "warmup",
    "schedule",
    "effective_batch",
    "per_device_batch",
    "grad_accum",
    "world_size",
    "zero_stage",
    "precision",
    "max_length",
    "trainable_params",
    "total_params",
    "train_loss_first",
    "train_loss_final",
    "val_loss_before",
    "val_loss_best",
    "val_perplexity_best",
    "early_stopped",
    "useful_token_fraction",
    "health_status",
)


def read_report(workspace: str | Path, stage: str) -> dict[str, Any] | None:
    """`reports/<stage>.json` of the workspace, or None when the stage has not written it."""
    path = Layout(Path(workspace)).report(stage)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _reasons(by_reason: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((by_reason or {}).items(), key=lambda kv: -kv[1])) or "—"


def data_stage_markdown(stage: str, report: dict[str, Any]) -> str:
    """One data stage: rows in / kept / rejected (by reason) / added; for a contract, its verdict and
    the expectations that failed."""
    lines = [f"### `{stage}`", ""]
    if stage in VALIDATION_STAGES:
        verdict = "passed" if report.get("success") else "FAILED"
        lines += [
            f"Contract **{verdict}**: {report.get('expectations_passed')} of "
            f"{report.get('expectations_evaluated')} expectations on {report.get('rows')} rows.",
            "",
        ]
        failed = [e for e in report.get("expectations", []) if not e.get("success")]
        if failed:
            lines += ["| expectation | critical | unexpected | description |", "|---|---|---|---|"]
            lines += [
                f"| {e.get('name')} | {e.get('critical')} | {e.get('unexpected_count')} | "
                f"{_fmt(e.get('description'))} |"
                for e in failed
            ]
        return "\n".join(lines)
    lines += [
        "| rows in | kept | rejected | added | rejected by reason |",
        "|---|---|---|---|---|",
        f"| {report.get('rows_in')} | {report.get('rows_kept')} | {report.get('rows_rejected')} | "
        f"{report.get('rows_added', 0)} | {_reasons(report.get('rejected_by_reason'))} |",
    ]
    if stage == "augment" and report.get("skipped"):
        lines += ["", f"Skipped: {report.get('reason')}"]
    return "\n".join(lines)


def funnel_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The data funnel (reports/data.json of `tuneline report`): one row per row-dropping stage."""
    return [
        {
            "stage": r["stage"],
            "rows_in": r.get("rows_in"),
            "kept": r.get("rows_kept"),
            "rejected": r.get("rows_rejected"),
            "added": r.get("rows_added"),
            "rejected_by_reason": _reasons(r.get("rejected_by_reason")),
        }
        for r in data.get("funnel", [])
    ]


def funnel_description(data: dict[str, Any]) -> str:
    """The end-to-end ledger and split sizes under the funnel table."""
    ledger = data.get("ledger", {})
    splits = ", ".join(f"{name} {s.get('rows')}" for name, s in data.get("splits", {}).items())
    balanced = "balanced" if ledger.get("balanced") else "NOT balanced"
    return (
        f"Data funnel: {ledger.get('raw_rows')} raw rows → {ledger.get('final_rows')} kept + "
        f"{ledger.get('rejected')} rejected (ledger {balanced}); {ledger.get('augmented')} augmented. "
        f"Splits: {splits or '—'}. Full page: reports/data.html"
    )


def build_base_markdown(report: dict[str, Any]) -> str:
    """The demo base model's facts."""
    return (
        "### `build_base`\n\n| parameters | vocab | loss before | loss after |\n|---|---|---|---|\n"
        f"| {report.get('parameters')} | {report.get('vocab_size')} | {_fmt(report.get('loss_before'))} | "
        f"{_fmt(report.get('loss_after'))} |"
    )


def train_table(report: dict[str, Any]) -> list[dict[str, str]]:
    """Training metrics (reports/train.json) as metric / value rows."""
    return [{"metric": k, "value": _fmt(report[k])} for k in TRAIN_METRICS if k in report]


def health_markdown(health: dict[str, Any]) -> str:
    """The health monitor's verdict and alerts (reports/train_health.json)."""
    lines = [f"### Training health: **{health.get('status')}**", ""]
    alerts = health.get("alerts") or []
    if alerts:
        lines += ["| kind | severity | step | message |", "|---|---|---|---|"]
        lines += [
            f"| {a.get('kind')} | {a.get('severity')} | {a.get('step')} | {_fmt(a.get('message'))} |"
            for a in alerts
        ]
    else:
        lines.append("No alerts: no NaN, flat or rising val loss, LR on schedule.")
    if health.get("diagnosis"):
        lines += ["", f"Diagnosis: {_fmt(health['diagnosis'])}"]
    return "\n".join(lines)


def evaluate_table(report: dict[str, Any]) -> list[dict[str, str]]:
    """Base / champion / candidate per metric, with the deltas (reports/evaluate.json `comparison`)."""
    rows = []
    for metric, c in report.get("comparison", {}).items():
        rows.append(
            {
                "metric": metric,
                "direction": c.get("direction"),
                "base": _fmt(c.get("base")),
                "champion": _fmt(c.get("champion")),
                "candidate": _fmt(c.get("candidate")),
                "delta_vs_base": _fmt(c.get("delta_vs_base")),
                "delta_vs_champion": _fmt(c.get("delta_vs_champion")),
            }
        )
    return rows


def gate_table(report: dict[str, Any]) -> list[dict[str, str]]:
    """The promotion gate (reports/promote.json): criterion, value, threshold, passed, reason."""
    return [
        {
            "criterion": r.get("criterion"),
            "value": _fmt(r.get("value")),
            "threshold": _fmt(r.get("threshold")),
            "passed": "yes" if r.get("passed") else "NO",
            "reason": _fmt(r.get("reason")),
        }
        for r in report.get("decision", {}).get("rows", [])
    ]


def gate_description(report: dict[str, Any]) -> str:
    """Which version, what the gate said and what moved."""
    result = report.get("result", {})
    return (
        f"{report.get('model_name')} version {report.get('version')}: gate "
        f"**{report.get('decision', {}).get('status')}**; {result.get('status')}: {result.get('reason')}. "
        f"Champion {report.get('champion_before') or 'unset'} → {report.get('champion_after') or 'unset'}."
    )


def approval_request_markdown(report: dict[str, Any], timeout_s: int) -> str:
    """What the approver reads before resuming the paused run."""
    rows = "\n".join(
        f"| {r['criterion']} | {r['value']} | {r['threshold']} | {r['passed']} | {r['reason']} |"
        for r in gate_table(report)
    )
    return (
        f"## Release approval: {report.get('model_name')} version {report.get('version')}\n\n"
        "The gate passed; the champion moves only with a person's approval. Read "
        "`reports/review.html` (base / champion / candidate replies side by side), then resume this "
        f"run with the form: approve or reject, your name, a note. Unanswered after {timeout_s} s, "
        "the run records no decision and the champion stays.\n\n"
        f"| criterion | value | threshold | passed | reason |\n|---|---|---|---|---|\n{rows}"
    )


def export_markdown(summary: dict[str, Any]) -> str:
    """The export summary as markdown: counts per kind, skip reasons, files, what DVC added."""
    c = summary["counts"]
    table = "\n".join([
        "### Feedback export",
        "",
        "| corrections | positive | negatives | skipped | recovered | SFT rows written |",
        "|---|---|---|---|---|---|",
        f"| {c['correction']} | {c['positive']} | {c['negative']} | {c['skipped']} | {c['recovered']} | "
        f"{summary['sft_rows']} |",
    ])
    notes = []
    if summary["skipped"]:
        notes.append("Skipped: " + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items()))
    for label, key in (("SFT file", "sft_file"), ("Negatives file", "negatives_file")):
        if summary[key]:
            notes.append(f"{label}: `{summary[key]}`")
    if summary["dvc_added"]:
        notes.append(f"`dvc add`: {', '.join(summary['dvc_added'])}")
    return "\n\n".join([table, *notes])


@dataclass(frozen=True)
class Summary:
    """One summary of a stage's report: markdown text or table rows, under `name`."""

    kind: Literal["markdown", "table"]
    name: str  # the stage verb (or `train_health`, `promote_gate`); a UI key is derived from it
    content: str | list[dict[str, Any]]
    description: str


def stage_summaries(workspace: str | Path, stage: str) -> list[Summary]:
    """The summaries of `stage`'s report in the workspace (none when the stage wrote no report)."""
    report = read_report(workspace, stage)
    if report is None:
        return []
    if stage in DATA_STAGES:
        return [Summary("markdown", stage, data_stage_markdown(stage, report), f"reports/{stage}.json")]
    if stage == "build_base":
        return [Summary("markdown", stage, build_base_markdown(report), "reports/build_base.json")]
    if stage == "train":
        out = [Summary("table", "train", train_table(report),
                       "Training metrics (reports/train.json); curves: reports/train_curves.html")]
        health = read_report(workspace, "train_health")
        if health is not None:
            out.append(Summary("markdown", "train-health", health_markdown(health),
                               "reports/train_health.json"))
        return out
    if stage == "evaluate":
        return [Summary("table", "evaluate", evaluate_table(report),
                        f"Held-out test split, {report.get('test_rows')} rows "
                        "(reports/evaluate.json); human review: reports/review.html")]
    if stage == "promote":
        return [Summary("table", "promote-gate", gate_table(report), gate_description(report))]
    return []
