"""review.html: prompts with the base / champion / candidate replies side by side, for a person to read.

One self-contained page: inline CSS, no JavaScript, no external assets, every text escaped, and no
timestamp, so the same samples always give the same bytes (DVC caches it like any output). It opens
with the before / after headline (`evaluate.headline`: base vs candidate per category, the answers that
differ most); then a table of the variants' metrics; below, per sampled prompt: the prompt, the
reference, and the three replies with exact-match and ROUGE-L badges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneline.evaluate.headline import HEADLINE_CSS, headline_html
from tuneline.html import badge, esc, page, table
from tuneline.jsonio import write_text

VARIANTS = ("base", "champion", "candidate")
BADGES = (("exact_match", "EM"), ("rouge_l", "ROUGE-L"))

# review.html's own styles, on top of `tuneline.html.BASE_CSS` (and the headline's).
REVIEW_CSS = """
table.summary td{text-align:right}table.summary td:first-child{text-align:left}
.sample{border:1px solid #d0d7de;border-radius:6px;padding:1rem;margin-bottom:1.2rem}
.sample h2{font-size:1rem;margin:0 0 .5rem;border:0;padding:0}
.meta{color:#57606a;font-size:.85rem}
.sample .grid{display:grid;grid-template-columns:repeat(3,1fr);gap:.8rem;margin-top:.6rem}
.badge{margin-right:.3rem}
.absent{color:#8c959f;font-style:italic}
"""


def _summary_table(summary: dict[str, dict[str, Any]]) -> str:
    variants = [v for v in VARIANTS if summary.get(v) is not None]
    variants += sorted(v for v in summary if v not in VARIANTS and summary[v] is not None)
    metrics: list[str] = []
    for v in variants:
        metrics += [m for m in summary[v] if m not in metrics]
    if not variants or not metrics:
        return ""
    rows = [[v, *(summary[v].get(m) for m in metrics)] for v in variants]
    return table(["variant", *metrics], rows, cls="summary")


def _badges(scores: dict[str, Any]) -> str:
    out = []
    for key, label in BADGES:
        value = scores.get(key)
        if value is None:
            continue
        if key == "exact_match":
            out.append(badge(f"{label} ✓", "ok") if value >= 1 else badge(f"{label} ✗", "bad"))
        else:
            out.append(badge(f"{label} {value:.2f}"))
    return "".join(out)


def _column(variant: str, output: str | None, scores: dict[str, Any]) -> str:
    if output is None:
        body = f'<p class="absent">no {esc(variant)}</p>'
    else:
        body = f"<div>{_badges(scores)}</div><pre>{esc(output)}</pre>"
    return f'<div class="variant {esc(variant)}"><h2>{esc(variant)}</h2>{body}</div>'


def _sample(index: int, sample: dict[str, Any]) -> str:
    outputs = sample.get("outputs", {})
    scores = sample.get("scores", {})
    category = "(none)" if sample.get("category") is None else sample["category"]
    meta = f"#{index} · id {esc(sample.get('id'))} · category {esc(category)}"
    columns = "".join(_column(v, outputs.get(v), scores.get(v) or {}) for v in VARIANTS)
    return (
        f'<section class="sample"><div class="meta">{meta}</div>'
        f"<h2>prompt</h2><pre>{esc(sample.get('prompt', ''))}</pre>"
        f"<h2>reference</h2><pre>{esc(sample.get('reference', ''))}</pre>"
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
        headline_html(headline) if headline else "",
        "<h2>All metrics</h2>" if headline and summary else "",
        _summary_table(summary or {}),
        f'<p class="meta">{len(samples)} prompts; greedy replies of each variant to the same prompt.</p>',
        *(_sample(i, s) for i, s in enumerate(samples, start=1)),
    ]
    return page(title, "\n".join(p for p in parts if p), css=HEADLINE_CSS + REVIEW_CSS)


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
