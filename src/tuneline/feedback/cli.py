"""`tuneline feedback export | status`: rated exchanges of the feedback store -> raw training data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tuneline.cli_common import ParamsOpt, SetOpt, command, load

feedback_app = typer.Typer(
    help="Turn served exchanges with user feedback into raw training data (data/raw/feedback).",
    no_args_is_help=True,
)

RootOpt = Annotated[
    Path, typer.Option("--root", help="Workspace the export writes into (relative paths are under it).")
]


@feedback_app.command("export")
@command()
def export_command(params: ParamsOpt = None, set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Export unexported feedback: corrections and positives as SFT rows to feedback.export_dir, thumbs
    down to feedback.negatives_dir, then `dvc add` both (feedback.dvc_add)."""
    from tuneline.feedback.export import export_feedback  # lazy: sqlalchemy (feedback store), ~0.3 s

    summary = export_feedback(load(params, set_), root)
    c = summary["counts"]
    typer.echo(
        f"{summary['sft_rows']} SFT rows ({c['correction']} corrections, {c['positive']} positive), "
        f"{c['negative']} negatives, {c['skipped']} skipped, {c['recovered']} recovered"
    )
    for reason, n in summary["skipped"].items():
        typer.echo(f"  skipped {reason}: {n}")
    for key in ("sft_file", "negatives_file"):
        if summary[key]:
            typer.echo(f"{key}: {summary[key]}")
    if summary["dvc_added"]:
        typer.echo(f"dvc add: {' '.join(summary['dvc_added'])}")


@feedback_app.command("status")
@command(logs=False)
def status_command(params: ParamsOpt = None, set_: SetOpt = None, root: RootOpt = Path(".")) -> None:
    """Unexported feedback by kind, and whether an export now would reach feedback.retrain_threshold."""
    from tuneline.feedback.export import pending_counts, should_retrain  # lazy: sqlalchemy, ~0.3 s

    cfg = load(params, set_)
    counts = pending_counts(cfg, root=root)
    sft = counts["correction"] + counts["positive"]
    threshold = cfg.feedback.retrain_threshold
    typer.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
    verdict = "would trigger a retrain" if should_retrain(sft, threshold) else "below the retrain threshold"
    typer.echo(f"pending SFT rows: {sft} (threshold {threshold}: {verdict})")
