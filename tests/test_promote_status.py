"""One name per concept in promotion (issue 16): the gate's `Verdict` and the alias moves' `MoveStatus`
are typed, stay plain strings in reports and tags, and read the tags older versions wrote; the older
metric names are read in one place (`promote.stage.gate_metrics`)."""

from __future__ import annotations

import json

import pytest

from tuneline.config.promote import PromoteParams
from tuneline.promote.aliases import promote, refusal
from tuneline.promote.gate import Decision, decide
from tuneline.promote.promote import gate_metrics
from tuneline.promote.status import MoveStatus, Verdict, passed
from tuneline.registry.registry import aliases_of, client
from tuneline.serve.models import challenger_problem


@pytest.fixture()
def store(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mc = client(uri)
    mc.create_registered_model("m")
    for i in range(3):
        mc.create_model_version("m", source=f"/nowhere/m/{i + 1}")
    return uri


def _tag(uri: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client(uri).set_model_version_tag("m", version, key, value)


def test_tags_written_by_older_versions_read_as_the_same_verdicts(store: str) -> None:
    """Fault covered: the verdict was a bare string compared by hand in the stage, A/B and the flow; now
    a `Verdict`, it must still accept the words older versions of tuneline left on registry versions
    (`gate.status` / `approval.gate_status`: "promote", "await_approval", "rejected")."""
    promote(store, "m", "1", None)
    # Version 2 as an older tuneline left it: judged "await_approval" against champion 1, then approved.
    _tag(store, "2", {"gate.champion": "1", "gate.status": "await_approval",
                      "approval.decision": "approved", "approval.by": "ada",
                      "approval.gate_status": "await_approval", "approval.champion": "1"})
    _tag(store, "3", {"gate.champion": "1", "gate.status": "rejected"})
    assert Verdict.of_tag("await_approval") is Verdict.AWAIT_APPROVAL and passed("promote")
    assert Verdict.of_tag("none") is None and not passed(None) and not passed("rejected")
    assert challenger_problem(store, "m", "2") is None  # the server canaries it
    assert "gate.status rejected" in str(challenger_problem(store, "m", "3"))
    tags3 = client(store).get_model_version("m", "3").tags
    assert refusal(tags3, "3", "1") is not None and refusal(tags3, "3", "1")[0] is MoveStatus.REJECTED
    result = promote(store, "m", "2", "1", require_approval=True, require_evidence=True)
    assert result.status is MoveStatus.PROMOTED and aliases_of(store, "m")["champion"] == "2"


def test_statuses_stay_plain_strings_in_reports() -> None:
    """StrEnum members serialize as the words reports always held (run_report, the flow, the docs)."""
    d = decide(PromoteParams(), {"rouge_l": 0.5, "never_stop_rate": 0.0}, {"rouge_l": 0.1}, None,
               {"train_health_status": "ok", "train_alerts": [], "data_valid": True, "parity": True})
    assert d.status is Verdict.PROMOTE
    assert json.loads(json.dumps(d.to_dict()))["status"] == "promote" and d.tags()["gate.status"] == "promote"
    assert json.dumps({"status": MoveStatus.NEEDS_APPROVAL}) == '{"status": "needs_approval"}'
    assert Decision(False, Verdict.AWAIT_APPROVAL, []).passed and not Decision(False, Verdict.REJECTED).passed


def test_older_metric_names_are_read_once_as_the_current_names() -> None:
    """Fault covered: `METRIC_ALIASES` made the gate accept two names per metric everywhere. Now one
    reader maps the older names (`schema_valid_rate`, `field_accuracy`) of a report to the current ones;
    the current name wins unless it is None, as the alias table did."""
    old = {"rouge_l": 0.3, "schema_valid_rate": 0.5, "field_accuracy": 0.7}
    assert gate_metrics(old) == {"rouge_l": 0.3, "json_valid_rate": 0.5, "json_field_accuracy": 0.7}
    both = {"json_valid_rate": 0.9, "schema_valid_rate": 0.5,
            "json_field_accuracy": None, "field_accuracy": 0.7}
    assert gate_metrics(both) == {"json_valid_rate": 0.9, "json_field_accuracy": 0.7}
    assert gate_metrics(None) is None
    # A champion's metrics under the older name are compared like the candidate's.
    criteria = PromoteParams(primary_metric="json_field_accuracy", min_gain=0.0, min_json_valid_rate=0.0)
    context = {"train_health_status": "ok", "train_alerts": [], "data_valid": True, "parity": True}
    candidate = {"json_field_accuracy": 0.6, "never_stop_rate": 0.0}
    d = decide(criteria, candidate, {"json_field_accuracy": 0.1}, gate_metrics({"field_accuracy": 0.7}),
               context)
    assert d.failed == ["vs_champion"] and "champion 0.7" in d.rows[1]["reason"]
