"""Generate with a model variant and measure its teacher-forced loss on canonical records.

A variant is the base model alone or the base plus a LoRA adapter (peft). Every variant is measured
the same way on the same rows: the prompt is the conversation before the last assistant turn, rendered
with the chat template's generation prompt; decoding is greedy (deterministic) until EOS or
`max_new_tokens`; the loss is the mean over every assistant token (the same assistant-only labels as
training), weighted by tokens across the whole set.

Batches are left-padded so every prompt ends where generation starts; rows are grouped by prompt
length first (less padding) and returned in input order, so batching changes no result.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from tuneline.evaluate.metrics import perplexity
from tuneline.progress import track
from tuneline.train.packing import collate_padded
from tuneline.train.tokenize import IGNORE_INDEX, encode_records, messages_of

logger = logging.getLogger(__name__)

Prompt = dict[str, Any]  # {"id", "category", "messages", "reference"}


def default_device() -> str:
    """The device to evaluate on: cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # bf16 where the GPU has it (as training used); fp32 on CPU, where half precision is slow.
        on_gpu = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(names)} or 'auto'")
    return names[dtype]


def load_tokenizer(source: str | Path, trust_remote_code: bool = False) -> Any:
    """A tokenizer set up for generation: padding on the left (prompts must end where generation
    starts), and the EOS as pad token when it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_variant(
    base_path: str | Path,
    adapter_path: str | Path | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a model variant for evaluation: the base alone, or the base with a LoRA adapter on top.

    The tokenizer (so the chat template and EOS) comes from the adapter directory when one is given:
    it is exactly what training used. It is set to pad on the left (prompts must end where
    generation starts) and gets the EOS as pad token when it has none.

    Args:
        base_path: the base model (Hugging Face id or local directory; safetensors only).
        adapter_path: a peft adapter directory (adapter_config.json + weights + tokenizer), or None.
        dtype: "auto" (bf16 on a bf16-capable GPU, else fp32), a name like "bf16", or a torch dtype.
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        trust_remote_code: run code shipped with the checkpoint.

    Returns:
        (model in eval mode with the KV cache on, tokenizer).
    """
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    tok_source = base_path
    if adapter_path is not None:
        if (Path(adapter_path) / "tokenizer_config.json").is_file():
            tok_source = adapter_path
        else:
            logger.warning("%s has no tokenizer; using the base model's", adapter_path)
    tokenizer = load_tokenizer(tok_source, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        base_path,
        dtype=_resolve_dtype(dtype, device),
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    model.config.use_cache = True  # training turns it off; generation needs it for speed
    model.to(device)
    model.eval()
    return model, tokenizer


def prompts_and_references(record: dict[str, Any]) -> tuple[list[dict[str, str]], str] | None:
    """(prompt messages, reference) of one record, or None when it has no assistant turn.

    The prompt is every message before the LAST assistant turn; that turn's content is the reference.
    Messages after it (e.g. a trailing user turn) are not part of the task and are ignored.
    """
    messages = messages_of(record)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    return messages[:last], messages[last]["content"]


def split_prompts(records: list[dict[str, Any]]) -> tuple[list[Prompt], list[str]]:
    """Prompts for the records that have an assistant turn, and the ids of those that do not."""
    prompts: list[Prompt] = []
    skipped: list[str] = []
    for record in records:
        pair = prompts_and_references(record)
        if pair is None:
            skipped.append(str(record.get("id")))
            continue
        prompts.append(
            {
                "id": record.get("id"),
                "category": record.get("category"),
                "messages": pair[0],
                "reference": pair[1],
            }
        )
    return prompts, skipped


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a reply: the tokenizer's EOS plus the generation config's (sorted)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if not ids:
        raise ValueError("the tokenizer and generation config define no EOS token; generation cannot stop")
    return sorted(ids)


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
    }


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def generate(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], max_new_tokens: int, batch_size: int = 8
) -> list[dict[str, Any]]:
    """Greedy replies to the prompts of `records`, in input order.

    Records without an assistant turn are skipped and logged (`split_prompts` lists them, to count).

    Args:
        model: a causal LM (or peft model) from `load_variant`.
        tokenizer: its tokenizer, with a chat template.
        records: canonical records.
        max_new_tokens: generation budget per row; a row that spends it without EOS did not stop.
        batch_size: prompts per `generate` call.

    Returns:
        One dict per prompt: id, category, prompt (rendered text), reference, prediction (decoded
        without special tokens), stopped (EOS reached), new_tokens (generated, EOS included).
    """
    prompts, skipped = split_prompts(records)
    if skipped:
        logger.warning(
            "%d of %d rows have no assistant turn and are not generated for: %s",
            len(skipped),
            len(records),
            ", ".join(skipped[:5]),
        )
    replies = complete(model, tokenizer, [p["messages"] for p in prompts], max_new_tokens, batch_size)
    return [
        {"id": p["id"], "category": p["category"], "prompt": r["prompt"], "reference": p["reference"],
         "prediction": r["text"], "stopped": r["stopped"], "new_tokens": r["new_tokens"]}
        for p, r in zip(prompts, replies, strict=True)
    ]


