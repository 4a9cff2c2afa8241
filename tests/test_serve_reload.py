"""The server follows the registry: a promotion, a retired challenger or a rollback is served without a
restart; a version on another base is refused and the old versions keep serving."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from serve_world import MODEL, RunningServer, World, build_world
from tuneline.promote.aliases import promote, retire_challenger, rollback

pytestmark = pytest.mark.integration
ASK = [{"role": "user", "content": "What sound does the cat make?"}]


@pytest.fixture(scope="module")
def world(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("reload"), tiny_base, canary_share=0.5, reload_s=0.2)


@pytest.fixture(scope="module")
def server(world: World) -> Any:
    running = RunningServer(world.cfg)
    yield running
    running.stop()


def served(server: RunningServer) -> dict[str, Any]:
    return httpx.get(server.base_url.removesuffix("/v1") + "/health").json()


def wait_for(server: RunningServer, versions: dict[str, str], timeout_s: float = 60,
             reloads: int | None = None) -> dict[str, Any]:
    """/health once it shows `versions` (and, if given, that many reloads: the count is read separately
    from the versions, so a poll may land between the two)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = served(server)
        if health["versions"] == versions and reloads in (None, health["reloads"]):
            return health
        time.sleep(0.1)
    health = served(server)
    raise AssertionError(f"server still serves {health['versions']} after {health['reloads']} reloads, "
                         f"expected {versions} (reloads {reloads})")


def answer(server: RunningServer, model: str) -> Any:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=ASK, max_tokens=4)


def test_promotion_retirement_and_rollback_are_followed(world: World, server: RunningServer) -> None:
    assert served(server)["versions"] == {"champion": "1", "challenger": "2"}
    promote(world.uri, MODEL, "2", "1")  # as `tuneline ab decide` does for a winning challenger
    health = wait_for(server, {"champion": "2"}, reloads=1)
    assert health["registry_error"] is None
    raw = answer(server, MODEL)
    assert raw.headers["x-tuneline-model-version"] == "2" and raw.headers["x-tuneline-variant"] == "champion"
    with pytest.raises(openai.NotFoundError):  # no challenger any more: pinning it is refused
        answer(server, f"{MODEL}@challenger").parse()
    assert set(server.state.models.model.peft_config) == {"v2"}  # v1's adapter was dropped
    rollback(world.uri, MODEL)
    wait_for(server, {"champion": "1"})
    assert answer(server, MODEL).headers["x-tuneline-model-version"] == "1"


def test_retired_challenger_and_other_base_refused(world: World, server: RunningServer,
                                                    tmp_path: Path) -> None:
    import os

    from helpers import LINEAGE, build_tiny_base, save_adapter
    from tuneline.registry.registry import client, register_candidate
    from tuneline.tracking import end_run, start_run

    client(world.uri).set_registered_model_alias(MODEL, "challenger", "2")
    wait_for(server, {"champion": "1", "challenger": "2"})
    retire_challenger(world.uri, MODEL, "2", "worse on live feedback")
    wait_for(server, {"champion": "1"})
    other = build_tiny_base(tmp_path, steps=3, seed=7)
    adapter = save_adapter(other, tmp_path / "adapter", noisy=False)
    run = start_run(world.uri, "tuneline", LINEAGE, {}, "train-other")
    end_run(world.uri, run, "FINISHED")
    cwd = os.getcwd()
    os.chdir(world.root)
    try:
        version = register_candidate(world.uri, MODEL, run, other, adapter, {"gate.status": "promote"})
    finally:
        os.chdir(cwd)
    deadline = time.monotonic() + 60
    while "different base" not in (served(server)["registry_error"] or ""):
        assert time.monotonic() < deadline, served(server)
        time.sleep(0.1)
    assert served(server)["versions"] == {"champion": "1"}  # still serving what it could
    assert answer(server, MODEL).headers["x-tuneline-model-version"] == "1"
    retire_challenger(world.uri, MODEL, version, "cannot share the base")
    deadline = time.monotonic() + 60
    while served(server)["registry_error"] is not None:
        assert time.monotonic() < deadline, served(server)
        time.sleep(0.1)
