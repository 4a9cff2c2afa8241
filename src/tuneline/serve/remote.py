"""GPU serving: vLLM holds the base and both LoRA adapters; tuneline's server routes in front of it.

`vllm_command` writes the vLLM command line for the registry's champion and challenger: the shared base,
`--enable-lora` with one `--lora-modules` entry per variant (named `champion` / `challenger`), and the
adapter's tokenizer (so vLLM renders the same chat template and stops at the same EOS as training).

`RemoteModels` has the interface of `ServedModels`, but generates by calling the backend's
OpenAI-compatible `/v1/chat/completions` with `model=<variant>`. Routing, API keys, limits and the
feedback store stay in tuneline's server, so the canary and the A/B report work the same on CPU and on a
GPU fleet. Any OpenAI-compatible backend that serves the adapters under those names works.
"""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tuneline.lm.chat import ChatFormat
from tuneline.lm.load import saved_chat_options
from tuneline.redact import redact
from tuneline.serve.models import (
    Conversation,
    Rendering,
    ServeError,
    VersionFiles,
    _adapter_tokenizer,
    base_identity,
)


def vllm_command(files: list[VersionFiles], port: int = 8001, dtype: str = "auto",
                 max_model_len: int | None = None) -> list[str]:
    """`vllm serve` arguments serving every variant of `files` as a LoRA module on their shared base.

    Raises:
        ServeError: the versions do not share one base directory content (see `base_identity`).
    """
    head = files[0]
    if any(base_identity(f.base_dir) != base_identity(head.base_dir) for f in files[1:]):
        raise ServeError("the champion and challenger were trained on different bases; vLLM cannot share one")
    rank = max(json.loads((f.adapter_dir / "adapter_config.json").read_text())["r"] for f in files)
    # The adapter directory holds the training tokenizer (chat template) and a generation_config.json
    # whose EOS ids are the stop set: vLLM renders and stops exactly as training taught the model.
    args = ["vllm", "serve", str(head.base_dir), "--port", str(port), "--dtype", dtype,
            "--tokenizer", str(head.adapter_dir), "--generation-config", str(head.adapter_dir),
            "--enable-lora", "--max-loras", str(len(files)),
            "--max-lora-rank", str(_vllm_rank(rank)), "--lora-modules"]
    args += [f"{f.variant}={f.adapter_dir}" for f in files]
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    return args


def _vllm_rank(rank: int) -> int:
    # vLLM accepts a fixed set of LoRA ranks; use the smallest that holds the adapters.
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    raise ServeError(f"LoRA rank {rank} is above what vLLM serves (512)")


def render_vllm_command(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


class RemoteModels(Rendering):
    """Variants served by an OpenAI-compatible backend (vLLM), adapters addressed by variant name."""

    def __init__(self, backend_url: str, versions: dict[str, str], model_name: str, adapter_dir: Path,
                 api_key: str | None = None, timeout_s: float = 300.0, concurrency: int = 32) -> None:
        self.backend_url = backend_url.rstrip("/")
        self.versions = versions
        self.model_name = model_name
        self.tokenizer = _adapter_tokenizer(adapter_dir, None)
        merge = bool(saved_chat_options(adapter_dir).get("merge_system", False))
        self.chat = ChatFormat(self.tokenizer, None, merge)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="tuneline-backend")

    @property
    def variants(self) -> list[str]:
        return [v for v in ("champion", "challenger") if v in self.versions]

    def _one(self, variant: str, conversation: Conversation, max_new_tokens: int,
             sampling: dict[str, float] | None) -> dict[str, Any]:
        messages, tools = conversation
        body: dict[str, Any] = {"model": variant, "messages": messages, "max_tokens": max_new_tokens,
                                "temperature": 0.0, "stop_token_ids": self.chat.stop_ids,
                                # special tokens kept: some families mark a tool call with one ([TOOL_CALLS])
                                "skip_special_tokens": False}
        if tools:
            body["tools"] = tools
        if sampling:
            body.update(temperature=sampling["temperature"], top_p=sampling.get("top_p", 1.0))
        response = self._http.post(f"{self.backend_url}/chat/completions", json=body)
        if response.status_code != 200:
            status, text = response.status_code, response.text[:300]
            raise ServeError(f"backend {redact(self.backend_url)} answered {status}: {redact(text)}")
        data = response.json()
        choice = data["choices"][0]
        raw = choice["message"]["content"] or ""
        return {"prompt": None, "text": self._plain(raw), "raw": raw,
                "stopped": choice.get("finish_reason") == "stop",
                "new_tokens": int(data.get("usage", {}).get("completion_tokens", 0))}

    def _plain(self, raw: str) -> str:
        """The reply without special tokens' text (what `skip_special_tokens` would have returned)."""
        for token in self.chat.special_texts:
            raw = raw.replace(token, "")
        return raw

    def generate(self, variant: str, conversations: list[Conversation], max_new_tokens: int,
                 sampling: dict[str, float] | None = None,
                 version: str | None = None, streamer: Any = None) -> list[dict[str, Any]]:
        """One backend call per conversation, concurrently (the backend batches them itself). A streamed
        request gets its answer in one piece at the end (the router does not relay the backend's stream)."""
        futures = [self._pool.submit(self._one, variant, c, max_new_tokens, sampling) for c in conversations]
        answered = self.versions.get(variant, version)
        try:
            return [{**f.result(), "variant": variant, "version": answered} for f in futures]
        finally:
            if streamer is not None:
                streamer.end()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._http.close()
