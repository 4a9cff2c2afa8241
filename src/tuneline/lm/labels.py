"""Training rows from rendered conversations: assistant-only labels, truncation, rejected rows.

Labels are the input ids where `ChatFormat.encode` marks assistant tokens (the answer and its end of
turn) and -100 elsewhere, so the loss teaches answers, never prompts. A row the template cannot render
is rejected with its reason (`rejected`), never a crash. Rows longer than `max_length` are cut at the
end and counted; a row with no supervised token left (e.g. a prompt longer than `max_length`) is
dropped and counted, because a batch made only of such rows has no loss to learn from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tuneline.lm.chat import ChatFormat
from tuneline.lm.errors import RenderError

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips


@dataclass
class Encoded:
    """Tokenized rows ready for the trainer, plus what was cut or dropped."""

    rows: list[dict[str, list[int]]] = field(default_factory=list)
    truncated_rows: int = 0
    dropped_too_long: list[str] = field(default_factory=list)
    dropped_no_target: list[str] = field(default_factory=list)
    tokens: int = 0
    target_tokens: int = 0
    rejected: list[dict[str, str]] = field(default_factory=list)  # {id, reason, detail}


def labels_from_mask(input_ids: list[int], mask: list[int]) -> list[int]:
    """Copy of `input_ids` with every non-assistant position set to IGNORE_INDEX."""
    return [tok if m else IGNORE_INDEX for tok, m in zip(input_ids, mask, strict=True)]


def build_rows(
    record_ids: list[str],
    ids: list[list[int]],
    masks: list[list[int]],
    max_length: int,
    drop_long: bool = False,
) -> Encoded:
    """Training rows from rendered tokens: truncated to `max_length`, labels on assistant tokens only.

    Args:
        record_ids: each record's id (kept on its row as `row_id`, e.g. for a NaN diagnosis).
        ids: each record's rendered token ids (untruncated).
        masks: each record's assistant mask (1 = assistant token).
        max_length: tokens kept per row (the end is cut).
        drop_long: leave rows longer than `max_length` out (listed in `dropped_too_long`) instead.

    Returns:
        Rows with `input_ids`, `labels`, `row_id`; counts of truncated and dropped rows.
    """
    out = Encoded()
    for rid, row_ids, mask in zip(record_ids, ids, masks, strict=True):
        if len(row_ids) > max_length and drop_long:
            out.dropped_too_long.append(rid)
            continue
        if len(row_ids) > max_length:
            out.truncated_rows += 1
            row_ids, mask = row_ids[:max_length], mask[:max_length]
        labels = labels_from_mask(row_ids, mask)
        supervised = sum(1 for t in labels if t != IGNORE_INDEX)
        if not supervised:
            out.dropped_no_target.append(rid)
            continue
        out.rows.append({"input_ids": list(row_ids), "labels": labels, "row_id": rid})
        out.tokens += len(row_ids)
        out.target_tokens += supervised
    return out


def encode_all(chat: ChatFormat, records: Iterable[dict[str, Any]]
               ) -> tuple[list[str], list[list[int]], list[list[int]], list[dict[str, str]]]:
    """(ids of the rendered records, their token ids, their masks, rejected rows) in input order."""
    kept, ids, masks, rejected = [], [], [], []
    for record in records:
        rid = str(record.get("id"))
        try:
            i, m = chat.encode(record)
        except RenderError as exc:
            rejected.append({"id": rid, "reason": exc.reason, "detail": exc.detail})
            continue
        kept.append(rid)
        ids.append(i)
        masks.append(m)
    return kept, ids, masks, rejected


def encode_records(chat: ChatFormat, records: Iterable[dict[str, Any]], max_length: int) -> Encoded:
    """Render and tokenize records (no cache), then `build_rows`; unrenderable rows go to `rejected`."""
    kept, ids, masks, rejected = encode_all(chat, records)
    out = build_rows(kept, ids, masks, max_length)
    out.rejected = rejected
    return out
