"""`tuneline ab report` and `tuneline ab decide`: the A/B canary judged on live feedback."""

from __future__ import annotations

import typer

from tuneline.cli_common import WORKSPACE, ParamsOpt, SetOpt, command, load

ab_app = typer.Typer(
    help="A/B canary: compare champion and challenger on live feedback, then promote or retire.",
    no_args_is_help=True,
)


@ab_app.command("report")
@command()
def report_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Champion vs challenger on the feedback store: rates with confidence intervals, the two-proportion
    test, latency and feedback over time (reports/ab.json, reports/ab.html)."""
    from tuneline.ab.report import ab_report, summary_line  # lazy: sqlalchemy (feedback store), ~0.35 s

    report = ab_report(load(params, set_), WORKSPACE)
    pages = f"{WORKSPACE.report('ab')}, {WORKSPACE.report('ab', 'html')}"
    typer.echo(f"ab report: {summary_line(report)}; {pages}")


@ab_app.command("decide")
@command()
def decide_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Decide on the A/B evidence (params `ab`): promote the challenger when significantly better with
    enough ratings, retire it when significantly worse, else keep collecting. With
    promote.require_approval the champion moves only after `tuneline promote --approve VERSION`."""
    from tuneline.ab.decide import run  # lazy: sqlalchemy (feedback store), ~0.35 s

    out = run(load(params, set_), WORKSPACE)
    decision, result = out["decision"], out["result"]
    moved = "" if result is None else f"; {result['status']}: {result['reason']}"
    where = WORKSPACE.report("ab_decision")
    typer.echo(f"ab decide: {decision['action']}: {decision['reason']}{moved}; {where}")
