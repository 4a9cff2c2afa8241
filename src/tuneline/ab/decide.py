"""The A/B decision: promote the challenger, retire it, or keep collecting feedback.

`decide` is pure (the report and the `ab` params in, a `Decision` out). `run` builds the report,
decides, records the numbers as tags on the challenger version and moves the aliases through
`tuneline.promote.aliases` (same lock, same compare-and-set, same release approval as the gate):

    promote        the challenger's positive rate is significantly higher (p < alpha) and both
                   variants have at least `min_feedback` rated exchanges
    retire         significantly lower, with the same amount of data: the challenger alias goes
    collect        too few ratings (says how many more each variant needs), or no significant
                   difference
    no_challenger  no challenger alias (or it names the champion): nothing to decide

Never promotes on too little data: the `min_feedback` floor is checked before the test is read.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from tuneline.ab.report import ab_report, summary_line
from tuneline.config import Config
from tuneline.config.ab import AbParams
from tuneline.feedback.store import FeedbackStore
from tuneline.jsonio import write_json
from tuneline.layout import Layout
from tuneline.promote.aliases import PromotionResult, promote, retire_challenger
from tuneline.promote.status import AbAction, MoveStatus, Verdict, passed
from tuneline.registry.registry import aliases_of, set_version_tags, version_info

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Decision:
    """What the A/B evidence says. `needed` is how many more rated exchanges each variant needs."""

    action: AbAction
    reason: str
    champion: str | None
    challenger: str | None
    n_champion: int
    n_challenger: int
    rate_champion: float | None
    rate_challenger: float | None
    p_value: float | None
    needed: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(report: dict[str, Any], ab_params: AbParams) -> Decision:
    """The decision on an A/B report (see the module doc for the rules).

    Args:
        report: what `ab_report` returned.
        ab_params: the `ab` params (min_feedback, alpha).
    """
    champ, chal, test = report["arms"]["champion"], report["arms"]["challenger"], report["test"]

    def made(action: AbAction, reason: str, needed: dict[str, int] | None = None) -> Decision:
        return Decision(
            action=action,
            reason=reason,
            champion=None if champ is None else champ["version"],
            challenger=None if chal is None else chal["version"],
            n_champion=0 if champ is None else champ["rated"],
            n_challenger=0 if chal is None else chal["rated"],
            rate_champion=None if champ is None else champ["rate"],
            rate_challenger=None if chal is None else chal["rate"],
            p_value=None if test is None else test["p_value"],
            needed=needed or {},
        )

    if chal is None:
        return made(AbAction.NO_CHALLENGER, "no version holds the challenger alias: nothing to compare")
    if champ is None:
        return made(AbAction.COLLECT, f"no champion to compare challenger version {chal['version']} against; "
                               "promote a champion through the gate first")
    if champ["version"] == chal["version"]:
        return made(AbAction.NO_CHALLENGER,
                    f"version {chal['version']} holds both aliases: nothing to compare")
    floor = ab_params.min_feedback
    needed = {v: floor - arm["rated"] for v, arm in (("champion", champ), ("challenger", chal))
              if arm["rated"] < floor}
    if needed:
        missing = ", ".join(f"{n} more on the {v} ({floor - n}/{floor})" for v, n in needed.items())
        return made(AbAction.COLLECT, f"not enough rated exchanges: need {missing}", needed)
    if test is None:  # cannot happen with min_feedback >= 1, kept so a bad report never promotes
        return made(AbAction.COLLECT, "no test result in the report")
    diff, p = test["difference"], test["p_value"]
    words = (f"challenger {chal['rate']:.1%} vs champion {champ['rate']:.1%} "
             f"({diff * 100:+.1f} points, p = {p:.3g}, alpha {ab_params.alpha:g})")
    if p < ab_params.alpha and diff > 0:
        return made(AbAction.PROMOTE, f"challenger significantly better: {words}")
    if p < ab_params.alpha and diff < 0:
        return made(AbAction.RETIRE, f"challenger significantly worse: {words}")
    return made(AbAction.COLLECT, f"difference not significant: {words}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def decision_tags(decision: Decision, at: str) -> dict[str, str]:
    """The `ab.*` version tags recording a decision ("none" for a missing number)."""

    def num(x: float | None) -> str:
        return "none" if x is None else f"{x:.6g}"

    return {
        "ab.decision": decision.action,
        "ab.p_value": num(decision.p_value),
        "ab.rate_champion": num(decision.rate_champion),
        "ab.rate_challenger": num(decision.rate_challenger),
        "ab.n_champion": str(decision.n_champion),
        "ab.n_challenger": str(decision.n_challenger),
        "ab.at": at,
    }


def run(cfg: Config, layout: Layout, store: FeedbackStore | None = None) -> dict[str, Any]:
    """Report, decide, tag the challenger, act; write reports/ab_decision.json.

    promote: only a challenger whose recorded gate.status passed; `promote(..., expected_champion=<the
    report's champion>)`, with the approval the version's own verdict asks for (gate.status
    await_approval, or promote.require_approval now): the status stays "needs_approval" until
    `tuneline promote --approve VERSION`. The version must have been judged against the current
    champion ("stale_evaluation" otherwise) and not retired. retire: `retire_challenger`. collect /
    no_challenger: nothing moves. A champion that moved since the report makes the promotion a
    "conflict" (nothing moves).

    Returns:
        {"decision": Decision.to_dict(), "result": PromotionResult.to_dict() or None, "aliases_before",
        "aliases_after", "at", "summary"}.

    Raises:
        StoreError, RegistryError, AbDataError: as `ab_report`; RegistryError also for a failed move.
    """
    reg, uri = cfg.registry, cfg.tracking.uri
    report = ab_report(cfg, layout, store)
    decision = decide(report, cfg.ab)
    at = _now()
    result = None
    if decision.challenger is not None and decision.action != AbAction.NO_CHALLENGER:
        set_version_tags(uri, reg.model_name, decision.challenger, decision_tags(decision, at))
    gate = (version_info(uri, reg.model_name, decision.challenger)["tags"].get("gate.status")
            if decision.action == AbAction.PROMOTE else None)
    if decision.action == AbAction.PROMOTE and not passed(gate):
        # Live feedback alone never promotes: the version must also have passed the offline gate.
        result = PromotionResult(False, MoveStatus.REJECTED, decision.challenger, decision.champion, None,
                                 f"version {decision.challenger} won the A/B test but its gate.status is "
                                 f"{gate or 'unset'}; only a version that passed the gate is promoted")
    elif decision.action == AbAction.PROMOTE:
        # The version's recorded verdict is the evidence: a gate that asked for a person's approval
        # still asks for it, whatever promote.require_approval says today.
        result = promote(uri, reg.model_name, decision.challenger, decision.champion, reg,
                         require_approval=gate != Verdict.PROMOTE or cfg.promote.require_approval,
                         require_evidence=True)
    elif decision.action == AbAction.RETIRE:
        result = retire_challenger(uri, reg.model_name, decision.challenger, decision.reason, reg)
    after = aliases_of(uri, reg.model_name)
    out = {
        "decision": decision.to_dict(),
        "result": None if result is None else result.to_dict(),
        "aliases_before": report["aliases"],
        "aliases_after": {
            "champion": after.get(reg.champion_alias), "challenger": after.get(reg.challenger_alias)
        },
        "at": at,
        "summary": summary_line(report),
    }
    write_json(layout.report("ab_decision"), out)
    logger.info("ab decide: %s: %s%s", decision.action, decision.reason,
                "" if result is None else f" -> {result.status}: {result.reason}")
    return out
