"""Batching tokenized rows for a forward pass: right padding with an attention mask, and token counting.

Shared by training (packing off) and evaluation's teacher-forced loss; packed batches are training's
own (`train.packing`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tuneline.lm.labels import IGNORE_INDEX

Row = dict[str, Any]


@dataclass
class TokenCounter:
    """Real vs. padded tokens seen by a collator (the useful-token fraction of training)."""

    real: int = 0
    total: int = 0

    @property
    def useful_fraction(self) -> float | None:
        return self.real / self.total if self.total else None


def collate_padded(rows: list[Row], pad_id: int, counter: TokenCounter | None = None) -> dict[str, Any]:
    """Batch unpacked rows: right-pad to the longest with an attention mask (packing off)."""
    width = max(len(r["input_ids"]) for r in rows)
    if counter is not None:
        counter.real += sum(len(r["input_ids"]) for r in rows)
        counter.total += width * len(rows)

    def pad(key: str, value: int) -> Any:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in rows], dtype=torch.long)

    batch = {"input_ids": pad("input_ids", pad_id), "labels": pad("labels", IGNORE_INDEX)}
    batch["attention_mask"] = torch.tensor(
        [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows], dtype=torch.long
    )
    return batch
