"""The data report: the funnel, categories per split, length histograms, near-dup clusters, contracts.

`build_report` gathers facts from the stages' reports and outputs (nothing is recomputed); `render_html`
turns them into one self-contained page a person would rather look at than read.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tuneline.config import Config
from tuneline.jsonio import read_json, read_jsonl
from tuneline.layout import SPLITS, Layout
from tuneline.records import is_augmented, record_text

LENGTH_EDGES = [0, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800]
VALIDATION_STAGES = ("validate_raw", "validate_splits")


def _stage_reports(layout: Layout, stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for stage in stages:
        path = layout.report(stage)
        if path.exists():
            out[stage] = read_json(path)
    return out


def length_histogram(lengths: list[int]) -> dict[str, list[int]]:
    counts = [0] * len(LENGTH_EDGES)
    for n in lengths:
        k = sum(1 for edge in LENGTH_EDGES if n >= edge) - 1
        counts[k] += 1
    return {"edges": LENGTH_EDGES, "counts": counts}


def _split_facts(layout: Layout, field: str) -> dict[str, dict[str, Any]]:
    facts = {}
    for split in SPLITS:
        rows = list(read_jsonl(layout.processed(split)))
        cats: Counter[str] = Counter(str(r.get(field) or "(none)") for r in rows)
        facts[split] = {
            "rows": len(rows),
            "augmented": sum(1 for r in rows if is_augmented(r)),
            "categories": dict(cats.most_common()),
            "length_hist": length_histogram([len(record_text(r)) for r in rows]),
        }
    return facts


def build_report(layout: Layout, cfg: Config, stages: Sequence[str]) -> dict[str, Any]:
    """Facts for the report page (also written as JSON next to it).

    Args:
        layout: the workspace whose reports and splits are read.
        cfg: the config (the stratify field).
        stages: the data stages in pipeline order (`tuneline.stages.DATA_STAGES`; passed in, so the data
            package never imports the stage table that imports it).
    """
    reports = _stage_reports(layout, stages)
    splits = _split_facts(layout, cfg.split.stratify_field)
    funnel = [
        {k: rep.get(k) for k in ("stage", "rows_in", "rows_kept", "rows_rejected", "rows_added",
                                 "rejected_by_reason")}
        for stage, rep in reports.items() if stage not in VALIDATION_STAGES
    ]
    raw = reports.get("ingest", {}).get("rows_in", 0)
    rejected = sum(row["rows_rejected"] or 0 for row in funnel)
    augmented = sum(s["augmented"] for s in splits.values())
    final = sum(s["rows"] for s in splits.values()) - augmented
    complete = all(stage in reports for stage in stages)
    validation = {
        stage: {
            "success": rep.get("success"),
            "failed": [e for e in rep.get("expectations", []) if not e.get("success")],
        }
        for stage, rep in reports.items() if stage in VALIDATION_STAGES
    }
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "complete": complete,
        "stopped_after": next((s for s in reversed(stages) if s in reports), None),
        "funnel": funnel,
        "ledger": {"raw_rows": raw, "final_rows": final, "rejected": rejected, "augmented": augmented,
                   "balanced": complete and raw == final + rejected},
        "splits": splits,
        "near_dup_clusters": reports.get("dedup", {}).get("clusters", [])[:10],
        "validation": validation,
    }


# ---------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #dde;padding-bottom:.3rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
td,th{padding:.3rem .5rem;border-bottom:1px solid #eef;text-align:left;vertical-align:top}
th{background:#f5f6fa}.num{text-align:right;font-variant-numeric:tabular-nums}
td{white-space:nowrap}td.wrap{white-space:normal}
.bar{height:14px;background:#4c7bd9;border-radius:2px;display:inline-block}.rej{background:#d9634c}
.ok{color:#177a3a;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#667}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1rem}
.card{border:1px solid #e3e5ee;border-radius:6px;padding:.7rem}
code{background:#f3f3f7;padding:0 .25rem;border-radius:3px}
"""


def _bar(value: float, top: float, cls: str = "") -> str:
    width = 0 if top <= 0 else max(1, round(160 * value / top)) if value else 0
    return f'<span class="bar {cls}" style="width:{width}px"></span>'


