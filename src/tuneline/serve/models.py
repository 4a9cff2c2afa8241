"""What the server serves: one base model, the champion's and the challenger's LoRA adapters on it.

Both come from the MLflow registry by alias. Each version's files are downloaded once (the pyfunc's
`artifacts/adapter`, and `artifacts/base` or the base it refers to, checked: `registry.base_ref`); the
base is loaded once and both adapters are attached to it with peft (`load_adapter`), so a second
variant costs the adapter's few MB, not a second model. A challenger trained on a different base, or
whose tokenizer renders conversations differently, cannot share the base: loading refuses with the
reason.

Generation goes through `tuneline.evaluate.generate.complete`, the function evaluation and the
registry's pyfunc use, so the server answers with the same chat template, EOS and greedy decoding.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneline.errors import TunelineError
from tuneline.lm.toolcalls import parse_tool_calls
from tuneline.promote.status import passed
from tuneline.registry.base_ref import BaseModelError, registered_base
from tuneline.registry.registry import aliases_of, using_tracking_uri, version_info
from tuneline.serve.streaming import cancel_criteria

logger = logging.getLogger(__name__)

VARIANTS = ("champion", "challenger")
Conversation = tuple[list[dict[str, Any]], list[dict[str, Any]] | None]  # (template messages, tools)
_HASH_FULL_BELOW = 256 * 2**20  # weight files above this are identified by name and size only


class ServeError(TunelineError):
    """The server cannot start: no champion, unreadable version, adapters that cannot share a base."""


@dataclass(frozen=True)
class VersionFiles:
    """A registered version's files on this host."""

    variant: str
    version: str
    base_dir: Path
    adapter_dir: Path


def download_version(uri: str, model_name: str, version: str, variant: str, into: Path) -> VersionFiles:
    """Download a version's artifacts and find its base and adapter directories.

    Raises:
        ServeError: the version's MLmodel has no adapter, or its base is missing on this host or is not
            the base it was registered with (content hash).
    """
    import mlflow  # lazy: mlflow ~10 s; `tuneline serve --help` and the routing tests do without


    local = into / f"v{version}"
    if not (local / "MLmodel").is_file():  # a version's files never change: download once
        with using_tracking_uri(uri):
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model_name}/{version}", dst_path=str(local)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    artifacts = flavor.get("artifacts") or {}
    if "adapter" not in artifacts:
        raise ServeError(f"{model_name} version {version}: no `adapter` artifact; not a tuneline model")
    adapter = local / artifacts["adapter"]["path"]
    copied = local / artifacts["base"]["path"] if "base" in artifacts else None
    try:
        base = Path(registered_base(flavor.get("config") or {}, copied))
    except BaseModelError as exc:
        raise ServeError(f"{model_name} version {version}: {exc}") from None
    return VersionFiles(variant, version, base, adapter)


def base_identity(base_dir: Path) -> str:
    """A fingerprint of a base model directory: config, and the weights (hashed when small, else sized).

    Two versions whose bases have the same fingerprint can share one loaded base.
    """
    digest = hashlib.sha256()
    for path in sorted(base_dir.iterdir()):
        if path.name == "config.json":
            digest.update(path.read_bytes())
        elif path.suffix in (".safetensors", ".bin"):
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            if size < _HASH_FULL_BELOW:
                digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def prompt_length(chat: Any, conversation: Conversation) -> int:
    """Tokens of the rendered prompt (chat template with the generation prompt and the tools)."""
    return len(chat.prompt(*conversation)[1])


def reply_tool_calls(chat: Any, raw: str, seed: str, names: set[str]) -> tuple[str, list[dict[str, Any]]]:
    """(content, OpenAI tool_calls) of a reply, read in the template's own tool-call format; only calls
    of the request's tools (`names`) count."""

    return parse_tool_calls(chat.tool_format, raw, seed, names)


def chat_conversation(chat: Any, record: dict[str, Any]) -> Conversation:
    """A request (as a canonical record) as the template renders it, checked like a training row.

    Raises:
        RenderError: the template cannot render it (the server answers 400 with the reason).
    """
    messages, tools = chat.conversation(record)
    chat.prompt(messages, tools)  # renders it: a template that raises (roles, tools) is refused here
    return messages, tools


