"""Evaluation metrics (hand-computed ROUGE-L, JSON metrics, aggregation, comparisons) and review.html."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tuneline.evaluate.metrics import (
    MixedScriptTokenizer,
    compare,
    exact_match,
    field_accuracy,
    rouge_l,
    score_row,
    score_rows,
)
from tuneline.evaluate.review import review_html, write_review

SCHEMA = {
    "type": "object",
    "required": ["label", "score"],
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
}


def f1(lcs: int, pred_len: int, ref_len: int) -> float:
    p, r = lcs / pred_len, lcs / ref_len
    return 2 * p * r / (p + r)


def row(
    rid: str, pred: str, ref: str, category: str | None = None, stopped: bool = True, **extra: Any
) -> dict[str, Any]:
    return {
        "id": rid,
        "category": category,
        "reference": ref,
        "prediction": pred,
        "stopped": stopped,
        **extra,
    }


def test_exact_match_normalizes_whitespace_only() -> None:
    assert exact_match("  Hello\n\tworld ", "Hello world") == 1.0
    assert exact_match("hello world", "Hello world") == 0.0
    assert exact_match("Hello world.", "Hello world") == 0.0
    assert exact_match("", "   ") == 1.0


def test_rouge_l_english_matches_hand_computed_lcs() -> None:
    # LCS "the cat on the mat" = 5 of 6 tokens each way.
    assert rouge_l("the cat is on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # pred "a c" vs ref "a b c d": LCS 2, precision 1, recall 1/2.
    assert rouge_l("a c", "a b c d") == pytest.approx(f1(2, 2, 4))
    # Case and punctuation are ignored; order matters (LCS of reversed words is 1).
    assert rouge_l("The CAT, sat!", "the cat sat") == 1.0
    assert rouge_l("c b a", "a b c") == pytest.approx(f1(1, 3, 3))
    assert rouge_l("dog", "cat") == 0.0
    assert rouge_l("...", "") == 1.0  # nothing to say, nothing said


def test_rouge_l_chinese_counts_characters() -> None:
    # 我爱北京天安门 vs 我爱天安门广场: LCS 我爱天安门 = 5 of 7 characters each.
    assert rouge_l("我爱天安门广场", "我爱北京天安门") == pytest.approx(5 / 7)
    # 天气好 vs 今天天气很好: LCS 天气好 = 3; precision 3/3, recall 3/6.
    assert rouge_l("天气好", "今天天气很好") == pytest.approx(f1(3, 3, 6))
    assert rouge_l("今天天气很好。", "今天天气很好") == 1.0  # full-width punctuation dropped
    # rouge-score's own tokenizer drops every non-ASCII character: every Chinese pair would score 0.
    from rouge_score import rouge_scorer

    assert rouge_scorer.RougeScorer(["rougeL"]).score("今天天气很好", "天气好")["rougeL"].fmeasure == 0.0


def test_mixed_script_tokenizer() -> None:
    tokens = MixedScriptTokenizer().tokenize("GPT模型 is ＧＯＯＤ, naïve 한국어!")
    assert tokens == ["gpt", "模", "型", "is", "good", "naïve", "한국어"]
    # Mixed: gpt 模 型 很 好 vs gpt 模 型 不 好 -> LCS 4 of 5.
    assert rouge_l("GPT模型不好", "GPT模型很好") == pytest.approx(4 / 5)


def test_field_accuracy_compares_leaf_fields_strictly() -> None:
    ref = {"a": {"b": 1, "c": [1, 2]}, "d": True}
    assert field_accuracy({"a": {"b": 1.0, "c": [1, 2]}, "d": True, "extra": 0}, ref) == 1.0
    # c's list order differs and true is not 1: one field of three reproduced.
    assert field_accuracy({"a": {"b": 1, "c": [2, 1]}, "d": 1}, ref) == pytest.approx(1 / 3)
    assert field_accuracy([1, 2], [1, 2]) == 1.0 and field_accuracy("x", {"k": "x"}) == 0.0


@pytest.mark.parametrize("form", ["dict", "file", "validator"])
def test_json_metrics_with_a_schema(form: str, tmp_path: Path) -> None:
    from tuneline.data.output_schema import load_output_schema

    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    schema = {"dict": SCHEMA, "file": path, "validator": load_output_schema(path)}[form]
    ref = '{"label": "pos", "score": 1}'
    rows = [
        row("a", '{"label":"pos","score":1.0}', ref),  # parses, valid, 2/2 fields
        row("b", '{"label": "neg"}', ref),  # parses, misses `score`, 0/2
        row("c", ' {"label": "pos", "score": "1"} ', ref),  # parses, wrong type, 1/2
        row("d", "label: pos", ref, stopped=False),  # not JSON
    ]
    overall = score_rows(rows, schema)["overall"]
    assert overall["json_parse_rate"] == pytest.approx(3 / 4)
    assert overall["json_valid_rate"] == pytest.approx(1 / 4)
    assert overall["json_field_accuracy"] == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert overall["never_stop_rate"] == pytest.approx(1 / 4)
    # Without a schema: no JSON metrics; a non-JSON reference gives no field accuracy.
    assert "json_parse_rate" not in score_row(rows[0])
    assert score_row(row("e", "{}", "free text"), SCHEMA)["json_field_accuracy"] is None


def test_json_metrics_per_category_schema(tmp_path: Path) -> None:
    """task.output_schema as {category: file}: the JSON metrics judge only rows of those categories (two
    categories, two schemas); `chat` rows and a row without a category are free text (None), so the overall
    rates are means over the 4 structured rows, not over all 7."""
    from tuneline.data.output_schema import load_output_schemas

    label, call = tmp_path / "label.json", tmp_path / "call.json"
    label.write_text(json.dumps(SCHEMA))
    call.write_text(json.dumps({"type": "object", "required": ["name"]}))
    schemas = load_output_schemas({"extract": label, "tool": call})
    rows = [
        row("e1", '{"label": "pos", "score": 1}', '{"label": "pos", "score": 1}', "extract"),  # valid, 2/2
        row("e2", "label: pos", '{"label": "pos", "score": 1}', "extract"),  # not JSON
        row("t1", '{"name": "f"}', '{"name": "f"}', "tool"),  # valid, 1/1
        row("t2", '{"label": "pos", "score": 1}', '{"name": "f"}', "tool"),  # parses, fails ITS schema
        row("c1", "hello", "hello", "chat"),
        row("c2", "not json", "{}", "chat"),
        row("n1", "free", "free", None),
    ]
    result = score_rows(rows, schemas)
    overall, per = result["overall"], result["per_category"]
    assert overall["rows"] == 7 and overall["structured_rows"] == 4
    assert overall["json_parse_rate"] == pytest.approx(3 / 4)
    assert overall["json_valid_rate"] == pytest.approx(2 / 4)
    assert overall["json_field_accuracy"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert per["extract"]["json_valid_rate"] == 0.5 and per["tool"]["json_valid_rate"] == 0.5
    assert per["chat"]["json_valid_rate"] is None and per["chat"]["structured_rows"] == 0
    assert per["(none)"]["json_parse_rate"] is None
    per_row = result["per_row"]
    assert per_row["c2"]["json_parse_rate"] is None and per_row["t2"]["json_valid_rate"] == 0
    # No structured row evaluated: the rates are None, not 0 and not a free pass.
    none = score_rows(rows[4:], schemas)["overall"]
    assert none["json_valid_rate"] is None and none["structured_rows"] == 0
    json.dumps(result, allow_nan=False)


def test_never_stop_counts_only_references_that_fit_the_budget() -> None:
    """A reply can only be blamed for not stopping when its reference (end of turn included) fits
    max_new_tokens: a long reference that hit the budget is left out and counted, overall and per
    category."""
    rows = [
        row("fits", "a b c", "a b c d", "qa", stopped=False, reference_tokens=5),  # 5 <= 5: never stopped
        row("exact", "x", "x", "qa", stopped=True, reference_tokens=2),
        row("long", "a b c", "a b c d e f g", "essay", stopped=False, reference_tokens=6),  # 6 > 5: excluded
        row("unknown", "y", "y", "qa", stopped=False),  # no count (older rows): judged as before
    ]
    result = score_rows(rows, max_new_tokens=5)
    overall, per = result["overall"], result["per_category"]
    assert result["per_row"]["long"]["never_stop_rate"] is None
    assert overall["never_stop_rate"] == pytest.approx(2 / 3) and overall["never_stop_excluded"] == 1
    assert per["essay"]["never_stop_rate"] is None and per["essay"]["never_stop_excluded"] == 1
    assert per["qa"]["never_stop_excluded"] == 0
    assert score_rows(rows)["overall"]["never_stop_rate"] == pytest.approx(3 / 4)  # no budget: every row
    json.dumps(result, allow_nan=False)


def test_score_rows_means_per_category_and_token_weighted_loss() -> None:
    rows = [
        row("1", "yes", "yes", "qa", loss=1.0, tokens=1, new_tokens=2),
        row("2", "no", "yes", None, stopped=False, loss=3.0, tokens=3, new_tokens=8),
        row("3", "a b", "a b c d", "qa", loss=2.0, tokens=4, new_tokens=3),
    ]
    result = score_rows(rows)
    overall, per = result["overall"], result["per_category"]
    assert overall["rows"] == 3 and list(per) == ["(none)", "qa"]
    assert overall["exact_match"] == pytest.approx(1 / 3)
    assert overall["rouge_l"] == pytest.approx((1 + 0 + f1(2, 2, 4)) / 3)
    assert overall["never_stop_rate"] == pytest.approx(1 / 3)
    assert overall["mean_new_tokens"] == pytest.approx(13 / 3)
    assert overall["loss"] == pytest.approx((1 * 1 + 3 * 3 + 2 * 4) / 8)  # not (1 + 3 + 2) / 3
    assert overall["perplexity"] == pytest.approx(math.exp(18 / 8)) and overall["tokens"] == 8
    assert per["qa"]["rows"] == 2 and per["qa"]["exact_match"] == 0.5
    assert per["qa"]["loss"] == pytest.approx((1 + 8) / 5)
    assert per["(none)"] == {
        "rows": 1,
        "exact_match": 0.0,
        "rouge_l": 0.0,
        "never_stop_rate": 1.0,
        "mean_new_tokens": 8.0,
        "loss": 3.0,
        "perplexity": pytest.approx(math.exp(3)),
        "tokens": 3,
    }
    assert result["per_row"]["3"]["rouge_l"] == pytest.approx(f1(2, 2, 4))
    json.dumps(result, allow_nan=False)  # reports are strict JSON
    assert score_rows([])["overall"] == {"rows": 0}


def test_compare_reads_each_metric_in_its_direction() -> None:
    base = {"exact_match": 0.2, "rouge_l": 0.5, "loss": 2.0, "never_stop_rate": 0.1, "rows": 10}
    cand = {"exact_match": 0.5, "rouge_l": 0.5, "loss": 1.5, "never_stop_rate": 0.3, "rows": 10}
    champ = {"exact_match": 0.6, "rouge_l": 0.4, "loss": 1.4, "never_stop_rate": 0.3}
    out = compare(base, cand, champ)
    assert set(out) == {"exact_match", "rouge_l", "loss", "never_stop_rate"}  # counts are not metrics
    em, loss, stop = out["exact_match"], out["loss"], out["never_stop_rate"]
    assert em["direction"] == "higher" and em["delta_vs_base"] == pytest.approx(0.3)
    assert em["better_than_base"] is True and em["better_than_champion"] is False
    assert loss["direction"] == "lower" and loss["delta_vs_base"] == pytest.approx(-0.5)
    assert loss["better_than_base"] is True and loss["better_than_champion"] is False
    assert stop["better_than_base"] is False and stop["better_than_champion"] is None  # a tie
    assert out["rouge_l"]["better_than_base"] is None and out["rouge_l"]["better_than_champion"] is True
    alone = compare({"overall": base}, {"overall": cand})  # score_rows results work too
    assert alone["loss"]["champion"] is None and alone["loss"]["delta_vs_champion"] is None
    assert alone["loss"]["better_than_champion"] is None and alone["loss"]["better_than_base"] is True
    assert compare({"loss": None}, {"loss": 1.0})["loss"]["delta_vs_base"] is None


def samples() -> list[dict[str, Any]]:
    return [
        {
            "id": "r1",
            "category": "qa",
            "prompt": "<|user|>\nIs 1 < 2 & 3 > 2?<|end|>",
            "reference": "Yes",
            "outputs": {"base": "<script>alert(1)</script>", "champion": None, "candidate": "Yes"},
            "scores": {
                "base": {"exact_match": 0.0, "rouge_l": 0.0},
                "candidate": {"exact_match": 1.0, "rouge_l": 1.0},
            },
        },
        {
            "id": "r2",
            "category": None,
            "prompt": "猫怎么叫？",
            "reference": "喵喵。",
            "outputs": {"base": "汪", "champion": "喵", "candidate": "喵喵。"},
            "scores": {v: {"exact_match": 0.0, "rouge_l": 0.5} for v in ("base", "champion", "candidate")},
        },
    ]


def test_review_page_escapes_and_shows_all_three_variants(tmp_path: Path) -> None:
    summary = {
        "base": {"exact_match": 0.1, "loss": 2.5},
        "champion": {"exact_match": 0.4, "loss": 1.9},
        "candidate": {"exact_match": 0.5, "loss": 1.7},
    }
    page = review_html(samples(), "Review <run 7>", summary)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "<link" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "Review &lt;run 7&gt;" in page
    assert "Is 1 &lt; 2 &amp; 3 &gt; 2?" in page and "&lt;|user|&gt;" in page
    assert (
        page.count('<div class="variant base">') == 2 and page.count('<div class="variant candidate">') == 2
    )
    assert page.count('<div class="variant champion">') == 2 and "no champion" in page
    assert "喵喵。" in page and "category (none)" in page and "ROUGE-L 0.50" in page
    assert page.index("<table") < page.index('<section class="sample">')
    for cell in ("<td>base</td>", "<td>champion</td>", "<td>candidate</td>", "<th>loss</th>", "<td>1.7</td>"):
        assert cell in page
    path = write_review(samples(), tmp_path / "reports" / "review.html", "Review <run 7>", summary)
    assert path.read_text(encoding="utf-8") == page == review_html(samples(), "Review <run 7>", summary)
    # No champion in the summary: its row is left out, the page still renders.
    assert "<td>champion</td>" not in review_html(
        samples(), "t", {"base": {"m": 1}, "champion": None, "candidate": {"m": 2}}
    )


def test_reports_render_a_none_never_stop_rate(tmp_path: Path) -> None:
    """Every reference over the budget leaves never_stop_rate None: review.html and the run report show
    it as missing (and the excluded count), not crash on formatting None."""
    from tuneline.jsonio import write_json
    from tuneline.layout import Layout
    from tuneline.run_report import eval_section

    rows = [row("long", "a b", "a b c d e", "essay", stopped=False, reference_tokens=9)]
    overall = score_rows(rows, max_new_tokens=4)["overall"]
    assert overall["never_stop_rate"] is None and overall["never_stop_excluded"] == 1
    summary = {"base": dict(overall), "candidate": dict(overall)}
    page = review_html(samples(), "t", summary)
    assert "<th>never_stop_rate</th>" in page and "<td>–</td>" in page
    assert "<th>never_stop_excluded</th>" in page
    layout = Layout(tmp_path)
    write_json(layout.report("evaluate"), {"variants": summary})
    section = eval_section(layout)
    assert "<td>never_stop_rate</td><td>–</td><td>–</td>" in section  # both pages: the shared MISSING mark
    assert "<td>never_stop_excluded</td><td>1</td><td>1</td>" in section