def funnel_html(report: dict[str, Any]) -> str:
    top = max((row["rows_in"] or 0 for row in report["funnel"]), default=0)
    rows = []
    for row in report["funnel"]:
        reasons = ", ".join(f"{html.escape(k)}: {v}" for k, v in (row["rejected_by_reason"] or {}).items())
        added = f" (+{row['rows_added']} added)" if row.get("rows_added") else ""
        rows.append(
            f"<tr><td><code>{row['stage']}</code></td><td class=num>{row['rows_in']}</td>"
            f"<td>{_bar(row['rows_kept'] or 0, top)} {row['rows_kept']}{added}</td>"
            f"<td>{_bar(row['rows_rejected'] or 0, top, 'rej')} {row['rows_rejected']}</td>"
            f"<td class='muted wrap'>{reasons or '—'}</td></tr>"
        )
    return ("<table><tr><th>stage</th><th class=num>in</th><th>kept</th><th>rejected</th>"
            "<th>why rejected</th></tr>" + "".join(rows) + "</table>")


def ledger_html(ledger: dict[str, Any], complete: bool) -> str:
    verdict = ('<span class="ok">balanced</span>' if ledger["balanced"]
               else '<span class="bad">' + ("NOT balanced" if complete else "incomplete run") + "</span>")
    return (f"<p>{ledger['raw_rows']} raw rows = {ledger['final_rows']} in train/val/test + "
            f"{ledger['rejected']} rejected — {verdict}. {ledger['augmented']} augmented rows added to train."
            "</p>")


def splits_html(splits: dict[str, Any]) -> str:
    cards = []
    for split, facts in splits.items():
        top = max(facts["categories"].values(), default=0)
        cats = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{_bar(n, top)} {n}</td></tr>"
            for c, n in facts["categories"].items()
        )
        hist = facts["length_hist"]
        htop = max(hist["counts"], default=0)
        edges = hist["edges"]
        bins = "".join(
            f"<tr><td class=muted>{edges[i]}{'–' + str(edges[i + 1] - 1) if i + 1 < len(edges) else '+'}</td>"
            f"<td>{_bar(n, htop)} {n}</td></tr>"
            for i, n in enumerate(hist["counts"])
        )
        cards.append(
            f'<div class="card"><h3>{split} — {facts["rows"]} rows</h3>'
            f'<p class="muted">{facts["augmented"]} augmented</p>'
            f"<table><tr><th>category</th><th>rows</th></tr>{cats}</table>"
            f"<table><tr><th>characters</th><th>rows</th></tr>{bins}</table></div>"
        )
    return '<div class="grid">' + "".join(cards) + "</div>"


def _clusters_html(clusters: list[dict[str, Any]]) -> str:
    if not clusters:
        return "<p class=muted>No near-duplicate clusters.</p>"
    rows = "".join(
        f"<tr><td class=num>{c.get('size')}</td>"
        f"<td><code>{html.escape(str(c.get('survivor_id', '')))}</code></td>"
        f"<td class=wrap>{html.escape(str(c.get('sample', ''))[:200])}</td></tr>"
        for c in clusters
    )
    return f"<table><tr><th class=num>size</th><th>kept row</th><th>text</th></tr>{rows}</table>"


def _validation_html(validation: dict[str, Any]) -> str:
    parts = []
    for stage, facts in validation.items():
        state = '<span class="ok">passed</span>' if facts["success"] else '<span class="bad">failed</span>'
        failed = "".join(
            f"<li><code>{html.escape(str(e.get('name') or e.get('expectation')))}</code> "
            f"{html.escape(str(e.get('description', '')))} "
            f"{'(critical)' if e.get('critical') else '(warning)'}</li>"
            for e in facts["failed"]
        )
        parts.append(f"<p><code>{stage}</code>: {state} — see <code>reports/{stage}.html</code></p>"
                     + (f"<ul>{failed}</ul>" if failed else ""))
    return "".join(parts) or "<p class=muted>No contract ran.</p>"


def render_html(report: dict[str, Any]) -> str:
    status = "" if report["complete"] else (
        f'<p class="bad">The run stopped after <code>{report["stopped_after"]}</code>.</p>')
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tuneline data report</title>"
        f"<style>{CSS}</style></head><body><h1>tuneline data report</h1>"
        f"<p class=muted>generated {report['generated_at']}</p>{status}"
        f"<h2>Funnel</h2>{funnel_html(report)}{ledger_html(report['ledger'], report['complete'])}"
        f"<h2>Contracts</h2>{_validation_html(report['validation'])}"
        f"<h2>Splits</h2>{splits_html(report['splits'])}"
        f"<h2>Largest near-duplicate clusters</h2>{_clusters_html(report['near_dup_clusters'])}"
        "</body></html>"
    )


