"""The `promote` stage judges on recorded evidence: the champion an evaluation compared against, the
verdict an approval approved, and a verdict at all ("registered" is not "judged").

A real registry (MLflow on sqlite), real versions of a tiny base + LoRA adapter registered by the stage
itself; only reports/evaluate.json is written by hand, so the metrics of each scenario are exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import empty_registry, save_adapter
from tuneline.config.loader import Config
from tuneline.jsonio import write_json, write_jsonl
from tuneline.layout import Layout
from tuneline.promote.aliases import apply_decision
from tuneline.promote.gate import Decision
from tuneline.promote.promote import adapter_sha256, approve
from tuneline.promote.status import Verdict
from tuneline.registry.registry import aliases_of, client, version_info

BASE_LOSS = 2.0


@pytest.fixture(scope="module")
def models(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny base and one adapter per candidate name (the same weights; a note file makes each
    trained-model directory, and so its adapter_sha256, distinct)."""
    root = tmp_path_factory.mktemp("models")
    base = tiny_base
    adapter = save_adapter(base, root / "adapter", noisy=False)
    out = {"base": base}
    for name in ("p", "a", "b", "c", "d"):
        out[name] = shutil.copytree(adapter, root / f"adapter-{name}")
        (out[name] / "candidate.txt").write_text(name, encoding="utf-8")
    return out


def settings_data(root: Path, base: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": str(base)},
        "tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "test"},
        "promote": {"primary_metric": "loss", "min_gain": 0.01, "tolerance": 0.01,
                    "max_never_stop_rate": 1.0, "parity_probe_rows": 0},
        "split": {"eval_dir": None},
    }


@pytest.fixture()
def ws(tmp_path: Path, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Config, Layout]:
    """A workspace holding what promote reads besides the evaluation (healthy training, valid data)."""
    monkeypatch.chdir(tmp_path)  # the sqlite store puts artifacts under ./mlruns
    layout = Layout(tmp_path)
    write_jsonl(layout.processed("test"), [{"id": "t0", "messages": [
        {"role": "user", "content": "Repeat the word cat."}, {"role": "assistant", "content": "cat"}]}])
    write_json(layout.report("train_health"), {"status": "ok", "alerts": []})
    write_json(layout.report("validate_splits"), {"success": True})
    write_json(layout.report("train"), {"early_stopped": False, "data_hash": "d" * 64,
                                        "params_hash": "p" * 64})
    return Config.model_validate(settings_data(tmp_path, models["base"])), layout


def trained(cfg: Config, layout: Layout, adapter: Path) -> str:
    """Put `adapter` where training leaves its model; its sha256."""
    out = layout.root / cfg.train.output_dir
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(adapter, out)
    return adapter_sha256(out)


def evaluated(cfg: Config, layout: Layout, adapter: Path, loss: float,
              champion: tuple[str, float] | None) -> dict[str, Any]:
    """reports/evaluate.json as the evaluate stage writes it, for `adapter` (candidate loss `loss`)
    against `champion` ((version, its loss), or None): the metrics given, the evidence recorded."""
    sha = trained(cfg, layout, adapter)
    variants = {"base": {"loss": BASE_LOSS, "never_stop_rate": 0.0},
                "candidate": {"loss": loss, "never_stop_rate": 0.0}}
    evidence = {"champion_version": None, "champion_adapter_sha256": None}
    if champion is not None:
        variants["champion"] = {"loss": champion[1], "never_stop_rate": 0.0}
        tag = version_info(cfg.tracking.uri, cfg.registry.model_name, champion[0])["tags"]["adapter_sha256"]
        evidence = {"champion_version": champion[0], "champion_adapter_sha256": tag}
    report = {"variants": variants, **evidence, "candidate_adapter_sha256": sha}
    write_json(layout.report("evaluate"), report)
    return report


def promote_stage(cfg: Config, layout: Layout, evaluation: dict[str, Any], adapter: Path) -> dict[str, Any]:
    """`tuneline promote` with `evaluation` as reports/evaluate.json and `adapter` as the trained model."""
    from tuneline.promote.promote import run

    write_json(layout.report("evaluate"), evaluation)
    trained(cfg, layout, adapter)
    return run(cfg, layout)


