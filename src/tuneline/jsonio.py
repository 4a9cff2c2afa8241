"""Atomic file writes and JSON / JSONL helpers for tuneline's own (trusted) artifacts.

Raw, untrusted input is read by `tuneline.data.ingest`; these helpers are for files tuneline wrote.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO


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


def dumps(obj: Any) -> str:
    """One canonical JSON line: UTF-8 kept readable, no NaN (which is not JSON)."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> int:
    """Atomically write rows as JSONL; returns the number of rows written."""
    n = 0
    with atomic_write(path) as fh:
        for row in rows:
            fh.write(dumps(row))
            fh.write("\n")
            n += 1
    return n


def read_jsonl(path: Path | str) -> Iterator[dict[str, Any]]:
    """Stream rows of a JSONL file tuneline wrote (a missing file yields nothing)."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


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
