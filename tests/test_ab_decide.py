"""The A/B decision on simulated live feedback: a real feedback store (sqlite) and a real MLflow registry
(sqlite) whose aliases move, or must not move."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from helpers import T0, ab_settings, empty_registry, make_ab_model
from tuneline.ab.decide import decide, run
from tuneline.config.ab import AbParams
from tuneline.feedback.store import FeedbackStore, feedback
from tuneline.jsonio import read_json
from tuneline.layout import Layout
from tuneline.promote.aliases import record_approval
from tuneline.registry.registry import aliases_of, client, version_info


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    return empty_registry(tmp_path_factory.mktemp("ab-registry"))


def simulate(
    store: FeedbackStore, model: str, version: str, variant: str, n: int, positives: int, seed: int,
    start: float = T0, pinned: bool = False,
) -> None:
    """`n` exchanges of one arm, `positives` of them rated positive, in a seeded random order; the
    feedback mixes thumbs, ratings and bare corrections so every kind of outcome is exercised."""
    rng = random.Random(seed)
    outcomes = [True] * positives + [False] * (n - positives)
    rng.shuffle(outcomes)
    prefix = f"{model}-{variant}-{version}-{seed}"
    store.record_exchanges(
        {
            "request_id": f"{prefix}-{i}", "created_at": start + i * 600,
            "user_hash": f"u{rng.randrange(50)}",
            "variant": variant, "model_name": model, "model_version": version, "pinned": pinned,
            "latency_ms": rng.uniform(40, 400), "prompt_tokens": rng.randrange(5, 50),
            "completion_tokens": rng.randrange(5, 80), "finish_reason": "stop",
            "messages": [{"role": "user", "content": f"question {i}"}], "answer": f"answer {i}",
        }
        for i in range(n)
    )
    rows = []
    for i, good in enumerate(outcomes):
        kind = rng.randrange(3)
        if good:
            fb = {"thumb": 1} if kind else {"rating": rng.choice([4, 5])}
        else:
            fb = [{"thumb": -1}, {"rating": rng.choice([1, 2, 3])}, {"correction": "the right answer"}][kind]
        blank = {"thumb": None, "rating": None, "correction": None}  # executemany wants one set of keys
        rows.append({"request_id": f"{prefix}-{i}", "created_at": start + i * 600 + 30, **blank, **fb})
    # One batch instead of one transaction per row (the store's API commits each feedback alone).
    with store.engine.begin() as conn:
        conn.execute(insert(feedback), rows)


def arms(store: FeedbackStore, model: str, champion: tuple[int, int], challenger: tuple[int, int]) -> None:
    simulate(store, model, "1", "champion", *champion, seed=1)
    simulate(store, model, "2", "challenger", *challenger, seed=2)


def test_clear_win_promotes(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "win")
    cfg = ab_settings(tmp_path, registry, "win")
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "win", champion=(300, 150), challenger=(300, 240))
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "promote"
    assert out["result"]["status"] == "promoted"
    assert aliases_of(registry, "win") == {"champion": "2", "previous_champion": "1"}
    tags = version_info(registry, "win", "2")["tags"]
    assert tags["ab.decision"] == "promote"
    assert tags["ab.n_champion"] == "300" and tags["ab.n_challenger"] == "300"
    assert float(tags["ab.rate_challenger"]) == pytest.approx(0.8) and float(tags["ab.p_value"]) < 1e-10
    assert "ab.at" in tags
    assert read_json(tmp_path / "reports" / "ab_decision.json") == out
    assert out["aliases_after"] == {"champion": "2", "challenger": None}


def test_clear_win_waits_for_approval(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "gated")
    cfg = ab_settings(tmp_path, registry, "gated", promote={"require_approval": True})
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "gated", champion=(300, 150), challenger=(300, 240))
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "promote" and out["result"]["status"] == "needs_approval"
    assert aliases_of(registry, "gated") == {"champion": "1", "challenger": "2"}
    # A person approves; the next decision on the same evidence moves the champion.
    record_approval(registry, "gated", "2", "release-manager", "approved")
    again = run(cfg, Layout(tmp_path), store)
    assert again["result"]["status"] == "promoted"
    assert aliases_of(registry, "gated")["champion"] == "2"


def test_clear_loss_retires(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "loss")
    cfg = ab_settings(tmp_path, registry, "loss")
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "loss", champion=(300, 240), challenger=(300, 150))
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "retire" and out["result"]["status"] == "retired"
    assert aliases_of(registry, "loss") == {"champion": "1"}
    tags = version_info(registry, "loss", "2")["tags"]
    assert tags["ab.decision"] == "retire" and "significantly worse" in tags["retired.reason"]


def test_too_little_data_collects_whatever_the_difference(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "small")
    cfg = ab_settings(tmp_path, registry, "small")  # min_feedback 100 by default
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "small", champion=(20, 4), challenger=(20, 19))
    out = run(cfg, Layout(tmp_path), store)
    decision = out["decision"]
    assert decision["action"] == "collect" and out["result"] is None
    assert decision["needed"] == {"champion": 80, "challenger": 80}
    assert "80 more on the champion" in decision["reason"] and decision["p_value"] < 0.05
    assert aliases_of(registry, "small") == {"champion": "1", "challenger": "2"}
    assert version_info(registry, "small", "2")["tags"]["ab.decision"] == "collect"


def test_no_significant_difference_collects(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "tie")
    cfg = ab_settings(tmp_path, registry, "tie")
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "tie", champion=(400, 240), challenger=(400, 246))
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "collect" and "not significant" in out["decision"]["reason"]
    assert out["decision"]["p_value"] > 0.05
    assert aliases_of(registry, "tie") == {"champion": "1", "challenger": "2"}


def test_no_challenger(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "solo", versions=1, challenger=None)
    cfg = ab_settings(tmp_path, registry, "solo")
    store = FeedbackStore(cfg.serve.store_url)
    simulate(store, "solo", "1", "champion", 200, 100, seed=3)
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "no_challenger" and out["result"] is None
    assert aliases_of(registry, "solo") == {"champion": "1"}


def test_pinned_feedback_does_not_count(tmp_path: Path, registry: str) -> None:
    make_ab_model(registry, "pinned")
    cfg = ab_settings(tmp_path, registry, "pinned")
    store = FeedbackStore(cfg.serve.store_url)
    simulate(store, "pinned", "1", "champion", 300, 150, seed=1)
    # Enthusiasts who chose the challenger themselves: a big, biased sample, not evidence.
    simulate(store, "pinned", "2", "challenger", 300, 290, seed=2, pinned=True)
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "collect" and out["decision"]["needed"] == {"challenger": 100}
    assert aliases_of(registry, "pinned") == {"champion": "1", "challenger": "2"}


def report_of(champion: tuple[int, int] | None, challenger: tuple[int, int] | None) -> dict[str, Any]:
    """A minimal report as `ab_report` shapes it, from (rated, positive) per arm."""
    from tuneline.ab.stats import two_proportion_test

    def arm(version: str, counts: tuple[int, int] | None) -> dict[str, Any] | None:
        return None if counts is None else {
            "version": version, "rated": counts[0], "positive": counts[1],
            "rate": counts[1] / counts[0] if counts[0] else None,
        }

    test = None
    if champion and challenger and champion[0] and challenger[0]:
        t = two_proportion_test(champion[1], champion[0], challenger[1], challenger[0])
        test = {"difference": t["difference"], "p_value": t["p_value"]}
    return {"arms": {"champion": arm("1", champion), "challenger": arm("2", challenger)}, "test": test}


def test_decide_rules() -> None:
    params = AbParams(min_feedback=100, alpha=0.05)
    assert decide(report_of((300, 150), (300, 240)), params).action == "promote"
    assert decide(report_of((300, 240), (300, 150)), params).action == "retire"
    # One short of the floor on one side, with a huge difference: still never promoted.
    short = decide(report_of((300, 100), (99, 99)), params)
    assert short.action == "collect" and short.needed == {"challenger": 1} and short.p_value < 1e-10
    # The floor counts rated exchanges, so it applies to a lopsided split as well.
    assert decide(report_of((0, 0), (500, 400)), params).needed == {"champion": 100}
    assert decide(report_of((300, 150), None), params).action == "no_challenger"
    assert decide(report_of(None, (300, 150)), params).action == "collect"
    # A stricter alpha turns a borderline win into "not significant".
    border = report_of((100, 45), (100, 60))  # p = 0.0337
    assert decide(border, params).action == "promote"
    assert decide(border, AbParams(min_feedback=100, alpha=0.01)).action == "collect"


def test_a_winner_that_did_not_pass_the_gate_is_not_promoted(tmp_path: Path, registry: str) -> None:
    """Live feedback alone never promotes: the challenger must also have passed the offline gate."""
    make_ab_model(registry, "ungated")
    client(registry).set_model_version_tag("ungated", "2", "gate.status", "rejected")
    cfg = ab_settings(tmp_path, registry, "ungated")
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "ungated", champion=(300, 150), challenger=(300, 240))
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "promote"
    assert out["result"]["status"] == "rejected" and "gate.status is rejected" in out["result"]["reason"]
    assert aliases_of(registry, "ungated")["champion"] == "1"


def test_a_winner_the_gate_sent_for_approval_waits_for_it(tmp_path: Path, registry: str) -> None:
    """Fault: `ab decide` read promote.require_approval (off) instead of the challenger's own verdict
    (gate.status await_approval) and promoted it with no approval."""
    make_ab_model(registry, "verdict")
    client(registry).set_model_version_tag("verdict", "2", "gate.status", "await_approval")
    cfg = ab_settings(tmp_path, registry, "verdict")  # promote.require_approval is off today
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "verdict", champion=(300, 150), challenger=(300, 240))
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "promote" and out["result"]["status"] == "needs_approval"
    assert aliases_of(registry, "verdict") == {"champion": "1", "challenger": "2"}
    record_approval(registry, "verdict", "2", "release-manager", "approved")
    tags = version_info(registry, "verdict", "2")["tags"]
    assert tags["approval.gate_status"] == "await_approval" and tags["approval.champion"] == "1"
    assert run(cfg, Layout(tmp_path), store)["result"]["status"] == "promoted"
    assert aliases_of(registry, "verdict")["champion"] == "2"


def test_a_winner_judged_against_another_champion_is_stale(tmp_path: Path, registry: str) -> None:
    """Fault: a canary judged offline against champion 1 was promoted on live feedback over champion 3,
    which its gate never compared it with. Also a version with no record of its champion (fail closed)."""
    make_ab_model(registry, "moved", versions=3, champion="3")
    client(registry).set_model_version_tag("moved", "2", "gate.champion", "1")  # judged when 1 was champion
    cfg = ab_settings(tmp_path, registry, "moved")
    store = FeedbackStore(cfg.serve.store_url)
    simulate(store, "moved", "3", "champion", 300, 150, seed=1)
    simulate(store, "moved", "2", "challenger", 300, 240, seed=2)
    out = run(cfg, Layout(tmp_path), store)
    assert out["decision"]["action"] == "promote" and out["result"]["status"] == "stale_evaluation"
    assert "judged against champion 1" in out["result"]["reason"] and "evaluate" in out["result"]["reason"]
    assert aliases_of(registry, "moved") == {"champion": "3", "challenger": "2"}
    client(registry).delete_model_version_tag("moved", "2", "gate.champion")
    out = run(cfg, Layout(tmp_path), store)
    assert out["result"]["status"] == "stale_evaluation" and "no record" in out["result"]["reason"]
    assert aliases_of(registry, "moved")["champion"] == "3"


def test_a_retired_challenger_can_never_be_approved(tmp_path: Path, registry: str) -> None:
    """Fault: `tuneline promote --approve` made champion a version `ab decide` had retired as
    significantly worse (its gate.status still said it passed)."""
    from tuneline.promote.promote import approve

    make_ab_model(registry, "retired")
    cfg = ab_settings(tmp_path, registry, "retired", promote={"require_approval": True})
    store = FeedbackStore(cfg.serve.store_url)
    arms(store, "retired", champion=(300, 240), challenger=(300, 150))
    assert run(cfg, Layout(tmp_path), store)["result"]["status"] == "retired"
    result = approve(cfg, Layout(tmp_path), "2", "release-manager")
    assert not result["promoted"] and result["status"] == "retired"
    assert "never promoted" in result["reason"]
    assert aliases_of(registry, "retired") == {"champion": "1"}
    assert "approval.decision" not in version_info(registry, "retired", "2")["tags"]  # nothing recorded
    # Nor by a direct alias move that skips the approval step.
    from tuneline.promote.aliases import promote

    assert promote(registry, "retired", "2", "1").status == "retired"
    assert aliases_of(registry, "retired") == {"champion": "1"}
