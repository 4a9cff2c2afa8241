"""Each stage's report, published as a Prefect artifact (markdown or table) for the run's page in the UI.

The builders are pure: a stage's `reports/<stage>.json` content in, markdown or table rows out.
`publish_stage` is the task that reads the report and creates the artifacts (none when the stage wrote
no report); keys are the stage verb with dashes (`validate-splits`, `train-health`, `promote-gate`), so
the Artifacts page keeps one history per key across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.workspace import workspace_config
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


def artifact_key(name: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return name.lower().replace("_", "-")


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


@task(
    name="publish_report",
    task_run_name="publish-{stage}",
    retries=1,
    retry_delay_seconds=5,
    cache_policy=NO_CACHE,
)
def publish_stage(workspace: str, stage: str, newer_than: float | None = None) -> list[str]:
    """Publish `stage`'s report as artifacts; returns the keys created (none when the report is absent,
    or older than `newer_than`, a timestamp: a stage that failed before writing leaves an old one)."""
    keys: list[str] = []
    path = Layout(Path(workspace)).report(stage)
    if newer_than is not None and (not path.is_file() or path.stat().st_mtime < newer_than):
        return keys
    report = read_report(workspace, stage)
    if report is None:
        return keys

    def markdown(key: str, text: str, description: str) -> None:
        create_markdown_artifact(markdown=text, key=artifact_key(key), description=description)
        keys.append(artifact_key(key))

    def table(key: str, rows: list[dict[str, Any]], description: str) -> None:
        create_table_artifact(table=rows, key=artifact_key(key), description=description)
        keys.append(artifact_key(key))

    if stage in DATA_STAGES:
        markdown(stage, data_stage_markdown(stage, report), f"reports/{stage}.json")
    elif stage == "build_base":
        markdown(stage, build_base_markdown(report), "reports/build_base.json")
    elif stage == "train":
        table(
            "train",
            train_table(report),
            "Training metrics (reports/train.json); curves: reports/train_curves.html",
        )
        health = read_report(workspace, "train_health")
        if health is not None:
            markdown("train-health", health_markdown(health), "reports/train_health.json")
    elif stage == "evaluate":
        table(
            "evaluate",
            evaluate_table(report),
            f"Held-out test split, {report.get('test_rows')} rows "
            "(reports/evaluate.json); human review: reports/review.html",
        )
    elif stage == "promote":
        table("promote-gate", gate_table(report), gate_description(report))
    return keys


@task(name="publish_funnel", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_funnel(workspace: str) -> str | None:
    """Write reports/data.json and data.html (`tuneline report`), then publish the funnel as a table."""
    from tuneline.data_half import workspace_report

    root = Path(workspace)
    workspace_report(Layout(root), workspace_config(root))
    data = read_report(root, "data")
    if data is None or not data.get("funnel"):
        return None
    return str(
        create_table_artifact(
            table=funnel_table(data), key="data-funnel", description=funnel_description(data)
        )
    )


@task(name="publish_approval", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_approval(kind: str, text: str) -> str:
    """A markdown artifact about the release decision (the request, or what was decided)."""
    return str(
        create_markdown_artifact(markdown=text, key=artifact_key(kind), description="release approval")
    )
