"""Teacher-forced loss and perplexity of a model variant over assistant tokens (the training labels)."""

from __future__ import annotations

import math
from typing import Any

import torch

from tuneline.evaluate.metrics import perplexity
from tuneline.lm.batching import collate_padded
from tuneline.lm.chat import ChatFormat
from tuneline.lm.generate import batches, device_of
from tuneline.lm.labels import IGNORE_INDEX, encode_records
from tuneline.progress import track


@torch.inference_mode()
def loss_and_perplexity(
    model: Any, chat: ChatFormat, records: list[dict[str, Any]], max_length: int, batch_size: int = 8
) -> dict[str, Any]:
    """Teacher-forced loss over assistant tokens, weighted by tokens over the whole set.

    Rows are rendered and labelled exactly as for training (`encode_records`: assistant content and
    its EOS are targets, rows longer than `max_length` are cut at the end). The loss is the sum of
    every target token's cross-entropy divided by the number of target tokens, so a batch of short
    replies weighs no more than its tokens.

    Returns:
        {"loss", "perplexity" (exp(loss)), "rows" (scored), "tokens" (target tokens),
        "truncated_rows", "skipped" (ids with no target token, e.g. no assistant turn),
        "rejected" ([{id, reason, detail}]: rows the chat template cannot render),
        "per_row": [{"id", "loss" (mean over the row's targets), "tokens"}] in input order}.
        loss and perplexity are None when no row has a target.
    """
    tokenizer = chat.tokenizer
    encoded = encode_records(chat, records, max_length)
    rows = encoded.rows
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]["input_ids"]), i))
    device = device_of(model)
    sums = [0.0] * len(rows)
    counts = [0] * len(rows)
    for batch in track(batches(order, batch_size), "loss", total=math.ceil(len(order) / batch_size)):
        enc = collate_padded([rows[i] for i in batch], pad_id)
        logits = model(
            input_ids=enc["input_ids"].to(device),
            attention_mask=enc["attention_mask"].to(device),
            use_cache=False,
        ).logits
        labels = enc["labels"].to(device)
        for row, i in enumerate(batch):
            # Token t predicts token t+1; cross-entropy in fp32 even when the model runs in bf16.
            target = labels[row, 1:]
            keep = target != IGNORE_INDEX
            losses = torch.nn.functional.cross_entropy(
                logits[row, :-1][keep].float(), target[keep], reduction="sum"
            )
            sums[i] = float(losses)
            counts[i] = int(keep.sum())
    tokens = sum(counts)
    loss = sum(sums) / tokens if tokens else None
    return {
        "loss": loss,
        "perplexity": perplexity(loss),
        "rows": len(rows),
        "tokens": tokens,
        "truncated_rows": encoded.truncated_rows,
        "skipped": list(encoded.dropped_no_target),
        "rejected": encoded.rejected,
        "per_row": [
            {"id": r["row_id"], "loss": s / c, "tokens": c}
            for r, s, c in zip(rows, sums, counts, strict=True)
        ],
    }
