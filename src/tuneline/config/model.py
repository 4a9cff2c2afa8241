"""`model` section: the base model to fine-tune (and the built-in demo base)."""

from pathlib import Path

from pydantic import Field

from tuneline.config.base import Section


class DemoBaseParams(Section):
    output_dir: Path = Field(Path("models/base"), description="Where build_base saves it.")
    vocab_size: int = Field(2048, ge=256, description="BPE vocabulary trained on the demo corpus.")
    hidden_size: int = Field(64, ge=8, description="Width of the tiny Llama-architecture model.")
    num_layers: int = Field(2, ge=1, description="Decoder layers of the tiny model.")
    num_heads: int = Field(4, ge=1, description="Attention heads of the tiny model.")
    pretrain_steps: int = Field(300, ge=0, description="Full pre-training steps (LoRA needs a learnt base).")


class ModelParams(Section):
    name_or_path: str = Field(
        "models/base",
        description="Hugging Face causal-LM id or local directory (from_pretrained, safetensors only); "
        "the default is the demo base built by `tuneline build_base`.",
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with a checkpoint.")
    demo: DemoBaseParams = Field(default_factory=DemoBaseParams, description="The built-in demo base model.")
