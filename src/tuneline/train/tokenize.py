"""Render canonical records with the tokenizer's chat template and build assistant-only labels.

Labels are the input ids where the chat template marks assistant tokens (its `{% generation %}`
block: assistant content plus the closing eos) and -100 elsewhere, so the loss teaches answers,
never prompts. Rows longer than `max_length` are cut at the end and counted; a row with no
supervised token left (e.g. a prompt longer than `max_length`) is dropped and counted, because a
batch made only of such rows has no loss to learn from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tuneline.errors import ConfigError

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


def messages_of(record: dict[str, Any]) -> list[dict[str, str]]:
    """A canonical record's messages reduced to role and content (what chat templates render)."""
    return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]


def encode_messages(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Render one conversation and return (input_ids, assistant_mask), untruncated.

    Raises:
        ConfigError: the tokenizer has no chat template, or its template marks no assistant tokens
            (it lacks a `{% generation %}` block), so assistant-only labels cannot be built.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.name_or_path: the tokenizer has no chat template; cannot render messages")
    enc = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    has_answer = any(m["role"] == "assistant" and m["content"] for m in messages)
    if has_answer and not any(mask):
        raise ConfigError(
            "model.name_or_path: the chat template marks no assistant tokens (it needs a "
            "{% generation %} ... {% endgeneration %} block around assistant content) so the loss "
            "cannot be restricted to answers"
        )
    return ids, mask


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


def encode_records(tokenizer: Any, records: Iterable[dict[str, Any]], max_length: int) -> Encoded:
    """Render and tokenize records (no cache), then `build_rows`."""
    records = list(records)
    rendered = [encode_messages(tokenizer, messages_of(r)) for r in records]
    return build_rows([str(r.get("id")) for r in records], [i for i, _ in rendered],
                      [m for _, m in rendered], max_length)
