"""The `feedback-loop` flow against the session's temporary Prefect API: a real sqlite feedback store, a
real git + DVC workspace, a real MLflow registry (sqlite) for the A/B report, and a real deployment whose
flow runs the loop creates (or not) when the threshold is (or is not) reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml
from prefect import flow, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun

from flows.feedback_loop import FeedbackLoopParams, feedback_loop
from helpers import N_CORRECTIONS, N_POSITIVE, fill, git_dvc_repo
from prefect_harness import prefect_harness  # noqa: F401
from tasks.feedback import DeploymentNotFound
from tasks.workspace import workspace_lock
from tuneline.config import load_config
from tuneline.feedback.export import pending_count
from tuneline.feedback.store import FeedbackStore
from tuneline.jsonio import read_json
from tuneline.summaries import export_markdown

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.integration]  # Prefect flows
PROBE = "retrain-probe/on-demand"
N_SFT = N_CORRECTIONS + N_POSITIVE + 1


@flow(name="retrain-probe")
def retrain_probe(params: dict[str, Any] | None = None) -> None:
    """Stands in for `retrain` as the deployment the loop starts (the loop only creates the run)."""


@pytest.fixture(scope="module")
def probe_deployment(prefect_harness: None) -> UUID:  # noqa: F811
    return retrain_probe.to_deployment(name="on-demand").apply()


def runs_of(deployment_id: UUID) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def loop_run(name: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return run


def artifacts(flow_run_id: UUID) -> dict[str, str]:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: str(a.data) for a in arts if a.key}


def workspace(tmp_path: Path, threshold: int) -> Path:
    ws = git_dvc_repo(tmp_path / "ws")
    (ws / "params.yaml").write_text(yaml.safe_dump({
        "serve": {"store_url": "sqlite:///feedback.db"},  # relative: the flow anchors it at the workspace
        "tracking": {"uri": "sqlite:///mlflow.db"},
        "registry": {"model_name": "tuneline-demo"},
        "feedback": {"retrain_threshold": threshold},
    }))
    store = FeedbackStore(f"sqlite:///{ws / 'feedback.db'}")
    fill(store)
    store.close()
    return ws


def test_over_threshold_triggers_the_retrain_deployment(tmp_path: Path, probe_deployment: UUID) -> None:
    ws = workspace(tmp_path, threshold=N_SFT)
    before = {r.id for r in runs_of(probe_deployment)}
    params = FeedbackLoopParams(
        workspace=str(ws), decide=True, retrain_deployment=PROBE,
        retrain_parameters={"params": {"stages": ["ingest"]}},
    )
    out = feedback_loop.with_options(flow_run_name="loop-over")(params)

    assert out["status"] == "done" and out["threshold"] == N_SFT
    assert out["export"]["sft_rows"] == N_SFT and out["export"]["dvc_added"]
    assert (ws / "data/raw/feedback.dvc").is_file()
    created = [r for r in runs_of(probe_deployment) if r.id not in before]
    assert [str(r.id) for r in created] == [out["retrain"]["flow_run_id"]]
    assert created[0].parameters == {"params": {"stages": ["ingest"]}}
    # A/B: the report was written and published; the decision ran (no challenger alias registered).
    assert read_json(ws / "reports" / "ab.json")["model_name"] == "tuneline-demo"
    assert out["decision"]["decision"]["action"] == "no_challenger"
    published = artifacts(loop_run("loop-over").id)
    assert {"ab-report", "feedback-export", "feedback-loop"} <= set(published)
    assert "A/B" in published["ab-report"] and "triggered" in published["feedback-loop"]

    # Nothing new since: the next run exports nothing and starts nothing.
    again = feedback_loop(FeedbackLoopParams(workspace=str(ws), ab_report=False, retrain_deployment=PROBE))
    assert again["export"]["sft_rows"] == 0 and again["retrain"] is None
    assert len(runs_of(probe_deployment)) == len(before) + 1


def test_under_threshold_waits(tmp_path: Path, probe_deployment: UUID) -> None:
    ws = workspace(tmp_path, threshold=N_SFT + 1)
    before = len(runs_of(probe_deployment))
    out = feedback_loop.with_options(flow_run_name="loop-under")(
        FeedbackLoopParams(workspace=str(ws), retrain_deployment=PROBE)
    )
    assert out["export"]["sft_rows"] == N_SFT and out["retrain"] is None
    assert len(runs_of(probe_deployment)) == before
    assert "no retrain triggered" in artifacts(loop_run("loop-under").id)["feedback-loop"]
    # One more row in a later export: the rows waiting since the last trigger add up and reach it.
    store = FeedbackStore(f"sqlite:///{ws / 'feedback.db'}")
    store.record_feedback("req-041", thumb=1)  # a new verdict on a formerly negative exchange
    store.close()
    out = feedback_loop(FeedbackLoopParams(workspace=str(ws), ab_report=False, retrain_deployment=PROBE))
    assert out["export"]["sft_rows"] == 1 and out["waiting"]["rows"] == N_SFT + 1
    assert out["retrain"] is not None and len(runs_of(probe_deployment)) == before + 1
    # Counted rows never count again, whatever the threshold (the run's threshold overrides params.yaml).
    out = feedback_loop(
        FeedbackLoopParams(workspace=str(ws), ab_report=False, retrain_deployment=PROBE, threshold=1)
    )
    assert out["waiting"]["rows"] == 0 and out["retrain"] is None
    assert len(runs_of(probe_deployment)) == before + 1


def test_without_a_retrain_deployment_the_loop_only_exports(tmp_path: Path) -> None:
    ws = workspace(tmp_path, threshold=1)
    out = feedback_loop(FeedbackLoopParams(workspace=str(ws), ab_report=False, retrain_deployment=None))
    assert out["export"]["sft_rows"] == N_SFT and out["retrain"] is None


def test_busy_workspace_is_a_result_and_keeps_the_feedback(tmp_path: Path, probe_deployment: UUID) -> None:
    ws = workspace(tmp_path, threshold=1)
    with workspace_lock(ws, {"flow_run_name": "nightly-holder"}):
        out = feedback_loop(FeedbackLoopParams(workspace=str(ws), retrain_deployment=PROBE))
    assert out["status"] == "busy" and out["export"] is None and out["retrain"] is None
    store = FeedbackStore(f"sqlite:///{ws / 'feedback.db'}")
    assert len(store.exchanges_with_feedback(only_unexported=True)) > N_SFT
    store.close()


def test_unknown_retrain_deployment_fails_the_run(tmp_path: Path) -> None:
    ws = workspace(tmp_path, threshold=1)
    state = feedback_loop(
        FeedbackLoopParams(workspace=str(ws), ab_report=False, retrain_deployment="retrain/no-such"),
        return_state=True,
    )
    assert state.is_failed()
    with pytest.raises(DeploymentNotFound, match="retrain/no-such"):
        state.result()
    # Checked first: nothing was exported, so the rows still count towards the next trigger.
    store = FeedbackStore(f"sqlite:///{ws / 'feedback.db'}")
    assert pending_count(load_config(ws / "params.yaml"), store) == N_SFT
    store.close()


def test_export_markdown() -> None:
    summary = {
        "counts": {"correction": 2, "positive": 3, "negative": 1, "skipped": 1, "recovered": 0},
        "sft_rows": 5, "skipped": {"comment_only": 1}, "sft_file": "data/raw/feedback/feedback-x.jsonl",
        "negatives_file": None, "dvc_added": ["data/raw/feedback"],
    }
    text = export_markdown(summary)
    assert "| 2 | 3 | 1 | 1 | 0 | 5 |" in text and "comment_only 1" in text
    assert "`data/raw/feedback/feedback-x.jsonl`" in text and "Negatives file" not in text


def test_hourly_deployment_registers_with_its_schedule_and_workspace(tmp_path: Path) -> None:
    from deploy.deployments import FEEDBACK_CRON, build_feedback_deployment

    dep = build_feedback_deployment(str(tmp_path), cron=FEEDBACK_CRON, timezone="UTC")
    dep_id = dep.apply()
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(dep_id)
        flow_name = client.read_flow(stored.flow_id).name
    assert (flow_name, stored.name) == ("feedback-loop", "hourly")
    [schedule] = stored.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == ("15 * * * *", "UTC")
    params = stored.parameters["params"]
    assert params["workspace"] == str(tmp_path) and params["retrain_deployment"] == "retrain/on-demand"
    assert params["decide"] is False
    form = stored.parameter_openapi_schema["definitions"]["FeedbackLoopParams"]["properties"]
    assert {"workspace", "decide", "threshold", "retrain_deployment"} <= set(form)
