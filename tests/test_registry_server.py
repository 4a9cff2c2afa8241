"""Register -> gate -> promote against a real `mlflow server` (sqlite backend, proxied local artifacts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import PROMPTS, reference_replies, save_adapter
from mlflow_harness import mlflow_server
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


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A `mlflow server` (sqlite backend, proxied local artifacts); yields its http URI."""
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as uri:
        yield uri


def test_register_gate_promote_over_http(
    server: str, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    base = tiny_base
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
