"""validate_splits: the Great Expectations gate on train/val/test (real GX, tiny workspaces)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tuneline.config import Config
from tuneline.data import validate_splits
from tuneline.errors import DataValidationError, InputFileError
from tuneline.jsonio import read_json, write_jsonl
from tuneline.layout import SPLITS, Layout
from tuneline.records import make_record

WORDS = (
    "river mountain apple violet engine harbor pencil garden thunder silver rocket castle meadow lantern "
    "puzzle candle window forest copper marble falcon orchid glacier velvet canyon bridge comet island"
).split()


def conv(seed: int, category: str = "a", user: str | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    question = user if user is not None else " ".join(rng.choices(WORDS, k=25))
    answer = " ".join(rng.choices(WORDS, k=25))
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return make_record(messages, {"file": "data/raw/x.jsonl", "line": seed + 1}, category=category)


def clean_splits() -> dict[str, list[dict[str, Any]]]:
    """40 / 5 / 5 rows: shares exactly 0.1 / 0.1, both strata in every split, all texts distinct."""
    cats = ["a", "b"]
    return {
        "train": [conv(i, cats[i % 2]) for i in range(40)],
        "val": [conv(100 + i, cats[i % 2]) for i in range(5)],
        "test": [conv(200 + i, cats[i % 2]) for i in range(5)],
    }


def workspace(root: Path, splits: dict[str, list[dict[str, Any]]]) -> Layout:
    layout = Layout(root)
    for split in SPLITS:
        write_jsonl(layout.processed(split), splits[split])
    return layout


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in report["expectations"]}


def fails_with(tmp_path: Path, splits: dict[str, list[dict[str, Any]]], name: str, bad_ref: str,
               cfg: Config | None = None) -> dict[str, Any]:
    layout = workspace(tmp_path, splits)
    with pytest.raises(DataValidationError, match=re.escape(name)) as err:
        validate_splits.run(cfg or Config(), layout)
    assert "reports/validate_splits.html" in str(err.value)
    report = read_json(layout.report("validate_splits"))
    assert report["success"] is False and name in report["failed_critical"]
    row = by_name(report)[name]
    assert row["critical"] and not row["success"]
    assert bad_ref in row["unexpected_ids"]
    assert "FAILED" in layout.report("validate_splits", "html").read_text(encoding="utf-8")
    return report


def test_clean_splits_pass_with_placeholders_code_and_augmented_rows(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["val"][0]["messages"][0]["content"] += " see <URL> or write to <EMAIL>"
    splits["test"][0]["messages"][1]["content"] += " use `<br>` for a line break"
    # Augmented copies live in train: near-dups of their origin, outside the split shares.
    for rec in splits["train"][:20]:
        copy = json.loads(json.dumps(rec))
        copy["messages"][0]["content"] = "well, " + copy["messages"][0]["content"]
        copy["id"] = rec["id"] + "-aug"
        copy["meta"] = {"augmented_from": rec["id"]}
        splits["train"].append(copy)
    layout = workspace(tmp_path, splits)

    report = validate_splits.run(Config(), layout)

    assert report["success"] is True and report["failed_critical"] == []
    assert all(row["success"] for row in report["expectations"]), report["failed_warning"]
    assert report["rows"] == 70 and report["rows_by_split"] == {"train": 60, "val": 5, "test": 5}
    assert report["augmented_rows"] == 20 and report["shares"] == {"val": 0.1, "test": 0.1}
    assert report["cross_split_near_dup_pairs"] == 0
    assert read_json(layout.report("validate_splits")) == report
    assert "PASSED" in layout.report("validate_splits", "html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "noise"),
    [
        ("no_html_tag_residue", "<p>read this</p>"),
        ("no_html_entity_residue", "fish &amp; chips"),
        ("no_url_residue", "see https://example.com/page for more"),
        ("no_email_residue", "mail bob.smith@example.org today"),
    ],
)
def test_residue_of_each_kind_fails(tmp_path: Path, name: str, noise: str) -> None:
    splits = clean_splits()
    bad = splits["val"][2]
    bad["messages"][0]["content"] += " " + noise
    report = fails_with(tmp_path, splits, name, bad["id"])
    assert report["failed_critical"] == [name]


def test_residue_kept_on_purpose_is_only_a_warning(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["train"][0]["messages"][0]["content"] += " https://example.com"
    cfg = Config.model_validate({"clean": {"urls": "keep"}})
    report = validate_splits.run(cfg, workspace(tmp_path, splits))
    assert report["success"] is True and report["failed_warning"] == ["no_url_residue"]


def test_cross_split_exact_duplicate_fails(tmp_path: Path) -> None:
    splits = clean_splits()
    leak = json.loads(json.dumps(splits["train"][3]))
    leak["messages"][0]["content"] = "  " + leak["messages"][0]["content"].upper() + "  "  # normalized equal
    leak["id"] = "leaked-row"
    splits["test"][1] = leak
    report = fails_with(tmp_path, splits, "no_cross_split_exact_duplicates", "leaked-row")
    assert report["cross_split_exact_duplicates"] == 1


def test_cross_split_near_duplicate_fails(tmp_path: Path) -> None:
    splits = clean_splits()
    near = json.loads(json.dumps(splits["train"][5]))
    near["messages"][1]["content"] += " yes"  # a few characters more: cosine well above 0.95
    near["id"] = "near-row"
    splits["val"][1] = near
    report = fails_with(tmp_path, splits, "no_cross_split_near_duplicates", "near-row")
    assert report["cross_split_near_dup_pairs"] == 1
    assert "no_cross_split_exact_duplicates" not in report["failed_critical"]

    # Switched off: no near-dup expectation at all, and the gate passes.
    cfg = Config.model_validate({"validate_splits": {"cross_split_near_dup": False}})
    report = validate_splits.run(cfg, workspace(tmp_path / "off", splits))
    assert report["success"] is True and "no_cross_split_near_duplicates" not in by_name(report)
    assert report["cross_split_near_dup_pairs"] is None


def test_bad_ratio_fails(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["train"] += splits["val"][:4]  # val share 1/50
    splits["val"] = splits["val"][4:]
    report = fails_with(tmp_path, splits, "split_ratios", "val")
    assert report["failed_critical"] == ["split_ratios"] and report["shares"]["val"] == 0.02


def test_stratum_missing_from_train_fails(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["test"][4] = conv(999, category="rare")
    report = fails_with(tmp_path, splits, "strata_in_train", splits["test"][4]["id"])
    assert by_name(report)["strata_in_train"]["observed"] == ["rare"]


def test_duplicate_ids_fail(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["val"][3]["id"] = splits["train"][0]["id"]
    fails_with(tmp_path, splits, "id_unique", splits["train"][0]["id"])


def test_role_order_fails(tmp_path: Path) -> None:
    splits = clean_splits()
    splits["train"][7]["messages"].reverse()
    fails_with(tmp_path, splits, "role_pattern", splits["train"][7]["id"])


def test_within_split_duplicate_is_only_a_warning(tmp_path: Path) -> None:
    splits = clean_splits()
    twin = json.loads(json.dumps(splits["train"][0]))
    twin["id"] = "twin"
    splits["train"].append(twin)
    cfg = Config.model_validate({"validate_splits": {"ratio_tolerance": 0.1}})
    report = validate_splits.run(cfg, workspace(tmp_path, splits))
    assert report["success"] is True and report["failed_warning"] == ["no_within_split_exact_duplicates"]
    assert by_name(report)["no_within_split_exact_duplicates"]["unexpected_ids"] == ["twin"]


def test_schema_invalid_outputs_fail(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"]}), encoding="utf-8")
    splits = clean_splits()
    for recs in splits.values():
        for rec in recs:
            rec["messages"][1]["content"] = json.dumps({"label": rec["id"]})
    splits["test"][0]["messages"][1]["content"] = "{}"
    cfg = Config.model_validate({"task": {"output_schema": str(schema)}})
    fails_with(tmp_path / "ws", splits, "output_schema", splits["test"][0]["id"], cfg)


def test_schema_per_category_judges_only_those_records(tmp_path: Path) -> None:
    """A {category: file} output_schema: stratum `a` is structured (its JSON may hold a URL: clean left it
    as written), stratum `b` is free text (never judged by the schema; its assistant text is checked for
    residue). The schema check counts only `a` records and names the category it covers."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["label"]}), encoding="utf-8")
    splits = clean_splits()
    for recs in splits.values():
        for rec in recs:
            if rec["category"] == "a":
                rec["messages"][1]["content"] = json.dumps({"label": rec["id"], "url": "https://a.com"})
    cfg = Config.model_validate({"task": {"output_schema": {"a": str(schema)}}})
    report = validate_splits.run(cfg, workspace(tmp_path / "ok", splits))
    assert report["success"] is True and report["structured_rows"] == 26  # 20 + 3 + 3
    row = by_name(report)["output_schema"]
    assert row["unexpected_count"] == 0 and f"a: {schema}" in row["description"]
    assert "assistant only in records of categories without an output schema" in (
        by_name(report)["no_url_residue"]["description"])

    bad = next(r for r in splits["test"] if r["category"] == "a")
    bad["messages"][1]["content"] = "{}"
    report = fails_with(tmp_path / "bad", splits, "output_schema", bad["id"], cfg)
    assert by_name(report)["output_schema"]["unexpected_ids"] == [bad["id"]]
    free = next(r for r in splits["val"] if r["category"] == "b")
    free["messages"][1]["content"] += " see https://example.com"  # free text: clean should have replaced it
    fails_with(tmp_path / "residue", splits, "no_url_residue", free["id"], cfg)


def test_empty_train_fails(tmp_path: Path) -> None:
    splits = {"train": [], "val": [conv(1)], "test": [conv(2)]}
    layout = workspace(tmp_path, splits)
    with pytest.raises(DataValidationError, match="train_not_empty"):
        validate_splits.run(Config(), layout)
    assert by_name(read_json(layout.report("validate_splits")))["train_not_empty"]["observed"] == 0


def test_missing_split_file_is_an_input_error(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_jsonl(layout.processed("train"), clean_splits()["train"])
    with pytest.raises(InputFileError, match="val.jsonl"):
        validate_splits.run(Config(), layout)
