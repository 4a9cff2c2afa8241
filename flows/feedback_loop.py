"""The `feedback-loop` flow: served traffic back into training data, and a retrain when there is enough.

    [A/B report] ─ [A/B decision] ─ export feedback (SFT rows, negatives, dvc add)
        ─ SFT rows exported since the last trigger >= feedback.retrain_threshold ? trigger retrain : wait

Composition only: every step is a task in `tasks/feedback.py`. The steps that touch the workspace run
under its run lock (`.tuneline/run.lock`, the one `retrain` holds), so an export never writes into
data/raw while a retrain's `dvc repro` reads it; the retrain is triggered after the lock is released
(it takes the lock itself). A busy workspace is a result, not a failure: the feedback stays in the
store and the next run exports it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from flows.retrain import resolve_workspace, run_holder
from tasks.feedback import (
    ab_decide_task,
    check_deployment,
    export_feedback_task,
    publish_ab_report,
    publish_markdown,
    record_trigger_task,
    trigger_retrain,
    waiting_feedback,
)
from tasks.workspace import WorkspaceBusy, workspace_lock
from tuneline.config import load_config
from tuneline.feedback.export import should_retrain
from tuneline.summaries import export_markdown

RETRAIN_DEPLOYMENT = "retrain/on-demand"


class FeedbackLoopParams(BaseModel):
    """What one feedback-loop run does; Prefect renders these fields as the run form in the UI."""

    model_config = ConfigDict(extra="forbid")

    workspace: str | None = Field(
        None,
        description="The DVC workspace (a git checkout of this project). Empty: $TUNELINE_WORKSPACE of "
        "the serving process, else the checkout this flow is served from.",
    )
    ab_report: bool = Field(True, description="Publish the A/B report (reports/ab.html, `ab-report`).")
    decide: bool = Field(
        False,
        description="Run the A/B decision: promote or retire the challenger when the evidence is "
        "significant (release approval still applies). Off: report only.",
    )
    retrain_deployment: str | None = Field(
        RETRAIN_DEPLOYMENT,
        description="Deployment (flow/deployment) started when the threshold is reached. Empty: export "
        "only, never trigger.",
    )
    retrain_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Parameters of the triggered run. Empty: the deployment's own (its workspace).",
    )
    threshold: int | None = Field(
        None, ge=1, description="New SFT rows that trigger a retrain. Empty: feedback.retrain_threshold."
    )
    lock_wait_s: float = Field(
        0.0, ge=0, description="How long to wait for a run holding the workspace (0: skip this run)."
    )


DEFAULT_PARAMS = FeedbackLoopParams()


@flow(
    name="feedback-loop",
    description="tuneline: A/B report (and decision), served feedback exported as raw training data "
    "(DVC-versioned), a retrain triggered once enough new rows arrived.",
)
def feedback_loop(params: FeedbackLoopParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """Report on the A/B test, optionally decide it, export feedback, trigger a retrain over threshold.

    Returns:
        {"workspace", "status": "done" | "busy", "ab": {"aliases", "test"} or None, "decision": the
        A/B decision or None, "export": the export summary or None, "threshold", "retrain": the
        triggered run {"deployment", "flow_run_id", "flow_run_name"} or None}.

    Raises:
        StoreError / FeedbackExportError: the export failed (nothing is lost: rows stay unexported).
        RegistryError: the A/B decision could not read or move the aliases.
        DeploymentNotFound: `retrain_deployment` is not registered (checked before anything else).
    """
    logger = get_run_logger()
    workspace = resolve_workspace(params.workspace, needs=("params.yaml",))
    ws = str(workspace)
    run_name = flow_run.get_name() or "feedback-loop"
    threshold = params.threshold or load_config(workspace / "params.yaml").feedback.retrain_threshold
    out: dict[str, Any] = {
        "workspace": ws,
        "status": "done",
        "ab": None,
        "decision": None,
        "export": None,
        "threshold": threshold,
        "retrain": None,
    }
    if params.retrain_deployment:
        # Before anything is exported: rows exported now would not count towards a later trigger.
        check_deployment(params.retrain_deployment)
    try:
        with workspace_lock(workspace, run_holder(run_name), params.lock_wait_s):
            if params.ab_report:
                state = publish_ab_report(ws, return_state=True)
                if state.is_completed():
                    report = state.result()
                    out["ab"] = {"aliases": report.get("aliases"), "test": report.get("test")}
                else:  # a report for people: its failure must not hold back the export
                    logger.warning("A/B report not published: %s", state.message)
            if params.decide:
                out["decision"] = ab_decide_task(ws)
            summary = export_feedback_task(ws)
            out["export"] = summary
            publish_markdown("feedback-export", export_markdown(summary), "feedback -> raw training data")
    except WorkspaceBusy as exc:
        logger.warning("feedback loop skipped: %s", exc)
        publish_markdown("feedback-loop", f"Skipped: {exc}\n\nThe feedback stays in the store.", "waiting")
        out["status"] = "busy"
        return out
    waiting = waiting_feedback(ws)  # every export since the last trigger, not just this one
    new_rows = waiting["rows"]
    out["waiting"] = waiting
    if not params.retrain_deployment:
        text = f"{new_rows} new SFT rows (threshold {threshold}); triggering is off for this run."
    elif should_retrain(new_rows, threshold):
        key = f"{flow_run.get_id() or run_name}:{summary['sft_file']}"
        out["retrain"] = trigger_retrain(params.retrain_deployment, params.retrain_parameters, key)
        record_trigger_task(ws, waiting["files"], out["retrain"]["flow_run_id"])
        text = (
            f"{new_rows} new SFT rows >= threshold {threshold}: triggered `{params.retrain_deployment}` "
            f"run **{out['retrain']['flow_run_name']}** ({out['retrain']['flow_run_id']})."
        )
    else:
        text = (
            f"{new_rows} SFT rows waiting < threshold {threshold}: no retrain triggered; they wait in "
            f"{len(waiting['files'])} export file(s) for the next scheduled retrain or trigger."
        )
    logger.info(text)
    publish_markdown("feedback-loop", text, "retrain trigger")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m flows.feedback_loop [options]`: one run from a shell."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.feedback_loop", description=feedback_loop.description
    )
    parser.add_argument("--workspace", help="DVC workspace (default: this checkout)")
    parser.add_argument("--decide", action="store_true", help="run the A/B decision too")
    parser.add_argument("--no-ab-report", action="store_true", help="skip the A/B report")
    parser.add_argument("--threshold", type=int, help="override feedback.retrain_threshold")
    parser.add_argument("--retrain-deployment", default=RETRAIN_DEPLOYMENT, help="flow/deployment to start")
    parser.add_argument("--no-trigger", action="store_true", help="export only, never start a retrain")
    args = parser.parse_args(argv)
    params = FeedbackLoopParams(
        workspace=args.workspace,
        decide=args.decide,
        ab_report=not args.no_ab_report,
        threshold=args.threshold,
        retrain_deployment=None if args.no_trigger else args.retrain_deployment,
    )
    summary = feedback_loop(params)
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    main()
