"""The promotion gate: a pure decision over evaluation metrics and the run's evidence. No I/O.

    criterion          passes when                                                     missing evidence
    beats_base         candidate beats the base model on the primary metric by         fails
                       >= min_gain (loss: lower is better; the others: higher)
    vs_champion        tolerance rule: not worse than the champion by > tolerance;     no champion yet:
                       margin rule: better than the champion by >= margin              passes (skipped)
    json_valid_rate    candidate's json_valid_rate (outputs valid under the task's      no output schema
                       output schema, over the rows it covers) >= min_json_valid_rate  (metric absent):
                                                                                       passes; reported as
                                                                                       None (no structured
                                                                                       row): fails
    never_stop_rate    candidate's never-stop rate (over the rows whose reference      fails
                       fits the budget) <= max_never_stop_rate
    train_health       context["train_health_status"] is not "failed"                  fails
    overfitting        no "overfitting" alert in context["train_alerts"], or the       fails
                       alert is resolved: context["early_stopped"] is True
    data_valid         context["data_valid"] is True                                   fails
    parity             context["parity"] is True (registry model == in-process)        fails

Metrics go by the names the evaluate stage reports (`json_valid_rate`, `json_field_accuracy`, ...) and
nothing else; the criteria are a `PromoteParams`, whose defaults are the only defaults.

The gate fails closed: evidence that was not reported counts as failed, so a caller that forgets to
pass it cannot promote by accident. The two exceptions are by design: a first model has no champion
to compare with, and a task without an output schema has no schema-valid rate. Every failed row names
its metric and threshold in its reason; `Decision.failed` and `Decision.summary` name the criterion.

Why an overfitting alert can be resolved: the health monitor stops training at the first
overfitting signal and the trainer always restores the best-val-loss checkpoint at the end
(`load_best_model_at_end`), so when training stopped early the adapter under test predates the
divergence, and the held-out comparisons above judge it. An overfitting alert without an early stop
(training ran to its last step while diverging) blocks promotion.

Verdict (`status.Verdict`): REJECTED when any criterion fails; otherwise AWAIT_APPROVAL when the criteria
require a person's approval, else PROMOTE. "Not promoted" is a result, never an exception.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tuneline.config.promote import PromoteParams
from tuneline.promote.status import Verdict, passed

LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
SCHEMA_METRIC = "json_valid_rate"  # the schema-valid rate (evaluate: JSON that validates)
NEVER_STOP_METRIC = "never_stop_rate"
# Comparisons allow this much float noise (0.3 - 0.2 >= 0.1 must hold).
EPS = 1e-9
CRITERIA = (
    "beats_base",
    "vs_champion",
    SCHEMA_METRIC,
    NEVER_STOP_METRIC,
    "train_health",
    "overfitting",
    "data_valid",
    "parity",
)


@dataclass(frozen=True)
class Decision:
    """The gate's result: whether to promote now, the status, and one row per criterion."""

    promote: bool
    status: Verdict
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every criterion passed (the verdict is PROMOTE or AWAIT_APPROVAL)."""
        return passed(self.status)

    @property
    def failed(self) -> list[str]:
        """Names of the criteria that failed, in table order."""
        return [r["criterion"] for r in self.rows if not r["passed"]]

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.failed:
            reasons = "; ".join(f"{r['criterion']}: {r['reason']}" for r in self.rows if not r["passed"])
            return f"{self.status}: {reasons}"
        return f"{self.status}: all {len(self.rows)} criteria passed"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (reports/promote.json)."""
        return {
            "promote": self.promote,
            "status": self.status,
            "passed": self.passed,
            "failed": self.failed,
            "rows": [dict(r) for r in self.rows],
        }

    def tags(self) -> dict[str, str]:
        """Model version tags recording the decision: gate.status, gate.failed, gate.rows (JSON)."""
        return {
            "gate.status": self.status,
            "gate.failed": ",".join(self.failed) or "none",
            "gate.rows": json.dumps(self.rows, sort_keys=True, default=str),
        }


