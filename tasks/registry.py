"""Prefect tasks for the model registry, in process: approval records and the approved promotion.

Retried when the tracking server fails transiently (`transient`), never for tuneline's typed errors.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from tasks.workspace import workspace_config
from tuneline.errors import TunelineError
from tuneline.layout import Layout
from tuneline.promote.aliases import approval_of, record_approval
from tuneline.promote.promote import approve
from tuneline.registry.registry import set_version_tags


def transient(_task: Any, _run: TaskRun, state: State) -> bool:
    """Retry a registry call unless it failed for a reason a retry cannot fix (tuneline's typed errors,
    a bad argument)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, TunelineError | ValueError)


def registry_task(name: str) -> Any:
    """The task decorator of every registry call: named `name`, retried twice after 10 s when the failure
    is `transient`, never cached (each call reads or writes the live registry)."""
    return task(name=name, retries=2, retry_delay_seconds=10, retry_condition_fn=transient,
                cache_policy=NO_CACHE)


@registry_task("recorded_approval")
def recorded_approval(workspace: str, version: str) -> dict[str, str] | None:
    """The approval decision recorded on `version` ({"decision", "by", "at", "note"}), or None."""
    cfg = workspace_config(workspace)
    return approval_of(cfg.tracking.uri, cfg.registry.model_name, version)


@registry_task("approve_release")
def approve_release(workspace: str, version: str, approver: str, note: str = "") -> dict[str, Any]:
    """Record the approval of `version` and promote it (`tuneline promote --approve`); the promotion's
    result, e.g. status "promoted" or "conflict" when the champion moved meanwhile."""
    root = Path(workspace)
    return approve(workspace_config(root), Layout(root), version, approver, note)


@registry_task("reject_release")
def reject_release(workspace: str, version: str, approver: str, note: str = "") -> dict[str, str]:
    """Record a person's rejection of `version`; the champion stays."""
    cfg = workspace_config(workspace)
    return record_approval(cfg.tracking.uri, cfg.registry.model_name, version, approver, "rejected", note)


@registry_task("record_no_decision")
def record_no_decision(workspace: str, version: str, waited_s: int, run_name: str) -> dict[str, str]:
    """Tag `version` with an approval request that timed out; no approval.decision is written, so
    `tuneline promote --approve VERSION` still works later. The champion stays."""
    cfg = workspace_config(workspace)
    tags = {
        "approval.no_decision_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "approval.no_decision_after_s": str(waited_s),
        "approval.no_decision_run": run_name,
    }
    set_version_tags(cfg.tracking.uri, cfg.registry.model_name, version, tags)
    return tags
