"""Prefect tasks of the feedback loop: the A/B report, the A/B decision, the feedback export, a retrain
trigger. One library call each; the store and the registry are reached in process.

Retries: the export is idempotent (rows already on disk are recognised by their feedback id), so a
transient database failure is retried; the retrain trigger carries an idempotency key, so a retry
never starts a second retrain. The A/B decision is never retried: it may move aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_client, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from tasks.artifacts import artifact_key
from tasks.registry import transient
from tasks.workspace import workspace_config
from tuneline.config import Config
from tuneline.layout import Layout
from tuneline.urls import anchored_url


def feedback_config(workspace: str | Path) -> Config:
    """The workspace's config with the tracking URI and a relative sqlite feedback store anchored to it
    (the flow's process does not run in the workspace)."""
    root = Path(workspace).resolve()
    cfg = workspace_config(root)
    serve = cfg.serve.model_copy(update={"store_url": anchored_url(cfg.serve.store_url, root)})
    return cfg.model_copy(update={"serve": serve})


@task(name="publish_ab_report", retries=1, retry_delay_seconds=10, retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def publish_ab_report(workspace: str) -> dict[str, Any]:
    """`ab_report` (writes reports/ab.json and reports/ab.html) and its markdown as the `ab-report`
    artifact; returns the report."""
    from tuneline.ab.report import ab_report, render_markdown

    root = Path(workspace)
    report = ab_report(feedback_config(root), Layout(root))
    create_markdown_artifact(
        markdown=render_markdown(report) + "\nFull page: reports/ab.html",
        key="ab-report",
        description="champion vs challenger on live feedback",
    )
    return report


@task(name="ab_decide", cache_policy=NO_CACHE)
def ab_decide_task(workspace: str) -> dict[str, Any]:
    """The A/B decision (`tuneline.ab.decide.run`): promote, retire or keep collecting; moves aliases."""
    from tuneline.ab.decide import run

    root = Path(workspace)
    return run(feedback_config(root), Layout(root))


@task(name="export_feedback", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=transient,
      cache_policy=NO_CACHE)
def export_feedback_task(workspace: str) -> dict[str, Any]:
    """`export_feedback` into the workspace (then `dvc add` there); returns its summary."""
    from tuneline.feedback.export import export_feedback

    root = Path(workspace)
    return export_feedback(feedback_config(root), root)


def api_transient(_task: Any, _run: TaskRun, state: State) -> bool:
    """Retry an API call unless what it names does not exist (a retry cannot create it)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, ObjectNotFound | ValueError)


class DeploymentNotFound(ValueError):
    """The deployment to trigger is not registered on the Prefect API."""


@task(name="check_deployment", retries=2, retry_delay_seconds=10, retry_condition_fn=api_transient,
      cache_policy=NO_CACHE)
def check_deployment(deployment_name: str) -> str:
    """The id of `deployment_name` ("flow/deployment"), checked before anything is exported.

    Raises:
        DeploymentNotFound: no such deployment; the message says how to register it.
    """
    with get_client(sync_client=True) as client:
        try:
            return str(client.read_deployment_by_name(deployment_name).id)
        except ObjectNotFound:
            raise DeploymentNotFound(
                f"deployment {deployment_name!r} is not registered on the Prefect API; serve it first "
                "(python deploy/deployments.py) or set retrain_deployment"
            ) from None


@task(name="trigger_retrain", retries=2, retry_delay_seconds=10, retry_condition_fn=api_transient,
      cache_policy=NO_CACHE)
def trigger_retrain(
    deployment_name: str, parameters: dict[str, Any], idempotency_key: str | None = None
) -> dict[str, str]:
    """Create a run of `deployment_name` ("flow/deployment") and return at once (it runs on its own).

    Returns:
        {"deployment", "flow_run_id", "flow_run_name"}.
    """
    run = run_deployment(
        name=deployment_name, parameters=parameters, timeout=0, idempotency_key=idempotency_key
    )
    return {"deployment": deployment_name, "flow_run_id": str(run.id), "flow_run_name": run.name}


@task(name="publish_feedback_markdown", cache_policy=NO_CACHE)
def publish_markdown(key: str, markdown: str, description: str) -> str:
    """A markdown artifact under `key` (the export summary, what the loop decided)."""
    return str(create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description))


@task(name="waiting_feedback", cache_policy=NO_CACHE)
def waiting_feedback(workspace: str) -> dict[str, Any]:
    """Exported SFT rows not yet counted towards a retrain trigger (`tuneline.feedback.trigger`)."""
    from tuneline.feedback.trigger import waiting_rows

    return waiting_rows(feedback_config(workspace), Path(workspace))


@task(name="record_trigger", cache_policy=NO_CACHE)
def record_trigger_task(workspace: str, files: list[str], flow_run_id: str | None) -> None:
    """Count these export files as used by the retrain just triggered."""
    from tuneline.feedback.trigger import record_trigger

    record_trigger(Path(workspace), files, flow_run_id)

