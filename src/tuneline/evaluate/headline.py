"""The before / after headline that opens review.html and run.html: did fine-tuning work, at a glance.

Two parts, both built from what the evaluate stage already scored on the test split:

- a table, overall and per category: base, champion (when there is one) and candidate on the
  generation metrics (ROUGE-L, exact match, never-stop rate, schema-valid rate when a schema is set),
  the number of rows, and the candidate's delta with a better / worse marker read with the metric's
  direction (`metrics.DIRECTIONS`: a lower never-stop rate is better);
- a few side-by-side answers where the difference is obvious: the rows whose *gain* (candidate minus
  base, summed over ROUGE-L, exact match and schema validity) is largest, one or two per category, and
  honestly the worst regressions (negative gain), labelled as such.

`build_headline` is pure and JSON-able (the stage writes it to reports/evaluate_headline.json so the
run report can show the same answers); `headline_html` renders it, escaping every value from data.
Choices are deterministic: sorted by gain, then id.
"""

from __future__ import annotations

from typing import Any

from tuneline.evaluate.metrics import NO_CATEGORY, compare
from tuneline.html import MISSING, esc, fmt

# (metric, label) in table order; a metric the candidate was not scored on (no schema) is left out.
METRICS = (
    ("rouge_l", "ROUGE-L"),
    ("exact_match", "exact match"),
    ("never_stop_rate", "never-stop rate"),
    ("json_valid_rate", "schema-valid rate"),
)
# A row's gain sums these deltas: each is in [-1, 1], so an exact-match or validity flip counts as much
# as a whole ROUGE-L swing.
GAIN_METRICS = ("rouge_l", "exact_match", "json_valid_rate")
VARIANTS = ("base", "champion", "candidate")

# The headline's own styles, on top of `tuneline.html.BASE_CSS`: a page that shows `headline_html` adds them.
HEADLINE_CSS = """
table.headline td{text-align:right}table.headline td.scope{text-align:left;font-weight:600}
table.headline td.metric{text-align:left}
.better{color:#17803d;font-weight:600}.worse{color:#c00;font-weight:600}.same{color:#777}
.pair{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.7rem;margin-bottom:.9rem}
.pair.regression{border-color:#c00}
.pair .head{font-size:13px;color:#57606a;margin-bottom:.3rem}
.pair .cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(14rem,1fr));gap:.6rem}
.pair pre{padding:.4rem;margin:.2rem 0;max-height:16rem}
.pair h4{margin:.2rem 0;font-size:13px}
"""


def _scores(entry: dict[str, Any] | None) -> dict[str, Any]:
    return entry or {}