def _template_of(tokenizer: Any) -> tuple[Any, Any]:
    return tokenizer.chat_template, tokenizer.eos_token


class Rendering:
    """What the app asks of the served model's chat format, whatever generates (local model or vLLM)."""

    chat: Any

    def prompt_tokens(self, conversation: Conversation) -> int:
        return prompt_length(self.chat, conversation)

    def conversation(self, record: dict[str, Any]) -> Conversation:
        return chat_conversation(self.chat, record)

    def tool_calls(self, raw: str, seed: str, names: set[str]) -> tuple[str, list[dict[str, Any]]]:
        return reply_tool_calls(self.chat, raw, seed, names)


class ServedModels(Rendering):
    """The loaded base with one peft adapter per served version, and which version each variant serves.

    Adapters are named after their version (`v3`), so a promotion (the challenger's version becomes the
    champion) swaps a pointer instead of reloading weights. `apply` must run on the generation thread
    (`Batcher.call`): peft adds layers to the model while loading an adapter.
    """

    def __init__(self, model: Any, chat: Any, model_name: str, base: VersionFiles) -> None:
        self.model = model
        self.chat = chat
        self.tokenizer = chat.tokenizer
        self.model_name = model_name
        self.versions: dict[str, str] = {}  # variant -> registry version; replaced whole, never mutated
        self._base = base
        self._base_id = base_identity(base.base_dir)
        self._active: str | None = None

    @property
    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v in self.versions]

    def apply(self, files: list[VersionFiles]) -> dict[str, str]:
        """Serve exactly these versions: load adapters not loaded yet, drop those no longer served.

        Raises:
            ServeError: a version cannot share the loaded base (nothing changes then).
        """
        loaded = set(getattr(self.model, "peft_config", {}))
        for f in files:
            if f"v{f.version}" in loaded:
                continue
            problem = _cannot_share(self._base, self._base_id, f, self.chat)
            if problem:
                raise ServeError(
                    f"{self.model_name}: {f.variant} version {f.version} cannot be served beside version "
                    f"{self._base.version}'s base: {problem}. Serve the champion alone (--champion-only), "
                    "restart the server, or retrain on the same base."
                )
        for f in files:
            name = f"v{f.version}"
            if name not in loaded:
                self.model.load_adapter(str(f.adapter_dir), adapter_name=name, is_trainable=False)
                loaded.add(name)
        self.versions = {f.variant: f.version for f in files}
        keep = {f"v{v}" for v in self.versions.values()}
        if loaded - keep:
            # Activate a kept adapter first: peft warns when the active one is deleted.
            self._active = f"v{self.versions['champion']}"
            self.model.set_adapter(self._active)
        for name in sorted(loaded - keep):
            self.model.delete_adapter(name)
        return self.versions

    def answering(self, variant: str, version: str | None) -> tuple[str, str]:
        """(variant, version) that answers: the routed version while its adapter is loaded, else (the
        aliases moved since routing) the variant's current version, else the champion's."""
        if version is not None and f"v{version}" in getattr(self.model, "peft_config", {}):
            return variant, version
        current = self.versions
        if variant in current:
            return variant, current[variant]
        return "champion", current["champion"]

    def generate(self, variant: str, conversations: list[Conversation], max_new_tokens: int,
                 sampling: dict[str, float] | None = None,
                 version: str | None = None, streamer: Any = None) -> list[dict[str, Any]]:
        """Replies of one variant to a batch of conversations (call from one thread at a time).

        Each reply dict also names the `variant` and `version` that answered (see `answering`).
        """
        from tuneline.lm.generate import complete  # lazy: torch ~9 s; vLLM serving skips it

        variant, version = self.answering(variant, version)
        name = f"v{version}"
        if name != self._active:
            self.model.set_adapter(name)
            self._active = name
        cancelled = getattr(streamer, "cancelled", None)  # a streamed request whose client may hang up
        replies = complete(self.model, self.chat, [c[0] for c in conversations], max_new_tokens,
                           batch_size=max(1, len(conversations)), sampling=sampling, progress=False,
                           streamer=streamer, tools=[c[1] for c in conversations],
                           stopping_criteria=cancel_criteria(cancelled) if cancelled is not None else None)
        return [{**r, "variant": variant, "version": version} for r in replies]


