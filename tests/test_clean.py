"""The clean stage: per-rule cleaning, quality rejections, the classifier hook and the stage contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneline.config import Config
from tuneline.config.clean import CleanParams
from tuneline.data import clean
from tuneline.data.quality import heuristic_failures
from tuneline.errors import ConfigError, InputFileError
from tuneline.jsonio import read_json, read_jsonl, write_jsonl
from tuneline.layout import Layout
from tuneline.records import make_record

GOOD_ANSWER = "Paris is the capital of France and its largest city."


def rec(user: str, assistant: str = GOOD_ANSWER, **extra: Any) -> dict[str, Any]:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    msgs += extra.pop("more", [])
    return make_record(msgs, {"file": "data/raw/t.jsonl", "line": 1}, **extra)


def cfg_with(**clean: Any) -> Config:
    return Config.model_validate({"clean": clean})


def reasons(records: list[dict[str, Any]], params: CleanParams | None = None) -> list[str | None]:
    """The rejection reason of each record (None = kept), in input order."""
    kept, rejected, _ = clean.clean_records(records, params or CleanParams())
    by_id = {r["id"]: r["reason"] for r in rejected}
    assert len(kept) + len(rejected) == len(records)
    return [by_id.get(r["id"]) for r in records]


# --- cleaning, rule by rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "rules"),
    [
        ("<p>Hello&nbsp;<b>world</b></p>", "Hello world", {"html", "whitespace"}),
        ("mail me: a.b@example.com", "mail me: <EMAIL>", {"emails"}),
        ("docs at https://example.com/x.", "docs at <URL>.", {"urls"}),
        ("<a href='https://x.com'>https://x.com</a>", "<URL>", {"html", "urls"}),
        ("共有１,２３４人", "共有1234人", {"nfkc", "numbers"}),
        ("line one  \r\nline two\r\n\r\n\r\n\r\n\r\nend", "line one\nline two\n\n\nend", {"whitespace"}),
        ("\ufeffzero\u200bwidth", "zerowidth", {"control"}),
        ("a < b and x<5", "a < b and x<5", set()),
        ("1, 2, 3 and 1,2", "1, 2, 3 and 1,2", set()),
        ("数学里 3 < 5 成立。", "数学里 3 < 5 成立。", set()),
    ],
)
def test_clean_text_rules(text: str, expected: str, rules: set[str]) -> None:
    assert clean.clean_text(text, CleanParams()) == (expected, rules)


def test_placeholders_survive_html_stripping_and_removal_mode() -> None:
    text = "<p>see https://a.com/x or write to bob@a.com</p>"
    assert clean.clean_text(text, CleanParams())[0] == "see <URL> or write to <EMAIL>"
    removed = CleanParams(urls="remove", emails="remove")
    assert clean.clean_text(text, removed)[0] == "see or write to"
    kept = CleanParams(urls="keep", emails="keep")
    assert clean.clean_text(text, kept)[0] == "see https://a.com/x or write to bob@a.com"


def test_switches_turn_rules_off() -> None:
    off = CleanParams(html=False, nfkc=False, numbers=False)
    assert clean.clean_text("<b>１,２３４</b>", off) == ("<b>１,２３４</b>", set())
    # dates are off by default
    assert clean.clean_text("on March 5, 2024", CleanParams())[0] == "on March 5, 2024"
    assert clean.clean_text("on March 5, 2024", CleanParams(dates=True)) == ("on 2024-03-05", {"dates"})


def test_tool_turns_and_unlisted_roles_are_untouched() -> None:
    payload = '{"html": "<b>x</b>", "url": "https://a.com", "n": "1,234"}'
    record = rec("<b>hi</b>", more=[{"role": "tool", "content": payload}])
    record["messages"].insert(0, {"role": "system", "content": "<i>sys</i>"})
    cleaned, changed = clean.clean_record(record, CleanParams(roles=["user", "assistant", "tool"]))
    assert cleaned["messages"][3]["content"] == payload
    assert cleaned["messages"][0]["content"] == "<i>sys</i>"  # system not in roles
    assert cleaned["messages"][1]["content"] == "hi"
    assert cleaned["id"] == record["id"] and changed == {"html"}


# --- quality rules -----------------------------------------------------------------------------------

LONG_EN = " ".join(f"word{i}" for i in range(60))
LONG_ZH = (
    "数据清洗是模型训练之前最重要的步骤，我们需要去掉网页标签、重复内容和各种噪声，"
    "然后才能得到干净的训练数据集合。"
)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (rec("<p> </p>"), "empty_turn"),
        (rec("What is 2+2?", "4"), "too_short"),
        (rec("x" * 20_001), "too_long"),
        (rec("# # # # title # # #"), "symbol_ratio"),
        (rec("Wait... what... why... how... really..."), "symbol_ratio"),
        (rec("!!!! ???? ---- @@@@ $$$$ %%%% ^^^^ " * 3), "non_alnum"),
        (rec("？！。，、；：“”（）【】", "好的，这是回答。"), "non_alnum"),
        (rec("\n".join(["buy cheap pills now"] * 6 + [LONG_EN])), "duplicate_lines"),
        (rec(" ".join(["click here"] * 30)), "repeated_ngrams"),
        (rec("我爱你" * 20, "好的，我明白了。"), "repeated_ngrams"),
        (rec("Rewrite: the cat sat on the mat", "The cat was sitting on the mat."), None),
        (rec(LONG_EN + "\n" + LONG_EN), "duplicate_lines"),
        (rec(LONG_ZH, LONG_ZH), None),
        (rec("What is C#?", "C# is a programming language by Microsoft."), None),
        (rec("第一行\n第二行\n第三行", "好的，明白了。"), None),
    ],
)
def test_quality_rules(record: dict[str, Any], reason: str | None) -> None:
    assert reasons([record]) == [reason]


def test_repetition_rules_need_long_turns() -> None:
    params = CleanParams().quality
    short = ["ha ha ha ha ha"]
    assert heuristic_failures(short, params) == []
    strict = params.model_copy(update={"repetition_min_words": 0})
    assert [r for r, _ in heuristic_failures(short, strict)] == ["repeated_ngrams"]


def test_first_failing_rule_is_the_reason_and_all_are_in_detail() -> None:
    bad = rec("", "")
    _, rejected, stats = clean.clean_records([bad], CleanParams())
    row = rejected[0]
    assert row["reason"] == "empty_turn"
    assert row["rules"] == ["empty_turn", "too_short"]
    assert "assistant text 0 chars < 2" in row["detail"]
    assert row["record"] == bad and row["source"] == bad["source"]
    assert stats["failed_by_rule"] == {"empty_turn": 1, "too_short": 1}


def test_structured_outputs_are_validated_not_rewritten(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"],
                                  "properties": {"label": {"enum": ["pos", "neg"]}}}))
    from tuneline.data.output_schema import load_output_schema

    validator = load_output_schema(schema)
    good = rec("<b>Great</b> movie", '{"label":  "pos", "url": "https://a.com"}')
    wrong = rec("Bad movie", '{"label": "meh"}')
    broken = rec("Okay movie", "label: pos")
    kept, rejected, _ = clean.clean_records([good, wrong, broken], CleanParams(), validator)
    assert kept[0]["messages"][1]["content"] == '{"label":  "pos", "url": "https://a.com"}'
    assert kept[0]["messages"][0]["content"] == "Great movie"
    assert [r["reason"] for r in rejected] == ["output_schema_invalid"] * 2
    assert "label" in rejected[0]["detail"] and "not JSON" in rejected[1]["detail"]


def test_bad_schema_file_is_a_config_error(tmp_path: Path) -> None:
    from tuneline.data.output_schema import load_output_schema

    with pytest.raises(ConfigError, match="nope.json"):
        load_output_schema(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_output_schema(bad)


def test_schema_per_category_validates_only_those_rows(tmp_path: Path) -> None:
    """A {category: file} output_schema: `extract` rows are validated and left as written; `chat` rows and
    a row without a category are free text (cleaned, never judged by a schema). The stage loads the
    mapping and records it in its report."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"]}))
    good = rec("Label <b>this</b>", '{"label": "https://a.com"}', category="extract")
    wrong = rec("Label that", '{"other": 1}', category="extract")
    chat = rec("Say hi", "Hello, see https://example.com for more.", category="chat")
    plain = rec("Say bye", "Goodbye &amp; take care, my friend.")
    layout = _workspace(tmp_path / "ws", [good, wrong, chat, plain])
    report = clean.run(Config.model_validate({"task": {"output_schema": {"extract": str(schema)}}}), layout)
    assert report["rejected_by_reason"] == {"output_schema_invalid": 1}
    assert report["output_schema"] == {"extract": str(schema)}
    kept = {r["id"]: r for r in read_jsonl(layout.interim("clean"))}
    assert list(kept) == [good["id"], chat["id"], plain["id"]]
    assert kept[good["id"]]["messages"][1]["content"] == '{"label": "https://a.com"}'  # not rewritten
    assert kept[good["id"]]["messages"][0]["content"] == "Label this"  # its prompt still is
    assert kept[chat["id"]]["messages"][1]["content"] == "Hello, see <URL> for more."
    assert kept[plain["id"]]["messages"][1]["content"] == "Goodbye & take care, my friend."
    rejected = list(read_jsonl(layout.rejected("clean")))
    assert rejected[0]["record"]["id"] == wrong["id"] and "label" in rejected[0]["detail"]


