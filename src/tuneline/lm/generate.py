"""Generate with a model variant: the one generation path of evaluate, the registry's pyfunc and serve.

The prompt is the conversation before the last assistant turn, rendered by `ChatFormat.prompt` (the
model's chat template with its generation prompt, tools included); decoding is greedy unless a
server request asks to sample, until a stop token (`ChatFormat.stop_ids`) or `max_new_tokens`.
Batches are left-padded so every prompt ends where generation starts; rows are grouped by prompt
length first (less padding) and returned in input order, so batching changes no result.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from tuneline.lm.chat import ChatFormat
from tuneline.lm.conversation import Message
from tuneline.lm.errors import RenderError
from tuneline.lm.stops import encode_text
from tuneline.progress import track

logger = logging.getLogger(__name__)

Prompt = dict[str, Any]  # {"id", "category", "messages", "tools", "reference", "reference_tokens"}
Tools = list[dict[str, Any]] | None


def prompts_and_references(record: dict[str, Any]) -> tuple[list[dict[str, str]], str] | None:
    """(prompt messages, reference) of one canonical record, or None when it has no assistant turn.

    The prompt is every message before the LAST assistant turn; that turn's content is the reference.
    Messages after it (e.g. a trailing user turn) are not part of the task and are ignored.
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    return messages[:last], messages[last]["content"]


def reference_tokens(chat: ChatFormat, record: dict[str, Any], reference: str) -> int:
    """Tokens a model must generate to give the reference and stop: the last assistant turn as training
    supervises it (its text or tool calls, then the end-of-turn token); when the template cannot encode
    the record, the reference text's tokens plus one end-of-turn token."""
    try:
        _, mask = chat.encode(record)
    except RenderError:
        mask = []
    end = len(mask)
    while end and not mask[end - 1]:  # the trailing scaffolding (or messages) after the last answer
        end -= 1
    start = end
    while start and mask[start - 1]:  # back to where the last supervised span begins
        start -= 1
    return end - start if end else len(encode_text(chat.tokenizer, reference)) + 1


def split_prompts(records: list[dict[str, Any]], chat: ChatFormat | None = None
                  ) -> tuple[list[Prompt], list[dict[str, str]]]:
    """Prompts of the records that have an assistant turn (and, given `chat`, that its template can
    render, with the reference's `reference_tokens`), and the skipped ones as {id, reason, detail}."""
    prompts: list[Prompt] = []
    skipped: list[dict[str, str]] = []
    for record in records:
        rid = str(record.get("id"))
        pair = prompts_and_references(record)
        if pair is None:
            skipped.append({"id": rid, "reason": "no_assistant_turn", "detail": "no assistant turn"})
            continue
        messages, tools, ref_tokens = pair[0], None, None
        if chat is not None:
            try:
                converted, tools = chat.conversation(record)
                last = max(i for i, m in enumerate(converted) if m["role"] == "assistant")
                messages = converted[:last]
            except RenderError as exc:
                skipped.append({"id": rid, "reason": exc.reason, "detail": exc.detail})
                continue
            ref_tokens = reference_tokens(chat, record, pair[1])
        prompts.append({"id": record.get("id"), "category": record.get("category"), "messages": messages,
                        "tools": tools, "reference": pair[1], "reference_tokens": ref_tokens})
    return prompts, skipped


def device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
    }


def batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def generate(model: Any, chat: ChatFormat, records: list[dict[str, Any]], max_new_tokens: int,
             batch_size: int = 8) -> list[dict[str, Any]]:
    """Greedy replies to the prompts of `records`, in input order.

    Records without an assistant turn, or that the template cannot render, are skipped and logged
    (`split_prompts` lists them, with the reason, to count).

    Returns:
        One dict per prompt: id, category, prompt (rendered text), reference, prediction (decoded
        without special tokens), stopped (a stop token reached), new_tokens (generated, stop included),
        reference_tokens (what the reference takes, stop included: `reference_tokens`).
    """
    prompts, skipped = split_prompts(records, chat)
    if skipped:
        logger.warning("%d of %d rows are not generated for: %s", len(skipped), len(records),
                       "; ".join(f"{s['id']} ({s['reason']})" for s in skipped[:5]))
    replies = complete(model, chat, [p["messages"] for p in prompts], max_new_tokens, batch_size,
                       tools=[p["tools"] for p in prompts])
    return [
        {"id": p["id"], "category": p["category"], "prompt": r["prompt"], "reference": p["reference"],
         "prediction": r["text"], "stopped": r["stopped"], "new_tokens": r["new_tokens"],
         "reference_tokens": p["reference_tokens"]}
        for p, r in zip(prompts, replies, strict=True)
    ]


