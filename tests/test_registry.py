"""Registry round trip (pyfunc of tiny base + real LoRA adapter on sqlite), gate -> aliases, rollback,
approval, and promotions racing (threads and processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    LINEAGE,
    PROMPTS,
    empty_registry,
    make_model,
    reference_replies,
    save_adapter,
    tiny_records,
)
from tuneline.config.promote import PromoteParams
from tuneline.config.registry import RegistryParams
from tuneline.promote.aliases import (
    apply_decision,
    approval_of,
    promote,
    record_approval,
    registry_lock,
    rollback,
)
from tuneline.promote.gate import decide
from tuneline.promote.locks import lock_path_for
from tuneline.registry.base_ref import base_sha256
from tuneline.registry.model import generate_replies, load_adapter_model, parse_conversations
from tuneline.registry.registry import (
    aliases_of,
    client,
    load_version,
    parity_check,
    register_candidate,
    using_tracking_uri,
    version_info,
)
from tuneline.tracking import end_run, start_run


def mean_loss(base: Path, adapter: Path | None) -> float:
    """Mean next-token loss of the model on the tiny corpus (the evaluate stage's `loss`, in small)."""
    import torch

    if adapter is None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tok = AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base)
    else:
        model, chat = load_adapter_model(base, adapter, "cpu")
        tok = chat.tokenizer
    losses = []
    for rec in tiny_records(10):
        enc = tok.apply_chat_template(rec["messages"], return_tensors="pt", return_dict=True)
        with torch.no_grad():
            losses.append(float(model(**enc, labels=enc["input_ids"]).loss))
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def world(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny base, two adapters, one sqlite registry with both registered (artifacts under the tmp dir)."""
    root = tmp_path_factory.mktemp("registry")
    base = tiny_base
    good = save_adapter(base, root / "adapter_good", noisy=False)
    bad = save_adapter(base, root / "adapter_bad", noisy=True)
    uri = empty_registry(root)
    runs = {}
    for name in ("good", "bad"):
        runs[name] = start_run(uri, "tuneline", LINEAGE, {"train.lr": "0.002"}, f"train-{name}")
        end_run(uri, runs[name], "FINISHED")
    v_good = register_candidate(uri, "demo", runs["good"], base, good, {"eval.loss": 1.5}, copy_base=True)
    v_bad = register_candidate(uri, "demo", runs["bad"], base, bad, {"eval.loss": 9.9}, max_new_tokens=6)
    yield {
        "root": root,
        "base": base,
        "good": good,
        "bad": bad,
        "uri": uri,
        "runs": runs,
        "v_good": v_good,
        "v_bad": v_bad,
    }


def test_register_sets_challenger_and_lineage(world: dict[str, Any]) -> None:
    uri = world["uri"]
    assert (world["v_good"], world["v_bad"]) == ("1", "2")
    assert aliases_of(uri, "demo") == {"challenger": "2"}  # the newest candidate
    info = version_info(uri, "demo", "challenger")
    assert (
        info["version"] == "2"
        and info["aliases"] == ["challenger"]
        and info["run_id"] == world["runs"]["bad"]
    )
    assert {k: info["tags"][k] for k in LINEAGE} == LINEAGE and info["tags"]["eval.loss"] == "9.9"
    assert info["run"]["git_commit"] == "0123abc" and info["run"]["status"] == "FINISHED"
    assert info["source"].startswith("models:/") and info["model_id"]
    # The packaged model belongs to its run's experiment, its files beside the store: it used to land in
    # the Default experiment, under ./mlruns of whatever directory the test ran in (the repository).
    mc = client(uri)
    model = mc.get_logged_model(info["model_id"])
    assert model.experiment_id == mc.get_run(world["runs"]["bad"]).info.experiment_id
    assert Path(model.artifact_location.removeprefix("file://")).is_relative_to(world["root"] / "mlruns")


def test_pyfunc_round_trip_equals_in_process_greedy(world: dict[str, Any]) -> None:
    import pandas as pd

    base, bad = world["base"], world["bad"]
    expected = reference_replies(base, bad, 6)
    # The adapter matters: a pyfunc that dropped it would answer like the base.
    assert expected != reference_replies(base, None, 6)
    model = load_version(world["uri"], "demo", "challenger")
    assert model.predict(PROMPTS) == expected  # default max_new_tokens=6 from registration
    assert model.predict(pd.DataFrame({"messages": PROMPTS})) == expected
    assert model.predict([{"messages": m} for m in PROMPTS]) == expected
    longer = model.predict(PROMPTS[:1], params={"max_new_tokens": 12})
    assert longer == reference_replies(base, bad, 12)[:1]
    with pytest.raises(ValueError, match="unknown role"):
        model.predict([[{"role": "robot", "content": "x"}]])


def test_base_copied_or_referenced(world: dict[str, Any]) -> None:
    copied = load_version(world["uri"], "demo", world["v_good"])
    referenced = load_version(world["uri"], "demo", world["v_bad"])
    flavor = copied.metadata.flavors["python_function"]
    assert set(flavor["artifacts"]) == {"adapter", "base"}
    ref_flavor = referenced.metadata.flavors["python_function"]
    # the default records a reference: no copy of the base in the version, its path and content hash
    assert set(ref_flavor["artifacts"]) == {"adapter"}
    sha = base_sha256(world["base"])
    assert {k: ref_flavor["config"][k] for k in ("base_kind", "base_model_path", "base_sha256")} == {
        "base_kind": "path", "base_model_path": str(world["base"].resolve()), "base_sha256": sha}
    assert flavor["config"]["base_sha256"] == sha  # a copied version keeps the reference too (lineage)
    tags = version_info(world["uri"], "demo", world["v_bad"])["tags"]
    assert (tags["base.path"], tags["base.sha256"]) == (str(world["base"].resolve()), sha)
    with using_tracking_uri(world["uri"]):
        import mlflow

        reqs = Path(mlflow.pyfunc.get_model_dependencies(f"models:/demo/{world['v_good']}")).read_text()
    pinned = {line.split("==")[0] for line in reqs.split()}
    assert {"torch", "transformers", "peft", "mlflow"} <= pinned and "torchvision" not in reqs
    assert (
        copied.predict(PROMPTS[:1], params={"max_new_tokens": 5})
        == reference_replies(world["base"], world["good"], 5)[:1]
    )


def test_worse_candidate_is_never_promoted_and_champion_stays(world: dict[str, Any]) -> None:
    uri, base = world["uri"], world["base"]
    names = RegistryParams(model_name="demo")
    criteria = PromoteParams(primary_metric="loss", min_gain=0.0, tolerance=0.0)
    base_m = {"loss": mean_loss(base, None), "never_stop_rate": 0.0}

    def evaluate(version: str, adapter: Path) -> tuple[dict[str, float], dict[str, Any]]:
        replies = generate_replies(*load_adapter_model(base, adapter, "cpu"), PROMPTS, 6)
        metrics = {
            "loss": mean_loss(base, adapter),
            "never_stop_rate": sum(not r["stopped"] for r in replies) / len(replies),
        }
        parity = parity_check(uri, "demo", version, base, adapter, PROMPTS, 6)["parity"]
        context = {
            "train_health_status": "ok",
            "train_alerts": [],
            "early_stopped": False,
            "data_valid": True,
            "parity": parity,
        }
        return metrics, context

    # v1 (zero-initialised adapter = the base's loss) becomes the first champion.
    good_m, good_ctx = evaluate("1", world["good"])
    criteria_lenient = PromoteParams(primary_metric="loss", min_gain=-1e-6, max_never_stop_rate=1.0)
    first = decide(criteria_lenient, good_m, base_m, None, good_ctx)
    assert first.promote, first.summary()
    assert apply_decision(uri, "demo", "1", first, None, names).promoted
    # v2 (large random LoRA) is clearly worse: rejected on both comparisons, nothing moves.
    bad_m, bad_ctx = evaluate("2", world["bad"])
    assert bad_m["loss"] > base_m["loss"] + 0.5 and bad_ctx["parity"] is True
    decision = decide(
        criteria.model_copy(update={"max_never_stop_rate": 1.0}), bad_m, base_m, good_m, bad_ctx
    )
    assert decision.status == "rejected" and decision.failed == ["beats_base", "vs_champion"]
    result = apply_decision(uri, "demo", "2", decision, "1", names)
    assert not result.promoted and result.status == "rejected" and result.champion_before == "1"
    assert aliases_of(uri, "demo").get("champion") == "1"
    tags = version_info(uri, "demo", "2")["tags"]
    assert tags["gate.status"] == "rejected" and tags["gate.failed"] == "beats_base,vs_champion"
    # Even a direct promote() call with a stale expectation cannot slip it in.
    assert promote(uri, "demo", "2", None, names).status == "conflict"
    assert aliases_of(uri, "demo")["champion"] == "1"


def test_parse_conversations_shapes() -> None:
    import numpy as np
    import pandas as pd

    conv = PROMPTS[1]
    assert parse_conversations({"messages": conv}) == [conv]  # one conversation
    assert parse_conversations({"messages": [conv, conv]}) == [conv, conv]
    cell = np.array(conv, dtype=object)  # how a DataFrame built from JSON holds a list
    assert parse_conversations(pd.DataFrame({"messages": [cell]})) == [conv]
    assert parse_conversations([json.dumps(conv)]) == [conv]
    with pytest.raises(ValueError, match="`messages` column"):
        parse_conversations(pd.DataFrame({"prompt": ["hi"]}))
    with pytest.raises(ValueError, match="row 0 message 0"):
        parse_conversations([[{"role": "user"}]])
    with pytest.raises(ValueError, match="non-empty list"):
        parse_conversations([[]])


# --- alias moves on a cheap registry (versions without a packaged model) ----------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return empty_registry(tmp_path_factory.mktemp("aliases"))


def test_lock_path_next_to_the_store(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "mlflow.db"
    assert lock_path_for(f"sqlite:///{db}").parent == db.parent
    assert lock_path_for(f"file://{tmp_path}") == tmp_path / ".tuneline-aliases.lock"
    remote = lock_path_for("http://127.0.0.1:5000")
    assert remote != lock_path_for("http://127.0.0.1:5001") and remote.name.startswith("tuneline-aliases-")


def test_promote_then_rollback(store: str) -> None:
    make_model(store, "rb", 3)
    assert promote(store, "rb", "1", None).previous_champion is None
    r = promote(store, "rb", "2", "1")
    assert r.promoted and r.champion_before == "1" and r.previous_champion == "1"
    assert aliases_of(store, "rb") == {"champion": "2", "previous_champion": "1"}
    back = rollback(store, "rb")
    assert back.rolled_back and back.champion == "1" and back.demoted == "2"
    assert aliases_of(store, "rb") == {"champion": "1"}
    tags2, tags1 = version_info(store, "rb", "2")["tags"], version_info(store, "rb", "1")["tags"]
    assert (
        tags2["rollback.restored"] == "1"
        and "rollback.at" in tags2
        and tags1["rollback.restored_from"] == "2"
    )
    again = rollback(store, "rb")
    assert (
        not again.rolled_back
        and again.status == "nothing_to_roll_back"
        and "nothing to roll back" in again.reason
    )
    assert aliases_of(store, "rb") == {"champion": "1"}
    assert rollback(store, "rb-missing").status == "nothing_to_roll_back"  # no model at all: still a result


def test_promote_refusals(store: str) -> None:
    make_model(store, "ref", 2)
    client(store).set_registered_model_alias("ref", "challenger", "2")
    assert promote(store, "ref", "1", None).promoted
    assert promote(store, "ref", "1", "1").status == "already_champion"
    assert promote(store, "ref", "2", None).status == "conflict"  # stale expectation
    r = promote(store, "ref", "2", "1")
    assert r.promoted and "challenger" not in aliases_of(store, "ref")  # it no longer challenges
    with pytest.raises(Exception, match="version 9"):
        promote(store, "ref", "9", "2")


def test_approval_required_vs_not(store: str) -> None:
    make_model(store, "ap", 3)
    assert promote(store, "ap", "1", None, require_approval=False).promoted
    r = promote(store, "ap", "2", "1", require_approval=True)
    assert not r.promoted and r.status == "needs_approval"
    record_approval(store, "ap", "2", "alice", "rejected", note="bad tone")
    assert promote(store, "ap", "2", "1", require_approval=True).status == "approval_rejected"
    record_approval(store, "ap", "2", "bob", "approved")
    assert approval_of(store, "ap", "2")["by"] == "bob"
    assert promote(store, "ap", "2", "1", require_approval=True).promoted
    assert approval_of(store, "ap", "3") is None
    with pytest.raises(ValueError, match="expected one of"):
        record_approval(store, "ap", "3", "carol", "maybe")
    assert aliases_of(store, "ap")["champion"] == "2"


def test_recheck_happens_inside_the_lock(store: str) -> None:
    """A promotion waiting for the lock sees the champion another writer set meanwhile and refuses."""
    make_model(store, "cas", 3)
    promote(store, "cas", "1", None)
    results: list[Any] = []
    with registry_lock(store, "cas"):
        worker = threading.Thread(target=lambda: results.append(promote(store, "cas", "2", "1")))
        worker.start()
        time.sleep(0.5)
        assert worker.is_alive() and not results  # blocked on the lock
        client(store).set_registered_model_alias("cas", "champion", "3")  # the lock holder moves it
    worker.join(30)
    assert results[0].status == "conflict" and results[0].champion_before == "3"
    assert aliases_of(store, "cas") == {"champion": "3"}


def check_one_winner(uri: str, name: str, results: list[dict[str, Any]]) -> None:
    winners = [r for r in results if r["promoted"]]
    assert len(winners) == 1, results
    assert all(r["status"] == "conflict" for r in results if not r["promoted"])
    assert aliases_of(uri, name) == {"champion": winners[0]["version"], "previous_champion": "1"}


def test_concurrent_promotions_threads(store: str) -> None:
    make_model(store, "race", 7)
    promote(store, "race", "1", None)
    barrier = threading.Barrier(6)
    results: list[dict[str, Any]] = []

    def go(version: str) -> None:
        barrier.wait()
        results.append(promote(store, "race", version, "1").to_dict())

    threads = [threading.Thread(target=go, args=(str(v),)) for v in range(2, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6
    check_one_winner(store, "race", results)


RACER = """
import json, pathlib, sys, time
from tuneline.promote.aliases import promote
uri, name, version, go = sys.argv[1:5]
print("ready", flush=True)
while not pathlib.Path(go).exists():
    time.sleep(0.002)
print(json.dumps(promote(uri, name, version, "1").to_dict()), flush=True)
"""


@pytest.mark.integration
def test_concurrent_promotions_processes(store: str, tmp_path: Path) -> None:
    make_model(store, "prace", 4)
    promote(store, "prace", "1", None)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, store, "prace", str(v), str(go)], stdout=subprocess.PIPE, text=True
        )
        for v in (2, 3, 4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        go.touch()
        outs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    check_one_winner(store, "prace", [json.loads(o.strip().splitlines()[-1]) for o in outs])
