"""Start the server: check the security settings, load the models, open the store, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from tuneline.config import Config
from tuneline.config.serve import ServeParams
from tuneline.redact import install_log_redaction, redact
from tuneline.serve.engine import Batcher
from tuneline.serve.models import ServeError, load_served_models, resolve_versions
from tuneline.serve.reload import AliasWatcher

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume reachable from elsewhere


def api_keys(params: ServeParams, host: str, environ: dict[str, str] | None = None) -> list[str]:
    """The accepted API keys, from the environment variable `params.api_keys_env`.

    Raises:
        ServeError: no key configured while listening beyond loopback (unless explicitly allowed).
    """
    env = os.environ if environ is None else environ
    keys = [k.strip() for k in env.get(params.api_keys_env, "").split(",") if k.strip()]
    if not keys and not is_loopback(host) and not params.allow_open_off_loopback:
        raise ServeError(
            f"refusing to serve on {host} without an API key: set {params.api_keys_env}=key1[,key2] "
            "(clients send Authorization: Bearer <key>), or listen on 127.0.0.1"
        )
    return keys


def version_files(cfg: Config, with_challenger: bool = True, cache_dir: Path | None = None) -> list:
    """The champion's (and, with_challenger, the challenger's) files, downloaded from the registry."""

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    reg = cfg.registry
    return resolve_versions(cfg.tracking.uri, reg.model_name,
                            {"champion": reg.champion_alias, "challenger": reg.challenger_alias},
                            with_challenger=with_challenger and cfg.serve.canary_share > 0,
                            cache_dir=cache_dir)


def build_state(cfg: Config, host: str, with_challenger: bool = True, cache_dir: Path | None = None):
    """Load everything `create_app` needs from the config (registry aliases, store, limits)."""
    from tuneline.feedback.store import FeedbackStore  # lazy: sqlalchemy ~1.4 s; the CLI imports this module
    from tuneline.feedback.writer import ExchangeWriter  # lazy: sqlalchemy ~1.4 s (writer)
    from tuneline.serve.app import ServerState  # lazy: fastapi ~1.8 s; the CLI imports this module
    from tuneline.serve.remote import RemoteModels  # lazy: torch ~9 s + httpx

    params = cfg.serve
    keys = api_keys(params, host)
    files = version_files(cfg, with_challenger, cache_dir)
    versions = {f.variant: f.version for f in files}
    if params.backend_url:
        models = RemoteModels(params.backend_url, versions, cfg.registry.model_name, files[0].adapter_dir,
                              os.environ.get(params.backend_api_key_env))
    else:
        models = load_served_models(files, cfg.registry.model_name,
                                    device=None if params.device == "auto" else params.device,
                                    dtype=params.dtype)
    store = FeedbackStore(params.store_url)
    batcher = Batcher(models, params.max_batch_size, params.batch_wait_ms, params.max_queue)
    watcher = None
    if params.reload_s > 0 and not params.backend_url:  # a backend reloads itself (restart vLLM)

        reg = cfg.registry
        watcher = AliasWatcher(cfg.tracking.uri, reg.model_name,
                               {"champion": reg.champion_alias, "challenger": reg.challenger_alias},
                               models, batcher, params.reload_s,
                               with_challenger=with_challenger and params.canary_share > 0,
                               cache_dir=cache_dir)
    writer = ExchangeWriter(store, local_dir=params.store_local_dir)
    return ServerState(models=models, batcher=batcher, store=store, writer=writer, params=params,
                       api_keys=keys, watcher=watcher)


def vllm_recipe(cfg: Config, with_challenger: bool = True, download_dir: Path | None = None) -> str:
    """The vLLM command for the current champion (and challenger), and how to route in front of it."""
    from tuneline.serve.remote import (  # lazy: torch ~9 s (lm.load); the CLI imports this module
        render_vllm_command,
        vllm_command,
    )

    files = version_files(cfg, with_challenger, download_dir)
    dtype = "auto" if cfg.serve.dtype == "auto" else cfg.serve.dtype
    command = render_vllm_command(vllm_command(files, dtype=dtype))
    served = ", ".join(f"{f.variant} v{f.version}" for f in files)
    return (f"# {cfg.registry.model_name}: {served}\n{command}\n"
            "# then: tuneline serve --set serve.backend_url=http://<this host>:8001/v1")


def startup_line(cfg: Config, state: Any, host: str, port: int) -> str:
    """What the server says when it starts: versions, canary share, store (credentials masked), keys."""
    versions = ", ".join(f"{k} v{v}" for k, v in state.models.versions.items())
    share = 100 * (cfg.serve.canary_share if "challenger" in state.models.versions else 0)
    backend = f", backend {cfg.serve.backend_url}" if cfg.serve.backend_url else ""
    return redact(f"serving {state.models.model_name} ({versions}) on http://{host}:{port}/v1 — canary share "
                  f"{share:.0f} %, store {cfg.serve.store_url}{backend}, API key "
                  f"{'required' if state.api_keys else 'off (loopback)'}")


def serve(cfg: Config, host: str | None = None, port: int | None = None, with_challenger: bool = True,
          download_dir: Path | None = None) -> None:
    """Run the server until interrupted (Ctrl-C drains the queue and commits every exchange)."""
    import uvicorn  # lazy: uvicorn ~0.4 s; the CLI imports this module

    from tuneline.serve.app import create_app  # lazy: fastapi ~1.8 s; the CLI imports this module

    host = host or cfg.serve.host
    port = port or cfg.serve.port
    state = build_state(cfg, host, with_challenger, download_dir)
    logger.info("%s", startup_line(cfg, state, host, port))
    uvicorn.Server(uvicorn_config(create_app(state), host, port)).run()


def uvicorn_config(app: Any, host: str, port: int) -> Any:
    """uvicorn's config, with its own log handlers (set up by the config) redacting like every other."""
    import uvicorn  # lazy: uvicorn ~0.4 s; the CLI imports this module


    config = uvicorn.Config(app, host=host, port=port, log_level="warning")
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        install_log_redaction(logging.getLogger(name))
    return config
