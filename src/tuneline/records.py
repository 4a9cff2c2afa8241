"""The canonical record (DESIGN §4) and helpers shared by every data stage.

A record is a plain dict, one JSON object per line:

    {"id": "3f2a…", "messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}],
     "category": "qa" | None, "meta": {…}, "source": {"file": "data/raw/x.jsonl", "line": 17}}

`source` holds `line` (1-based) for line-oriented files and `index` (0-based) for arrays and tables.
Rejected rows (one file per stage) are: {"stage", "reason", "detail", "source", "id"?, "record"?, "raw"?}.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tuneline.jsonio import compact_bytes

ROLES = ("system", "user", "assistant", "tool")


def content_id(messages: list[dict[str, Any]], category: str | None = None) -> str:
    """Stable content hash: the same conversation (and category) always gets the same id."""
    canon = {"messages": [[m["role"], m["content"]] for m in messages], "category": category}
    data = compact_bytes(canon)  # the same bytes as below, several times faster
    if data is None:
        data = json.dumps(canon, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def make_record(
    messages: list[dict[str, Any]],
    source: dict[str, Any],
    category: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": content_id(messages, category),
        "messages": messages,
        "category": category,
        "meta": meta or {},
        "source": source,
    }


def reject(
    stage: str,
    reason: str,
    source: dict[str, Any],
    detail: str = "",
    record: dict[str, Any] | None = None,
    raw: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A rejected row: machine-readable `reason`, the `stage`, where it came from, and the data itself."""
    row: dict[str, Any] = {"stage": stage, "reason": reason, "detail": detail, "source": source}
    if record is not None:
        row["id"] = record.get("id")
        row["record"] = record
    if raw is not None:
        row["raw"] = raw
    row.update(extra)
    return row


def record_text(record: dict[str, Any], roles: tuple[str, ...] | None = None) -> str:
    """All message contents joined by newlines (optionally only some roles): what dedup and filters see."""
    return "\n".join(
        m["content"] for m in record["messages"] if roles is None or m["role"] in roles
    )


def is_augmented(record: dict[str, Any]) -> bool:
    """True for a copy made by `augment` (meta.augmented_from names its train origin)."""
    meta = record.get("meta")
    return isinstance(meta, dict) and meta.get("augmented_from") not in (None, "")


def assistant_outputs(record: dict[str, Any]) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "assistant"]


def source_label(source: dict[str, Any]) -> str:
    """'data/raw/x.jsonl line 17' or 'data/raw/x.json index 3' — for error messages."""
    where = source.get("file", "?")
    if "line" in source:
        return f"{where} line {source['line']}"
    if "index" in source:
        return f"{where} index {source['index']}"
    return str(where)
