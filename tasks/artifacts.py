"""Each stage's report, published as a Prefect artifact (markdown or table) for the run's page in the UI.

The summaries are built by the library (`tuneline.summaries`); these tasks only publish them. Keys are
the stage verb with dashes (`validate-splits`, `train-health`, `promote-gate`), so the Artifacts page
keeps one history per key across runs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.workspace import workspace_config
from tuneline.data_half import workspace_report
from tuneline.layout import Layout
from tuneline.summaries import funnel_description, funnel_table, read_report, stage_summaries


def artifact_key(name: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return name.lower().replace("_", "-")


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
    path = Layout(Path(workspace)).report(stage)
    if newer_than is not None and (not path.is_file() or path.stat().st_mtime < newer_than):
        return []
    keys: list[str] = []
    for summary in stage_summaries(workspace, stage):
        key = artifact_key(summary.name)
        if summary.kind == "markdown":
            create_markdown_artifact(markdown=summary.content, key=key, description=summary.description)
        else:
            create_table_artifact(table=summary.content, key=key, description=summary.description)
        keys.append(key)
    return keys


@task(name="publish_funnel", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_funnel(workspace: str) -> str | None:
    """Write reports/data.json and data.html (`tuneline report`), then publish the funnel as a table."""
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
