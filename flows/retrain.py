"""The `retrain` flow: the pipeline's stages in order, each stage's report as an artifact, release approval.

    [dvc pull] ─ ingest … validate_splits ─ build_base ─ train ─ evaluate ─ promote
        ─ [gate says await_approval: pause for a person's decision] ─ [dvc push]

Composition only: every step is a task in `tasks/` (a DVC stage, a remote, a registry call). DVC decides
what reruns; the flow decides the order, publishes the reports and pauses for approval. One run per
workspace at a time: the flow holds `.tuneline/run.lock` from start to end, and a second run stops
with a message naming the holder before it touches anything.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.logging import get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Running
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tasks.artifacts import publish_approval, publish_funnel, publish_stage
from tasks.dvc_stages import (
    PIPELINE,
    STAGE_TASKS,
    StageName,
    checkout_remote,
    dvc_pull,
    dvc_push,
    experiment_name,
    hydra_overrides,
)
from tasks.registry import approve_release, record_no_decision, recorded_approval, reject_release
from tasks.workspace import workspace_lock
from tuneline.config import load_config
from tuneline.promote.status import MoveStatus
from tuneline.stages import DATA_STAGES
from tuneline.summaries import approval_request_markdown, read_report

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE_ENV = "TUNELINE_WORKSPACE"


class RetrainParams(BaseModel):
    """What one retrain run does; Prefect renders these fields as the run form in the UI."""

    model_config = ConfigDict(extra="forbid")

    stages: list[StageName] = Field(
        default_factory=lambda: list(PIPELINE),
        description="Stages to run, always in pipeline order (default: all). A stage whose inputs did not "
        "change is skipped by DVC. A subset runs each listed stage alone: upstream outputs must exist.",
    )
    force: list[StageName] = Field(
        default_factory=lambda: ["evaluate"],
        description="Stages to rerun even when DVC sees no change (`dvc repro -f -s`). `evaluate` by "
        "default: the registry's champion is outside DVC's view, so the candidate is always compared "
        "with the champion of today.",
    )
    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Dotted params for this run only, e.g. {'train.lr': '1e-4'}. With any override the "
        "stages run as a DVC experiment (`dvc exp run --set-param`) that records the exact params with "
        "dvc.lock (`dvc exp show`); train logs them to MLflow. params.yaml is restored afterwards.",
    )
    require_approval: bool | None = Field(
        None,
        description="Release gating: the champion moves only after a person approves in this run's "
        "pause form. Empty: promote.require_approval from params.yaml; a different value is an override.",
    )
    approval_timeout_s: int = Field(
        43200,
        ge=1,
        description="How long the run waits for the approval form; then it records "
        "'no decision' on the version and the champion stays.",
    )
    approval_poll_s: int = Field(10, ge=1, description="How often the paused run checks for a decision.")
    pull: bool | None = Field(
        None,
        description="`dvc pull` inputs, cached outputs and the run cache from the remote first. Empty: "
        "when the workspace names its own remote in .dvc/config.local (a cluster worker's checkout).",
    )
    push: bool | None = Field(
        None,
        description="`dvc push` the run's outputs and run cache to the remote at the end. Empty: as `pull`.",
    )
    workspace: str | None = Field(
        None,
        description="The DVC workspace (a git checkout of this project). Empty: $TUNELINE_WORKSPACE of "
        "the serving process, else the checkout this flow is served from. Give each schedule its own.",
    )
    lock_wait_s: float = Field(
        0.0,
        ge=0,
        description="How long to wait for another run on this workspace to finish (0: stop at once).",
    )

    @field_validator("overrides")
    @classmethod
    def _dotted_keys(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [k for k in value if not k or any(not part for part in k.split(".")) or "=" in k]
        if bad:
            raise ValueError(f"override keys must be dotted param names like train.lr, got {bad}")
        return value

    def param_overrides(self) -> dict[str, str]:
        """The overrides this run applies, with the approval policy when it is given."""
        out = dict(self.overrides)
        if self.require_approval is not None:
            out["promote.require_approval"] = str(self.require_approval).lower()
        return out


DEFAULT_PARAMS = RetrainParams()


class ApprovalForm(RunInput):
    """The release decision a person submits to resume a paused run."""

    approve: bool = Field(description="Approve: this version becomes the champion. Off: rejected.")
    approver: str = Field(min_length=1, description="Who decides (recorded on the model version).")
    note: str = Field("", description="Why: recorded with the decision.")


def resolve_workspace(chosen: str | None, needs: tuple[str, ...] = ("dvc.yaml", "params.yaml")) -> Path:
    """The workspace a flow run works in: `chosen`, else $TUNELINE_WORKSPACE, else this checkout.

    Raises:
        ValueError: one of the files `needs` is missing there.
    """
    chosen = chosen or os.environ.get(WORKSPACE_ENV)
    root = Path(chosen).expanduser().resolve() if chosen else REPO_ROOT
    if not all((root / name).is_file() for name in needs):
        raise ValueError(f"workspace {root} has no {' / '.join(needs)}: not a tuneline checkout")
    return root


def run_holder(run_name: str) -> dict[str, Any]:
    """Who holds the workspace lock: this flow run, its deployment, process and host."""
    return {
        "flow_run_name": run_name,
        "flow_run_id": flow_run.get_id(),
        "deployment": deployment.get_name(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _publish(publisher: Any, *args: Any, **kwargs: Any) -> None:
    # Artifacts are for people reading the run; an API hiccup there must not fail a training run.
    state = publisher(*args, return_state=True, **kwargs)
    if not state.is_completed():
        get_run_logger().warning("could not publish %s: %s", publisher.name, state.message)


def release_approval(
    workspace: Path, report: dict[str, Any], timeout_s: int, poll_s: int, run_name: str
) -> dict[str, Any]:
    """Pause the run until a person submits `ApprovalForm`, then record the decision through tuneline.

    Approved: the approval is recorded and the version promoted (compare-and-set, so a champion that
    moved meanwhile gives status "conflict"). Rejected: recorded, the champion stays. No answer within
    `timeout_s`: "no decision" is tagged on the version and the champion stays.
    """
    logger = get_run_logger()
    ws, version = str(workspace), str(report["version"])
    _publish(publish_approval, "approval-request", approval_request_markdown(report, timeout_s))
    form = ApprovalForm.with_initial_data(
        description=f"Release {report.get('model_name')} version {version}? Read reports/review.html and "
        "the promote-gate artifact first."
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=timeout_s, poll_interval=poll_s, key=f"approve-v{version}"
        )
    except FlowPauseTimeout:
        # The API fails a paused run whose pause expired on its next transition; "no decision" is a
        # result, not a failure, so take the run back to Running (forced: the pause can no longer resume).
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.get_id(), Running(message="approval: no decision"), force=True)
        logger.warning(
            "no release decision on version %s within %s s: the champion stays", version, timeout_s
        )
        record_no_decision(ws, version, timeout_s, run_name)
        outcome = {"decision": "no_decision", "version": version, "approver": None, "result": None}
        _publish(
            publish_approval,
            "approval",
            f"Version {version}: **no decision** within {timeout_s} s; champion "
            f"unchanged. Approve later with `tuneline promote --approve {version}`.",
        )
        return outcome
    if answer.approve:
        result = approve_release(ws, version, answer.approver, answer.note)
        text = (
            f"Version {version} **approved** by {answer.approver}: {result['status']} ({result['reason']})."
        )
    else:
        reject_release(ws, version, answer.approver, answer.note)
        result = None
        text = f"Version {version} **rejected** by {answer.approver}; champion unchanged."
    _publish(publish_approval, "approval", text + (f"\n\nNote: {answer.note}" if answer.note else ""))
    logger.info(text)
    return {
        "decision": "approved" if answer.approve else "rejected",
        "version": version,
        "approver": answer.approver,
        "note": answer.note,
        "result": result,
    }


@flow(
    name="retrain",
    description="tuneline: data stages, base, train, evaluate, promote (DVC decides what "
    "reruns); each stage's report as an artifact; pauses for release approval when the gate asks.",
)
def retrain(params: RetrainParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """Run the pipeline on a workspace, in order, under the workspace's run lock.

    Returns:
        {"workspace", "experiment" (bool), "stages": [{"stage", "ran", "forced", "seconds",
        "experiment"}], "promotion": reports/promote.json's result or None, "approval": the decision
        or None, "sync": {"remote": the checkout's own DVC remote or None, "pull", "push"}}.

    Raises:
        WorkspaceBusy: another run holds the workspace.
        CommandFailed: a stage (or pull / push) failed; the message ends with its stderr tail.
        ConfigError: an override names an unknown param or has a bad value.
    """
    logger = get_run_logger()
    workspace = resolve_workspace(params.workspace)
    ws = str(workspace)
    run_name = flow_run.get_name() or "retrain"
    overrides = params.param_overrides()
    if overrides:  # every problem named at once, before any stage runs
        load_config(workspace / "params.yaml", [f"{k}={v}" for k, v in overrides.items()])
    selected = [s for s in PIPELINE if s in params.stages]
    data_selected = [s for s in selected if s in DATA_STAGES]
    summary: dict[str, Any] = {
        "workspace": ws,
        "experiment": bool(overrides),
        "stages": [],
        "promotion": None,
        "approval": None,
    }
    # A checkout with its own remote (a cluster worker) shares its work: pull before, push after.
    remote = checkout_remote(workspace)
    pull = params.pull if params.pull is not None else remote is not None
    push = params.push if params.push is not None else remote is not None
    summary["sync"] = {"remote": remote, "pull": pull, "push": push}
    with workspace_lock(workspace, run_holder(run_name), params.lock_wait_s):
        params_file = workspace / "params.yaml"
        original = params_file.read_bytes() if overrides else None
        try:
            if pull:
                dvc_pull(ws)
            set_params = hydra_overrides(workspace, overrides) if overrides else None
            for stage in selected:
                experiment = experiment_name(run_name, stage) if set_params is not None else None
                started = time.time()
                try:
                    forced = stage in params.force
                    outcome = STAGE_TASKS[stage](ws, stage, forced, set_params, experiment, pull)
                except Exception:
                    # A failed contract writes its report before it stops: that report says why.
                    _publish(publish_stage, ws, stage, newer_than=started)
                    raise
                _publish(publish_stage, ws, stage)
                summary["stages"].append(outcome)
                if data_selected and stage == data_selected[-1]:
                    _publish(publish_funnel, ws)
            promote = read_report(workspace, "promote") if "promote" in selected else None
            if promote is not None:
                summary["promotion"] = promote["result"]
                if promote["result"]["status"] == MoveStatus.NEEDS_APPROVAL:
                    ran = summary["stages"][-1]["ran"]
                    if ran or recorded_approval(ws, str(promote["version"])) is None:
                        summary["approval"] = release_approval(
                            workspace, promote, params.approval_timeout_s, params.approval_poll_s, run_name
                        )
                    else:
                        logger.info("version %s already has a recorded decision", promote["version"])
            if push:
                dvc_push(ws)
        finally:
            if original is not None:
                # The experiment keeps the overridden params; the workspace's params.yaml stays the
                # source of truth for the next run (DVC reruns whatever the override changed).
                params_file.write_bytes(original)
    logger.info(
        "retrain done: %s",
        ", ".join(f"{s['stage']}{'' if s['ran'] else ' (cached)'}" for s in summary["stages"]) or "no stages",
    )
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m flows.retrain [options]`: one run from a shell, against `PREFECT_API_URL` (a server) or,
    without it, a temporary local API that lives as long as the run."""
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=retrain.description)
    parser.add_argument("--workspace", help="DVC workspace (default: this checkout)")
    parser.add_argument("--stage", dest="stages", action="append", choices=PIPELINE, help="run only these")
    parser.add_argument("--force", action="append", choices=PIPELINE, help="rerun even if unchanged")
    parser.add_argument("--no-force", action="store_true", help="force nothing (not even evaluate)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="param override for this run (runs as a DVC experiment)",
    )
    parser.add_argument("--require-approval", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--approval-timeout-s", type=int)
    parser.add_argument("--pull", action=argparse.BooleanOptionalAction, default=None,
                        help="dvc pull first (default: when .dvc/config.local names a remote)")
    parser.add_argument("--push", action=argparse.BooleanOptionalAction, default=None,
                        help="dvc push at the end (default: as --pull)")
    args = parser.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"--set takes KEY=VALUE, got {bad}")
    fields: dict[str, Any] = {
        "workspace": args.workspace,
        "pull": args.pull,
        "push": args.push,
        "require_approval": args.require_approval,
        "overrides": dict(o.split("=", 1) for o in args.overrides),
    }
    if args.stages:
        fields["stages"] = args.stages
    if args.force or args.no_force:
        fields["force"] = [] if args.no_force else args.force
    if args.approval_timeout_s:
        fields["approval_timeout_s"] = args.approval_timeout_s
    summary = retrain(RetrainParams(**fields))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
