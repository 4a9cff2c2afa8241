"""review.html: prompts with the base / champion / candidate replies side by side, for a person to read.

One self-contained page: inline CSS, no JavaScript, no external assets, every text escaped, and no
timestamp, so the same samples always give the same bytes (DVC caches it like any output). It opens
with the before / after headline (`evaluate.headline`: base vs candidate per category, the answers that
differ most); then a table of the variants' metrics; below, per sampled prompt: the prompt, the
reference, and the three replies with exact-match and ROUGE-L badges.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tuneline.evaluate.headline import CSS as HEADLINE_CSS
from tuneline.evaluate.headline import headline_html
from tuneline.jsonio import write_text

VARIANTS = ("base", "champion", "candidate")
BADGES = (("exact_match", "EM"), ("rouge_l", "ROUGE-L"))

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#1d232a;background:#fafbfc}
h1{font-size:1.4rem}h2{font-size:1rem;margin:0 0 .5rem}
table.summary{border-collapse:collapse;margin-bottom:1.5rem}
table.summary th,table.summary td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
table.summary th:first-child,table.summary td:first-child{text-align:left}
.sample{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:1rem;margin-bottom:1.2rem}
.meta{color:#57606a;font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(3,1fr);gap:.8rem;margin-top:.6rem}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:.5rem;border-radius:4px;
margin:.3rem 0}
.badge{display:inline-block;font-size:.75rem;padding:.05rem .4rem;border-radius:3px;margin-right:.3rem;
background:#eaeef2}
.badge.hit{background:#dafbe1}.badge.miss{background:#ffebe9}
.absent{color:#8c959f;font-style:italic}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def _summary_table(summary: dict[str, dict[str, Any]]) -> str:
    variants = [v for v in VARIANTS if summary.get(v) is not None]
    variants += sorted(v for v in summary if v not in VARIANTS and summary[v] is not None)
    metrics: list[str] = []
    for v in variants:
        metrics += [m for m in summary[v] if m not in metrics]
    if not variants or not metrics:
        return ""
    head = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{_e(v)}</td>"
        + "".join(f"<td>{_e(_fmt(summary[v].get(m)))}</td>" for m in metrics)
        + "</tr>"
        for v in variants
    )
    return (
        f'<table class="summary"><thead><tr><th>variant</th>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _badges(scores: dict[str, Any]) -> str:
    out = []
    for key, label in BADGES:
        value = scores.get(key)
        if value is None:
            continue
        if key == "exact_match":
            kind, text = ("hit", "✓") if value >= 1 else ("miss", "✗")
        else:
            kind, text = ("", f"{value:.2f}")
        out.append(f'<span class="badge {kind}">{_e(label)} {_e(text)}</span>')
    return "".join(out)


def _column(variant: str, output: str | None, scores: dict[str, Any]) -> str:
    if output is None:
        body = f'<p class="absent">no {_e(variant)}</p>'
    else:
        body = f"<div>{_badges(scores)}</div><pre>{_e(output)}</pre>"
    return f'<div class="variant {_e(variant)}"><h2>{_e(variant)}</h2>{body}</div>'


def _sample(index: int, sample: dict[str, Any]) -> str:
    outputs = sample.get("outputs", {})
    scores = sample.get("scores", {})
    category = sample.get("category")
    meta = f"#{index} · id {_e(sample.get('id'))} · category {_e('(none)' if category is None else category)}"
    columns = "".join(_column(v, outputs.get(v), scores.get(v) or {}) for v in VARIANTS)
    return (
        f'<section class="sample"><div class="meta">{meta}</div>'
        f"<h2>prompt</h2><pre>{_e(sample.get('prompt', ''))}</pre>"
        f"<h2>reference</h2><pre>{_e(sample.get('reference', ''))}</pre>"
        f'<div class="grid">{columns}</div></section>'
    )


def review_html(
    samples: list[dict[str, Any]],
    title: str,
    summary: dict[str, dict[str, Any]] | None = None,
    headline: dict[str, Any] | None = None,
) -> str:
    """The review page as a string.

    Args:
        samples: {"id", "category", "prompt", "reference", "outputs": {"base": str, "champion": str |
            None, "candidate": str}, "scores": {variant: {metric: value}}}, shown in the given order.
        title: the page heading.
        summary: {variant: {metric: value}}, shown as a table (a None variant is left out).
        headline: `evaluate.headline.build_headline`'s result, shown first; None leaves it out.

    Returns:
        A complete HTML document; the same arguments always give the same string.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}{HEADLINE_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        headline_html(headline) if headline else "",
        "<h2>All metrics</h2>" if headline and summary else "",
        _summary_table(summary or {}),
        f'<p class="meta">{len(samples)} prompts; greedy replies of each variant to the same prompt.</p>',
        *(_sample(i, s) for i, s in enumerate(samples, start=1)),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"


def write_review(
    samples: list[dict[str, Any]],
    path: Path | str,
    title: str = "tuneline review",
    summary: dict[str, dict[str, Any]] | None = None,
    headline: dict[str, Any] | None = None,
) -> Path:
    """Write `review_html` atomically to `path` and return the path."""
    path = Path(path)
    write_text(path, review_html(samples, title, summary, headline))
    return path