@pytest.mark.integration
def test_a_candidate_evaluated_against_an_older_champion_is_not_judged(
    ws: tuple[Config, Layout], models: dict[str, Path]
) -> None:
    """Fault: A and B were both evaluated while v1 was champion; A was promoted, then B (0.015 worse
    than A, tolerance 0.01) replaced A, judged against v1's numbers."""
    cfg, layout = ws
    uri, name = cfg.tracking.uri, cfg.registry.model_name
    first = promote_stage(cfg, layout, evaluated(cfg, layout, models["p"], 1.5, None), models["p"])
    assert first["result"]["status"] == "promoted" and first["champion_after"] == "1"
    eval_a = evaluated(cfg, layout, models["a"], 1.0, ("1", 1.5))
    eval_b = evaluated(cfg, layout, models["b"], 1.015, ("1", 1.5))
    a = promote_stage(cfg, layout, eval_a, models["a"])
    assert a["result"]["status"] == "promoted" and a["champion_after"] == "2"

    b = promote_stage(cfg, layout, eval_b, models["b"])
    assert b["result"]["status"] == "stale_evaluation" and not b["result"]["promoted"]
    assert version_info(uri, name, "2")["tags"]["gate.champion"] == "1"  # what A was judged against
    assert "compared against champion 1, the champion is now 2" in b["result"]["reason"]
    assert "re-run evaluate" in b["result"]["reason"]
    assert aliases_of(uri, name)["champion"] == "2" and b["version"] is None  # nothing registered
    assert json.loads(layout.report("promote").read_text())["result"]["status"] == "stale_evaluation"

    # Evaluated again, against the champion now in place: the gate sees A's numbers and says no.
    b = promote_stage(cfg, layout, evaluated(cfg, layout, models["b"], 1.015, ("2", 1.0)), models["b"])
    assert b["result"]["status"] == "rejected" and b["decision"]["failed"] == ["vs_champion"]
    assert aliases_of(uri, name)["champion"] == "2"


def test_stale_reason_names_each_mismatch() -> None:
    from tuneline.promote.promote import stale_reason

    ok = {"variants": {"champion": {}}, "champion_version": "2", "champion_adapter_sha256": "s2",
          "candidate_adapter_sha256": "c"}
    assert stale_reason(ok, "c", "2", "s2") is None
    assert "does not record" in stale_reason({"variants": {}}, "c", None, None)  # an older report
    assert "another trained model" in stale_reason(ok, "other", "2", "s2")
    assert "the champion is now 3" in stale_reason(ok, "c", "3", "s3")
    assert "the champion is now none" in stale_reason(ok, "c", None, None)  # rolled back to nothing
    assert "has s1" in stale_reason(ok, "c", "2", "s1")  # same number, another model (a new registry)
    by_path = {**ok, "champion_version": None, "champion_adapter_sha256": None}
    assert "not a registry version" in stale_reason(by_path, "c", None, None)
    first = {"variants": {}, "champion_version": None, "champion_adapter_sha256": None,
             "candidate_adapter_sha256": "c"}
    assert stale_reason(first, "c", None, None) is None
    assert "the champion is now 1" in stale_reason(first, "c", "1", "s1")


AWAIT = Decision(promote=False, status=Verdict.AWAIT_APPROVAL, rows=[])


