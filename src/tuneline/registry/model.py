"""The registered model: base model + LoRA adapter + the adapter's chat template, as an MLflow pyfunc.

A registered version is self-describing: `AdapterModel.load_context` loads the base model (an artifact
copied into the version, or the directory / hub revision it refers to, checked by content hash; see
`model_artifacts` and `tuneline.registry.base_ref`), applies the adapter
with peft and renders every conversation through the tokenizer's chat template with
`add_generation_prompt=True`. `predict` returns greedy completions, so the same prompts give the same
replies in the evaluate stage, in the registry and in serving (the parity check of the promotion gate).

`load_adapter_model` and `generate_replies` are the single code path for both sides: the evaluate
stage's in-process generation and the pyfunc call them, so a parity mismatch means the packaging
changed the model, never that two generation loops disagree.

Generation is one conversation at a time (no padding): padded batches can flip a greedy token on a
near-tie, which would make a byte-exact parity check flaky.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from tuneline.lm.generate import complete
from tuneline.lm.load import load_variant
from tuneline.registry.base_ref import local_base_dir, reference_base, registered_base

DEFAULT_MAX_NEW_TOKENS = 128
# Packages a loaded version needs; pinned to the versions that logged it (`pip_requirements`).
RUNTIME_PACKAGES = ("mlflow", "torch", "transformers", "peft", "tokenizers", "safetensors", "jinja2")
ROLES = ("system", "user", "assistant", "tool")


def pip_requirements() -> list[str]:
    """`name==version` for each runtime package, from the installed versions.

    The local version label (`2.13.0+cpu`) is dropped: it names a wheel index, not an API, and a GPU
    host installs the same release from its own index.
    """
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def load_adapter_model(
    base_dir: str | Path, adapter_dir: str | Path, device: str | None = None, dtype: str | None = "auto"
) -> tuple[Any, Any]:
    """Base + LoRA adapter + the adapter's chat format, exactly as evaluation loads them
    (`tuneline.lm.load.load_variant`: not merged, bf16 on a bf16 GPU else fp32).

    Raises:
        RenderError: the tokenizer has no chat template.
    """
    return load_variant(base_dir, adapter_dir, dtype=dtype, device=device)


def generate_replies(
    model: Any, chat: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int
) -> list[dict[str, Any]]:
    """Greedy replies, one conversation at a time (no padding), through evaluation's `complete`.

    Each conversation is read like a served request (`ChatFormat.conversation`: the rendering options
    training saved, such as `merge_system`, apply).

    Returns:
        One dict per conversation: `text`, `new_tokens` (stop token included) and `stopped` (False when
        the reply used all `max_new_tokens`: the never-stop signal the gate limits).

    Raises:
        RenderError: a conversation the chat template cannot render (names the reason).
    """
    converted = [chat.conversation({"id": f"row{i}", "messages": c, "meta": {}})
                 for i, c in enumerate(conversations)]
    return complete(model, chat, [m for m, _ in converted], max_new_tokens, batch_size=1,
                    tools=[t for _, t in converted])


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    """One conversation as a list of {role, content} dicts (from lists, numpy arrays or JSON text)."""
    if isinstance(value, str):
        value = json.loads(value)
    if hasattr(value, "tolist"):  # a numpy array from a DataFrame cell
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of messages, got {type(value).__name__}")
    out = []
    for j, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where} message {j}: expected a dict with `role` and `content`")
        if message["role"] not in ROLES:
            raise ValueError(
                f"{where} message {j}: unknown role {message['role']!r}; expected one of {ROLES}"
            )
        out.append({"role": str(message["role"]), "content": str(message["content"])})
    return out


def parse_conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """The conversations in a pyfunc input.

    Accepted: a pandas DataFrame with a `messages` column; a list whose items are conversations (lists
    of messages) or dicts with a `messages` key; a dict with a `messages` key holding one conversation
    or a list of them.

    Raises:
        ValueError: the input has none of these shapes (names the offending row / message).
    """
    if isinstance(model_input, pd.DataFrame):
        if "messages" not in model_input.columns:
            raise ValueError(f"input DataFrame needs a `messages` column; got {list(model_input.columns)}")
        rows = list(model_input["messages"])
    elif isinstance(model_input, dict):
        if "messages" not in model_input:
            raise ValueError("input dict needs a `messages` key")
        value = model_input["messages"]
        value = value.tolist() if hasattr(value, "tolist") else list(value)
        first = value[0] if value else None
        # Items that are lists (or JSON text) are whole conversations; dicts are one conversation's messages.
        rows = value if isinstance(first, list | str) or hasattr(first, "tolist") else [value]
    elif isinstance(model_input, list):
        rows = [r["messages"] if isinstance(r, dict) and "messages" in r else r for r in model_input]
    else:
        raise ValueError(f"unsupported input type {type(model_input).__name__}: pass a DataFrame or a list")
    return [_messages(row, f"row {i}") for i, row in enumerate(rows)]


class AdapterModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: base model + LoRA adapter; predicts greedy completions of conversations.

    Artifacts: `adapter` (always) and `base` (when the base is copied into the version). The model
    config always holds the base's reference (`tuneline.registry.base_ref`): a directory and its
    content hash, or a hub id and revision; without a copy, loading resolves and checks it.
    """

    # MLflow wraps `predict` in type-hint based input validation and warns when there are no hints;
    # the conversations are free-form and validated by `parse_conversations`, so opt out (as MLflow's
    # own ChatModel does).
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Load base + adapter + tokenizer from the version's artifacts (or the referenced base).

        Raises:
            BaseModelError: no base recorded, or the referenced one is missing or changed.
        """
        config = context.model_config or {}
        base = registered_base(config, context.artifacts.get("base"))
        self.max_new_tokens = int(config.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        self.model, self.chat = load_adapter_model(
            base, context.artifacts["adapter"], config.get("device"), config.get("dtype", "auto")
        )

    # `model_input` is unannotated: MLflow reads a predict annotation as the model's input schema.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[str]:
        """Greedy completion of each conversation (see `parse_conversations` for the accepted inputs).

        Args:
            context: the MLflow context (unused; everything was loaded in `load_context`).
            model_input: conversations: a DataFrame with a `messages` column or a list.
            params: `max_new_tokens` (default: the value the version was logged with).

        Returns:
            One reply text per conversation, in input order.
        """
        max_new = int((params or {}).get("max_new_tokens") or self.max_new_tokens)
        replies = generate_replies(self.model, self.chat, parse_conversations(model_input), max_new)
        return [r["text"] for r in replies]


def model_artifacts(
    base: str | Path, adapter_dir: str | Path, copy_base: bool
) -> tuple[dict[str, str], dict[str, Any]]:
    """(artifacts, model_config) for logging an `AdapterModel`.

    Args:
        base: the base model: a local directory or a hub id (as `resolve_model_path` gives it).
        adapter_dir: the adapter directory.
        copy_base: also copy the base into the version (self-contained, for air-gapped serving). Either
            way the config records the base's reference (`base_ref.reference_base`: a directory with
            its content hash, or a hub id with its revision), so a multi-GB base is not stored again
            per version by default.

    Raises:
        BaseModelError: `copy_base` with a hub base that is neither cached nor downloadable.
    """
    ref = reference_base(base)
    artifacts = {"adapter": str(Path(adapter_dir).resolve())}
    if copy_base:
        artifacts["base"] = local_base_dir(ref)
    return artifacts, ref.to_config()
