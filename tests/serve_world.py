"""A served world for the serving tests: tiny base, two real LoRA adapters registered in a sqlite MLflow
registry (v1 champion, v2 challenger), and `tuneline serve`'s app running under uvicorn on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from helpers import LINEAGE, empty_registry, save_adapter
from tuneline.config import load_config
from tuneline.promote.aliases import promote
from tuneline.registry.registry import register_candidate
from tuneline.serve.app import create_app
from tuneline.serve.server import build_state
from tuneline.tracking import end_run, start_run

MODEL = "tuneline-demo"
API_KEY = "test-key-123"


@dataclass
class World:
    root: Path
    base: Path
    adapters: dict[str, Path]
    uri: str
    cfg: Any


def build_world(root: Path, base: Path, **serve: Any) -> World:
    """Register a zero-init adapter (v1, champion) and a noisy one (v2, challenger) on the tiny `base`."""
    adapters = {"champion": save_adapter(base, root / "adapter_a", noisy=False),
                "challenger": save_adapter(base, root / "adapter_b", noisy=True)}
    uri = empty_registry(root)
    versions = {}
    cwd = os.getcwd()
    os.chdir(root)  # the sqlite store puts artifacts under ./mlruns
    try:
        for variant, adapter in adapters.items():
            run = start_run(uri, "tuneline", LINEAGE, {}, f"train-{variant}")
            end_run(uri, run, "FINISHED")
            versions[variant] = register_candidate(uri, MODEL, run, base, adapter, {"gate.status": "promote"})
    finally:
        os.chdir(cwd)
    promote(uri, MODEL, versions["champion"], None)
    overrides = [f"tracking.uri={uri}", f"serve.store_url=sqlite:///{root / 'feedback.db'}",
                 "serve.default_max_tokens=6", "serve.max_tokens_limit=16", "serve.max_request_bytes=4096",
                 "serve.max_prompt_tokens=256"]
    overrides += [f"serve.{k}={v}" for k, v in serve.items()]
    cfg = load_config(None, overrides)
    return World(root, base, adapters, uri, cfg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    """`create_app(build_state(cfg))` under uvicorn in a thread; `stop` shuts down like Ctrl-C (drains)."""

    def __init__(self, cfg: Any, keys: str | None = None) -> None:
        old = os.environ.get(cfg.serve.api_keys_env)
        if keys is not None:
            os.environ[cfg.serve.api_keys_env] = keys
        try:
            self.state = build_state(cfg, "127.0.0.1")
        finally:
            if old is None:
                os.environ.pop(cfg.serve.api_keys_env, None)
            else:
                os.environ[cfg.serve.api_keys_env] = old
        self.port = free_port()
        config = uvicorn.Config(create_app(self.state), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
