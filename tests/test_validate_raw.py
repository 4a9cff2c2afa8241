"""validate_raw: the Great Expectations contract on ingested records (real GX, tiny workspaces)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tuneline.config import Config
from tuneline.config.validate_raw import DEFAULT_ROLE_PATTERN
from tuneline.data import validate_raw
from tuneline.data.contracts import message_contents, message_features, render_html, roles_string
from tuneline.data.output_schema import load_output_schema, record_output_error
from tuneline.errors import ConfigError, DataValidationError, InputFileError
from tuneline.jsonio import read_json, write_json, write_jsonl
from tuneline.layout import Layout
from tuneline.records import make_record

N = 20


def conv(i: int, category: str | None = "qa", answer: str | None = None) -> dict[str, Any]:
    messages = [
        {"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"},
        {"role": "assistant", "content": answer if answer is not None else f"It is {2 * i}."},
    ]
    return make_record(messages, {"file": "data/raw/x.jsonl", "line": i + 1}, category=category)


def workspace(
    root: Path, records: list[dict[str, Any]], rows_in: int | None = None, rejected: int = 0
) -> Layout:
    layout = Layout(root)
    write_jsonl(layout.interim("ingest"), records)
    rows_in = len(records) + rejected if rows_in is None else rows_in
    write_json(layout.report("ingest"), {"stage": "ingest", "rows_in": rows_in, "rows_rejected": rejected})
    return layout


def config(**validate_raw_params: Any) -> Config:
    task = validate_raw_params.pop("task", {})
    return Config.model_validate({"validate_raw": validate_raw_params, "task": task})


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["expectations"]}


def test_clean_dataset_passes_and_writes_json_and_html(tmp_path: Path) -> None:
    records = [conv(i) for i in range(N)]
    layout = workspace(tmp_path, records, rejected=0)
    report = validate_raw.run(config(allowed_categories=["qa"]), layout)

    assert report["success"] is True and report["rows"] == N
    assert report["failed_critical"] == [] and report["failed_warning"] == []
    assert report["rows_in"] == report["rows_kept"] == N and report["rows_rejected"] == 0
    assert all(row["success"] for row in report["expectations"])
    assert set(by_name(report)) >= {"id_present", "messages_present", "role_pattern", "length_bounds",
                                    "allowed_categories", "min_rows", "ingest_rejected_fraction"}
    assert "output_schema" not in by_name(report)  # no task.output_schema: no schema check
    assert read_json(layout.report("validate_raw")) == report
    page = layout.report("validate_raw", "html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "PASSED" in page and "role_pattern" in page


def _reverse_roles(records: list[dict[str, Any]], cfg: Config) -> tuple[str, str]:
    records[3]["messages"].reverse()
    return "role_pattern", records[3]["id"]


def _too_long(records: list[dict[str, Any]], cfg: Config) -> tuple[str, str]:
    cfg.validate_raw.max_chars = 200
    for rec in records[:2]:  # 2 of 20 = 10% > 1 - length_mostly (5%)
        rec["messages"][1]["content"] = "x" * 500
    return "length_bounds", records[0]["id"]


def _bad_category(records: list[dict[str, Any]], cfg: Config) -> tuple[str, str]:
    cfg.validate_raw.allowed_categories = ["qa", "math"]
    records[5]["category"] = "spam"
    return "allowed_categories", records[5]["id"]


def _missing_messages(records: list[dict[str, Any]], cfg: Config) -> tuple[str, str]:
    records[7]["messages"] = []
    return "messages_present", records[7]["id"]


def _missing_id(records: list[dict[str, Any]], cfg: Config) -> tuple[str, str]:
    records[8]["id"] = None
    return "id_present", "data/raw/x.jsonl line 9"  # no id: the report points at the source line


@pytest.mark.parametrize(
    "break_data", [_reverse_roles, _too_long, _bad_category, _missing_messages, _missing_id]
)
def test_critical_record_failure_raises_after_writing_reports(
    tmp_path: Path, break_data: Callable[[list[dict[str, Any]], Config], tuple[str, str]]
) -> None:
    records = [conv(i) for i in range(N)]
    cfg = config()
    name, bad_ref = break_data(records, cfg)
    layout = workspace(tmp_path, records)

    with pytest.raises(DataValidationError, match=re.escape(name)) as err:
        validate_raw.run(cfg, layout)

    assert bad_ref in str(err.value) and "reports/validate_raw.html" in str(err.value)
    report = read_json(layout.report("validate_raw"))
    assert report["success"] is False and report["failed_critical"] == [name]
    row = by_name(report)[name]
    assert row["success"] is False and row["critical"] is True
    assert bad_ref in row["unexpected_ids"]
    assert "FAILED" in layout.report("validate_raw", "html").read_text(encoding="utf-8")


def test_too_many_ingest_rejects_is_critical(tmp_path: Path) -> None:
    layout = workspace(tmp_path, [conv(i) for i in range(N)], rejected=5)  # 5 / 25 = 20% > 5%
    with pytest.raises(DataValidationError, match="ingest_rejected_fraction"):
        validate_raw.run(config(), layout)
    report = read_json(layout.report("validate_raw"))
    row = by_name(report)["ingest_rejected_fraction"]
    assert row["observed"] == [pytest.approx(0.2)] and not row["success"]
    assert report["ingest_rejected_fraction"] == pytest.approx(0.2)
    assert row["unexpected_ids"] == [str(layout.report("ingest"))]


def test_too_few_rows_is_critical(tmp_path: Path) -> None:
    layout = workspace(tmp_path, [conv(i) for i in range(3)])
    with pytest.raises(DataValidationError, match="min_rows"):
        validate_raw.run(config(min_rows=10), layout)
    assert by_name(read_json(layout.report("validate_raw")))["min_rows"]["observed"] == 3


def test_empty_turns_are_only_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    records = [conv(i) for i in range(N)]
    records[2]["messages"][1]["content"] = "   "
    layout = workspace(tmp_path, records)
    with caplog.at_level("WARNING"):
        report = validate_raw.run(config(), layout)
    assert report["success"] is True
    assert report["failed_warning"] == ["non_empty_turns"]
    assert report["records_with_empty_turns"] == 1
    assert by_name(report)["non_empty_turns"]["unexpected_ids"] == [records[2]["id"]]
    assert "non_empty_turns" in caplog.text


def _schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    schema = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["pos", "neg"]}}}
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def test_schema_invalid_outputs_fail_beyond_mostly(tmp_path: Path) -> None:
    schema = _schema_file(tmp_path)
    records = [conv(i, answer=json.dumps({"label": "pos"})) for i in range(N)]
    records[0]["messages"][1]["content"] = "not json at all"
    records[1]["messages"][1]["content"] = json.dumps({"label": "maybe"})
    records[2]["messages"][1]["content"] = json.dumps({"other": 1})
    layout = workspace(tmp_path / "ws", records)

    with pytest.raises(DataValidationError, match="output_schema"):  # 3 / 20 invalid > 10%
        validate_raw.run(config(task={"output_schema": str(schema)}), layout)
    report = read_json(layout.report("validate_raw"))
    row = by_name(report)["output_schema"]
    assert set(row["unexpected_ids"]) == {r["id"] for r in records[:3]}
    assert report["records_schema_invalid"] == 3
    assert any("not JSON" in v for v in row["observed"])

    # One invalid of 20 is within schema_mostly=0.9: reported, but the gate passes.
    records = [conv(i, answer=json.dumps({"label": "neg"})) for i in range(N)]
    records[0]["messages"][1]["content"] = "{}"
    layout = workspace(tmp_path / "ws2", records)
    report = validate_raw.run(config(task={"output_schema": str(schema)}), layout)
    assert report["success"] is True and by_name(report)["output_schema"]["unexpected_count"] == 1


def test_output_schema_error_explains_first_problem(tmp_path: Path) -> None:
    validator = load_output_schema(_schema_file(tmp_path))
    assert record_output_error(conv(1, answer='{"label": "pos"}'), validator) is None
    assert "not JSON" in record_output_error(conv(1, answer="{label"), validator)
    assert "label" in record_output_error(conv(1, answer='{"label": "x"}'), validator)
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": 12}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        load_output_schema(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_output_schema(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("roles", "ok"),
    [
        ("user,assistant", True),
        ("system,user,assistant,user,assistant", True),
        ("user,assistant,tool,tool,assistant", True),
        ("assistant,user", False),
        ("user,user,assistant", False),
        ("user,assistant,tool", False),
        ("system,system,user,assistant", False),
        ("user", False),
    ],
)
def test_default_role_pattern(roles: str, ok: bool) -> None:
    assert bool(re.search(DEFAULT_ROLE_PATTERN, roles)) is ok


def test_missing_ingest_output_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="tuneline ingest"):
        validate_raw.run(config(), Layout(tmp_path))


def test_html_escapes_record_content() -> None:
    report = {
        "stage": "validate_raw", "success": False, "rows": 1,
        "expectations": [{
            "name": "role_pattern", "expectation": "expect_column_values_to_match_regex", "column": "roles",
            "description": "d", "critical": True, "success": False, "observed": ["<script>alert(1)</script>"],
            "unexpected_count": 1, "unexpected_percent": 100.0, "unexpected_ids": ["<b>id</b>"], "kwargs": {},
        }],
    }
    page = render_html(report)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;id" in page
    assert 'class="fail"' in page


def test_schema_per_category_judges_only_those_records(tmp_path: Path) -> None:
    """A {category: file} output_schema: only `extract` records are structured; the mostly share is over
    them alone (2 invalid of 10 fails, though 2 of 21 records would pass), free-text records (`chat`, and
    one without a category) are never judged, and the expectation says which categories it covers."""
    schema = _schema_file(tmp_path)
    records = [conv(i, category="extract", answer=json.dumps({"label": "pos"})) for i in range(10)]
    records += [conv(i, category="chat") for i in range(10, 20)] + [conv(20, category=None)]
    records[0]["messages"][1]["content"] = "not json at all"
    records[1]["messages"][1]["content"] = json.dumps({"label": "maybe"})
    layout = workspace(tmp_path / "ws", records)
    cfg = config(task={"output_schema": {"extract": str(schema)}})

    with pytest.raises(DataValidationError, match="output_schema"):
        validate_raw.run(cfg, layout)
    report = read_json(layout.report("validate_raw"))
    row = by_name(report)["output_schema"]
    assert set(row["unexpected_ids"]) == {r["id"] for r in records[:2]}
    assert row["unexpected_percent"] == pytest.approx(20.0)  # of the 10 structured records, not of 21
    assert f"extract: {schema}" in row["description"]
    assert report["records_structured"] == 10 and report["records_schema_invalid"] == 2

    records[0]["messages"][1]["content"] = records[1]["messages"][1]["content"] = json.dumps({"label": "neg"})
    layout = workspace(tmp_path / "ws2", records)
    report = validate_raw.run(cfg, layout)
    assert report["success"] is True and by_name(report)["output_schema"]["unexpected_count"] == 0


def test_schema_mapping_with_no_such_records_and_bad_files(tmp_path: Path) -> None:
    """No record of a mapped category: nothing to judge, the check passes on zero rows. A missing or
    broken file in the mapping is a ConfigError naming its category and the file."""
    schema = _schema_file(tmp_path)
    layout = workspace(tmp_path / "ws", [conv(i) for i in range(N)])
    report = validate_raw.run(config(task={"output_schema": {"extract": str(schema)}}), layout)
    assert report["success"] is True and report["records_structured"] == 0
    missing = tmp_path / "missing.json"
    cfg = config(task={"output_schema": {"chat": str(schema), "extract": str(missing)}})
    with pytest.raises(ConfigError, match=r"task\.output_schema\.extract: schema file not found: .*missing"):
        validate_raw.run(cfg, layout)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"task\.output_schema\.qa: .*bad\.json is not readable JSON"):
        validate_raw.run(config(task={"output_schema": {"qa": str(bad)}}), layout)


@pytest.mark.parametrize(
    "record",
    [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": None, "content": 3}, "not a dict", {"content": "x"}]},
        {"messages": []},
        {"messages": "not a list"},
        {},
    ],
)
def test_message_features_equal_the_two_features_it_replaces(record: dict[str, Any]) -> None:
    """Both gates now read roles and contents in one pass; the values must be those of the two helpers."""
    assert message_features(record) == (roles_string(record), message_contents(record))


def test_checks_on_narrow_frames_report_as_on_the_whole_frame(tmp_path: Path) -> None:
    """GX validates each check on the ids and its own column only (it hashes the frame per check); a
    check naming a column the frame lacks still fails, and table checks still count rows."""
    import pandas as pd

    from tuneline.data.contracts import REF, Check, run_checks

    frame = pd.DataFrame({REF: ["a", "b", "c"], "x": [1, 5, None], "y": ["p", "q", "q"]})
    checks = [
        Check("x_range", "ExpectColumnValuesToBeBetween", {"column": "x", "min_value": 0, "max_value": 2},
              "x small"),
        Check("y_unique", "ExpectColumnValuesToBeUnique", {"column": "y"}, "y unique"),
        Check("rows", "ExpectTableRowCountToBeBetween", {"min_value": 3}, "three rows"),
        Check("missing", "ExpectColumnValuesToNotBeNull", {"column": "nope"}, "absent column"),
    ]
    rows = {r["name"]: r for r in run_checks({"records": frame}, checks, sample_size=5)}
    assert rows["x_range"]["unexpected_ids"] == ["b"] and not rows["x_range"]["success"]
    assert rows["y_unique"]["unexpected_ids"] == ["b", "c"]
    assert rows["rows"]["success"] and rows["rows"]["observed"] == 3
    assert not rows["missing"]["success"]
