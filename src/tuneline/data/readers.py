"""Container readers for raw, untrusted files: JSONL, JSON arrays, CSV/TSV and parquet.

Each reader yields `RawRow`s: a parsed object, or the reason it could not be parsed together with the raw
text (so a rejected row can always be inspected and traced to its file and line/index). A problem that
makes the *whole* file unusable (unreadable, binary, not a JSON array) raises `FileProblem`; rows already
yielded stay valid.

Choices that keep the ledger honest:

- A UTF-8 BOM at the start of a file and CRLF line endings are handled transparently.
- Blank (whitespace-only) lines of JSONL/CSV hold no data: they are not rows, but each file counts them
  (`blank_lines` in the ingest report) so nothing disappears without a trace.
- JSONL is streamed line by line in binary, so one line with invalid UTF-8 is rejected on its own
  (``invalid_utf8``, raw text kept with backslash escapes) and a 10 MB line is just a long line.
- NaN / Infinity literals are not JSON: such rows are rejected (``bad_json``) instead of becoming floats.
- JSON nested deeper than `MAX_DEPTH` levels is no conversation: such a row is rejected (``too_deep``)
  before anything recurses into it (the parser's own recursion limit is caught too).
- CSV uses the stdlib reader (streaming, one row at a time) so ragged rows are rejected one by one instead
  of failing the whole file as a dataframe parser would.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_EXTS = {".json"}
JSONL_EXTS = {".jsonl", ".ndjson"}
CSV_EXTS = {".csv", ".tsv"}
PARQUET_EXTS = {".parquet", ".pq"}
DATA_EXTS = JSON_EXTS | JSONL_EXTS | CSV_EXTS | PARQUET_EXTS

BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 100  # nesting levels of one row; real tool schemas stay far below, and later stages recurse
_SNIFF_BYTES = 8192
_DECODER = json.JSONDecoder()

# A single CSV cell may be as long as a whole long document; the stdlib default (128 KiB) is too small.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def display_path(path: Path) -> str:
    """`path` as text that can always be written and printed: bytes of a file name that are not UTF-8
    appear as backslash escapes (`bad\\xff.jsonl`) instead of making every later write fail."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """`text` with lone surrogates (not encodable as UTF-8) written as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def nesting_depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Depth of nested lists/dicts in `obj` (a scalar is 0), counted without recursion; stops past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        elif not isinstance(node, list | tuple):
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return deepest
        stack.extend((child, depth) for child in node if isinstance(child, dict | list | tuple))
    return deepest


def _too_deep(source: dict[str, Any], raw: str) -> RawRow:
    shown = raw[:2000].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return RawRow(source, reason="too_deep", detail=f"JSON nested deeper than {MAX_DEPTH} levels", raw=shown)


