"""Load a tokenizer and a model variant (the base alone or the base plus a LoRA adapter)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tuneline.lm.chat import ChatFormat

logger = logging.getLogger(__name__)

CHAT_FORMAT_FILE = "chat_format.json"  # saved with an adapter: how training rendered conversations


def default_device() -> str:
    """The device to evaluate on: cuda when a GPU is visible, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """A torch dtype from a name or "auto" (bf16 on a bf16-capable GPU, as training used; fp32 on CPU)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        on_gpu = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def load_tokenizer(source: str | Path, trust_remote_code: bool = False) -> Any:
    """A tokenizer set up for generation: padding on the left (prompts must end where generation
    starts), and the EOS as pad token when it has none."""
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def saved_chat_options(adapter_dir: str | Path | None) -> dict[str, Any]:
    """The rendering options training saved with an adapter (`chat_format.json`), or {}."""
    if adapter_dir is None:
        return {}
    path = Path(adapter_dir) / CHAT_FORMAT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_variant(
    base_path: str | Path,
    adapter_path: str | Path | None = None,
    dtype: str | torch.dtype | None = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    merge_system: bool | None = None,
    tokenizer_from: str | Path | None = None,
) -> tuple[Any, ChatFormat]:
    """Load a model variant for evaluation or serving: the base alone, or the base with a LoRA adapter.

    The tokenizer (so the chat template) comes from the adapter directory when one is given: it is
    exactly what training used, with the rendering options it saved (`chat_format.json`).

    Args:
        base_path: the base model (Hugging Face id or local directory; safetensors only).
        adapter_path: a peft adapter directory (adapter_config.json + weights + tokenizer), or None.
        dtype: "auto" (bf16 on a bf16-capable GPU, else fp32), a name like "bf16", or a torch dtype.
        device: "cpu", "cuda", "cuda:1", ...; None picks CUDA when available.
        trust_remote_code: run code shipped with the checkpoint.
        merge_system: override of `model.merge_system`; None takes the adapter's saved option.
        tokenizer_from: take the tokenizer and rendering options from this adapter directory instead
            (evaluate asks the base exactly what it asks the candidate).

    Returns:
        (model in eval mode with the KV cache on, its ChatFormat).
    """
    device = device or default_device()
    tok_source: str | Path = base_path
    rendering = tokenizer_from if tokenizer_from is not None else adapter_path
    if rendering is not None:
        if (Path(rendering) / "tokenizer_config.json").is_file():
            tok_source = rendering
        else:
            logger.warning("%s has no tokenizer; using the base model's", rendering)
    tokenizer = load_tokenizer(tok_source, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=resolve_dtype(dtype, device), use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    if adapter_path is not None:
        from peft import PeftModel  # lazy: peft ~25 s (its own import); only an adapter variant needs it

        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=False)
    model.config.use_cache = True  # training turns it off; generation needs it for speed
    model.to(device)
    model.eval()
    if merge_system is None:
        merge_system = bool(saved_chat_options(rendering).get("merge_system", False))
    return model, ChatFormat(tokenizer, getattr(model, "generation_config", None), merge_system)


def save_chat_format(directory: Path, chat: ChatFormat, template_source: str) -> None:
    """Save with a trained model what serving must reproduce: the tokenizer with the chat template that
    training rendered with, the rendering options (`chat_format.json`) and a `generation_config.json`
    whose EOS ids are the stop set (vLLM and `generate` stop where training taught the model to)."""
    tokenizer = chat.tokenizer
    tokenizer.save_pretrained(directory)
    options = {"chat_template": template_source, "merge_system": chat.merge_system, "stop_ids": chat.stop_ids}
    (directory / CHAT_FORMAT_FILE).write_text(json.dumps(options, indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")
    config = GenerationConfig(eos_token_id=chat.stop_ids, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id)
    config.save_pretrained(directory)


def base_generation_config(model_path: str, trust_remote_code: bool = False) -> Any:
    """The base model's generation config, or None when it has none."""
    try:
        return GenerationConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