def test_bad_schema_file_in_the_mapping_names_its_category(tmp_path: Path) -> None:
    layout = _workspace(tmp_path / "ws", [rec("Say hi")])
    cfg = Config.model_validate({"task": {"output_schema": {"tool_call": str(tmp_path / "calls.json")}}})
    where = r"task\.output_schema\.tool_call: schema file not found: .*calls\.json"
    with pytest.raises(ConfigError, match=where):
        clean.run(cfg, layout)


# --- classifier hook ---------------------------------------------------------------------------------


def _train_classifier(path: Path) -> None:
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    good = [f"A clear helpful answer about topic {i} with facts and reasons." for i in range(20)]
    bad = [f"spam spam buy now cheap casino bonus {i}" for i in range(20)]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0))
    model.fit(good + bad, [1] * 20 + [0] * 20)
    joblib.dump(model, path)


def _workspace(root: Path, records: list[dict[str, Any]]) -> Layout:
    layout = Layout(root)
    write_jsonl(layout.interim("ingest"), records)
    return layout


def test_classifier_hook_drops_low_scores(tmp_path: Path) -> None:
    model = tmp_path / "quality.joblib"
    _train_classifier(model)
    good = rec("Tell me about topic 7.", "A clear helpful answer about topic 7 with facts and reasons.")
    spam = rec("Tell me about casino.", "spam spam buy now cheap casino bonus")
    layout = _workspace(tmp_path, [good, spam])
    report = clean.run(cfg_with(classifier={"path": str(model), "threshold": 0.5}), layout)
    assert report["rejected_by_reason"] == {"low_quality_score": 1}
    assert [r["id"] for r in read_jsonl(layout.interim("clean"))] == [good["id"]]
    assert next(read_jsonl(layout.rejected("clean")))["id"] == spam["id"]


