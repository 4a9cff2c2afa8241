"""The data report: the funnel, categories per split, length histograms, near-dup clusters, contracts.

`build_report` gathers facts from the stages' reports and outputs (nothing is recomputed); `render_html`
turns them into one self-contained page a person would rather look at than read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tuneline.config import Config
from tuneline.html import Markup, esc, fmt, page, status, table
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

# The styles of this module's fragments (funnel bars, split cards), on top of `tuneline.html.BASE_CSS`; the
# run report shows the same fragments and adds the same styles.
DATA_CSS = """
table.data{width:100%}table.data td{white-space:nowrap}table.data td.wrap{white-space:normal}
.bar{height:14px;background:#4c7bd9;border-radius:2px;display:inline-block;vertical-align:middle}
.bar.rej{background:#d9634c}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:1rem}
.card{border:1px solid #e3e5ee;border-radius:6px;padding:.7rem}
"""


def _bar(value: float, top: float, cls: str = "") -> str:
    width = 0 if top <= 0 else max(1, round(160 * value / top)) if value else 0
    return f'<span class="bar {cls}" style="width:{width}px"></span>'


def funnel_html(report: dict[str, Any]) -> str:
    """The funnel table: rows in, kept and rejected per stage (as bars on one scale), and why rejected."""
    top = max((row["rows_in"] or 0 for row in report["funnel"]), default=0)
    rows = []
    for row in report["funnel"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in (row["rejected_by_reason"] or {}).items())
        added = f" (+{row['rows_added']} added)" if row.get("rows_added") else ""
        rows.append([
            Markup(f"<code>{esc(row['stage'])}</code>"),
            row["rows_in"],
            Markup(f"{_bar(row['rows_kept'] or 0, top)} {esc(fmt(row['rows_kept']))}{esc(added)}"),
            Markup(f"{_bar(row['rows_rejected'] or 0, top, 'rej')} {esc(fmt(row['rows_rejected']))}"),
            reasons or None,
        ])
    return table(["stage", "in", "kept", "rejected", "why rejected"], rows, cls="data",
                 col_class={1: "num", 4: "muted wrap"})


def ledger_html(ledger: dict[str, Any], complete: bool) -> str:
    """The end-to-end ledger in one sentence: raw rows = final rows + rejected, and whether it balances."""
    if ledger["balanced"]:
        verdict = status("balanced", "ok")
    else:
        verdict = status("NOT balanced" if complete else "incomplete run", "bad")
    return (f"<p>{ledger['raw_rows']} raw rows = {ledger['final_rows']} in train/val/test + "
            f"{ledger['rejected']} rejected — {verdict}. {ledger['augmented']} augmented rows added to train."
            "</p>")


def splits_html(splits: dict[str, Any]) -> str:
    """One card per split: its rows per category and its histogram of lengths in characters."""
    cards = []
    for split, facts in splits.items():
        top = max(facts["categories"].values(), default=0)
        cats = [[c, Markup(f"{_bar(n, top)} {n}")] for c, n in facts["categories"].items()]
        hist = facts["length_hist"]
        htop = max(hist["counts"], default=0)
        edges = hist["edges"]
        bins = [
            [f"{edges[i]}{'–' + str(edges[i + 1] - 1) if i + 1 < len(edges) else '+'}",
             Markup(f"{_bar(n, htop)} {n}")]
            for i, n in enumerate(hist["counts"])
        ]
        cards.append(
            f'<div class="card"><h3>{esc(split)} — {facts["rows"]} rows</h3>'
            f'<p class="muted">{facts["augmented"]} augmented</p>'
            + table(["category", "rows"], cats, cls="data")
            + table(["characters", "rows"], bins, cls="data", col_class={0: "muted"})
            + "</div>"
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _clusters_html(clusters: list[dict[str, Any]]) -> str:
    if not clusters:
        return '<p class="muted">No near-duplicate clusters.</p>'
    rows = [[c.get("size"), Markup(f"<code>{esc(c.get('survivor_id', ''))}</code>"),
             str(c.get("sample", ""))[:200]] for c in clusters]
    return table(["size", "kept row", "text"], rows, cls="data", col_class={0: "num", 2: "wrap"})


def _validation_html(validation: dict[str, Any]) -> str:
    parts = []
    for stage, facts in validation.items():
        state = status("passed", "ok") if facts["success"] else status("failed", "bad")
        failed = "".join(
            f"<li><code>{esc(e.get('name') or e.get('expectation'))}</code> "
            f"{esc(e.get('description', ''))} "
            f"{'(critical)' if e.get('critical') else '(warning)'}</li>"
            for e in facts["failed"]
        )
        parts.append(f"<p><code>{esc(stage)}</code>: {state} — see <code>reports/{esc(stage)}.html</code></p>"
                     + (f"<ul>{failed}</ul>" if failed else ""))
    return "".join(parts) or '<p class="muted">No contract ran.</p>'


def render_html(report: dict[str, Any]) -> str:
    """The data report page (`build_report`'s facts) as a complete HTML document."""
    stopped = "" if report["complete"] else (
        f'<p class="bad">The run stopped after <code>{esc(report["stopped_after"])}</code>.</p>')
    body = (
        f'<p class="muted">generated {esc(report["generated_at"])}</p>{stopped}'
        f"<h2>Funnel</h2>{funnel_html(report)}{ledger_html(report['ledger'], report['complete'])}"
        f"<h2>Contracts</h2>{_validation_html(report['validation'])}"
        f"<h2>Splits</h2>{splits_html(report['splits'])}"
        f"<h2>Largest near-duplicate clusters</h2>{_clusters_html(report['near_dup_clusters'])}"
    )
    return page("tuneline data report", body, css=DATA_CSS)