@torch.inference_mode()
def complete(
    model: Any, chat: ChatFormat, conversations: list[list[Message]], max_new_tokens: int,
    batch_size: int = 8, sampling: dict[str, float] | None = None, progress: bool = True,
    streamer: Any = None, tools: list[Tools] | None = None, stopping_criteria: Any = None,
) -> list[dict[str, Any]]:
    """Replies to conversations (each ends where the assistant speaks next), in input order.

    Evaluation, the registry's pyfunc model and serving all generate through this function, so they
    cannot disagree on template, stop tokens or decoding.

    Args:
        sampling: None (greedy: evaluation and parity) or {"temperature": t > 0, "top_p": p} to sample
            (a server request that asks for it).
        progress: draw a progress bar on a terminal (off in the server).
        streamer: a transformers streamer that receives the new token ids as they are generated (one
            conversation only: the server's streamed responses).
        tools: each conversation's tools (OpenAI form) or None.
        stopping_criteria: extra transformers stopping criteria (the server's: the client hung up); a
            reply they end is returned as generated so far (`stopped` False).

    Returns:
        One dict per conversation: prompt (rendered text), text (decoded without special tokens), raw
        (decoded with them, for tool-call parsing), stopped (a stop token was reached), new_tokens
        (generated, the stop token included).

    Raises:
        RenderError: a conversation the template cannot render (`ChatFormat.check`).
    """
    if streamer is not None and len(conversations) != 1:
        raise ValueError("a streamer follows exactly one conversation")
    tokenizer = chat.tokenizer
    stop_ids = chat.stop_ids
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    each_tools = tools or [None] * len(conversations)
    rendered = [chat.prompt(m, t) for m, t in zip(conversations, each_tools, strict=True)]
    texts = [t for t, _ in rendered]
    ids = [i for _, i in rendered]
    # Similar lengths share a batch (little padding); ties keep input order, so runs are repeatable.
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    device = device_of(model)
    out: list[dict[str, Any] | None] = [None] * len(ids)
    groups = batches(order, batch_size)
    if progress:
        groups = track(groups, "generating", total=len(groups))
    decoding: dict[str, Any] = {"do_sample": False}
    if sampling and sampling.get("temperature"):
        decoding = {"do_sample": True, "temperature": float(sampling["temperature"]),
                    "top_p": float(sampling.get("top_p") or 1.0), "top_k": 0}
    for batch in groups:
        enc = _left_pad([ids[i] for i in batch], pad_id, device)
        seqs = model.generate(
            **enc, max_new_tokens=max_new_tokens, num_beams=1, repetition_penalty=1.0, eos_token_id=stop_ids,
            pad_token_id=pad_id, use_cache=True, streamer=streamer, stopping_criteria=stopping_criteria,
            **decoding,
        )
        width = enc["input_ids"].shape[1]
        for row, i in enumerate(batch):
            new = seqs[row, width:].tolist()
            end = next((k for k, t in enumerate(new) if t in stop_ids), None)
            stopped = end is not None
            kept = new[:end] if stopped else new
            out[i] = {
                "prompt": texts[i],
                "text": tokenizer.decode(kept, skip_special_tokens=True),
                "raw": tokenizer.decode(kept, skip_special_tokens=False),
                "stopped": stopped,
                "new_tokens": end + 1 if stopped else len(new),
            }
    return [r for r in out if r is not None]
