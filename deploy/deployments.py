"""The `retrain` deployments: `nightly` (cron, UTC) and `on-demand` (no schedule; run from the UI or API),
and `feedback-loop/hourly` (cron): served feedback into raw data, a retrain (`retrain/on-demand`) once
enough new rows arrived.

    python deploy/deployments.py                         # serve all three from this process (Ctrl-C stops)
    python deploy/deployments.py --workspace /srv/tl     # runs work in that checkout
    python deploy/deployments.py --work-pool tuneline    # register on a process work pool instead;
                                                         # then: prefect worker start --pool tuneline

Needs a Prefect API with a scheduler (`prefect server start`, or Prefect Cloud): the ephemeral API of a
bare `python` process has none, so `PREFECT_API_URL` must point at a server. Served runs execute one
at a time (`--limit 1`): nightly and on-demand runs share one workspace, whose lock would refuse the
second anyway; with the limit it waits instead. The feedback loop only creates the retrain run (it does
not wait for it), so it never holds the slot the retrain needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python deploy/deployments.py` puts deploy/, not the root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from prefect import deploy, serve  # noqa: E402
from prefect.deployments.runner import RunnerDeployment  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from flows.feedback_loop import FeedbackLoopParams, feedback_loop  # noqa: E402
from flows.retrain import WORKSPACE_ENV, RetrainParams, retrain  # noqa: E402

NIGHTLY_CRON = "0 2 * * *"
FEEDBACK_CRON = "15 * * * *"  # hourly, off the hour and off the nightly run's start
TIMEZONE = "UTC"
TAGS = ["tuneline"]


def _parameters(params_type: type[RetrainParams] | type[FeedbackLoopParams], workspace: str | None) -> dict:
    # Only the workspace is pinned; every other field keeps the flow's default, so the UI form shows the
    # defaults and a run can change any of them.
    return {"params": params_type(workspace=workspace).model_dump(mode="json")} if workspace else {}


def build_deployments(
    workspace: str | None = None,
    cron: str = NIGHTLY_CRON,
    timezone: str = TIMEZONE,
    flow: Any = retrain,
    active: bool = True,
) -> list[RunnerDeployment]:
    """The two deployments of `retrain`: `nightly` on `cron` in `timezone`, and `on-demand` unscheduled.

    Args:
        workspace: the checkout the runs work in (None: the checkout this code is in).
        cron: the nightly schedule (cron syntax).
        timezone: IANA zone of the schedule (UTC: no daylight-saving jumps).
        flow: `retrain`, or `retrain` loaded with `from_source` for a work pool.
        active: False registers the schedule paused (resume it in the UI).
    """
    parameters = _parameters(RetrainParams, workspace)
    nightly = flow.to_deployment(
        name="nightly",
        schedules=[Cron(cron, timezone=timezone, active=active)],
        parameters=parameters,
        tags=[*TAGS, "nightly"],
        description=f"Retrain on the latest data every day at `{cron}` ({timezone}): DVC reruns only what "
        "changed, evaluate is forced against today's champion, the gate decides.",
    )
    on_demand = flow.to_deployment(
        name="on-demand",
        parameters=parameters,
        tags=[*TAGS, "on-demand"],
        description="Run from the UI or API: pick stages to run or force, dotted param overrides (run as a "
        "DVC experiment), approval policy, pull / push.",
    )
    return [nightly, on_demand]


def build_feedback_deployment(
    workspace: str | None = None,
    cron: str = FEEDBACK_CRON,
    timezone: str = TIMEZONE,
    flow: Any = feedback_loop,
    active: bool = True,
) -> RunnerDeployment:
    """`feedback-loop/hourly`: A/B report, feedback export (DVC-versioned), retrain trigger, on `cron`.

    Args:
        workspace: the checkout the runs work in (None: the checkout this code is in).
        cron: the schedule (cron syntax).
        timezone: IANA zone of the schedule.
        flow: `feedback_loop`, or loaded with `from_source` for a work pool.
        active: False registers the schedule paused.
    """
    return flow.to_deployment(
        name="hourly",
        schedules=[Cron(cron, timezone=timezone, active=active)],
        parameters=_parameters(FeedbackLoopParams, workspace),
        tags=[*TAGS, "feedback"],
        description=f"At `{cron}` ({timezone}): publish the A/B report, export rated exchanges as raw "
        "training data (`dvc add`ed), and start `retrain/on-demand` when the new SFT rows reach "
        "feedback.retrain_threshold. A/B decision off by default (`decide`).",
    )


def register_on_work_pool(
    work_pool: str,
    workspace: str | None = None,
    cron: str = NIGHTLY_CRON,
    timezone: str = TIMEZONE,
    feedback_cron: str = FEEDBACK_CRON,
    active: bool = True,
) -> list[Any]:
    """Register the deployments on a work pool; a worker on that pool runs them. The code is loaded
    from this checkout (`from_source`), so a process worker needs the same path on its host; a
    Kubernetes pool needs an image instead (deploy/README.md). Without `workspace`, each worker's
    $TUNELINE_WORKSPACE is the checkout its runs work in (the team cluster: one clone per worker).
    `active=False` registers the schedules paused."""
    source = retrain.from_source(source=str(REPO_ROOT), entrypoint="flows/retrain.py:retrain")
    loop = feedback_loop.from_source(source=str(REPO_ROOT), entrypoint="flows/feedback_loop.py:feedback_loop")
    deployments = [
        *build_deployments(workspace, cron, timezone, flow=source, active=active),
        build_feedback_deployment(workspace, feedback_cron, timezone, flow=loop, active=active),
    ]
    ids = deploy(
        *deployments,
        work_pool_name=work_pool,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return list(ids)


def main(argv: list[str] | None = None) -> None:
    """Serve the deployments from this process, or register them on a work pool."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", help="DVC workspace the runs use (default: this checkout)")
    parser.add_argument("--cron", default=NIGHTLY_CRON, help=f"nightly schedule (default {NIGHTLY_CRON!r})")
    parser.add_argument(
        "--feedback-cron", default=FEEDBACK_CRON, help=f"feedback-loop schedule (default {FEEDBACK_CRON!r})"
    )
    parser.add_argument("--timezone", default=TIMEZONE, help=f"schedule time zone (default {TIMEZONE})")
    parser.add_argument("--limit", type=int, default=1, help="runs at once in this process (default 1)")
    parser.add_argument("--work-pool", help="register on this work pool instead of serving")
    parser.add_argument("--paused", action="store_true", help="register the schedules paused")
    args = parser.parse_args(argv)
    if args.work_pool:
        ids = register_on_work_pool(
            args.work_pool, args.workspace, args.cron, args.timezone, args.feedback_cron, not args.paused
        )
        print(
            f"registered {len(ids)} deployments on work pool {args.work_pool!r}; start a worker: "
            f"prefect worker start --pool {args.work_pool}"
        )
        return
    # Each run starts a fresh interpreter that loads flows/retrain.py as a script; it imports tasks/ and
    # flows/ from the checkout's root, wherever this process was started.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    if args.workspace:  # also the default of runs whose parameters leave the workspace out (CLI, API)
        os.environ[WORKSPACE_ENV] = str(Path(args.workspace).resolve())
    serve(
        *build_deployments(args.workspace, args.cron, args.timezone, active=not args.paused),
        build_feedback_deployment(args.workspace, args.feedback_cron, args.timezone, active=not args.paused),
        limit=args.limit,
    )


if __name__ == "__main__":
    main()
