"""Packing: several tokenized rows per training sequence, with no attention between them.

Rows are placed into sequences of at most `max_length` tokens by best-fit decreasing (longest row
first, each into the fullest sequence it still fits; ties by input order, so packing is
deterministic). A packed sequence carries `position_ids` that restart at 0 for every row. The
collator passes no `attention_mask`: transformers then derives a block-diagonal causal mask from the
restarting positions (sdpa / eager / flex attention) or variable-length kernels (flash attention), so
no token attends to another row. The first label of every row is masked, so the last token of one
row never learns to predict the first token of the next.

Batches are padded to their longest sequence; padding forms a segment of its own (positions restart)
with ignored labels. `lm.batching.TokenCounter` counts real and padded tokens as batches are collated,
which gives the useful-token fraction the trainer logs; unpacked rows batch with `lm.batching.collate_padded`.
"""

from __future__ import annotations

import bisect
from typing import Any

import torch

from tuneline.lm.batching import Row, TokenCounter
from tuneline.lm.labels import IGNORE_INDEX


def pack_rows(rows: list[Row], max_length: int) -> list[Row]:
    """Pack rows (each at most `max_length` tokens) into as few sequences as best-fit decreasing finds.

    Args:
        rows: tokenized rows with `input_ids`, `labels` and `row_id`.
        max_length: tokens per packed sequence.

    Returns:
        Packed rows with `input_ids`, `labels`, `position_ids` and `row_ids` (the rows inside).

    Raises:
        ValueError: a row is longer than `max_length` (rows are truncated before packing).
    """
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]["input_ids"]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin index), sorted: the fullest bin that fits comes first
    for i in order:
        size = len(rows[i]["input_ids"])
        if size > max_length:
            raise ValueError(f"row {rows[i].get('row_id')} has {size} tokens > max_length {max_length}")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            space, b = free.pop(at)
        else:
            space, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        if space - size > 0:
            bisect.insort(free, (space - size, b))
    return [_concat([rows[i] for i in members]) for members in bins]


def _concat(members: list[Row]) -> Row:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for row in members:
        n = len(row["input_ids"])
        ids.extend(row["input_ids"])
        labels.append(IGNORE_INDEX)  # never predict a row's first token from the previous row
        labels.extend(row["labels"][1:])
        positions.extend(range(n))
    return {"input_ids": ids, "labels": labels, "position_ids": positions,
            "row_ids": [r.get("row_id") for r in members]}


def collate_packed(rows: list[Row], pad_id: int, counter: TokenCounter | None = None) -> dict[str, Any]:
    """Batch packed rows: right-pad to the longest, positions restart in the padding, no attention mask."""
    width = max(len(r["input_ids"]) for r in rows)
    ids, labels, positions = [], [], []
    for r in rows:
        gap = width - len(r["input_ids"])
        ids.append(r["input_ids"] + [pad_id] * gap)
        labels.append(r["labels"] + [IGNORE_INDEX] * gap)
        positions.append(r["position_ids"] + list(range(gap)))
    if counter is not None:
        counter.real += sum(len(r["input_ids"]) for r in rows)
        counter.total += width * len(rows)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }
