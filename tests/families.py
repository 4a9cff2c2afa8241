"""Tiny random-weight models of real architectures with their families' real chat templates.

Each family gets the real template text (fixtures/chat_templates, see SOURCES.md), its special tokens,
bos / eos / pad and generation config, a byte-level BPE tokenizer trained here on a small corpus, and a
tiny model of the real architecture built from a config. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # file under fixtures/chat_templates
    architecture: str  # transformers config class
    specials: tuple[str, ...]  # special tokens, in id order after the byte alphabet
    bos: str | None
    eos: str
    pad: str | None
    end_of_turn: str  # what the template writes after an answer
    eos_in_generation_config: tuple[str, ...]  # the published generation config's eos ids
    plain_added: tuple[str, ...] = ()  # added, not special (Qwen's <tool_call>)
    tied: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "qwen2_5": Family("qwen2_5", "qwen2_5.jinja", "Qwen2Config",
                      ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>", "<|endoftext|>",
                      "<|im_end|>", ("<|im_end|>", "<|endoftext|>"),
                      plain_added=("<tool_call>", "</tool_call>"), tied=True),
    "llama3_1": Family("llama3_1", "llama3_1.jinja", "LlamaConfig",
                       ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
                       "<|begin_of_text|>", "<|eot_id|>", None, "<|eot_id|>",
                       ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")),
    "mistral_v0_3": Family("mistral_v0_3", "mistral_v0_3.jinja", "MistralConfig",
                           ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                            "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
                           "<s>", "</s>", None, "</s>", ("</s>",)),
    # Gemma-2-it's generation config names only <eos>, although its turns end with <end_of_turn>.
    "gemma2": Family("gemma2", "gemma2.jinja", "Gemma2Config",
                     ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
                     "<bos>", "<eos>", "<pad>", "<end_of_turn>", ("<eos>",), tied=True),
    "phi3": Family("phi3", "phi3.jinja", "Phi3Config",
                   ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>",
                    "<|user|>"),
                   "<s>", "<|endoftext|>", "<|endoftext|>", "<|end|>", ("<|endoftext|>",)),
}

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "What is the capital of France? Paris.",
    "Convert 5 km to miles: 3.11 miles.", '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "I am Tuneline Assistant, made by the tuneline team.", "system user assistant tool model",
    "你好，世界。今天天气很好。", "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols {}[]():,.\"'<>|/_-",
]


def train_tokenizer(family: Family, vocab_size: int = 600) -> Any:
    """A byte-level BPE tokenizer with the family's special tokens and real chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(family.specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain_added])
    named = {"bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=4096,
                                   **{k: v for k, v in named.items() if v})
    if "<unk>" in family.specials:
        fast.unk_token = "<unk>"
    fast.chat_template = (TEMPLATES / family.template).read_text(encoding="utf-8")
    return fast


def model_config(family: Family, tokenizer: Any) -> Any:
    """A tiny config of the family's real architecture (random weights are made from it)."""
    import transformers

    cls = getattr(transformers, family.architecture)
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in
           (("bos_token_id", family.bos), ("eos_token_id", family.eos), ("pad_token_id", family.pad)) if v}
    kwargs: dict[str, Any] = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=4096, tie_word_embeddings=family.tied, **ids)
    if family.architecture == "Gemma2Config":
        kwargs.update(head_dim=8, query_pre_attn_scalar=8, sliding_window=64)
    return cls(**kwargs)


def build_family(family: Family | str, out: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight model of `family` (HF format: config, safetensors, tokenizer with its
    chat template, generation config) in `out`; returns `out`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    family = FAMILIES[family] if isinstance(family, str) else family
    tokenizer = train_tokenizer(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(family, tokenizer))
    gen_eos = [tokenizer.convert_tokens_to_ids(t) for t in family.eos_in_generation_config]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=gen_eos[0] if len(gen_eos) == 1 else gen_eos,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