@torch.inference_mode()
def complete(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int,
    batch_size: int = 8, sampling: dict[str, float] | None = None, progress: bool = True,
    streamer: Any = None, stopping_criteria: Any = None,
) -> list[dict[str, Any]]:
    """Greedy replies to conversations (each ends where the assistant speaks next), in input order.

    Rendered with the chat template and a generation prompt; batches of similar length, left padded;
    a reply ends at any EOS id (`eos_ids`). Evaluation, the registry's pyfunc model and serving all
    generate through this function, so they cannot disagree on template, EOS or decoding.

    Args:
        sampling: None (greedy: evaluation and parity) or {"temperature": t > 0, "top_p": p} to sample
            (a server request that asks for it).
        progress: draw a progress bar on a terminal (off in the server).
        streamer: a transformers streamer that receives the new token ids as they are generated (one
            conversation only: the server's streamed responses).
        stopping_criteria: extra transformers stopping criteria (the server's: the client hung up); a
            reply they end is returned as generated so far (`stopped` False).

    Returns:
        One dict per conversation: prompt (rendered text), text (decoded without special tokens),
        stopped (an EOS was reached), new_tokens (generated, EOS included).
    """
    if streamer is not None and len(conversations) != 1:
        raise ValueError("a streamer follows exactly one conversation")
    stop_ids = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    def render(messages: list[dict[str, str]], tokenize: bool) -> Any:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize,
                                             return_dict=tokenize)

    texts = [render(m, False) for m in conversations]
    ids = [list(render(m, True)["input_ids"]) for m in conversations]
    # Similar lengths share a batch (little padding); ties keep input order, so runs are repeatable.
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    device = _device_of(model)
    out: list[dict[str, Any] | None] = [None] * len(ids)
    batches = _batches(order, batch_size)
    if progress:
        batches = track(batches, "generating", total=len(batches))
    decoding: dict[str, Any] = {"do_sample": False}
    if sampling and sampling.get("temperature"):
        decoding = {"do_sample": True, "temperature": float(sampling["temperature"]),
                    "top_p": float(sampling.get("top_p") or 1.0), "top_k": 0}
    for batch in batches:
        enc = _left_pad([ids[i] for i in batch], pad_id, device)
        seqs = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            use_cache=True,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
            **decoding,
        )
        width = enc["input_ids"].shape[1]
        for row, i in enumerate(batch):
            new = seqs[row, width:].tolist()
            end = next((k for k, t in enumerate(new) if t in stop_ids), None)
            stopped = end is not None
            out[i] = {
                "prompt": texts[i],
                "text": tokenizer.decode(new[:end] if stopped else new, skip_special_tokens=True),
                "stopped": stopped,
                "new_tokens": end + 1 if stopped else len(new),
            }
    return [r for r in out if r is not None]


@torch.inference_mode()
def loss_and_perplexity(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], max_length: int, batch_size: int = 8
) -> dict[str, Any]:
    """Teacher-forced loss over assistant tokens, weighted by tokens over the whole set.

    Rows are rendered and labelled exactly as for training (`encode_records`: assistant content and
    its EOS are targets, rows longer than `max_length` are cut at the end). The loss is the sum of
    every target token's cross-entropy divided by the number of target tokens, so a batch of short
    replies weighs no more than its tokens.

    Returns:
        {"loss", "perplexity" (exp(loss)), "rows" (scored), "tokens" (target tokens),
        "truncated_rows", "skipped" (ids with no target token, e.g. no assistant turn),
        "per_row": [{"id", "loss" (mean over the row's targets), "tokens"}] in input order}.
        loss and perplexity are None when no row has a target.
    """
    encoded = encode_records(tokenizer, records, max_length)
    rows = encoded.rows
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]["input_ids"]), i))
    device = _device_of(model)
    sums = [0.0] * len(rows)
    counts = [0] * len(rows)
    for batch in track(_batches(order, batch_size), "loss", total=math.ceil(len(order) / batch_size)):
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
        "per_row": [
            {"id": r["row_id"], "loss": s / c, "tokens": c}
            for r, s, c in zip(rows, sums, counts, strict=True)
        ],
    }