class FileProblem(Exception):
    """The whole file cannot be read; `reason` is the rejection reason, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class RawRow:
    """One row read from a file: `row` when parsed, else `reason`/`detail`; `raw` is the text when known."""

    source: dict[str, Any]
    row: dict[str, Any] | None = None
    reason: str | None = None
    detail: str = ""
    raw: str | None = None


@dataclass
class FileStats:
    """What a reader learned about a file besides its rows."""

    blank_lines: int = 0
    columns: list[str] | None = None


def container_of(path: Path, declared: str = "auto") -> str | None:
    """jsonl, json, csv or parquet: from the declared table format, the extension, or the first bytes."""
    ext = path.suffix.lower()
    if declared in ("csv", "parquet"):
        return declared
    if ext in JSONL_EXTS:
        return "jsonl"
    if ext in JSON_EXTS:
        return "json"
    if ext in CSV_EXTS:
        return "csv"
    if ext in PARQUET_EXTS:
        return "parquet"
    head = _head(path)
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.removeprefix(BOM).lstrip()
    if stripped[:1] in (b"[", b"{"):
        return "json"
    return None


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise FileProblem("unreadable_file", f"cannot read: {exc.strerror or exc}") from None


def _check_not_binary(head: bytes) -> None:
    if b"\x00" in head:
        raise FileProblem("unreadable_file", "binary content (NUL bytes), not text data")


def is_empty(path: Path) -> bool:
    """True when the file holds nothing but whitespace (and perhaps a BOM)."""
    head = _head(path)
    if len(head) < _SNIFF_BYTES:
        return not head.removeprefix(BOM).strip()
    return False


def _loads(text: str) -> tuple[Any, str | None]:
    """json.loads that reports NaN/Infinity literals instead of accepting them."""
    bad: list[str] = []

    def constant(name: str) -> None:
        bad.append(name)

    obj = json.loads(text, parse_constant=constant)
    return obj, (bad[0] if bad else None)


def _parsed(source: dict[str, Any], obj: Any, nan: str | None, raw: str) -> RawRow:
    # Every list/dict of `obj` opened with a bracket of `raw`: few brackets prove it shallow without a walk.
    if raw.count("[") + raw.count("{") > MAX_DEPTH and nesting_depth(obj) > MAX_DEPTH:
        return _too_deep(source, raw)
    if nan is not None:
        return RawRow(source, reason="bad_json", detail=f"{nan} is not valid JSON", raw=raw)
    if not isinstance(obj, dict):
        return RawRow(
            source,
            reason="not_an_object",
            detail=f"expected a JSON object, got {type(obj).__name__}",
            raw=raw,
        )
    return RawRow(source, row=obj, raw=raw)


def read_jsonl(path: Path, label: str, stats: FileStats) -> Iterator[RawRow]:
    """Stream a JSON-lines file; one RawRow per non-blank line, `line` 1-based."""
    _check_not_binary(_head(path))
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise FileProblem("unreadable_file", f"cannot read: {exc.strerror or exc}") from None
    with fh:
        for lineno, data in enumerate(fh, start=1):
            if lineno == 1:
                data = data.removeprefix(BOM)
            source = {"file": label, "line": lineno}
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = data.decode("utf-8", "backslashreplace").rstrip("\r\n")
                yield RawRow(
                    source, reason="invalid_utf8", detail=f"invalid UTF-8 at byte {exc.start}", raw=raw
                )
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                stats.blank_lines += 1
                continue
            try:
                obj, nan = _loads(text)
            except json.JSONDecodeError as exc:
                yield RawRow(source, reason="bad_json", detail=f"column {exc.colno}: {exc.msg}", raw=text)
                continue
            except RecursionError:
                yield _too_deep(source, text)
                continue
            yield _parsed(source, obj, nan, text)


def read_json(path: Path, label: str, stats: FileStats) -> Iterator[RawRow]:
    """A JSON array of objects (`index` 0-based); a .json file that is really JSON lines is read as such."""
    head = _head(path)
    _check_not_binary(head)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileProblem("unreadable_file", f"cannot read: {exc.strerror or exc}") from None
    # surrogateescape keeps invalid bytes visible so the one element holding them can be rejected alone.
    text = data.removeprefix(BOM).decode("utf-8", "surrogateescape")
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        return
    if text[pos] == "{":
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError) as exc:
            if "\n{" in text[pos:]:  # several lines of objects: JSON lines whose first line is broken
                yield from read_jsonl(path, label, stats)
                return
            if isinstance(exc, RecursionError):
                raise FileProblem("bad_json_file", f"JSON nested deeper than {MAX_DEPTH} levels") from None
            raise FileProblem(
                "bad_json_file", f"not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        if _skip_ws(text, end) < len(text):  # more objects follow: JSON lines in a .json file
            yield from read_jsonl(path, label, stats)
            return
        keys = ", ".join(list(obj)[:5])
        raise FileProblem(
            "top_level_object",
            f"top level is one JSON object (keys: {keys}), expected an "
            "array of records (or one record per line in a .jsonl file)",
        )
    if text[pos] != "[":
        raise FileProblem("bad_json_file", f"expected a JSON array, found {text[pos]!r} at character {pos}")
    yield from _array_elements(text, pos + 1, label)


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _array_elements(text: str, pos: int, label: str) -> Iterator[RawRow]:
    """Decode array elements one at a time, so a bad tail (truncation) loses nothing that parsed before it."""
    nan_seen: list[str] = []
    decoder = json.JSONDecoder(parse_constant=lambda name: nan_seen.append(name))
    index = 0
    pos = _skip_ws(text, pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        source = {"file": label, "index": index}
        nan_seen.clear()
        deep = False
        try:
            obj, end = decoder.raw_decode(text, pos)
        except RecursionError:
            # Too deep for the parser: step over the element by bracket matching and go on.
            closed = _value_end(text, pos)
            if closed is None:
                yield _too_deep(source, text[pos : pos + 200])
                return
            obj, end, deep = None, closed, True
        except json.JSONDecodeError as exc:
            tail = (
                text[pos : pos + 200].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            )
            yield RawRow(
                source,
                reason="bad_json",
                detail=f"line {exc.lineno} column {exc.colno}: {exc.msg}; the rest of the file "
                "cannot be parsed",
                raw=tail,
            )
            return
        raw = text[pos:end]
        if deep:
            yield _too_deep(source, raw)
        elif any("\udc80" <= ch <= "\udcff" for ch in raw):
            fixed = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            yield RawRow(
                source, reason="invalid_utf8", detail="invalid UTF-8 bytes in this element", raw=fixed
            )
        else:
            yield _parsed(source, obj, nan_seen[0] if nan_seen else None, raw)
        index += 1
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            if _skip_ws(text, pos + 1) < len(text):
                yield RawRow(
                    {"file": label, "index": index},
                    reason="bad_json",
                    detail="data after the closing ']' of the array",
                    raw=text[pos + 1 : pos + 201],
                )
            return
        yield RawRow(
            {"file": label, "index": index},
            reason="bad_json",
            detail="expected ',' or ']' after an array element (truncated file?); the rest of the "
            "file cannot be parsed",
            raw=text[pos : pos + 200],
        )
        return


def _value_end(text: str, pos: int) -> int | None:
    """End of the JSON array/object starting at `pos` (brackets matched outside strings), None if unclosed."""
    depth = 0
    in_string = escaped = False
    for i in range(pos, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def read_csv(path: Path, label: str, stats: FileStats) -> Iterator[RawRow]:
    """CSV (or TSV by extension): the first row is the header; `index` is the 0-based data row."""
    _check_not_binary(_head(path))
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        fh = path.open(encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as exc:
        raise FileProblem("unreadable_file", f"cannot read: {exc.strerror or exc}") from None
    with fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header: list[str] | None = None
        index = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                if header is None:
                    raise FileProblem("bad_csv", f"header row: {exc}") from None
                yield RawRow({"file": label, "index": index}, reason="bad_csv", detail=str(exc))
                index += 1
                continue
            if not any(c.strip() for c in cells):
                stats.blank_lines += 1
                continue
            if header is None:
                header = [c.removeprefix("\ufeff").strip() for c in cells]
                stats.columns = header
                continue
            source = {"file": label, "index": index}
            index += 1
            raw = delimiter.join(cells)
            if any("\udc80" <= ch <= "\udcff" for ch in raw):
                fixed = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                yield RawRow(
                    source, reason="invalid_utf8", detail="invalid UTF-8 bytes in this row", raw=fixed
                )
                continue
            if len(cells) != len(header):
                yield RawRow(
                    source,
                    reason="ragged_row",
                    detail=f"{len(cells)} cells but the header has {len(header)} columns",
                    raw=raw,
                )
                continue
            yield RawRow(source, row=dict(zip(header, cells, strict=True)), raw=raw)


def read_parquet(path: Path, label: str, stats: FileStats) -> Iterator[RawRow]:
    """Parquet, streamed in record batches; `index` is the 0-based row."""
    import pyarrow as pa  # lazy: pyarrow ~0.8 s; only parquet sources need it
    import pyarrow.parquet as pq  # lazy: pyarrow ~0.8 s; parquet only

    try:
        pf = pq.ParquetFile(path)
        stats.columns = list(pf.schema_arrow.names)
        batches = pf.iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                yield RawRow({"file": label, "index": index}, row=row)
                index += 1
    except (OSError, pa.ArrowException) as exc:
        raise FileProblem("unreadable_file", f"not a readable parquet file: {exc}") from None


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}
