"""Bad raw input never crashes ingest and never disappears: each case becomes a rejected row (reason + file +
line/index) or an InputFileError naming the file, and rows in = kept + rejected on every fixture."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneline.config import Config
from tuneline.config.ingest import IngestParams, Source
from tuneline.data.ingest import run
from tuneline.errors import InputFileError
from tuneline.jsonio import read_jsonl
from tuneline.layout import Layout

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi!"}


def line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def ingest(files: dict[str, str | bytes], **params: Any) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """Write `files` under ./raw, ingest them, check the ledger, return (report, records, rejected)."""
    raw = Path("raw")
    for name, content in files.items():
        path = raw / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    source = Source(**{"path": raw, **params.pop("source", {})})
    cfg = Config(ingest=IngestParams(sources=[source], **params))
    layout = Layout(Path("."))
    report = run(cfg, layout)
    records = list(read_jsonl(layout.interim("ingest")))
    rejected = list(read_jsonl(layout.rejected("ingest")))
    assert report["rows_in"] == report["rows_kept"] + report["rows_rejected"]
    assert len(records) == report["rows_kept"] and len(rejected) == report["rows_rejected"]
    assert sum(report["rejected_by_reason"].values()) == len(rejected)
    per_file = report["files"].values()
    assert sum(f["rows_in"] for f in per_file) == report["rows_in"]
    assert all(f["rows_in"] == f["rows_kept"] + f["rows_rejected"] for f in per_file)
    for row in rejected:
        assert row["stage"] == "ingest" and row["reason"] and row["source"]["file"].startswith("raw/")
    return report, records, rejected


def only_reject(rejected: list[dict], reason: str, **where: Any) -> dict:
    assert len(rejected) == 1, rejected
    row = rejected[0]
    assert row["reason"] == reason, row
    for key, value in where.items():
        assert row["source"][key] == value, row
    return row


def test_bad_json_line(workspace: Path) -> None:
    report, records, rejected = ingest({"a.jsonl": line(GOOD) + '\n{"instruction": "x",\n' + line(GOOD)})
    only_reject(rejected, "bad_json", file="raw/a.jsonl", line=2)
    assert [r["source"]["line"] for r in records] == [1, 3]


def test_invalid_utf8_keeps_raw_text(workspace: Path) -> None:
    bad = b'{"instruction": "caf\xe9", "input": "", "output": "ok"}\n'
    _, records, rejected = ingest({"a.jsonl": (line(GOOD) + "\n").encode() + bad})
    row = only_reject(rejected, "invalid_utf8", file="raw/a.jsonl", line=2)
    assert "caf\\xe9" in row["raw"]
    assert len(records) == 1


def test_bom_is_transparent_in_jsonl_json_and_csv(workspace: Path) -> None:
    bom = b"\xef\xbb\xbf"
    report, records, rejected = ingest(
        {
            "a.jsonl": bom + (line(GOOD) + "\n").encode(),
            "b.json": bom + json.dumps([GOOD]).encode(),
            "c.csv": bom + b"instruction,output\nSay hi.,Hi!\n",
        }
    )
    assert rejected == [] and len(records) == 3
    assert {r["id"] for r in records} == {records[0]["id"]}  # identical content once the BOM is gone


def test_crlf_is_transparent(workspace: Path) -> None:
    text = line(GOOD) + "\r\n" + line({**GOOD, "output": "Hello!"}) + "\r\n"
    _, records, rejected = ingest({"a.jsonl": text.encode()})
    assert rejected == []
    assert [r["messages"][-1]["content"] for r in records] == ["Hi!", "Hello!"]


def test_missing_field(workspace: Path) -> None:
    _, _, rejected = ingest({"a.jsonl": line({"instruction": "x", "input": ""}) + "\n"})
    row = only_reject(rejected, "missing_field", file="raw/a.jsonl", line=1)
    assert "output" in row["detail"]


@pytest.mark.parametrize("value", [42, ["a", "b"], {"text": "x"}, True])
def test_wrongly_typed_output(workspace: Path, value: Any) -> None:
    _, _, rejected = ingest({"a.jsonl": line({"instruction": "x", "output": value}) + "\n"})
    row = only_reject(rejected, "wrong_type", file="raw/a.jsonl", line=1)
    assert "output" in row["detail"]


def test_null_required_value(workspace: Path) -> None:
    _, _, rejected = ingest({"a.json": json.dumps([GOOD, {"instruction": None, "output": "y"}])})
    only_reject(rejected, "null_field", file="raw/a.json", index=1)


def test_unknown_role_sharegpt(workspace: Path) -> None:
    row = {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "hey"}]}
    _, _, rejected = ingest({"a.json": json.dumps([row])})
    assert "robot" in only_reject(rejected, "unknown_role", file="raw/a.json", index=0)["detail"]


def test_unknown_role_messages(workspace: Path) -> None:
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "hey"}]}
    _, _, rejected = ingest({"a.jsonl": line(row)})
    only_reject(rejected, "unknown_role", file="raw/a.jsonl", line=1)


def test_conversation_not_ending_with_assistant(workspace: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hey"},
            {"role": "user", "content": "bye"},
        ]
    }
    _, _, rejected = ingest({"a.jsonl": line(row)})
    only_reject(rejected, "no_final_assistant", file="raw/a.jsonl", line=1)


def test_bad_role_order(workspace: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ]
        },
        # a tool result with no tool call before it
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "tool", "content": "{}"},
                {"role": "assistant", "content": "c"},
            ]
        },
        # a system turn in the middle
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "assistant", "content": "c"},
            ]
        },
    ]
    _, records, rejected = ingest({"a.jsonl": "\n".join(line(r) for r in rows)})
    assert records == []
    assert [(r["reason"], r["source"]["line"]) for r in rejected] == [
        ("bad_role_order", i) for i in (1, 2, 3)
    ]


def test_empty_conversation(workspace: Path) -> None:
    _, _, rejected = ingest({"a.jsonl": line({"conversations": []})})
    only_reject(rejected, "empty_conversation", file="raw/a.jsonl", line=1)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(workspace: Path, literal: str) -> None:
    text = '{"instruction": "x", "output": "y", "score": ' + literal + "}\n"
    _, _, rejected = ingest({"a.jsonl": text, "b.json": "[" + text + "]"})
    assert sorted((r["reason"], r["source"]["file"]) for r in rejected) == [
        ("bad_json", "raw/a.jsonl"),
        ("bad_json", "raw/b.json"),
    ]
    assert all(literal.lstrip("-") in r["detail"] for r in rejected)


def test_empty_file_is_reported(workspace: Path) -> None:
    report, records, rejected = ingest({"empty.jsonl": "", "blank.json": "  \n", "ok.jsonl": line(GOOD)})
    assert report["empty_files"] == ["raw/blank.json", "raw/empty.jsonl"]
    assert report["files"]["raw/empty.jsonl"]["rows_in"] == 0
    assert len(records) == 1 and rejected == []


def test_whitespace_only_lines_are_counted_not_rows(workspace: Path) -> None:
    text = line(GOOD) + "\n   \n\t\n" + line({**GOOD, "output": "Yo"}) + "\n\n"
    report, records, rejected = ingest({"a.jsonl": text})
    assert report["files"]["raw/a.jsonl"]["blank_lines"] == 3
    assert report["rows_in"] == 2 and rejected == []
    assert [r["source"]["line"] for r in records] == [1, 4]


def test_ten_megabyte_row_streams_fine(workspace: Path) -> None:
    big = "word " * (2 * 1024 * 1024)
    _, records, rejected = ingest({"big.jsonl": line({"instruction": "Repeat.", "output": big}) + "\n"})
    assert rejected == [] and len(records[0]["messages"][-1]["content"]) == len(big)


def test_binary_garbage_is_a_rejected_file(workspace: Path) -> None:
    garbage = bytes(range(256)) * 8
    _, _, rejected = ingest({"blob.jsonl": garbage})
    row = only_reject(rejected, "unreadable_file", file="raw/blob.jsonl")
    assert "line" not in row["source"]


def test_binary_garbage_raises_when_on_bad_file_is_error(workspace: Path) -> None:
    with pytest.raises(InputFileError, match="raw/blob.json"):
        ingest({"blob.json": bytes(range(256))}, on_bad_file="error")


def test_truncated_json_array_keeps_what_parsed(workspace: Path) -> None:
    text = json.dumps([GOOD, {**GOOD, "output": "Hey"}])[:-30]
    _, records, rejected = ingest({"a.json": text})
    assert len(records) == 1
    assert "rest of the file" in only_reject(rejected, "bad_json", file="raw/a.json", index=1)["detail"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_permission_denied(workspace: Path) -> None:
    path = Path("raw/secret.jsonl")
    path.parent.mkdir()
    path.write_text(line(GOOD))
    path.chmod(0)
    try:
        _, _, rejected = ingest({})
    finally:
        path.chmod(0o644)
    only_reject(rejected, "unreadable_file", file="raw/secret.jsonl")


def test_array_element_not_an_object(workspace: Path) -> None:
    _, records, rejected = ingest({"a.json": json.dumps([GOOD, "just a string", GOOD])})
    only_reject(rejected, "not_an_object", file="raw/a.json", index=1)
    assert [r["source"]["index"] for r in records] == [0, 2]


def test_json_line_not_an_object(workspace: Path) -> None:
    _, _, rejected = ingest({"a.jsonl": line(GOOD) + "\n[1, 2]\n"})
    only_reject(rejected, "not_an_object", file="raw/a.jsonl", line=2)


def test_json_top_level_object(workspace: Path) -> None:
    _, _, rejected = ingest({"a.json": json.dumps({"data": [GOOD]}, indent=2)})
    assert "data" in only_reject(rejected, "top_level_object", file="raw/a.json")["detail"]


def test_row_of_unknown_format(workspace: Path) -> None:
    _, _, rejected = ingest({"c4.jsonl": line({"text": "Some web page."})})
    only_reject(rejected, "unknown_format", file="raw/c4.jsonl", line=1)


def test_unknown_file_format_given_explicitly(workspace: Path) -> None:
    Path("notes.txt").write_text("just prose, no records\n")
    cfg = Config(ingest=IngestParams(sources=[Source(path=Path("notes.txt"))], on_bad_file="error"))
    with pytest.raises(InputFileError, match="notes.txt.*format"):
        run(cfg, Layout(Path(".")))


def test_missing_source_path_names_it(workspace: Path) -> None:
    cfg = Config(ingest=IngestParams(sources=[Source(path=Path("data/raw/nope"))]))
    with pytest.raises(InputFileError, match="data/raw/nope"):
        run(cfg, Layout(Path(".")))


def test_csv_mapped_column_missing(workspace: Path) -> None:
    files = {"a.csv": "question,reply\nWhat?,That.\nWho?,Me.\n"}
    _, _, rejected = ingest(files, source={"columns": {"instruction": "question", "output": "answer"}})
    assert [(r["reason"], r["source"]["index"]) for r in rejected] == [
        ("missing_field", 0),
        ("missing_field", 1),
    ]
    assert "answer" in rejected[0]["detail"]


def test_csv_without_recognisable_columns(workspace: Path) -> None:
    _, _, rejected = ingest({"a.csv": "foo,bar\n1,2\n"})
    only_reject(rejected, "unknown_format", file="raw/a.csv", index=0)


def test_csv_ragged_rows(workspace: Path) -> None:
    text = "instruction,input,output\nA,,a\nB,b\nC,,c,extra\nD,,d\n"
    _, records, rejected = ingest({"a.csv": text})
    assert [(r["reason"], r["source"]["index"]) for r in rejected] == [("ragged_row", 1), ("ragged_row", 2)]
    assert [r["source"]["index"] for r in records] == [0, 3]


def test_parquet_wrong_column_types(workspace: Path) -> None:
    Path("raw").mkdir()
    table = pa.table({"instruction": ["a", "b"], "output": [1, 2]})
    pq.write_table(table, "raw/t.parquet")
    _, _, rejected = ingest({})
    assert [(r["reason"], r["source"]["index"]) for r in rejected] == [("wrong_type", 0), ("wrong_type", 1)]
    assert all(r["source"]["file"] == "raw/t.parquet" for r in rejected)


def test_parquet_garbage_file(workspace: Path) -> None:
    _, _, rejected = ingest({"t.parquet": b"PAR1 this is not really parquet"})
    only_reject(rejected, "unreadable_file", file="raw/t.parquet")


def test_bad_tools_string(workspace: Path) -> None:
    row = {
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hey"}],
        "tools": "[{",
    }
    _, _, rejected = ingest({"a.jsonl": line(row)})
    assert "tools" in only_reject(rejected, "wrong_type", file="raw/a.jsonl", line=1)["detail"]


def test_wrongly_typed_category(workspace: Path) -> None:
    _, _, rejected = ingest({"a.jsonl": line({**GOOD, "category": 7})})
    only_reject(rejected, "wrong_type", file="raw/a.jsonl", line=1)


def test_image_content_part_is_unsupported(workspace: Path) -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": "A cat."},
        ]
    }
    _, _, rejected = ingest({"a.jsonl": line(row)})
    only_reject(rejected, "unsupported_content", file="raw/a.jsonl", line=1)


def test_mixed_directory(workspace: Path) -> None:
    Path("raw/sub").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), "raw/sub/t.parquet")
    files = {
        "README.md": "# notes",
        "LICENSE": "text",
        ".hidden.jsonl": line(GOOD),
        "a.json": json.dumps([GOOD]),
        "b.jsonl": line(
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
        ),
        "c.csv": "问题,回答\n你好吗？,很好。\n",
        "sub/d.jsonl": line(
            {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]}
        )
        + "\nnot json\n",
    }
    report, records, rejected = ingest(files)
    assert list(report["files"]) == [
        "raw/a.json",
        "raw/b.jsonl",
        "raw/c.csv",
        "raw/sub/d.jsonl",
        "raw/sub/t.parquet",
    ]
    assert [f["format"] for f in report["files"].values()] == [
        "alpaca",
        "messages",
        "table",
        "sharegpt",
        "table",
    ]
    assert {s["file"]: s["reason"] for s in report["skipped_files"]} == {
        "raw/.hidden.jsonl": "hidden",
        "raw/LICENSE": "not_data",
        "raw/README.md": "not_data",
    }
    assert len(records) == 5
    only_reject(rejected, "bad_json", file="raw/sub/d.jsonl", line=2)


def test_dangling_link_is_an_unreadable_file(workspace: Path) -> None:
    Path("raw").mkdir()
    os.symlink("gone.jsonl", "raw/link.jsonl")
    _, _, rejected = ingest({"ok.jsonl": line(GOOD)})
    assert "cannot read" in only_reject(rejected, "unreadable_file", file="raw/link.jsonl")["detail"]


# --- inputs that used to crash or hang ingest (each now a rejected row, a skipped file or a clear error) ---

DEEP = "[" * 1000 + "]" * 1000


def test_json_nested_a_thousand_deep_is_a_rejected_row(workspace: Path) -> None:
    """Fault 15: JSON nested 1,000 deep raised RecursionError and no report was written."""
    deep_row = '{"instruction": ' + DEEP + ', "output": "x"}'
    merely_deep = json.dumps({**GOOD, "meta": json.loads("[" * 150 + "]" * 150)})  # parses, too deep to keep
    report, records, rejected = ingest({
        "a.jsonl": "\n".join([line(GOOD), deep_row, merely_deep, line(GOOD)]) + "\n",
        "b.json": "[" + ",".join([line(GOOD), DEEP, deep_row, line(GOOD)]) + "]",
        "c.jsonl": line({**GOOD, "tools": DEEP, "conversations": []}) + "\n",
    })
    assert len(records) == 4
    where = sorted((r["source"]["file"], r["source"].get("line", r["source"].get("index"))) for r in rejected)
    assert where == [("raw/a.jsonl", 2), ("raw/a.jsonl", 3), ("raw/b.json", 1), ("raw/b.json", 2),
                     ("raw/c.jsonl", 1)]
    assert {r["reason"] for r in rejected} == {"too_deep"}
    assert report["rejected_by_reason"] == {"too_deep": 5}


def test_deep_single_object_file_is_a_rejected_file(workspace: Path) -> None:
    _, records, rejected = ingest({"a.json": '{"x": ' + DEEP + "}", "b.jsonl": line(GOOD)})
    assert len(records) == 1
    only_reject(rejected, "bad_json_file", file="raw/a.json")


def test_file_name_with_invalid_utf8_bytes(workspace: Path) -> None:
    """Fault 16: a file named with bytes that are not UTF-8 crashed ingest with UnicodeEncodeError."""
    Path("raw").mkdir()
    with open(os.path.join(b"raw", b"bad\xff.jsonl"), "w", encoding="utf-8") as fh:
        fh.write(line(GOOD) + "\n")
    with open(os.path.join(b"raw", b"worse\xfe.jsonl"), "w", encoding="utf-8") as fh:
        fh.write("{broken\n")
    os.mkdir(os.path.join(b"raw", b"\xfenotes"))
    with open(os.path.join(b"raw", b"\xfenotes", b"x.md"), "w") as fh:
        fh.write("not data")
    report, records, rejected = ingest({})
    assert [r["source"]["file"] for r in records] == ["raw/bad\\xff.jsonl"]
    only_reject(rejected, "bad_json", file="raw/worse\\xfe.jsonl", line=1)
    assert {"file": "raw/\\xfenotes/x.md", "reason": "not_data"} in report["skipped_files"]


def test_lone_surrogate_escape_rejects_only_its_row(workspace: Path) -> None:
    """Fault 17: a row holding "\\ud800" (valid JSON, not encodable text) aborted the whole ingest."""
    bad = '{"instruction": "x\\ud800", "input": "", "output": "y"}'
    bad_category = '{"instruction": "a", "output": "b", "category": "\\udc00"}'
    bad_key = '{"\\udfff": 1, "weird": 2}'  # unknown format: the detail quotes the key
    _, records, rejected = ingest({
        "a.jsonl": "\n".join([line(GOOD), bad, bad_category, line(GOOD)]) + "\n",
        "b.json": "[" + ",".join([line(GOOD), bad]) + "]",
        "c.jsonl": bad_key + "\n",
    })
    assert len(records) == 3
    by_where = {(r["source"]["file"], r["source"].get("line", r["source"].get("index"))): r for r in rejected}
    assert {k: r["reason"] for k, r in by_where.items()} == {
        ("raw/a.jsonl", 2): "invalid_utf8", ("raw/a.jsonl", 3): "invalid_utf8",
        ("raw/b.json", 1): "invalid_utf8", ("raw/c.jsonl", 1): "unknown_format",
    }
    assert "\\ud800" in by_where[("raw/a.jsonl", 2)]["detail"]
    assert "\\udfff" in by_where[("raw/c.jsonl", 1)]["detail"]


def test_fifo_in_an_input_folder_is_skipped_not_read(workspace: Path) -> None:
    """Fault 18: a FIFO inside an input folder made ingest wait forever for a writer."""
    Path("raw").mkdir()
    os.mkfifo("raw/pipe.jsonl")
    report, records, rejected = ingest({"a.jsonl": line(GOOD)})
    assert len(records) == 1 and rejected == []
    assert {"file": "raw/pipe.jsonl", "reason": "not_a_regular_file"} in report["skipped_files"]
    os.mkfifo("alone.jsonl")
    cfg = Config(ingest=IngestParams(sources=[Source(path=Path("alone.jsonl"))]))
    with pytest.raises(InputFileError, match="alone.jsonl: ingest source is not a regular file"):
        run(cfg, Layout(Path(".")))


def test_linked_folder_is_reported_not_silently_ignored(workspace: Path) -> None:
    Path("elsewhere").mkdir()
    Path("elsewhere/x.jsonl").write_text(line(GOOD))
    Path("raw").mkdir()
    os.symlink("../elsewhere", "raw/linked")
    report, records, _ = ingest({"a.jsonl": line(GOOD)})
    assert len(records) == 1
    assert {"file": "raw/linked/", "reason": "linked_dir"} in report["skipped_files"]


# --- what tuneline does not tune on is named, not mistaken for broken rows ---------------------------------


def test_preference_pairs_are_an_unsupported_format(workspace: Path) -> None:
    """DPO sets used to be rejected row by row as `no_final_assistant` (or `unknown_format`)."""
    sharegpt_pair = {"conversations": [{"from": "human", "value": "Hi?"}],
                     "chosen": {"from": "gpt", "value": "Hello!"},
                     "rejected": {"from": "gpt", "value": "Go."}}
    trl_pair = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}
    _, records, rejected = ingest({"a.json": json.dumps([sharegpt_pair, sharegpt_pair]),
                                   "b.jsonl": line(trl_pair) + "\n" + line(GOOD)})
    assert len(records) == 1 and len(rejected) == 3
    assert {r["reason"] for r in rejected} == {"unsupported_format"}
    assert "preference pairs (chosen/rejected) are not supported" in rejected[0]["detail"]
    assert "conversations (SFT)" in rejected[0]["detail"]


@pytest.mark.parametrize(
    "row",
    [
        {"messages": [{"role": "user", "content": "<image>What is this?"},
                      {"role": "assistant", "content": "A cat."}], "images": ["1.jpg"]},
        {"messages": [{"role": "user", "content": "<image>What is this?"},
                      {"role": "assistant", "content": "A cat."}]},
        {"conversations": [{"from": "human", "value": "<video>What happens?"},
                           {"from": "gpt", "value": "A dog runs."}]},
        {"instruction": "Describe the sound.", "output": "Birdsong.", "audios": ["a.mp3"]},
    ],
)
def test_multimodal_rows_are_unsupported_content(workspace: Path, row: dict[str, Any]) -> None:
    """Multimodal rows used to be kept with their `<image>` placeholders and the images silently ignored."""
    _, records, rejected = ingest({"a.jsonl": line(row)})
    detail = only_reject(rejected, "unsupported_content", file="raw/a.jsonl", line=1)["detail"]
    assert "multimodal" in detail and "text-only" in detail
    assert records == []


def test_empty_media_fields_are_text_rows(workspace: Path) -> None:
    _, records, rejected = ingest({"a.jsonl": line({**GOOD, "images": [], "videos": None})})
    assert rejected == [] and len(records) == 1


def test_text_parts_written_with_value(workspace: Path) -> None:
    """OpenAI content parts {"type": "text", "value": ...} used to be rejected as `null_field`."""
    row = {"messages": [{"role": "user", "content": [{"type": "text", "value": "Hi"},
                                                     {"type": "text", "text": "there"}]},
                        {"role": "assistant", "content": [{"type": "text", "value": "Hello!"}]}]}
    no_text = {"messages": [{"role": "user", "content": [{"type": "text"}]},
                            {"role": "assistant", "content": "x"}]}
    _, records, rejected = ingest({"a.jsonl": line(row) + "\n" + line(no_text)})
    assert [m["content"] for m in records[0]["messages"]] == ["Hi\nthere", "Hello!"]
    only_reject(rejected, "missing_field", file="raw/a.jsonl", line=2)
