"""ingest: converters (alpaca, sharegpt, OpenAI messages, tables), role rules, categories, the demo data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneline import formats
from tuneline.config import Config, load_config
from tuneline.config.ingest import IngestParams, Source
from tuneline.data.ingest import convert_row, discover, run
from tuneline.formats import RowError
from tuneline.jsonio import read_json, read_jsonl
from tuneline.layout import Layout

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "raw" / "demo"
SHARED_DATA = REPO.parent / "shared" / "data"
SRC = {"file": "x.jsonl", "line": 1}


def roles(messages: list[dict[str, Any]]) -> list[str]:
    return [m["role"] for m in messages]


def test_alpaca_with_system_history_and_input() -> None:
    row = {
        "instruction": "Translate.",
        "input": "Bonjour",
        "output": "Hello",
        "system": "Be brief.",
        "history": [["Hi", "Hello!"]],
        "id": 7,
    }
    rec = convert_row(row, "alpaca", {}, SRC)
    assert rec["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate.\n\nBonjour"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert rec["meta"] == {"id": 7} and rec["source"] == SRC


def test_alpaca_blank_input_is_not_appended_and_empty_output_is_kept() -> None:
    rec = convert_row({"instruction": "Hi", "input": "  ", "output": ""}, "alpaca", {}, SRC)
    assert rec["messages"] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]


def test_sharegpt_tool_calls_and_tools_meta() -> None:
    call = '{"name": "get_time", "arguments": {}}'
    row = {
        "system": "Use tools.",
        "tools": '[{"name": "get_time"}]',
        "conversations": [
            {"from": "human", "value": "Time?"},
            {"from": "function_call", "value": call},
            {"from": "observation", "value": '{"time": "12:00"}'},
            {"from": "gpt", "value": "It is noon."},
        ],
    }
    rec = convert_row(row, "sharegpt", {}, SRC)
    assert roles(rec["messages"]) == ["system", "user", "assistant", "tool", "assistant"]
    assert rec["messages"][2]["content"] == call
    assert rec["meta"] == {"tools": [{"name": "get_time"}], formats.TOOL_CALL_KEY: [2]}
    # The call is kept as structure too (OpenAI form), and the result names the call it answers.
    [structured] = rec["messages"][2]["tool_calls"]
    assert structured["type"] == "function"
    assert structured["function"] == {"name": "get_time", "arguments": "{}"}
    assert rec["messages"][3]["tool_call_id"] == structured["id"]
    unreadable = convert_row({"conversations": [{"from": "human", "value": "Go"},
                                                {"from": "function_call", "value": "get_time()"}]},
                             "sharegpt", {}, SRC)
    assert "tool_calls" not in unreadable["messages"][1]  # not JSON: kept as text only


def test_messages_text_parts_and_openai_tool_calls() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    row = {
        "messages": [
            {"role": "developer", "content": "sys"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}],
            },
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "The answer is 42."},
        ],
        "tools": [{"type": "function"}],
        "lang": "en",
    }
    rec = convert_row(row, "messages", {}, SRC)
    assert roles(rec["messages"]) == ["system", "user", "assistant", "tool", "assistant"]
    assert rec["messages"][1]["content"] == "part one\ntwo"
    assert json.loads(rec["messages"][2]["content"]) == calls
    assert rec["messages"][2]["tool_calls"] == calls and rec["messages"][3]["tool_call_id"] == "c1"
    assert rec["meta"] == {"tools": [{"type": "function"}], "lang": "en", formats.TOOL_CALL_KEY: [2]}


def test_conversation_may_end_on_a_tool_call() -> None:
    row = {
        "conversations": [{"from": "human", "value": "Book it."}, {"from": "function_call", "value": "{}"}]
    }
    assert roles(convert_row(row, "sharegpt", {}, SRC)["messages"]) == ["user", "assistant"]


@pytest.mark.parametrize(
    "header,expected",
    [
        (["prompt", "response"], {"instruction": "prompt", "output": "response"}),
        (
            ["Question", "Answer", "Category"],
            {"instruction": "Question", "output": "Answer", "category": "Category"},
        ),
        (["问题", "回答", "类别"], {"instruction": "问题", "output": "回答", "category": "类别"}),
        (["指令", "输入", "输出"], {"instruction": "指令", "input": "输入", "output": "输出"}),
    ],
)
def test_column_auto_detection(header: list[str], expected: dict[str, str]) -> None:
    assert formats.resolve_columns(header, {}) == expected


def test_configured_mapping_wins_over_detection() -> None:
    assert formats.resolve_columns(["prompt", "q", "a"], {"instruction": "q", "output": "a"}) == {
        "instruction": "q",
        "output": "a",
    }


def test_table_row_with_json_messages_column() -> None:
    msgs = json.dumps([{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}])
    rec = convert_row({"chat": msgs, "src": "web"}, "table", {"messages": "chat"}, SRC)
    assert roles(rec["messages"]) == ["user", "assistant"] and rec["meta"] == {"src": "web"}


def test_category_precedence() -> None:
    row = {"instruction": "a", "output": "b"}
    assert convert_row(row, "alpaca", {}, SRC, default_category="src")["category"] == "src"
    assert (
        convert_row({**row, "category": "own"}, "alpaca", {}, SRC, default_category="src")["category"]
        == "own"
    )
    assert convert_row({**row, "kind": "k"}, "alpaca", {}, SRC, category_field="kind")["category"] == "k"
    assert convert_row(row, "alpaca", {}, SRC)["category"] is None


def test_ids_are_stable_content_hashes() -> None:
    a = convert_row({"instruction": "a", "output": "b"}, "alpaca", {}, SRC)
    b = convert_row(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "messages",
        {},
        {"file": "y.json", "index": 4},
    )
    assert a["id"] == b["id"]


def test_check_roles_rules() -> None:
    formats.check_roles(
        [
            {"role": "system", "content": ""},
            {"role": "user", "content": ""},
            {"role": "assistant", "content": ""},
        ],
        [],
    )
    with pytest.raises(RowError) as exc:
        formats.check_roles([{"role": "assistant", "content": "x"}], [])
    assert exc.value.reason == "bad_role_order"
    with pytest.raises(RowError) as exc:
        formats.check_roles([{"role": "system", "content": "x"}], [])
    assert exc.value.reason == "no_final_assistant"


def test_discover_sorts_and_skips(tmp_path: Path) -> None:
    for name in ("b/z.jsonl", "a.csv", "b/a.json", "README.md", ".git/x.jsonl", "c.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    found, skipped = discover(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.csv",
        "b/a.json",
        "b/z.jsonl",
        "c.parquet",
    ]
    assert {Path(s["file"]).name: s["reason"] for s in skipped} == {".git": "hidden", "README.md": "not_data"}


def test_run_writes_records_rejected_and_report(workspace: Path) -> None:
    Path("raw").mkdir()
    Path("raw/a.jsonl").write_text(
        json.dumps({"instruction": "a", "output": "b", "category": "qa"}) + "\nbad\n"
    )
    Path("raw/b.json").write_text(json.dumps([{"instruction": "c", "output": "d"}]))
    cfg = Config(ingest=IngestParams(sources=[Source(path=Path("raw"), category="misc")]))
    layout = Layout(Path("."))
    report = run(cfg, layout)
    records = list(read_jsonl(layout.interim("ingest")))
    assert [(r["category"], r["source"]) for r in records] == [
        ("qa", {"file": "raw/a.jsonl", "line": 1}),
        ("misc", {"file": "raw/b.json", "index": 0}),
    ]
    assert read_json(layout.report("ingest")) == report
    assert (
        report["rows_in"] == 3
        and report["rows_kept"] == 2
        and report["rejected_by_reason"] == {"bad_json": 1}
    )
    assert report["files"]["raw/a.jsonl"] == {
        "format": "alpaca",
        "container": "jsonl",
        "rows_in": 2,
        "rows_kept": 1,
        "rows_rejected": 1,
        "blank_lines": 0,
    }


def test_declared_format_and_json_lines_in_a_json_file(workspace: Path) -> None:
    Path("raw").mkdir()
    lines = [
        {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
        {"instruction": "looks like alpaca", "output": "but the source says sharegpt"},
    ]
    Path("raw/a.json").write_text("\n".join(json.dumps(x) for x in lines))
    cfg = Config(ingest=IngestParams(sources=[Source(path=Path("raw"), format="sharegpt")]))
    report = run(cfg, Layout(Path(".")))
    assert report["files"]["raw/a.json"]["container"] == "json"
    assert report["rows_kept"] == 1 and report["rejected_by_reason"] == {"missing_field": 1}


def test_parquet_meta_is_json_safe(workspace: Path) -> None:
    Path("raw").mkdir()
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"], "score": [float("nan")]}), "raw/t.parquet")
    report = run(Config(ingest=IngestParams(sources=[Source(path=Path("raw"))])), Layout(Path(".")))
    rec = next(read_jsonl(Layout(Path(".")).interim("ingest")))
    assert report["rows_kept"] == 1 and rec["meta"] == {"score": None}


def test_demo_dataset(workspace: Path) -> None:
    """The bundled demo: several formats, EN + ZH, categories, a little dirt well under the 5 % gate."""
    cfg = Config(ingest=IngestParams(sources=[Source(path=DEMO)]))
    report = run(cfg, Layout(Path(".")))
    assert report["rows_in"] >= 1500
    assert 0 < report["rows_rejected"] / report["rows_in"] < 0.01
    assert {f["container"] for f in report["files"].values()} == {"json", "jsonl", "csv", "parquet"}
    assert {f["format"] for f in report["files"].values()} == {"alpaca", "sharegpt", "messages", "table"}
    assert [Path(s["file"]).name for s in report["skipped_files"]] == ["ATTRIBUTION.md"]
    records = list(read_jsonl(Layout(Path(".")).interim("ingest")))
    cats = Counter(r["category"] for r in records)
    assert sum(n for c, n in cats.items() if c) / len(records) > 0.9
    assert {"identity", "tool_use", "math", "translation", "zh_qa", "classification"} <= set(cats)
    texts = ["\n".join(m["content"] for m in r["messages"]) for r in records]
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts) > 300
    assert len(records) - len({r["id"] for r in records}) >= 10  # exact duplicates for dedup to find
    assert sum("<p>" in t for t in texts) and sum("https://" in t for t in texts)
    assert sum(r["messages"][-1]["content"] == "" for r in records) >= 3


def test_shipped_params_point_at_the_demo() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert any(Path(s.path) == Path("data/raw/demo") for s in cfg.ingest.sources)


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="public sample data not present")
def test_shared_sample_data(workspace: Path) -> None:
    files = [SHARED_DATA / "glaive_toolcall_en_demo.json", SHARED_DATA / "identity.json"]
    cfg = Config(ingest=IngestParams(sources=[Source(path=p) for p in files]))
    report = run(cfg, Layout(Path(".")))
    assert report["rows_in"] == 391 and report["rows_rejected"] == 0
