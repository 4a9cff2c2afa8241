"""The before / after headline that opens review.html and run.html (evaluate/headline.py).

Covers: the pages used to open with a flat metric table and randomly sampled prompts, so whether
fine-tuning worked could not be seen at a glance; now they open with a per-category base / candidate
table with better / worse markers read with each metric's direction, and the rows where the
candidate most beats the base (plus the worst regressions, labelled), chosen deterministically.
Scores come from the real `score_rows`, on hand-written generations whose ROUGE-L is easy to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import empty_registry
from tuneline.evaluate.headline import build_headline, gain, headline_html, pick_pairs
from tuneline.evaluate.metrics import score_rows
from tuneline.evaluate.review import review_html
from tuneline.jsonio import write_json
from tuneline.layout import Layout

# id, category, reference, base answer, candidate answer (base never stops on t1)
ROWS = [
    ("m1", "math", "4", "five", "4"),  # gain 2 (ROUGE-L 0 -> 1, exact 0 -> 1)
    ("m2", "math", "10", "10", "10"),  # gain 0
    ("m3", "math", "7", "seven", "7"),  # gain 2
    ("m4", "math", "2", "two", "2"),  # gain 2: a tie with m1 and m3, left out by id (two per category)
    ("q1", "qa", "Paris is the capital", "<b>London</b> is a city", "Paris is the capital"),  # win
    ("q2", "qa", "blue sky", "blue sky", "red"),  # gain -2: the worst regression
    ("q3", "qa", "yes", "no", "nah"),  # gain 0
    ("t1", "tone", "calm", "calm calm calm", "calm"),  # gain 0.5 + 1 = 1.5
    ("t2", "tone", "happy", "happy", "happy happy happy"),  # gain -1.5: the second regression
    ("t3", "tone", "ok", "nope", "nope"),  # gain 0
]
PROMPTS = {"q1": "<script>alert('x')</script> capital of France & more?"}


def generations(variant: str) -> list[dict[str, Any]]:
    col = {"base": 3, "candidate": 4, "champion": 3}[variant]
    return [
        {"id": r[0], "category": r[1], "prompt": PROMPTS.get(r[0], f"question {r[0]}"), "reference": r[2],
         "prediction": r[col], "stopped": not (variant == "base" and r[0] == "t1"), "new_tokens": 3}
        for r in ROWS
    ]


def evaluation(variants: tuple[str, ...] = ("base", "candidate")) -> dict[str, Any]:
    rows = {v: generations(v) for v in variants}
    scored = {v: score_rows(rows[v]) for v in variants}
    return {
        "variants": {v: s["overall"] for v, s in scored.items()},
        "per_category": {v: s["per_category"] for v, s in scored.items()},
        "rows": rows,
        "per_row": {v: s["per_row"] for v, s in scored.items()},
    }


def headline(variants: tuple[str, ...] = ("base", "candidate")) -> dict[str, Any]:
    ev = evaluation(variants)
    return build_headline(ev["variants"], ev["per_category"], ev["rows"], ev["per_row"])


def test_table_values_and_markers() -> None:
    table = {row["scope"]: row for row in headline()["table"]}
    assert list(table) == ["all rows", "math", "qa", "tone"]
    assert table["all rows"]["rows"] == 10 and table["math"]["rows"] == 4 and table["qa"]["rows"] == 3
    assert set(table["math"]["metrics"]) == {"rouge_l", "exact_match", "never_stop_rate"}  # no schema

    math = table["math"]["metrics"]["rouge_l"]
    assert (math["base"], math["candidate"]) == (0.25, 1.0)
    assert math["delta_vs_base"] == pytest.approx(0.75) and math["better_than_base"] is True
    qa = table["qa"]["metrics"]["rouge_l"]  # base (0.2 + 1 + 0) / 3, candidate (1 + 0 + 0) / 3
    assert qa["base"] == pytest.approx(0.4) and qa["candidate"] == pytest.approx(1 / 3)
    assert qa["better_than_base"] is False
    tone_stop = table["tone"]["metrics"]["never_stop_rate"]  # lower is better: a negative delta wins
    assert tone_stop["delta_vs_base"] == pytest.approx(-1 / 3) and tone_stop["better_than_base"] is True
    tone_em = table["tone"]["metrics"]["exact_match"]  # 1/3 each: a tie is neither
    assert tone_em["delta_vs_base"] == 0 and tone_em["better_than_base"] is None

    page = headline_html(headline())
    assert "+0.750 ✓ better" in page and "-0.067 ✗ worse" in page and "-0.333 ✓ better" in page
    assert '<span class="same">= same</span>' in page
    assert "champion" not in page  # no champion: no column for it


def test_side_by_side_rows_are_the_biggest_gains_then_the_worst_regressions() -> None:
    ev = evaluation()
    assert gain(ev["per_row"]["base"]["t1"], ev["per_row"]["candidate"]["t1"]) == 1.5
    picked = build_headline(ev["variants"], ev["per_category"], ev["rows"], ev["per_row"])
    # at most two per category (m4 ties m1 / m3 and loses on id), grouped by category, best first
    assert [p["id"] for p in picked["wins"]] == ["m1", "m3", "q1", "t1"]
    assert [p["id"] for p in picked["regressions"]] == ["q2", "t2"]
    q1 = picked["wins"][2]
    assert q1["answers"] == {"base": "<b>London</b> is a city", "candidate": "Paris is the capital"}
    assert q1["reference"] == "Paris is the capital" and q1["gain"] == pytest.approx(1.8)
    # Under a limit every category shows its best row before any shows a second.
    few = pick_pairs(ev["rows"], ev["per_row"], limit=3, regressions=1)
    assert [p["id"] for p in few["wins"]] == ["m1", "q1", "t1"]
    assert [p["id"] for p in few["regressions"]] == ["q2"]
    # The same inputs in another order give the same choice.
    shuffled = {v: list(reversed(rs)) for v, rs in ev["rows"].items()}
    assert pick_pairs(shuffled, ev["per_row"]) == pick_pairs(ev["rows"], ev["per_row"])
    json.dumps(picked)  # the stage writes it as JSON for the run report


def test_page_escapes_data_and_labels_regressions() -> None:
    page = headline_html(headline())
    assert "<script" not in page and "<b>London" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; capital of France &amp; more?" in page
    assert "&lt;b&gt;London&lt;/b&gt; is a city" in page
    assert page.count('<div class="pair">') == 4 and page.count('<div class="pair regression">') == 2
    assert page.index("Where the candidate most beats the base") < page.index("Regressions")
    assert "regression · category qa · id q2" in page


def test_champion_columns_and_missing_metrics() -> None:
    page = headline_html(headline(("base", "champion", "candidate")))
    assert "<th>champion</th>" in page and "<th>candidate vs champion</th>" in page
    assert "<h4>champion answer</h4>" in page
    # a metric without a value shows as "–", with no marker; no answers kept: just the table
    variants = {"base": {"rows": 2, "rouge_l": None}, "candidate": {"rows": 2, "rouge_l": 0.5}}
    bare = build_headline(variants, {})
    assert bare["wins"] is None
    html = headline_html(bare)
    assert "<td>–</td><td>0.500</td><td>–</td>" in html and "pair" not in html


def test_review_page_opens_with_the_headline() -> None:
    ev = evaluation()
    sample = {"id": "q1", "category": "qa", "prompt": "p", "reference": "r",
              "outputs": {"base": "b", "champion": None, "candidate": "c"}, "scores": {}}
    page = review_html([sample], "review", ev["variants"], headline())
    assert page.index("Before / after fine-tuning") < page.index('<table class="summary">')
    assert page.index('<table class="summary">') < page.index('<section class="sample">')
    assert "<script" not in page and "Before / after" not in review_html([sample], "review", ev["variants"])


def test_run_report_opens_with_the_headline(tmp_path: Path) -> None:
    from tuneline.config.loader import Config
    from tuneline.run_report import headline_section, run_report

    layout = Layout(tmp_path)
    ev = evaluation()
    write_json(layout.report("evaluate"), {"variants": ev["variants"], "per_category": ev["per_category"]})
    # an evaluation written before the headline file existed: the table only, from evaluate.json
    assert "Before / after" in headline_section(layout) and "pair" not in headline_section(layout)
    write_json(layout.report("evaluate_headline"), headline())
    cfg = Config.model_validate({"tracking": {"uri": empty_registry(tmp_path)}})
    page = run_report(layout, cfg).read_text(encoding="utf-8")
    assert page.index("Before / after fine-tuning") < page.index("<h2>Data</h2>")
    assert "regression · category qa · id q2" in page and "<script" not in page
