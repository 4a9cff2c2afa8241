"""reports/run.html: one page that tells the story of a pipeline run without reading logs.

It opens with the before / after headline of the evaluation (`evaluate.headline`, from
reports/evaluate_headline.json: base vs candidate per category, the answers that differ most). Then the
data funnel and splits (from the data report), training numbers, health alerts and loss / LR
curves, the eval comparison (base / champion / candidate), the gate's table with reasons, and the
lineage of the champion. Every section reads the reports the stages wrote; a stage that has not run
shows as such.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.data.report import DATA_CSS, build_report, funnel_html, ledger_html, splits_html
from tuneline.errors import TunelineError
from tuneline.evaluate.headline import HEADLINE_CSS, build_headline, headline_html
from tuneline.html import cell, esc, page, status, table
from tuneline.jsonio import write_text
from tuneline.layout import Layout
from tuneline.lineage import lineage, render
from tuneline.stages import DATA_STAGES
from tuneline.train.curves import charts

logger = logging.getLogger(__name__)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _missing(stage: str) -> str:
    return f'<p class="muted">{esc(stage)} has not run in this workspace.</p>'


def data_section(layout: Layout, cfg: Config) -> str:
    if not layout.report("ingest").is_file():
        return _missing("the data pipeline")
    report = build_report(layout, cfg, DATA_STAGES)
    return (f"{funnel_html(report)}{ledger_html(report['ledger'], report['complete'])}"
            f"<h3>Splits: categories and lengths</h3>{splits_html(report['splits'])}")


def train_section(layout: Layout, cfg: Config) -> str:
    train, health = _read(layout.report("train")), _read(layout.report("train_health"))
    if train is None:
        return _missing("train")
    keys = ["method", "train_rows", "train_sequences", "useful_token_fraction", "steps", "epochs", "lr",
            "schedule", "effective_batch", "max_length", "precision", "val_loss_before", "val_loss_best",
            "train_loss_start_avg", "train_loss_end_avg", "early_stopped"]
    out = table(["metric", "value"], [[k, train.get(k)] for k in keys])
    if health is not None:
        state = health.get("status")
        out += f"<p>Health: {status(state, 'ok' if state == 'ok' else 'bad')}</p>"
        alerts = health.get("alerts") or []
        if alerts:
            out += table(["alert", "severity", "step", "message", "remedy"],
                          [[a.get(k) for k in ("kind", "severity", "step", "message", "remedy")]
                           for a in alerts])
    summary = _read(layout.root / cfg.train.output_dir / "train_summary.json")
    if summary and summary.get("history"):
        out += charts(summary["history"])
    return out


def headline_section(layout: Layout) -> str:
    """The evaluation's before / after headline; just its table when the evaluation kept no answers."""
    headline = _read(layout.report("evaluate_headline"))
    if headline is None:
        evaluation = _read(layout.report("evaluate"))
        if evaluation is None:
            return _missing("evaluate")
        headline = build_headline(evaluation["variants"], evaluation.get("per_category") or {})
    return headline_html(headline)


def eval_section(layout: Layout) -> str:
    evaluation = _read(layout.report("evaluate"))
    if evaluation is None:
        return _missing("evaluate")
    variants = evaluation["variants"]
    names = [n for n in ("base", "champion", "candidate") if n in variants]
    metrics = sorted({m for v in variants.values() for m in v})
    out = table(["metric", *names], [[m, *[variants[n].get(m) for n in names]] for m in metrics])
    return out + '<p>Side by side replies for human review: <a href="review.html">review.html</a>.</p>'


def gate_section(layout: Layout) -> str:
    promotion = _read(layout.report("promote"))
    if promotion is None:
        return _missing("promote")
    result = promotion["result"]
    rows = [[r["criterion"], r.get("value"), r.get("threshold"),
             "pass" if r["passed"] else "FAIL", r.get("reason")] for r in promotion["decision"]["rows"]]
    verdict = status(result["status"], "ok" if result["promoted"] else "bad")
    return (f'<p>Version {cell(promotion["version"])}: {verdict} — '
            f'{cell(result["reason"])}. Champion {cell(promotion["champion_before"])} → '
            f'{cell(promotion["champion_after"])}.</p>'
            + table(["criterion", "value", "threshold", "result", "reason"], rows))


def lineage_section(layout: Layout, cfg: Config) -> str:
    try:
        tree = lineage(cfg, layout.root)
    except TunelineError as exc:
        return f'<p class="muted">{esc(str(exc))}</p>'
    return f"<pre>{esc(render(tree))}</pre>"


def run_report(layout: Layout, cfg: Config) -> Path:
    """Write reports/run.html for the workspace; returns its path."""
    sections = [
        ("Data", data_section(layout, cfg)),
        ("Training", train_section(layout, cfg)),
        ("Evaluation: base / champion / candidate", eval_section(layout)),
        ("Promotion gate", gate_section(layout)),
        ("Lineage of the champion", lineage_section(layout, cfg)),
    ]
    body = "".join(f"<h2>{esc(title)}</h2>{content}" for title, content in sections)
    html = page("tuneline run report", headline_section(layout) + body, css=HEADLINE_CSS + DATA_CSS)
    path = layout.report("run", "html")
    write_text(path, html)
    return path
