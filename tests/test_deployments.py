"""deploy/deployments.py without a server: what each deployment pins (only the workspace, through one
`_parameters` for both flows)."""

from __future__ import annotations

from pathlib import Path

from deploy.deployments import build_deployments, build_feedback_deployment
from flows.feedback_loop import FeedbackLoopParams
from flows.retrain import RetrainParams


def test_every_deployment_pins_the_workspace_and_keeps_every_other_default(tmp_path: Path) -> None:
    nightly, on_demand = build_deployments(str(tmp_path))
    hourly = build_feedback_deployment(str(tmp_path))
    expected_types = ((nightly, RetrainParams), (on_demand, RetrainParams), (hourly, FeedbackLoopParams))
    for dep, params_type in expected_types:
        expected = params_type(workspace=str(tmp_path)).model_dump(mode="json")
        assert dep.parameters == {"params": expected}, dep.name
        assert expected["workspace"] == str(tmp_path)


def test_without_a_workspace_nothing_is_pinned() -> None:
    # The run's checkout (or $TUNELINE_WORKSPACE on a worker) then decides; a pinned None would hide it.
    assert [d.parameters for d in (*build_deployments(), build_feedback_deployment())] == [{}, {}, {}]
