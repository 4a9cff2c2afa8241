"""`build_base` section: the built-in demo base model the `build_base` stage pre-trains (tests and the
demo; a tiny Llama-architecture model, CPU-friendly). Before this section existed it was `model.demo`,
which still loads (renamed, with a deprecation warning: `loader.RENAMED_KEYS`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from tuneline.config.base import Section


class BuildBaseParams(Section):
    output_dir: Path = Field(
        Path("models/base"), description="Where build_base saves it (relative to the workspace root)."
    )
    corpus: Path | None = Field(
        None,
        description="Pre-training corpus: a JSONL file of {\"text\": ...} documents (or a folder of them, "
        "read sorted). The weights learn from it alone, so the base has never seen the fine-tuning data; "
        "the tokenizer learns its vocabulary from it and the train split. None = pre-train on the train "
        "split rendered through the chat template (a base that already knows the data).",
    )
    vocab_size: int = Field(
        2048, ge=300,
        description="BPE vocabulary trained on the demo corpus (256 bytes + special tokens + merges; "
        "a small corpus may yield fewer).",
    )
    hidden_size: int = Field(64, ge=8, description="Width of the tiny Llama-architecture model.")
    num_layers: int = Field(2, ge=1, description="Decoder layers of the tiny model.")
    num_heads: int = Field(4, ge=1, description="Attention heads (must divide hidden_size).")
    max_position_embeddings: int = Field(
        2048, ge=64, description="Longest sequence the model accepts (RoPE; later stages may train up to it)."
    )
    pretrain_steps: int = Field(300, ge=0, description="Full pre-training steps (LoRA needs a learnt base).")
    seq_len: int = Field(
        128, ge=8, description="Tokens per packed pre-training block (the corpus is one stream, cut up)."
    )
    batch_size: int = Field(8, ge=1, description="Blocks per pre-training step.")
    lr: float = Field(3e-3, gt=0, le=1, description="AdamW learning rate of the pre-training (constant).")

    @model_validator(mode="after")
    def _heads_fit(self) -> BuildBaseParams:
        # RoPE rotates pairs of dimensions, so each head needs an even width.
        head_dim, rest = divmod(self.hidden_size, self.num_heads)
        if rest or head_dim % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be num_heads ({self.num_heads}) x an even head width"
            )
        if self.seq_len > self.max_position_embeddings:
            raise ValueError("seq_len must not exceed max_position_embeddings")
        return self