def test_classifier_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    layout = _workspace(tmp_path, [rec("hi")])
    with pytest.raises(ConfigError, match="missing.joblib"):
        clean.run(cfg_with(classifier={"path": str(tmp_path / "missing.joblib")}), layout)
    broken = tmp_path / "broken.joblib"
    broken.write_bytes(b"not a pickle at all")
    with pytest.raises(InputFileError, match="broken.joblib"):
        clean.run(cfg_with(classifier={"path": str(broken)}), layout)


# --- the stage contract ------------------------------------------------------------------------------


def test_run_ledger_report_and_ids(tmp_path: Path) -> None:
    records = [
        rec("<p>Visit https://example.com today</p>"),
        rec("Contact me at x@y.org"),
        rec("What is 2+2?", "4"),
        rec("", "nothing asked"),
        rec("Population is 1,234,567.", "That is about 1.2 million people."),
    ]
    layout = _workspace(tmp_path, records)
    report = clean.run(Config(), layout)
    assert report["rows_in"] == 5 and report["rows_kept"] + report["rows_rejected"] == 5
    assert report["rejected_by_reason"] == {"empty_turn": 1, "too_short": 1}
    assert report["changed_by_rule"]["html"] == 1
    assert report["changed_by_rule"]["urls"] == 1
    assert report["changed_by_rule"]["emails"] == 1
    assert report["changed_by_rule"]["numbers"] == 1
    assert read_json(layout.report("clean")) == report
    kept = list(read_jsonl(layout.interim("clean")))
    assert [r["id"] for r in kept] == [records[0]["id"], records[1]["id"], records[4]["id"]]
    assert kept[0]["messages"][0]["content"] == "Visit <URL> today"
    assert len(list(read_jsonl(layout.rejected("clean")))) == 2


def test_run_without_ingest_output_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="ingest.jsonl"):
        clean.run(Config(), Layout(tmp_path))


# --- chat data is not a web page: the Gopher rules keep good answers ---------------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
KEPT_ROWS = Path(__file__).parent / "data" / "clean_kept_rows.jsonl"


