"""The promotion gate's decision table: each criterion alone blocks, the rules, fail-closed evidence."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tuneline.config.promote import PromoteParams
from tuneline.promote.gate import CRITERIA, decide

CANDIDATE = {"rouge_l": 0.50, "loss": 2.0, "never_stop_rate": 0.0, "json_valid_rate": 1.0}
BASE = {"rouge_l": 0.30, "loss": 2.5, "never_stop_rate": 0.0, "json_valid_rate": 0.9}
CHAMPION = {"rouge_l": 0.49, "loss": 2.05, "never_stop_rate": 0.0, "json_valid_rate": 1.0}
CONTEXT = {
    "train_health_status": "ok",
    "train_alerts": [],
    "early_stopped": False,
    "data_valid": True,
    "parity": True,
}


def case() -> dict[str, Any]:
    """A candidate that passes every criterion (each test breaks one thing)."""
    return {
        "criteria": PromoteParams(min_gain=0.05, tolerance=0.01),
        "candidate": dict(CANDIDATE),
        "base": dict(BASE),
        "champion": dict(CHAMPION),
        "context": copy.deepcopy(CONTEXT),
    }


def run(c: dict[str, Any]) -> Any:
    return decide(c["criteria"], c["candidate"], c["base"], c["champion"], c["context"])


def test_all_pass_promotes_with_one_row_per_criterion() -> None:
    d = run(case())
    assert d.promote and d.status == "promote" and d.passed and d.failed == []
    assert [r["criterion"] for r in d.rows] == list(CRITERIA)
    for row in d.rows:
        assert set(row) == {"criterion", "value", "threshold", "passed", "reason"} and row["reason"]
    json.dumps(d.to_dict())  # report-ready


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    key, field = path.split(".")
    return lambda c: c[key].__setitem__(field, value)


# criterion -> a change that breaks only that criterion.
BREAKERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "beats_base": _set("candidate.rouge_l", 0.33),  # +0.03 over the base < min_gain 0.05
    "vs_champion": _set("champion.rouge_l", 0.60),  # candidate 0.10 worse than the champion
    "json_valid_rate": _set("candidate.json_valid_rate", 0.90),
    "never_stop_rate": _set("candidate.never_stop_rate", 0.20),
    "train_health": _set("context.train_health_status", "failed"),
    "overfitting": _set("context.train_alerts", ["flat_val_loss", "overfitting"]),
    "data_valid": _set("context.data_valid", False),
    "parity": _set("context.parity", False),
}


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_failing_alone_blocks_and_is_named(criterion: str) -> None:
    c = case()
    if criterion == "beats_base":  # keep the champion comparison passing: lower the champion too
        c["champion"]["rouge_l"] = 0.33
    BREAKERS[criterion](c)
    d = run(c)
    assert not d.promote and d.status == "rejected" and not d.passed
    assert d.failed == [criterion]
    assert criterion in d.summary()


def test_loss_is_lower_is_better() -> None:
    c = case()
    c["criteria"] = PromoteParams(primary_metric="loss", min_gain=0.1, tolerance=0.0)
    d = run(c)
    row = d.rows[0]
    assert d.promote and row["value"] == pytest.approx(0.5) and "lower is better" in row["reason"]
    c["candidate"]["loss"] = 2.6  # higher loss than the base: worse
    d = run(c)
    assert d.failed == ["beats_base", "vs_champion"]


def test_champion_rules_tolerance_and_margin() -> None:
    c = case()  # candidate 0.50 vs champion 0.49
    c["champion"]["rouge_l"] = 0.505  # 0.005 worse: inside tolerance 0.01
    assert run(c).promote
    c["champion"]["rouge_l"] = 0.52  # 0.02 worse: outside
    assert run(c).failed == ["vs_champion"]
    c = case()
    c["criteria"] = PromoteParams(min_gain=0.05, champion_rule="margin", margin=0.02)
    assert run(c).failed == ["vs_champion"]  # +0.01 over the champion < margin 0.02
    c["champion"]["rouge_l"] = 0.47
    d = run(c)
    assert d.promote and d.rows[1]["value"] == pytest.approx(0.03) and d.rows[1]["threshold"] == 0.02


def test_no_champion_is_skipped_and_passed() -> None:
    c = case()
    c["champion"] = None
    d = run(c)
    row = d.rows[CRITERIA.index("vs_champion")]
    assert d.promote and row["passed"] and "no champion" in row["reason"]


def test_schema_rate_only_checked_when_present() -> None:
    c = case()
    del c["candidate"]["json_valid_rate"]
    d = run(c)
    row = d.rows[CRITERIA.index("json_valid_rate")]
    assert d.promote and row["passed"] and row["value"] is None and "no output schema" in row["reason"]


def test_float_noise_at_the_threshold_passes() -> None:
    c = case()
    c["criteria"] = PromoteParams(min_gain=0.1)
    c["candidate"]["rouge_l"], c["base"]["rouge_l"] = 0.3, 0.2  # 0.3 - 0.2 = 0.09999999999999998
    c["champion"] = None
    assert run(c).promote


def test_overfitting_resolved_by_early_stopping() -> None:
    c = case()
    c["context"]["train_alerts"] = [{"kind": "overfitting", "severity": "warning"}]
    assert run(c).failed == ["overfitting"]
    c["context"]["early_stopped"] = True
    d = run(c)
    assert d.promote and "resolved" in d.rows[CRITERIA.index("overfitting")]["reason"]
    c["context"]["train_alerts"] = "flat_val_loss,overfitting"  # the MLflow tag form
    c["context"]["early_stopped"] = False
    assert run(c).failed == ["overfitting"]
    c["context"]["train_alerts"] = "none"
    assert run(c).promote


def test_warning_health_does_not_block() -> None:
    c = case()
    c["context"]["train_health_status"] = "warning"
    c["context"]["train_alerts"] = ["lr_off_schedule"]
    assert run(c).promote


@pytest.mark.parametrize(
    ("where", "key", "criterion"),
    [
        ("context", "train_health_status", "train_health"),
        ("context", "train_alerts", "overfitting"),
        ("context", "data_valid", "data_valid"),
        ("context", "parity", "parity"),
        ("candidate", "never_stop_rate", "never_stop_rate"),
        ("candidate", "rouge_l", "beats_base"),
    ],
)
def test_missing_evidence_fails_closed(where: str, key: str, criterion: str) -> None:
    c = case()
    del c[where][key]
    if criterion == "beats_base":  # the champion comparison needs the same metric: both fail
        assert run(c).failed == ["beats_base", "vs_champion"]
        return
    d = run(c)
    assert d.failed == [criterion] and "not reported" in d.rows[CRITERIA.index(criterion)]["reason"]


def test_non_finite_metric_fails() -> None:
    c = case()
    c["candidate"]["rouge_l"] = float("nan")
    assert set(run(c).failed) == {"beats_base", "vs_champion"}


def test_truthy_non_bool_flags_do_not_pass() -> None:
    c = case()
    c["context"]["parity"] = "yes"
    assert run(c).failed == ["parity"]


def test_require_approval_awaits_instead_of_promoting() -> None:
    c = case()
    c["criteria"] = PromoteParams(min_gain=0.05, require_approval=True)
    d = run(c)
    assert d.status == "await_approval" and not d.promote and d.passed
    BREAKERS["parity"](c)
    assert run(c).status == "rejected"  # approval never rescues a failed criterion


def test_decision_tags() -> None:
    c = case()
    BREAKERS["data_valid"](c)
    d = run(c)
    tags = d.tags()
    assert tags["gate.status"] == "rejected" and tags["gate.failed"] == "data_valid"
    assert json.loads(tags["gate.rows"])[CRITERIA.index("data_valid")]["passed"] is False


def test_the_gate_reads_one_name_per_metric() -> None:
    """Fault: an alias table made `schema_valid_rate` and `json_valid_rate` one metric inside the gate
    (and `field_accuracy` / `json_field_accuracy`): two names for a concept. The gate reads the evaluate
    stage's names only; older names are read once, by `promote.stage.gate_metrics`."""
    c = case()
    c["candidate"]["schema_valid_rate"] = c["candidate"].pop("json_valid_rate") - 0.5
    row = run(c).rows[CRITERIA.index("json_valid_rate")]
    assert row["passed"] and row["value"] is None and "metric absent" in row["reason"]
    c["criteria"] = PromoteParams(primary_metric="json_field_accuracy", min_gain=0.1, min_json_valid_rate=0.0)
    c["candidate"]["json_field_accuracy"], c["base"]["json_field_accuracy"] = 0.9, 0.5
    c["champion"] = {"json_field_accuracy": 0.85}
    d = run(c)
    assert d.promote and d.rows[0]["value"] == pytest.approx(0.4)


