"""Atomic file writes and JSON / JSONL helpers for tuneline's own (trusted) artifacts.

Raw, untrusted input is read by `tuneline.data.ingest`; these helpers are for files tuneline wrote.

JSONL rows go through orjson (several times faster than the stdlib, and every data stage reads and writes
its whole dataset), but the bytes and values are exactly those of the stdlib codec used before: a row
orjson would treat differently goes through `json` instead. orjson differs on floats (NaN/Infinity are
written as null, 1e-05 as 0.00001), on integers beyond 64 bits (refused when writing, read as floats), on
lone surrogates (refused), and on types JSON has no word for (UUID, Enum, dataclasses: written, where the
stdlib refuses them). So a row is written by orjson only when it is made of str, int, bool, None, dict and
list (orjson's own refusals fall back to the stdlib, which then writes or refuses the row as before), and
a line is taken from orjson only when writing its values back gives the line again (otherwise the stdlib
parses it), so every file reads and writes exactly as before.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import orjson


@contextmanager
def atomic_write(path: Path | str, mode: str = "w") -> Iterator[TextIO]:
    """Write to a temp file beside `path`, fsync, then rename over it: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_PLAIN = frozenset((str, int, bool, type(None)))


def _plain(obj: Any) -> bool:
    """True when `obj` (a dict or list) holds only str, int, bool, None, dict and list: values on which
    orjson and the stdlib agree byte for byte (ints beyond 64 bits orjson refuses or reads as floats; a
    float sends the row to the stdlib)."""
    stack = [obj]
    while stack:
        node = stack.pop()
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind in _PLAIN:
                continue
            if kind is dict or kind is list:
                stack.append(value)
            else:
                return False
    return True


def _std_dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def compact_bytes(obj: Any) -> bytes | None:
    """orjson's encoding of `obj` when it is byte for byte the stdlib's compact, non-ASCII-escaping one
    (`json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()`), else None: the caller then
    uses the stdlib (its own NaN and error rules)."""
    if type(obj) is dict or type(obj) is list:
        try:
            out = orjson.dumps(obj)
        except TypeError:  # orjson.JSONEncodeError: big int, non-str key, lone surrogate, deep nesting
            return None
        if _plain(obj):
            return out
    return None


def dumps_bytes(obj: Any) -> bytes:
    """`dumps(obj)` encoded as UTF-8 (raises UnicodeEncodeError on a lone surrogate, as writing it did)."""
    out = compact_bytes(obj)
    return out if out is not None else _std_dumps(obj).encode("utf-8")


def dumps(obj: Any) -> str:
    """One canonical JSON line: UTF-8 kept readable, no NaN (which is not JSON).

    The text is the stdlib's `json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))`
    (a lone surrogate stays in the text, and fails when it is encoded); see the module for the fast path.
    """
    out = compact_bytes(obj)
    return out.decode("utf-8") if out is not None else _std_dumps(obj)


def write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write rows as JSONL; returns the number of rows written."""
    n = 0
    with atomic_write(path, "wb") as fh:
        for row in rows:
            fh.write(dumps_bytes(row))
            fh.write(b"\n")
            n += 1
    return n


def loads_line(line: bytes) -> Iterator[Any]:
    """The values of one line of a JSONL file (read in binary), exactly as the stdlib reading it as text
    did: blank lines yield nothing, a line the fast parser refuses (NaN, a lone surrogate escape, a bare
    \\r splitting it in two) is decoded and parsed by `json`, with the stdlib's errors."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        # Text mode read "\r" as a line end too; json.loads raises what it raised before.
        for text in io.StringIO(line.decode("utf-8"), newline=None):
            if text.strip():
                yield json.loads(text)
        return
    # Written back, the values give the line again (tuneline writes every row with this codec): so they
    # are the stdlib's values too (an integer beyond 64 bits would come back as a float and print
    # otherwise). Lines written another way (spaces, escapes) are parsed by the stdlib.
    try:
        same = orjson.dumps(obj) == (line[:-1] if line.endswith(b"\n") else line)
    except TypeError:  # nested deeper than orjson writes
        same = False
    yield obj if same else json.loads(line.decode("utf-8"))


def read_jsonl(path: Path | str) -> Iterator[dict[str, Any]]:
    """Stream rows of a JSONL file tuneline wrote (a missing file yields nothing)."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as fh:
        for line in fh:
            yield from loads_line(line)


def write_json(path: Path | str, obj: Any) -> None:
    """Atomically write a JSON document (indented, for reports that people and DVC read)."""
    with atomic_write(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, allow_nan=False)
        fh.write("\n")


def write_text(path: Path | str, text: str) -> None:
    """Atomically write a text file (HTML reports)."""
    with atomic_write(path) as fh:
        fh.write(text)


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