def challenger_problem(uri: str, model_name: str, version: str) -> str | None:
    """Why a challenger version must not be canaried (it did not pass the gate), or None when it may."""

    gate = version_info(uri, model_name, version)["tags"].get("gate.status")
    if passed(gate):
        return None
    return f"version {version} has gate.status {gate or 'unset'}; only a version that passed the gate serves"


def resolve_versions(
    uri: str, model_name: str, aliases: dict[str, str], *, with_challenger: bool = True,
    cache_dir: Path | None = None,
) -> list[VersionFiles]:
    """Download the versions behind the champion (required) and challenger (optional) aliases.

    Raises:
        ServeError: there is no champion.
    """

    current = aliases_of(uri, model_name)
    champion = current.get(aliases["champion"])
    if champion is None:
        raise ServeError(
            f"{model_name} has no {aliases['champion']!r} alias in {uri}: nothing to serve "
            "(run the pipeline, e.g. `make run`, or `tuneline promote`)"
        )
    into = cache_dir or Path(tempfile.mkdtemp(prefix="tuneline-serve-"))
    files = [download_version(uri, model_name, champion, "champion", into)]
    challenger = current.get(aliases["challenger"]) if with_challenger else None
    if challenger is not None and challenger != champion:
        problem = challenger_problem(uri, model_name, challenger)
        if problem:
            logger.warning("serve: not serving the challenger: %s", problem)
        else:
            files.append(download_version(uri, model_name, challenger, "challenger", into))
    return files


def load_served_models(
    files: list[VersionFiles], model_name: str, *, device: str | None = None, dtype: str = "auto"
) -> ServedModels:
    """Load the base once and attach each version's adapter (named `v<version>`).

    Args:
        files: from `resolve_versions` (champion first).
        model_name: registered model name.
        device: "cpu", "cuda", ...; None: CUDA when available.
        dtype: "auto" (bf16 on a bf16 GPU, else fp32) or a dtype name.

    Raises:
        ServeError: a challenger on a different base or with a different chat template.
    """
    from peft import PeftModel  # lazy: peft ~25 s; only local adapter variants need it

    from tuneline.lm.load import load_variant  # lazy: torch ~9 s; vLLM serving skips it

    head = files[0]
    # The tokenizer (chat template, rendering options, stop set) is the one training saved with the adapter.
    model, chat = load_variant(head.base_dir, None, dtype=dtype, device=device,
                               tokenizer_from=head.adapter_dir)
    model = PeftModel.from_pretrained(model, str(head.adapter_dir), adapter_name=f"v{head.version}",
                                      is_trainable=False)
    model.eval()
    served = ServedModels(model, chat, model_name, head)
    versions = served.apply(files)
    logger.info("serve: %s %s on one base (%s)", model_name,
                ", ".join(f"{k} v{v}" for k, v in versions.items()), next(model.parameters()).device)
    return served


def _adapter_tokenizer(adapter_dir: Path, fallback: Any) -> Any:
    from tuneline.lm.load import load_tokenizer  # lazy: torch ~9 s (lm.load)

    if not (adapter_dir / "tokenizer_config.json").is_file():
        return fallback
    tokenizer = load_tokenizer(adapter_dir)
    if tokenizer.chat_template is None:
        raise ServeError(f"{adapter_dir}: the tokenizer has no chat template; cannot render conversations")
    return tokenizer


def _cannot_share(base: VersionFiles, base_id: str, other: VersionFiles, chat: Any) -> str | None:
    """Why `other` cannot be served on the loaded base with the loaded chat format, or None."""
    from tuneline.lm.load import saved_chat_options  # lazy: torch ~9 s (lm.load)

    if other.base_dir != base.base_dir and base_identity(other.base_dir) != base_id:
        return "it was trained on a different base model"
    theirs = _adapter_tokenizer(other.adapter_dir, chat.tokenizer)
    if _template_of(theirs) != _template_of(chat.tokenizer):
        return "its tokenizer has a different chat template or EOS"
    # One ChatFormat renders for every served version: the same request must render as each was trained.
    if bool(saved_chat_options(other.adapter_dir).get("merge_system", False)) != chat.merge_system:
        return "it was trained with another model.merge_system (a request would not render as it was trained)"
    return None
