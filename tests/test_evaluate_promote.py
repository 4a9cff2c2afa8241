"""evaluate -> promote on a tiny workspace: a better candidate becomes champion, a crippled one is
refused with reasons while the champion stays; approval gating; rollback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import LORA_NO_DROPOUT, repeat_workspace, train_settings
from tuneline.config.loader import Config
from tuneline.jsonio import write_json
from tuneline.layout import Layout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    layout = repeat_workspace(tmp_path_factory.mktemp("ws"), test=12)
    write_json(layout.report("validate_splits"), {"success": True})
    return layout


def settings(root: Path, base: Path, **overrides: Any) -> Config:
    data: dict[str, Any] = {
        **train_settings(root, base, epochs=3, lora=LORA_NO_DROPOUT),
        "evaluate": {"max_rows": 8, "max_new_tokens": 8, "review_samples": 4},
        "promote": {"primary_metric": "loss", "min_gain": 0.01, "max_never_stop_rate": 1.0,
                    "parity_probe_rows": 3},
        "split": {"eval_dir": None},
    }
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return Config.model_validate(data)


def cycle(cfg: Config, layout: Layout) -> tuple[dict, dict]:
    from tuneline.evaluate.evaluate import run as evaluate
    from tuneline.promote.promote import run as promote
    from tuneline.train.train import run as train

    train(cfg, layout)
    return evaluate(cfg, layout), promote(cfg, layout)


def test_better_candidate_is_promoted_worse_one_refused(learned_tiny_base: Path, workspace: Layout) -> None:
    from tuneline.promote.promote import rollback

    root = workspace.root
    cfg = settings(root, learned_tiny_base)
    evaluation, promotion = cycle(cfg, workspace)
    cand, base = evaluation["variants"]["candidate"], evaluation["variants"]["base"]
    assert cand["loss"] < base["loss"] - 0.01 and "champion" not in evaluation["variants"]
    assert evaluation["champion_version"] is None and evaluation["champion_adapter_sha256"] is None
    assert promotion["result"]["status"] == "promoted" and promotion["champion_after"] == "1"
    assert promotion["parity"]["parity"] and promotion["parity"]["rows"] == 3
    from tuneline.promote.promote import run as promote_again

    again = promote_again(cfg, workspace)  # nothing retrained (a nightly run with no news): no new version
    assert again["result"]["status"] == "already_champion" and again["version"] == "1"
    review = (root / "reports" / "review.html").read_text()
    assert review.count("Repeat the word") >= 4 and "candidate" in review
    # The page opens with the before / after headline, whose data the run report reads back.
    headline = json.loads((root / "reports" / "evaluate_headline.json").read_text())
    assert headline["table"][0]["rows"] == cand["rows"] and "rouge_l" in headline["table"][0]["metrics"]
    assert review.index("Before / after fine-tuning") < review.index('<section class="sample">')

    # A crippled candidate (a learning rate too small to move anything) is refused, with its reasons.
    crippled = settings(root, learned_tiny_base, train__lr=1e-7)
    evaluation, promotion = cycle(crippled, workspace)
    assert "champion" in evaluation["variants"]  # compared with the champion on the same rows
    # ... and says which champion that was, and which model it scored (promote judges on that evidence).
    from tuneline.promote.promote import adapter_sha256
    from tuneline.registry.registry import version_info

    champion_tags = version_info(crippled.tracking.uri, crippled.registry.model_name, "1")["tags"]
    assert evaluation["champion_version"] == "1"
    assert evaluation["champion_adapter_sha256"] == champion_tags["adapter_sha256"]
    assert evaluation["candidate_adapter_sha256"] == adapter_sha256(root / crippled.train.output_dir)
    assert promotion["result"]["status"] == "rejected" and promotion["version"] == "2"
    failed = promotion["decision"]["failed"]
    assert "beats_base" in failed and "vs_champion" in failed
    assert promotion["champion_after"] == "1"  # the champion stays
    tags = version_info(crippled.tracking.uri, crippled.registry.model_name, "2")["tags"]
    assert tags["gate.champion"] == "1" and tags["gate.champion_sha256"] == champion_tags["adapter_sha256"]
    on_disk = json.loads((root / "reports" / "promote.json").read_text())
    assert on_disk["decision"]["rows"] and on_disk["result"]["status"] == "rejected"

    # Release gating: a good candidate waits for a person, then moves; rollback restores the old one.
    gated = settings(root, learned_tiny_base, train__lr=0.03, promote__require_approval=True)
    _, promotion = cycle(gated, workspace)
    assert promotion["decision"]["status"] == "await_approval"
    assert promotion["result"]["status"] == "needs_approval" and promotion["champion_after"] == "1"
    from tuneline.promote.promote import GateError, approve

    with pytest.raises(GateError, match="only a version that passed the gate"):
        approve(gated, workspace, "2", "reviewer")
    result = approve(gated, workspace, promotion["version"], "reviewer", "looked at review.html")
    assert result["status"] == "promoted"
    back = rollback(gated)
    assert back["status"] == "rolled_back" and back["champion"] == "1"

    # Lineage of the champion and the run report read what the stages recorded.
    from tuneline.lineage import lineage, render
    from tuneline.run_report import run_report

    tree = lineage(gated, root)
    assert tree["version"] == "1" and tree["aliases"] == ["champion"] and tree["run_id"]
    assert tree["gate"] == "promote" and float(tree["eval"]["loss"]) == pytest.approx(cand["loss"])
    assert tree["lock"] == "no git commit recorded"  # this workspace is no git checkout
    assert "version 1" in render(tree)
    page = run_report(workspace, gated).read_text()
    for section in ("Training", "Evaluation", "Promotion gate", "Lineage", "beats_base", "<svg"):
        assert section in page, section
    assert page.index("Before / after fine-tuning") < page.index("<h2>Data</h2>")
