"""Register -> gate -> promote against a real `mlflow server` (sqlite backend, proxied local artifacts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_demo_base import build_tiny_base
from test_registry import PROMPTS, reference_replies, save_adapter
from tuneline.config.promote import PromoteParams
from tuneline.config.registry import RegistryParams
from tuneline.promote.aliases import apply_decision, rollback
from tuneline.promote.gate import decide
from tuneline.registry.registry import (
    aliases_of,
    load_version,
    parity_check,
    register_candidate,
    version_info,
)
from tuneline.tracking import end_run, start_run

pytestmark = pytest.mark.integration
STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A `mlflow server` on a free 127.0.0.1 port; yields its http URI; stopped (whole group) at the end."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "artifacts"),
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited ({proc.returncode}): {(tmp_path / 'server.log').read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy in {STARTUP_TIMEOUT_S}s")
            time.sleep(0.25)
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its workers)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_register_gate_promote_over_http(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    base = build_tiny_base(tmp_path, steps=5)
    adapter = save_adapter(base, tmp_path / "adapter", noisy=True)
    names = RegistryParams(model_name="served")
    run_id = start_run(
        server,
        "tuneline",
        {"git_commit": "c0ffee", "data_hash": "d1", "params_hash": "p1"},
        {"train.lr": "0.002"},
        "train-lora",
    )
    end_run(server, run_id, "FINISHED")

    version = register_candidate(
        server, "served", run_id, base, adapter, {"eval.rouge_l": 0.5}, max_new_tokens=6
    )
    assert aliases_of(server, "served") == {"challenger": version}
    parity = parity_check(server, "served", "challenger", base, adapter, PROMPTS, 6)
    assert parity == {"parity": True, "rows": len(PROMPTS), "mismatches": []}

    candidate = {"rouge_l": 0.5, "never_stop_rate": 0.0}
    context = {
        "train_health_status": "ok",
        "train_alerts": [],
        "early_stopped": False,
        "data_valid": True,
        "parity": parity["parity"],
    }
    decision = decide(PromoteParams(min_gain=0.05), candidate, {"rouge_l": 0.3}, None, context)
    assert decision.promote
    result = apply_decision(server, "served", version, decision, None, names)
    assert result.promoted and aliases_of(server, "served") == {"champion": version}

    champion = load_version(server, "served", "champion")
    assert champion.predict(PROMPTS) == reference_replies(base, adapter, 6)
    info = version_info(server, "served", "champion")
    assert info["tags"]["git_commit"] == "c0ffee" and info["tags"]["gate.status"] == "promote"
    assert info["tags"]["promotion.replaced"] == "none" and info["run_id"] == run_id
    assert rollback(server, "served").status == "nothing_to_roll_back"
