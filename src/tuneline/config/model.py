"""`model` section: the base model to fine-tune."""

from __future__ import annotations

from pydantic import Field

from tuneline.config.base import Section


class ModelParams(Section):
    name_or_path: str = Field(
        "models/base",
        description="Hugging Face causal-LM id or local directory (from_pretrained, safetensors only); "
        "the default is the demo base built by `tuneline build_base`.",
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with a checkpoint.")
    chat_template: str = Field(
        "auto",
        description="How conversations are rendered: `auto` (the tokenizer's own template), a path to a "
        ".jinja file (relative to the workspace root), or a bundled template name (`chatml`). Saved with "
        "the adapter, so evaluate and serve render exactly what training saw.",
    )
    merge_system: bool = Field(
        False,
        description="Put the system prompt at the head of the first user turn, for templates with no "
        "system role (Gemma) or that drop it from a finished conversation (Mistral v0.3). Off: such rows "
        "are rejected with the reason.",
    )
