"""promote.keep_challenger_as_canary: a candidate that passes the gate beside a champion stays challenger
(live traffic decides); a failing one is rejected as before; with no champion yet it is promoted at once. And
`retire_challenger`, the A/B decision's "worse" move, is compare-and-set like `promote`."""

from __future__ import annotations

import pytest

from helpers import empty_registry, make_model
from tuneline.promote.aliases import apply_decision, promote, retire_challenger
from tuneline.promote.gate import Decision
from tuneline.promote.status import Verdict
from tuneline.registry.registry import aliases_of, client, version_info

PASS = Decision(promote=True, status=Verdict.PROMOTE, rows=[])
FAIL = Decision(promote=False, status=Verdict.REJECTED, rows=[])


@pytest.fixture()
def store(tmp_path) -> str:
    uri = empty_registry(tmp_path)
    make_model(uri, "m", 3)
    return uri


def test_passing_candidate_becomes_a_canary_beside_the_champion(store: str) -> None:
    first = apply_decision(store, "m", "1", PASS, None, keep_challenger_as_canary=True)
    assert first.promoted and first.status == "promoted"  # nothing to compare against live: promote
    client(store).set_registered_model_alias("m", "challenger", "2")
    result = apply_decision(store, "m", "2", PASS, "1", keep_challenger_as_canary=True)
    assert not result.promoted and result.status == "canary" and "ab decide" in result.reason
    assert aliases_of(store, "m") == {"champion": "1", "challenger": "2"}
    assert "canary.started" in version_info(store, "m", "2")["tags"]
    client(store).set_registered_model_alias("m", "challenger", "3")
    assert apply_decision(store, "m", "3", FAIL, "1", keep_challenger_as_canary=True).status == "rejected"
    assert aliases_of(store, "m") == {"champion": "1"}  # a rejected candidate is never canaried
    assert "gate rejected" in version_info(store, "m", "3")["tags"]["retired.reason"]


def test_retire_challenger_is_compare_and_set(store: str) -> None:
    promote(store, "m", "1", None)
    client(store).set_registered_model_alias("m", "challenger", "2")
    assert retire_challenger(store, "m", "3", "lost").status == "conflict"  # not the challenger
    result = retire_challenger(store, "m", "2", "worse on live feedback")
    assert result.status == "retired" and aliases_of(store, "m") == {"champion": "1"}
    tags = version_info(store, "m", "2")["tags"]
    assert tags["retired.reason"] == "worse on live feedback" and "retired.at" in tags