def test_real_answers_the_web_page_rules_used_to_drop_are_kept() -> None:
    """Rows from public instruction sets that the Gopher rules dropped before (duplicate_lines: code with
    repeated `}` lines, "Options:/- yes/- no" prompts, "Next column:" steps; repeated_ngrams: a Chinese
    numbered list of equations) are good data: all kept now."""
    rows = [json.loads(line) for line in KEPT_ROWS.read_text(encoding="utf-8").splitlines()]
    records = [make_record(r["messages"], {"file": r["origin"], "index": i}) for i, r in enumerate(rows)]
    assert len(records) == 9
    assert reasons(records) == [None] * len(records)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # A degenerate loop in one turn is still caught, in English and in Chinese.
        ("Ooh ooh ah ah! *giggle* " * 20, "repeated_ngrams"),
        ("\n".join(["Buy cheap pills now at our shop."] * 8 + [LONG_EN]), "duplicate_lines"),
        # Short labels repeat in good answers; fenced code repeats by nature.
        ("\n".join(f"Question {i}: is the claim about river number {i} true?\nOptions:\n- yes\n- no"
                   for i in range(8)), None),
        (LONG_EN + "\n```\n" + "}\n" * 40 + "return x;\n" * 10 + "```\nThat is all.", None),
    ],
)
def test_repetition_rules_on_chat_turns(text: str, reason: str | None) -> None:
    assert reasons([rec("Please answer.", text)]) == [reason]


@pytest.mark.skipif(not SHARED.is_dir(), reason="public sample data not present (../shared/data)")
def test_public_instruction_sets_keep_at_least_99_percent_of_distinct_rows(tmp_path: Path) -> None:
    """On alpaca_en_demo, glaive_toolcall_en_demo and identity (no planted noise) clean keeps >= 99 % of the
    distinct rows (it kept 98.9 % of glaive's before the rules judged prose lines only)."""
    from tuneline.config.ingest import IngestParams, Source
    from tuneline.data import ingest

    for name in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "identity.json"):
        layout = Layout(tmp_path / name)
        cfg = Config(ingest=IngestParams(sources=[Source(path=SHARED / name)]))
        ingest.run(cfg, layout)
        clean.run(cfg, layout)
        distinct = {r["id"] for r in read_jsonl(layout.interim("ingest"))}
        kept = {r["id"] for r in read_jsonl(layout.interim("clean"))}
        assert len(kept & distinct) >= 0.99 * len(distinct), (name, read_json(layout.report("clean")))


# --- an answer that is only a placeholder ----------------------------------------------------------------


def test_turn_that_is_only_a_placeholder_is_empty_after_clean() -> None:
    """An answer that was only a URL or an e-mail became "<URL>" / "<EMAIL>" and was kept."""
    records = [
        rec("Where is the documentation?", "https://example.com/docs"),
        rec("Whom do I write to?", "  help@example.com.  "),
        rec("https://example.com/article", "It says rivers flow downhill."),
        rec("Where is it?", "It is at https://example.com/docs, on the left."),
        rec("Whom do I write to?", "Write to <EMAIL> or call us."),
    ]
    assert reasons(records) == ["empty_after_clean", "empty_after_clean", "empty_after_clean", None, None]
    _, rejected, _ = clean.clean_records(records[:1], CleanParams())
    assert "message index [1]" in rejected[0]["detail"]
    removal = CleanParams(urls="remove")  # nothing left at all: that is an empty turn
    assert reasons(records[:1], removal) == ["empty_turn"]


def test_report_shows_examples_per_rule(tmp_path: Path) -> None:
    records = [rec("What is 2+2?", "4")] * 5 + [rec("Docs?", "https://example.com")]
    layout = _workspace(tmp_path, [{**r, "id": f"r{i}"} for i, r in enumerate(records)])
    report = clean.run(Config(), layout)
    assert report["failed_by_rule"] == {"too_short": 5, "empty_after_clean": 1}
    examples = report["examples_by_rule"]
    assert len(examples["too_short"]) == 3  # a few, not every row: the rejected file has them all
    assert examples["too_short"][0] == {"id": "r0", "source": {"file": "data/raw/t.jsonl", "line": 1},
                                        "detail": "assistant text 1 chars < 2", "text": "4"}
    assert examples["empty_after_clean"][0]["text"] == "<URL>"
    assert read_json(layout.report("clean"))["examples_by_rule"] == examples


def test_word_filter_shortcut_keeps_the_regex_definition() -> None:
    """`words` settles all-letter tokens with str.isalpha instead of the letter regex; every token must
    still be judged as the regex judges it (digits, '_', '²', '½', CJK, mixed)."""
    import re

    from tuneline.data.quality import top_ngram_fraction, words

    letter = re.compile(r"[^\W\d_]")
    tokens = ["word", "question?", "(7)", "1,2", "_", "__init__", "²", "x²", "½", "Ⅷ", "中", "ß", "é", "#",
              "…", "a1", "1a", "-", "ǅ", "٣", "x"]
    assert words(tokens) == [t for t in tokens if letter.search(t)]
    assert words([]) == []
    # most_common(1)'s pick (the first n-gram with the top count) is kept.
    assert top_ngram_fraction(["a", "b", "c", "d", "a", "b", "c", "d"]) == 2 * 2 / 8
