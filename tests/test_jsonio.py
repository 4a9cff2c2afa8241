"""The JSONL codec (orjson fast path) writes and reads exactly what the stdlib codec did.

Covers the switch of `tuneline.jsonio` to orjson: orjson alone writes NaN as null and 1e-05 as 0.00001,
refuses integers beyond 64 bits (and reads them as floats), refuses lone surrogates and writes UUIDs and
Enums the stdlib refuses: those cases fail (different bytes, different values or no error) with a plain
orjson swap, the others pin bytes that must not move (NUL, controls, non-ASCII, key order). The reference
is the stdlib codec the JSONL files were written and read with before.
"""

from __future__ import annotations

import enum
import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from tuneline.jsonio import dumps, read_jsonl, write_jsonl


def _old_dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _old_read(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class Colour(enum.Enum):
    RED = "red"


HOSTILE: list[Any] = [
    {"text": "nul \x00 and controls \x01\x1f\x7f\x80\x9f", "n": 1},
    {"text": "non-ASCII: é 中文 😀 \u2028 \u2029 \ufeff \u200b", "category": None},
    {"big": 2**64, "neg": -(2**63) - 1, "huge": 10**40, "edge": [2**63 - 1, 2**63, -(2**63)]},
    {"floats": [1e-05, 5e-09, 1.5e-07, 1e16, 0.1, -0.0, 1.0, 5e-324, 1e308, 123456789.123]},
    {"nested": {"a": [{"b": [True, False, None, "", {}]}]}, "tuple": (1, "x")},
    {"escapes": "quote \" backslash \\ slash / tab \t newline \n cr \r", "keys order": 1, "a": 2},
    {"": "empty key", "dup": "x" * 10_000},
    [1, "top-level list"],
]


@pytest.mark.parametrize("row", HOSTILE, ids=range(len(HOSTILE)))
def test_dumps_and_files_are_byte_identical_to_the_stdlib(row: Any, tmp_path: Path) -> None:
    assert dumps(row) == _old_dumps(row)
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [row, row])
    line = _old_dumps(row) + "\n"
    assert path.read_bytes() == (line + line).encode("utf-8")
    assert list(read_jsonl(path)) == _old_read(path)
    assert json.dumps(list(read_jsonl(path))) == json.dumps(_old_read(path))  # same types (int stays int)


def test_reading_keeps_big_ints_exact_and_stdlib_only_values(tmp_path: Path) -> None:
    """orjson reads 2**64 as a float and refuses NaN and lone surrogate escapes: the stdlib's values come
    back instead."""
    path = tmp_path / "rows.jsonl"
    lines = [
        '{"id":18446744073709551616,"neg":-9223372036854775809}',
        '{"x":NaN,"y":Infinity,"z":1e400}',
        '{"s":"lone \\ud800 surrogate","t":"\\udc00"}',
        '{"pair":"\\ud83d\\ude00"}',
        "   ",
        '{"a":1}\r',
        '{"b":2}\r{"c":3}',
        '{"dup":1,"k":2,"dup":3}',
        "7",
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="")
    got, want = list(read_jsonl(path)), _old_read(path)
    assert repr(got) == repr(want)
    assert got[0]["id"] == 2**64 and isinstance(got[0]["id"], int)
    assert math.isnan(got[1]["x"]) and got[2]["s"] == "lone \ud800 surrogate"


@pytest.mark.parametrize(
    "row, error",
    [
        ({"x": float("nan")}, ValueError),
        ({"x": [float("inf")]}, ValueError),
        ({"x": "lone \ud800"}, UnicodeEncodeError),
        ({"x": Colour.RED}, TypeError),
        ({"x": uuid.UUID(int=1)}, TypeError),
        ({"x": {1, 2}}, TypeError),
        ({"x": b"bytes"}, TypeError),
    ],
)
def test_writing_refuses_what_the_stdlib_refused(row: Any, error: type[Exception], tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    with pytest.raises(error):
        write_jsonl(path, [{"ok": 1}, row])
    assert not path.exists()  # atomic: nothing half-written


def test_invalid_utf8_and_bad_json_still_raise(tmp_path: Path) -> None:
    bad_utf8 = tmp_path / "utf8.jsonl"
    bad_utf8.write_bytes(b'{"a":"\xff"}\n')
    with pytest.raises(UnicodeDecodeError):
        list(read_jsonl(bad_utf8))
    bad_json = tmp_path / "json.jsonl"
    bad_json.write_text('{"a":1}\n{"a":\n', encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        list(read_jsonl(bad_json))


def test_deep_nesting_falls_back_to_the_stdlib(tmp_path: Path) -> None:
    """orjson stops at 255 levels when writing and 1024 when reading; the stdlib goes deeper."""
    deep: Any = "leaf"
    for _ in range(400):
        deep = [deep]
    row = {"deep": deep}
    path = tmp_path / "deep.jsonl"
    write_jsonl(path, [row])
    assert path.read_text(encoding="utf-8") == _old_dumps(row) + "\n"
    assert list(read_jsonl(path)) == [row]


def test_content_ids_are_unchanged() -> None:
    """Record ids hash the compact JSON of the conversation; the fast encoding must hash the same bytes
    (or the ids of every existing dataset would change), and refuse a lone surrogate as before."""
    import hashlib

    from tuneline.records import content_id

    def old_id(messages: list[dict[str, Any]], category: str | None) -> str:
        canon = json.dumps({"messages": [[m["role"], m["content"]] for m in messages], "category": category},
                           ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]

    for content in ["plain", "nul \x00 é 中 😀 \u2028", 1.5e-07, float("nan"), 2**70, None]:
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": "ok"}]
        for category in (None, "qa"):
            assert content_id(messages, category) == old_id(messages, category)
    with pytest.raises(UnicodeEncodeError):
        content_id([{"role": "user", "content": "lone \ud800"}])