def test_the_champion_tolerance_comes_from_the_params_alone() -> None:
    """Fault: `decide(criteria: Any)` had its own fallback tolerance 0.0 where the config's default is
    0.01, so a caller passing a mapping without `tolerance` got a stricter gate than params.yaml's."""
    c = case()
    c["criteria"] = PromoteParams(min_gain=0.05)  # tolerance: the config's default
    c["champion"]["rouge_l"] = 0.505  # the candidate (0.50) is 0.005 worse: within 0.01
    row = run(c).rows[CRITERIA.index("vs_champion")]
    assert row["passed"] and row["threshold"] == pytest.approx(-PromoteParams().tolerance) == -0.01


def test_worse_than_base_on_rouge_l_is_refused_naming_the_criterion() -> None:
    """A candidate whose generations are worse than the base's on the primary metric (rouge_l) is refused:
    `beats_base` is in the decision's failed list, and the human-readable reason names the criterion, the
    metric, both values and the rule."""
    c = case()
    c["champion"] = None  # first model: only the base comparison judges
    c["candidate"]["rouge_l"] = 0.25  # base 0.30
    d = run(c)
    assert not d.promote and d.status == "rejected" and d.failed == ["beats_base"]
    assert d.to_dict()["failed"] == ["beats_base"] and d.tags()["gate.failed"] == "beats_base"
    reason = d.rows[CRITERIA.index("beats_base")]["reason"]
    assert reason == "rouge_l 0.25 vs base 0.3: gain -0.05 (higher is better), below min_gain 0.05"
    assert d.summary() == f"rejected: beats_base: {reason}"