def _number(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    """The finite number for metric `name`, or None when absent, None or not finite."""
    value = (metrics or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def gain(candidate: float, reference: float, metric: str) -> float:
    """How much better `candidate` is than `reference` on `metric` (positive = better)."""
    return reference - candidate if metric in LOWER_IS_BETTER else candidate - reference


def _row(criterion: str, value: Any, threshold: Any, ok: bool, reason: str) -> dict[str, Any]:
    return {
        "criterion": criterion,
        "value": value,
        "threshold": threshold,
        "passed": bool(ok),
        "reason": reason,
    }


def _beats_base(metric: str, min_gain: float, candidate: Mapping, base: Mapping) -> dict[str, Any]:
    cand, ref = _number(candidate, metric), _number(base, metric)
    if cand is None or ref is None:
        who = "candidate" if cand is None else "base"
        return _row("beats_base", None, min_gain, False, f"{metric} missing or not finite for the {who}")
    g = gain(cand, ref, metric)
    ok = g >= min_gain - EPS
    word = "lower" if metric in LOWER_IS_BETTER else "higher"
    return _row(
        "beats_base",
        g,
        min_gain,
        ok,
        f"{metric} {cand:.4g} vs base {ref:.4g}: gain {g:+.4g} ({word} is better), "
        f"{'meets' if ok else 'below'} min_gain {min_gain:g}",
    )


def _vs_champion(criteria: PromoteParams, metric: str, candidate: Mapping, champion: Mapping | None
                 ) -> dict[str, Any]:
    rule = criteria.champion_rule
    threshold = -criteria.tolerance if rule == "tolerance" else criteria.margin
    if champion is None:
        return _row("vs_champion", None, threshold, True, "skipped: no champion yet")
    cand, ref = _number(candidate, metric), _number(champion, metric)
    if cand is None or ref is None:
        who = "candidate" if cand is None else "champion"
        return _row("vs_champion", None, threshold, False, f"{metric} missing or not finite for the {who}")
    g = gain(cand, ref, metric)
    ok = g >= threshold - EPS
    if rule == "tolerance":
        how = f"not worse than the champion by more than {-threshold:g}"
    else:
        how = f"better than the champion by at least {threshold:g}"
    return _row(
        "vs_champion",
        g,
        threshold,
        ok,
        f"{metric} {cand:.4g} vs champion {ref:.4g}: gain {g:+.4g}; {rule} rule needs {how}",
    )


def _floors(criteria: PromoteParams, candidate: Mapping) -> list[dict[str, Any]]:
    rows = []
    floor = criteria.min_json_valid_rate
    valid = _number(candidate, SCHEMA_METRIC)
    if SCHEMA_METRIC not in (candidate or {}):
        rows.append(_row(SCHEMA_METRIC, None, floor, True, "skipped: no output schema (metric absent)"))
    elif candidate[SCHEMA_METRIC] is None:
        # A schema is configured but no generated row was of a structured category: nothing was judged.
        rows.append(_row(SCHEMA_METRIC, None, floor, False,
                         "json_valid_rate is None: no evaluated row has an output schema"))
    elif valid is None:
        rows.append(_row(SCHEMA_METRIC, None, floor, False, "json_valid_rate is not a finite number"))
    else:
        ok = valid >= floor - EPS
        rows.append(_row(SCHEMA_METRIC, valid, floor, ok,
                         f"json_valid_rate {valid:.4g} {'>=' if ok else '<'} floor {floor:g}"))
    ceiling = criteria.max_never_stop_rate
    never = _number(candidate, NEVER_STOP_METRIC)
    excluded = (candidate or {}).get("never_stop_excluded")
    if never is None:
        why = "never_stop_rate not reported"
        if excluded:
            why += (f": the references of all {excluded} rows exceed the generation budget "
                    "(evaluate.max_new_tokens), so no reply could have stopped")
        rows.append(_row(NEVER_STOP_METRIC, None, ceiling, False, why))
    else:
        ok = never <= ceiling + EPS
        left_out = f" ({excluded} rows with references over the budget left out)" if excluded else ""
        rows.append(_row(NEVER_STOP_METRIC, never, ceiling, ok,
                         f"never_stop_rate {never:.4g} {'<=' if ok else '>'} ceiling {ceiling:g}{left_out}"))
    return rows


def _alert_kinds(alerts: Any) -> list[str]:
    """Alert kinds from a list of kinds, alert dicts ({"kind": ...}) or a comma-separated string."""
    if isinstance(alerts, str):
        return [a.strip() for a in alerts.split(",") if a.strip() and a.strip() != "none"]
    return [a.get("kind", "") if isinstance(a, Mapping) else str(a) for a in alerts]


def _training(context: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    status = context.get("train_health_status")
    if status is None:
        rows.append(_row("train_health", None, "not failed", False, "train_health_status not reported"))
    else:
        ok = status != "failed"
        rows.append(
            _row(
                "train_health",
                status,
                "not failed",
                ok,
                f"training health {status}" + ("" if ok else ": a blocking alert stopped training"),
            )
        )
    if "train_alerts" not in context or context["train_alerts"] is None:
        rows.append(_row("overfitting", None, "none or early-stopped", False, "train_alerts not reported"))
        return rows
    overfit = "overfitting" in _alert_kinds(context["train_alerts"])
    early = context.get("early_stopped") is True
    if not overfit:
        rows.append(_row("overfitting", False, "none or early-stopped", True, "no overfitting alert"))
    elif early:
        rows.append(
            _row(
                "overfitting",
                True,
                "none or early-stopped",
                True,
                "overfitting alert resolved: training stopped early and the best checkpoint was kept",
            )
        )
    else:
        rows.append(
            _row(
                "overfitting",
                True,
                "none or early-stopped",
                False,
                "overfitting alert and training did not stop early",
            )
        )
    return rows


def _flag(context: Mapping[str, Any], key: str, criterion: str, ok_reason: str, bad_reason: str) -> dict:
    value = context.get(key)
    if value is None:
        return _row(criterion, None, True, False, f"{key} not reported")
    ok = value is True
    return _row(criterion, value, True, ok, ok_reason if ok else bad_reason)


def decide(
    criteria: PromoteParams,
    candidate: Mapping[str, Any],
    base: Mapping[str, Any],
    champion: Mapping[str, Any] | None,
    context: Mapping[str, Any],
) -> Decision:
    """Decide whether the candidate may replace the champion.

    Args:
        criteria: the `promote` params (primary_metric, min_gain, champion_rule, tolerance, margin,
            min_json_valid_rate, max_never_stop_rate, require_approval).
        candidate: the candidate's metrics on the test split, by the evaluate stage's names
            ({"rouge_l": .., "loss": .., "never_stop_rate": .., "json_valid_rate": .. (only with an
            output schema)}).
        base: the base model's metrics on the same rows.
        champion: the current champion's metrics on the same rows, or None when there is none.
        context: the run's evidence: train_health_status ("ok" | "warning" | "failed"),
            train_alerts (alert kinds or alert dicts), early_stopped (bool), data_valid (bool),
            parity (bool).

    Returns:
        The `Decision`: promote (bool), status, and one row per criterion in `CRITERIA` order.
    """
    metric = criteria.primary_metric
    rows = [
        _beats_base(metric, criteria.min_gain, candidate, base),
        _vs_champion(criteria, metric, candidate, champion),
        *_floors(criteria, candidate),
        *_training(context),
        _flag(context, "data_valid", "data_valid", "data validation passed", "data validation failed"),
        _flag(
            context,
            "parity",
            "parity",
            "registry model reproduces in-process outputs",
            "registry model outputs differ from in-process outputs",
        ),
    ]
    if any(not r["passed"] for r in rows):
        return Decision(promote=False, status=Verdict.REJECTED, rows=rows)
    if criteria.require_approval:
        return Decision(promote=False, status=Verdict.AWAIT_APPROVAL, rows=rows)
    return Decision(promote=True, status=Verdict.PROMOTE, rows=rows)