def test_approval_of_a_version_judged_against_a_replaced_champion_is_refused(tmp_path: Path) -> None:
    """Fault: v2 and v3 both awaited approval (both judged against v1); `--approve 3`, then
    `--approve 2` made v2 champion over v3, which it was never compared with."""
    cfg = Config.model_validate({"tracking": {"uri": empty_registry(tmp_path)},
                                 "registry": {"model_name": "m"}})
    uri, layout = cfg.tracking.uri, Layout(tmp_path)
    mc = client(uri)
    mc.create_registered_model("m")
    for v in range(3):
        mc.create_model_version("m", source=f"/nowhere/m/{v + 1}")
    assert apply_decision(uri, "m", "1", Decision(True, Verdict.PROMOTE, []), None).status == "promoted"
    for v in ("2", "3"):
        mc.set_registered_model_alias("m", "challenger", v)
        assert apply_decision(uri, "m", v, AWAIT, "1").status == "needs_approval"

    assert approve(cfg, layout, "3", "alice")["status"] == "promoted"
    late = approve(cfg, layout, "2", "bob")
    assert late["status"] == "stale_evaluation" and not late["promoted"]
    assert "judged against champion 1, but the champion is now 3" in late["reason"]
    assert aliases_of(uri, "m")["champion"] == "3"
    tags = version_info(uri, "m", "2")["tags"]
    assert tags["gate.champion"] == "1" and "approval.decision" not in tags  # the approval is not recorded
    # The approval records what it approved.
    tags = version_info(uri, "m", "3")["tags"]
    assert tags["approval.gate_status"] == "await_approval" and tags["approval.champion"] == "1"


KILLED = """
import json, os, signal, sys
from pathlib import Path
import tuneline.promote.promote as stage
from tuneline.config.loader import Config
from tuneline.layout import Layout

def killed(*args, **kwargs):  # the step after registration: the process dies here, no cleanup runs
    os.kill(os.getpid(), signal.SIGKILL)

stage.probe_conversations = killed
root = Path(sys.argv[1])
os.chdir(root)
stage.run(Config.model_validate(json.loads(sys.argv[2])), Layout(root))
"""


@pytest.mark.integration
def test_a_version_registered_by_a_killed_run_is_judged_by_the_next(
    ws: tuple[Config, Layout], models: dict[str, Path]
) -> None:
    """Fault: `kill -9` after the challenger alias was set; every rerun said `already_registered ...
    nothing new to judge`, so the version never got a gate decision."""
    cfg, layout = ws
    uri, name = cfg.tracking.uri, cfg.registry.model_name
    evaluation = evaluated(cfg, layout, models["c"], 1.5, None)
    data = settings_data(layout.root, models["base"])
    proc = subprocess.run([sys.executable, "-c", KILLED, str(layout.root), json.dumps(data)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert aliases_of(uri, name) == {"challenger": "1"}  # registered, not judged
    assert "gate.status" not in version_info(uri, name, "1")["tags"]

    again = promote_stage(cfg, layout, evaluation, models["c"])
    assert again["version"] == "1" and again["result"]["status"] == "promoted"
    assert aliases_of(uri, name) == {"champion": "1"}
    tags = version_info(uri, name, "1")["tags"]
    assert tags["gate.status"] == "promote" and tags["gate.champion"] == "none"
    assert len(client(uri).search_model_versions(f"name='{name}'")) == 1  # not registered twice
    assert promote_stage(cfg, layout, evaluation, models["c"])["result"]["status"] == "already_champion"


@pytest.mark.integration
def test_a_run_that_died_between_the_verdict_and_the_alias_move_is_completed(
    ws: tuple[Config, Layout], models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault (same family): the gate's tags were written, then the run died before the champion moved;
    the rerun saw a gate.status and skipped the version, which stayed challenger forever. The verdict
    is now written after the move, so the rerun judges and moves it."""
    import tuneline.promote.aliases as aliases

    cfg, layout = ws
    uri, name = cfg.tracking.uri, cfg.registry.model_name
    evaluation = evaluated(cfg, layout, models["d"], 1.5, None)

    def died(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("the process stopped here")

    with monkeypatch.context() as patch:
        patch.setattr(aliases, "promote", died)
        with pytest.raises(KeyboardInterrupt):
            promote_stage(cfg, layout, evaluation, models["d"])
    assert aliases_of(uri, name) == {"challenger": "1"}
    again = promote_stage(cfg, layout, evaluation, models["d"])
    assert again["result"]["status"] == "promoted" and aliases_of(uri, name) == {"champion": "1"}
    assert version_info(uri, name, "1")["tags"]["gate.status"] == "promote"