# criterion -> what its failing row's reason must name besides the criterion (metric and threshold).
NAMED_IN_REASON = {
    "beats_base": ("rouge_l", "min_gain 0.05"),
    "vs_champion": ("rouge_l", "tolerance rule"),
    "json_valid_rate": ("json_valid_rate", "floor 0.98"),
    "never_stop_rate": ("never_stop_rate", "ceiling 0.01"),
}


@pytest.mark.parametrize("criterion", list(NAMED_IN_REASON))
def test_a_failed_metric_criterion_names_its_metric_and_threshold(criterion: str) -> None:
    """The schema floor and never-stop ceiling used to say only '0.9 < floor 0.98': which rate?"""
    c = case()
    if criterion == "beats_base":
        c["champion"]["rouge_l"] = 0.33
    BREAKERS[criterion](c)
    d = run(c)
    assert d.failed == [criterion]
    for words in (criterion, *NAMED_IN_REASON[criterion]):
        assert words in d.summary()


def test_schema_rate_reported_as_none_fails() -> None:
    """A schema is configured (the key is there) but no evaluated row had one: nothing was judged, so the
    floor cannot pass; an absent key (no schema) still skips."""
    c = case()
    c["candidate"]["json_valid_rate"] = None
    d = run(c)
    row = d.rows[CRITERIA.index("json_valid_rate")]
    assert d.failed == ["json_valid_rate"] and "no evaluated row has an output schema" in row["reason"]


def test_never_stop_reason_counts_rows_over_the_budget() -> None:
    c = case()
    c["candidate"]["never_stop_excluded"] = 3
    row = run(c).rows[CRITERIA.index("never_stop_rate")]
    assert row["passed"] and "3 rows with references over the budget left out" in row["reason"]
    c["candidate"]["never_stop_rate"] = None  # every reference was over the budget
    d = run(c)
    row = d.rows[CRITERIA.index("never_stop_rate")]
    assert d.failed == ["never_stop_rate"] and "evaluate.max_new_tokens" in row["reason"]
