"""Start the server: check the security settings, load the models, open the store, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from tuneline.config import Config
from tuneline.config.serve import ServeParams
from tuneline.serve.models import ServeError

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


def build_state(cfg: Config, host: str, canary: bool = True, cache_dir: Path | None = None):
    """Load everything `create_app` needs from the config (registry aliases, store, limits)."""
    from tuneline.feedback.store import ExchangeWriter, FeedbackStore
    from tuneline.serve.app import ServerState
    from tuneline.serve.engine import Batcher
    from tuneline.serve.models import load_served_models

    params = cfg.serve
    keys = api_keys(params, host)
    reg = cfg.registry
    models = load_served_models(
        cfg.tracking.uri, reg.model_name,
        {"champion": reg.champion_alias, "challenger": reg.challenger_alias},
        with_challenger=canary and params.canary_share > 0,
        device=None if params.device == "auto" else params.device, dtype=params.dtype, cache_dir=cache_dir,
    )
    store = FeedbackStore(params.store_url)
    return ServerState(
        models=models,
        batcher=Batcher(models, params.max_batch_size, params.batch_wait_ms, params.max_queue),
        store=store,
        writer=ExchangeWriter(store),
        params=params,
        api_keys=keys,
    )


def serve(cfg: Config, host: str | None = None, port: int | None = None, canary: bool = True) -> None:
    """Run the server until interrupted (Ctrl-C drains the queue and commits every exchange)."""
    import uvicorn

    from tuneline.serve.app import create_app

    host = host or cfg.serve.host
    port = port or cfg.serve.port
    state = build_state(cfg, host, canary)
    versions = ", ".join(f"{k} v{v}" for k, v in state.models.versions.items())
    logger.info("serving %s (%s) on http://%s:%d/v1 — canary share %.0f %%, store %s, API key %s",
                state.models.model_name, versions, host, port,
                100 * (cfg.serve.canary_share if "challenger" in state.models.versions else 0),
                cfg.serve.store_url, "required" if state.api_keys else "off (loopback)")
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning")
