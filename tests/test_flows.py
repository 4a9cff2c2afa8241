"""The `retrain` flow against a real (temporary) Prefect API, on tiny DVC workspaces built from this checkout.

Stages really run (`dvc repro` / `dvc exp run` in a subprocess), the registry is MLflow on sqlite, the
approval pause is resumed through the Prefect API with the typed form, and the lock is a real flock.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from prefect import flow, get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.flow_runs import resume_flow_run
from prefect.states import State
from prefect.utilities.callables import parameter_schema

from flows.retrain import ApprovalForm, RetrainParams, release_approval, retrain
from prefect_harness import REPO, make_workspace, prefect_harness  # noqa: F401
from tasks.dvc_stages import PIPELINE, StageName, command_env, hydra_overrides, stage_command
from tasks.workspace import LOCK_FILE, WorkspaceBusy, workspace_lock
from tuneline.stages import DATA_STAGES
from tuneline.stages import PIPELINE as STAGE_TABLE_VERBS
from tuneline.summaries import evaluate_table, gate_table, health_markdown, train_table
from tuneline.urls import anchored_url

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.integration]  # Prefect flows
# How long to wait for the run to reach the approval pause: a deadline, not a timing check; on a loaded
# 2-core machine the stages before it took over 4 minutes.
PAUSE_TIMEOUT_S = 900


def flow_run_named(name: str) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return runs[0] if runs else None


def artifact_keys(flow_run_id: Any) -> set[str]:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in arts if a.key}


def run_in_thread(call: Callable[[], State]) -> tuple[threading.Thread, dict[str, State]]:
    box: dict[str, State] = {}
    thread = threading.Thread(target=lambda: box.setdefault("state", call()), daemon=True)
    thread.start()
    return thread, box


def wait_paused(name: str, thread: threading.Thread) -> FlowRun:
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while time.monotonic() < deadline:
        run = flow_run_named(name)
        if run is not None and run.state is not None and run.state.is_paused():
            return run
        assert thread.is_alive(), f"flow run {name} ended without pausing"
        time.sleep(0.5)
    pytest.fail(f"flow run {name} did not pause within {PAUSE_TIMEOUT_S}s")


def registry(workspace: Path) -> tuple[Any, str]:
    import mlflow

    uri = anchored_url("sqlite:///mlflow.db", workspace)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri), uri


# ---------------------------------------------------------------- the whole pipeline


def test_retrain_end_to_end_pauses_for_approval_then_promotes(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", {"promote.require_approval": True})
    params = RetrainParams(
        workspace=str(ws), approval_poll_s=1, approval_timeout_s=PAUSE_TIMEOUT_S, push=True
    )
    thread, box = run_in_thread(
        lambda: retrain.with_options(flow_run_name="e2e-approve")(params, return_state=True)
    )
    paused = wait_paused("e2e-approve", thread)
    keys = artifact_keys(paused.id)
    assert {"promote-gate", "approval-request", "evaluate", "train", "train-health", "data-funnel"} <= keys
    assert {k.replace("_", "-") for k in PIPELINE} - {"promote"} <= keys

    resume_flow_run(
        paused.id, run_input={"approve": True, "approver": "alice", "note": "read the review page"}
    )
    thread.join(120)
    summary = box["state"].result()
    assert [s["stage"] for s in summary["stages"]] == list(PIPELINE)
    assert all(s["ran"] for s in summary["stages"])
    assert summary["promotion"]["status"] == "needs_approval"
    assert summary["approval"]["decision"] == "approved"
    assert summary["approval"]["result"]["status"] == "promoted"
    mc, _ = registry(ws)
    version = summary["approval"]["version"]
    assert str(mc.get_registered_model("tuneline-demo").aliases["champion"]) == version
    tags = mc.get_model_version("tuneline-demo", version).tags
    assert (tags["approval.decision"], tags["approval.by"], tags["gate.status"]) == (
        "approved",
        "alice",
        "await_approval",
    )
    assert "approval" in artifact_keys(paused.id)
    # dvc push went to the local remote (.dvc/config: ../dvc-remote, i.e. inside the workspace).
    assert any((ws / "dvc-remote").rglob("*"))

    # DVC is the truth: a second run with nothing forced reruns nothing and asks no one again.
    again = retrain(RetrainParams(workspace=str(ws), force=[]))
    assert [s["ran"] for s in again["stages"]] == [False] * len(PIPELINE)
    assert again["approval"] is None
    status = subprocess.run(["dvc", "status"], cwd=ws, env=command_env(), capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout


# ---------------------------------------------------------------- approval branch (unit level)


@flow(name="approval-branch")
def approval_branch(workspace: str, report: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    return release_approval(Path(workspace), report, timeout_s, 1, "approval-branch")


@pytest.fixture
def pending_version(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A workspace whose registry holds version 1 of tuneline-demo, passed by the gate, awaiting approval."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(
        yaml.safe_dump(
            {"tracking": {"uri": "sqlite:///mlflow.db"}, "registry": {"model_name": "tuneline-demo"}}
        )
    )
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    mc, _ = registry(ws)
    mc.create_registered_model("tuneline-demo")
    version = mc.create_model_version("tuneline-demo", source=str(tmp_path / "model")).version
    mc.set_model_version_tag("tuneline-demo", version, "gate.status", "await_approval")
    report = {
        "model_name": "tuneline-demo",
        "version": str(version),
        "decision": {
            "status": "await_approval",
            "rows": [
                {"criterion": "beats_base", "value": 0.1, "threshold": 0.005, "passed": True, "reason": "ok"}
            ],
        },
        "result": {"status": "needs_approval"},
    }
    return ws, report


def test_rejection_is_recorded_and_champion_stays(pending_version: tuple[Path, dict[str, Any]]) -> None:
    ws, report = pending_version
    call = approval_branch.with_options(flow_run_name="reject-branch")
    thread, box = run_in_thread(lambda: call(str(ws), report, PAUSE_TIMEOUT_S, return_state=True))
    paused = wait_paused("reject-branch", thread)
    # The pause carries the typed form: a resume without the approver's name is refused.
    with pytest.raises(Exception, match="approver"):
        ApprovalForm.model_validate({"approve": True, "approver": ""})
    resume_flow_run(paused.id, run_input={"approve": False, "approver": "bob", "note": "too verbose"})
    thread.join(60)
    outcome = box["state"].result()
    assert (outcome["decision"], outcome["approver"]) == ("rejected", "bob")
    mc, _ = registry(ws)
    tags = mc.get_model_version("tuneline-demo", report["version"]).tags
    assert (tags["approval.decision"], tags["approval.note"]) == ("rejected", "too verbose")
    assert "champion" not in mc.get_registered_model("tuneline-demo").aliases
    assert {"approval-request", "approval"} <= artifact_keys(paused.id)


def test_no_decision_in_time_leaves_the_champion(pending_version: tuple[Path, dict[str, Any]]) -> None:
    ws, report = pending_version
    state = approval_branch.with_options(flow_run_name="timeout-branch")(
        str(ws), report, 3, return_state=True
    )
    assert state.is_completed(), state
    assert state.result()["decision"] == "no_decision"
    mc, _ = registry(ws)
    tags = mc.get_model_version("tuneline-demo", report["version"]).tags
    assert tags["approval.no_decision_after_s"] == "3" and "approval.decision" not in tags
    assert "champion" not in mc.get_registered_model("tuneline-demo").aliases


# ---------------------------------------------------------------- one run per workspace


def test_second_run_on_a_busy_workspace_stops_naming_the_holder(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    holder = {
        "flow_run_name": "nightly-holder",
        "flow_run_id": "1234",
        "pid": 99,
        "host": "h",
        "started_at": "t",
    }
    with workspace_lock(ws, holder):
        state = retrain(RetrainParams(workspace=str(ws), stages=["ingest"]), return_state=True)
    assert state.is_failed()
    with pytest.raises(WorkspaceBusy, match=r"nightly-holder.*run\.lock"):
        state.result()
    assert not (ws / "dvc.lock").exists() and not (ws / "data" / "interim" / "ingest.jsonl").exists()
    # Released: the lock file no longer names anyone, and the next run goes ahead.
    assert (ws / LOCK_FILE).read_text() == ""
    assert retrain(RetrainParams(workspace=str(ws), stages=[]))["stages"] == []


def test_waiting_run_gets_the_lock_when_the_holder_ends(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with workspace_lock(ws, {"flow_run_name": "short"}):
            held.set()
            time.sleep(2)
        done.set()

    threading.Thread(target=hold, daemon=True).start()
    held.wait(10)
    summary = retrain(RetrainParams(workspace=str(ws), stages=[], lock_wait_s=30))
    assert done.is_set() and summary["stages"] == []


# ---------------------------------------------------------------- stages, experiments, failures


def test_overrides_run_as_a_dvc_experiment_and_params_yaml_is_restored(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    before = (ws / "params.yaml").read_bytes()
    summary = retrain.with_options(flow_run_name="exp-run")(
        RetrainParams(workspace=str(ws), stages=["ingest"], overrides={"ingest.on_bad_file": "error"})
    )
    assert summary["experiment"] and summary["stages"][0]["experiment"] == "exp-run-ingest"
    assert (ws / "params.yaml").read_bytes() == before
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json"],
        cwd=ws,
        env=command_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    experiments = [e for row in json.loads(shown.stdout) for e in (row.get("experiments") or [])]
    exp = next(e for e in experiments if e.get("name") == "exp-run-ingest")
    params = exp["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["ingest"]["on_bad_file"] == "error"


def test_bad_override_fails_before_any_stage(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    state = retrain(
        RetrainParams(workspace=str(ws), overrides={"train.no_such_knob": "1"}), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Exception, match="no_such_knob"):
        state.result()
    assert not (ws / "dvc.lock").exists()


def test_failing_stage_raises_with_its_stderr_and_publishes_its_report(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", {"validate_raw.min_rows": 100000})
    state = retrain.with_options(flow_run_name="contract-fails")(
        RetrainParams(workspace=str(ws), stages=["ingest", "validate_raw", "clean"]), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(Exception, match=r"dvc repro -s validate_raw.*failed(.|\n)*error: ") as info:
        state.result()
    assert "min_rows" in str(info.value) or "rows" in str(info.value)
    run = flow_run_named("contract-fails")
    assert run is not None
    keys = artifact_keys(run.id)
    assert {"ingest", "validate-raw"} <= keys and "clean" not in keys


# ---------------------------------------------------------------- pure pieces


def test_stage_names_follow_dvc_yaml() -> None:
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert list(PIPELINE) == stages
    assert PIPELINE[: len(DATA_STAGES)] == DATA_STAGES


def test_run_form_offers_the_stage_tables_verbs() -> None:
    """StageName derives from the stage table (`Literal[PIPELINE]`); Prefect's parameter schema of the
    retrain flow (the run form in the UI) must still list exactly those verbs, in order."""
    schema = parameter_schema(retrain.fn).model_dump()["definitions"]["RetrainParams"]["properties"]
    for field in ("stages", "force"):
        assert schema[field]["items"]["enum"] == list(STAGE_TABLE_VERBS)
    assert get_args(StageName) == STAGE_TABLE_VERBS == PIPELINE


def test_stage_commands(tmp_path: Path) -> None:
    assert stage_command("dedup") == ["dvc", "repro", "-s", "dedup"]
    assert stage_command("train", force=True) == ["dvc", "repro", "-s", "-f", "train"]
    assert stage_command("train", set_params=["train.lr=1e-4"], experiment="r-train") == [
        "dvc",
        "exp",
        "run",
        "-s",
        "-n",
        "r-train",
        "-S",
        "train.lr=1e-4",
        "train",
    ]
    with pytest.raises(ValueError, match="unknown stage"):
        stage_command("deploy")
    (tmp_path / "params.yaml").write_text("train:\n  lr: auto\n")
    assert hydra_overrides(tmp_path, {"train.lr": "1e-4", "train.hostfile": "h"}) == [
        "+train.hostfile=h",
        "train.lr=1e-4",
    ]
    assert anchored_url("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert anchored_url("http://mlflow:5000", tmp_path) == "http://mlflow:5000"


def test_report_builders() -> None:
    train = {"steps": 3, "lr": 0.002, "health_status": "ok", "unrelated": 1}
    assert train_table(train) == [
        {"metric": "steps", "value": "3"},
        {"metric": "lr", "value": "0.002"},
        {"metric": "health_status", "value": "ok"},
    ]
    health = {
        "status": "warning",
        "alerts": [{"kind": "flat_loss", "severity": "warning", "step": 9, "message": "val loss flat"}],
    }
    assert "| flat_loss | warning | 9 | val loss flat |" in health_markdown(health)
    evaluation = {
        "comparison": {
            "loss": {
                "direction": "lower",
                "base": 5.0,
                "candidate": 4.5,
                "champion": None,
                "delta_vs_base": -0.5,
                "delta_vs_champion": None,
            }
        }
    }
    assert evaluate_table(evaluation)[0] == {
        "metric": "loss",
        "direction": "lower",
        "base": "5",
        "champion": "—",
        "candidate": "4.5",
        "delta_vs_base": "-0.5",
        "delta_vs_champion": "—",
    }
    gate = {
        "decision": {
            "rows": [
                {"criterion": "parity", "value": False, "threshold": True, "passed": False, "reason": "a | b"}
            ]
        }
    }
    assert gate_table(gate) == [
        {"criterion": "parity", "value": "False", "threshold": "True", "passed": "NO", "reason": "a \\| b"}
    ]
