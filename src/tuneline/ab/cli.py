"""`tuneline ab report` and `tuneline ab decide`: the A/B canary judged on live feedback."""

from __future__ import annotations

from pathlib import Path

import typer

from tuneline.cli_common import ParamsOpt, SetOpt, fail, load, setup_logging
from tuneline.errors import TunelineError
from tuneline.layout import Layout

ab_app = typer.Typer(
    help="A/B canary: compare champion and challenger on live feedback, then promote or retire.",
    no_args_is_help=True,
)


@ab_app.command("report")
def report_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Champion vs challenger on the feedback store: rates with confidence intervals, the two-proportion
    test, latency and feedback over time (reports/ab.json, reports/ab.html)."""
    from tuneline.ab.report import ab_report, summary_line

    setup_logging()
    layout = Layout(Path("."))
    try:
        report = ab_report(load(params, set_), layout)
    except TunelineError as exc:
        raise fail(exc) from None
    typer.echo(f"ab report: {summary_line(report)}; {layout.report('ab')}, {layout.report('ab', 'html')}")


@ab_app.command("decide")
def decide_command(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Decide on the A/B evidence (params `ab`): promote the challenger when significantly better with
    enough ratings, retire it when significantly worse, else keep collecting. With
    promote.require_approval the champion moves only after `tuneline promote --approve VERSION`."""
    from tuneline.ab.decide import run

    setup_logging()
    layout = Layout(Path("."))
    try:
        out = run(load(params, set_), layout)
    except TunelineError as exc:
        raise fail(exc) from None
    decision, result = out["decision"], out["result"]
    moved = "" if result is None else f"; {result['status']}: {result['reason']}"
    where = layout.report("ab_decision")
    typer.echo(f"ab decide: {decision['action']}: {decision['reason']}{moved}; {where}")