def _table_row(scope: str, per_variant: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    candidate = _scores(per_variant.get("candidate"))
    champion = per_variant.get("champion")
    comparison = compare(_scores(per_variant.get("base")), candidate, champion)
    return {"scope": scope, "rows": candidate.get("rows"),
            "metrics": {m: comparison[m] for m, _ in METRICS if m in comparison}}


def headline_table(
    variants: dict[str, dict[str, Any] | None], per_category: dict[str, dict[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Overall, then one entry per category (left out when there is only one: it equals overall).

    Args:
        variants: {variant: overall metrics}, as in evaluate.json `variants` (champion may be absent).
        per_category: {variant: {category: metrics}}, as in evaluate.json `per_category`.

    Returns:
        [{"scope": "all rows" | category, "rows": n, "metrics": {metric: `compare` entry}}].
    """
    out = [_table_row("all rows", variants)]
    categories = sorted(per_category.get("candidate") or {})
    if len(categories) > 1:
        for category in categories:
            present = [v for v in VARIANTS if variants.get(v) is not None]
            out.append(_table_row(category, {v: (per_category.get(v) or {}).get(category) for v in present}))
    return out


def gain(base: dict[str, Any], candidate: dict[str, Any]) -> float:
    """Candidate minus base over GAIN_METRICS (a metric missing or None on either side counts 0)."""
    total = 0.0
    for m in GAIN_METRICS:
        if base.get(m) is not None and candidate.get(m) is not None:
            total += candidate[m] - base[m]
    return round(total, 9)  # float noise must not decide the order of two equal gains


def pick_pairs(
    rows: dict[str, list[dict[str, Any]]],
    per_row: dict[str, dict[str, dict[str, Any]]],
    per_category: int = 2,
    limit: int = 8,
    regressions: int = 2,
) -> dict[str, list[dict[str, Any]]]:
    """The side-by-side answers where the candidate most beats the base, and its worst regressions.

    Wins are taken in rounds: the best row of each category, then the second best, ... (each round in
    order of gain, then id), at most `per_category` per category and `limit` in all, so every
    category with a win shows one before any shows two. Regressions: the `regressions` rows with the
    most negative gain, any category.

    Args:
        rows: {variant: generation rows} (id, category, prompt, reference, prediction), test split.
        per_row: {variant: {id: scores}}, as `score_rows(...)["per_row"]`.

    Returns:
        {"wins": [...], "regressions": [...]}, each row {"id", "category", "prompt", "reference", "gain",
        "answers": {variant: prediction}, "scores": {variant: {metric: value}}}; wins grouped by category.
    """
    answers = {v: {str(r["id"]): r for r in rs} for v, rs in rows.items()}
    scored = []
    for rid, row in answers.get("candidate", {}).items():
        base = per_row.get("base", {}).get(rid)
        cand = per_row.get("candidate", {}).get(rid)
        if base is None or cand is None:
            continue
        category = NO_CATEGORY if row.get("category") is None else str(row["category"])
        scored.append((gain(base, cand), rid, category, row))
    scored.sort(key=lambda s: (-s[0], s[1]))

    by_category: dict[str, list[tuple[float, str, str, dict[str, Any]]]] = {}
    for item in scored:
        if item[0] > 0:
            by_category.setdefault(item[2], []).append(item)
    wins: list[tuple[float, str, str, dict[str, Any]]] = []
    for rank in range(per_category):
        this_round = sorted((c[rank] for c in by_category.values() if len(c) > rank),
                            key=lambda s: (-s[0], s[1]))
        wins += this_round[: max(0, limit - len(wins))]
    wins.sort(key=lambda s: (s[2], -s[0], s[1]))
    worst = sorted((s for s in scored if s[0] < 0), key=lambda s: (s[0], s[1]))[:regressions]

    def record(item: tuple[float, str, str, dict[str, Any]]) -> dict[str, Any]:
        g, rid, category, row = item
        return {
            "id": rid, "category": category, "gain": g,
            "prompt": row.get("prompt", ""), "reference": row.get("reference", ""),
            "answers": {v: (answers[v].get(rid) or {}).get("prediction") for v in VARIANTS if v in answers},
            "scores": {v: per_row[v].get(rid, {}) for v in VARIANTS if v in per_row},
        }

    return {"wins": [record(w) for w in wins], "regressions": [record(w) for w in worst]}


def build_headline(
    variants: dict[str, dict[str, Any] | None],
    per_category: dict[str, dict[str, dict[str, Any]]],
    rows: dict[str, list[dict[str, Any]]] | None = None,
    per_row: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The headline's data: {"table": `headline_table`, "wins": [...], "regressions": [...]}.

    Without `rows` / `per_row` (e.g. a report written before this page had answers) there are no
    side-by-side answers ("wins" and "regressions" are None), only the table.
    """
    pairs = pick_pairs(rows, per_row) if rows and per_row else {"wins": None, "regressions": None}
    return {"table": headline_table(variants, per_category), **pairs}


# ---- HTML -------------------------------------------------------------------------------------------


def _num(value: Any, signed: bool = False) -> str:
    """Three decimals, so the columns of the table line up; a sign on deltas."""
    return fmt(value, "+.3f" if signed else ".3f")


def _marker(delta: float | None, better: bool | None) -> str:
    if delta is None:
        return MISSING
    if better is None:
        return '<span class="same">= same</span>'
    cls, word = ("better", "✓ better") if better else ("worse", "✗ worse")
    return f'<span class="{cls}">{_num(delta, True)} {word}</span>'


def _table_html(table: list[dict[str, Any]]) -> str:
    champion = any(e.get("champion") is not None for r in table for e in r["metrics"].values())
    labels = dict(METRICS)
    head = ["scope", "rows", "metric", "base", *(["champion"] if champion else []), "candidate",
            "candidate vs base", *(["candidate vs champion"] if champion else [])]
    body = []
    for row in table:
        metrics = list(row["metrics"].items())
        for i, (name, e) in enumerate(metrics):
            cells = ""
            if i == 0:
                cells += (f'<td class="scope" rowspan="{len(metrics)}">{esc(row["scope"])}</td>'
                          f'<td rowspan="{len(metrics)}">{esc(fmt(row["rows"]))}</td>')
            cells += f'<td class="metric">{esc(labels.get(name, name))}</td><td>{_num(e.get("base"))}</td>'
            if champion:
                cells += f"<td>{_num(e.get('champion'))}</td>"
            cells += f"<td>{_num(e.get('candidate'))}</td>"
            cells += f"<td>{_marker(e.get('delta_vs_base'), e.get('better_than_base'))}</td>"
            if champion:
                cells += f"<td>{_marker(e.get('delta_vs_champion'), e.get('better_than_champion'))}</td>"
            body.append(f"<tr>{cells}</tr>")
    header = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f'<table class="headline"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _pair_html(pair: dict[str, Any], regression: bool) -> str:
    scores = pair.get("scores") or {}
    base_r, cand_r = (scores.get(v, {}).get("rouge_l") for v in ("base", "candidate"))
    label = "regression · " if regression else ""
    head = (f"{label}category {esc(pair['category'])} · id {esc(pair['id'])} · ROUGE-L base {_num(base_r)} → "
            f"candidate {_num(cand_r)} · gain {_num(pair['gain'], True)}")
    cols = "".join(
        f"<div><h4>{esc(v)} answer</h4><pre>{esc(answer)}</pre></div>"
        for v, answer in (pair.get("answers") or {}).items() if answer is not None
    )
    return (f'<div class="pair{" regression" if regression else ""}"><div class="head">{head}</div>'
            f'<div class="cols"><div><h4>prompt</h4><pre>{esc(pair["prompt"])}</pre></div>'
            f'<div><h4>reference</h4><pre>{esc(pair["reference"])}</pre></div>{cols}</div></div>')


def headline_html(headline: dict[str, Any]) -> str:
    """The headline as an HTML fragment (style: `HEADLINE_CSS`): the table, then the side-by-side answers."""
    parts = ['<section class="headline"><h2>Before / after fine-tuning</h2>', _table_html(headline["table"])]
    wins, worst = headline.get("wins") or [], headline.get("regressions") or []
    if wins:
        parts.append("<h3>Where the candidate most beats the base</h3>")
        parts += [_pair_html(p, False) for p in wins]
    elif headline.get("wins") is not None:
        parts.append('<p class="same">No test row where the candidate beats the base.</p>')
    if worst:
        parts.append("<h3>Regressions: where the candidate does worst against the base</h3>")
        parts += [_pair_html(p, True) for p in worst]
    parts.append("</section>")
    return "".join(parts)
