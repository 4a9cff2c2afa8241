"""The words of promotion, one type per concept: the gate's verdict and the result of moving aliases.

    Verdict     what the gate (`gate.decide`) says about a version; recorded as its `gate.status` tag
                and, on approval, as `approval.gate_status`
    AbAction    what live feedback says (`ab.decide`); recorded as the challenger's `ab.decision` tag
    MoveStatus  what an alias move (`aliases.promote`, `retire_challenger`, `rollback`) did or why it
                refused; the `status` of reports/promote.json's and reports/ab_decision.json's result

Both are `StrEnum`s, so a member compares equal to its string and JSON reports and registry tags stay
plain strings. The values are the words tuneline has always written: tags set by older versions
("promote", "await_approval", "rejected") read back as the same members (`Verdict.of_tag`).
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """The gate's verdict on a version."""

    PROMOTE = "promote"  # every criterion passed: move the champion now
    AWAIT_APPROVAL = "await_approval"  # every criterion passed; a person's approval moves the champion
    REJECTED = "rejected"  # a criterion failed: the champion stays

    @property
    def passed(self) -> bool:
        """Every criterion passed (PROMOTE or AWAIT_APPROVAL): only such a version may be approved,
        canaried or promoted on live feedback."""
        return self is not Verdict.REJECTED

    @classmethod
    def of_tag(cls, value: str | None) -> Verdict | None:
        """The verdict a `gate.status` / `approval.gate_status` tag holds; None when the version was never
        judged (no tag, "none") or the tag holds a word the gate never wrote."""
        try:
            return None if value is None else cls(value)
        except ValueError:
            return None


class AbAction(StrEnum):
    """What the A/B test on live feedback says about the challenger."""

    PROMOTE = "promote"  # significantly better on enough feedback
    RETIRE = "retire"  # significantly worse: the challenger alias goes
    COLLECT = "collect"  # too little feedback, or no significant difference
    NO_CHALLENGER = "no_challenger"  # nothing to compare


class MoveStatus(StrEnum):
    """What an alias move did (`promoted`, `canary`, `rolled_back`) or why nothing moved."""

    PROMOTED = "promoted"  # the version is the champion now
    CANARY = "canary"  # it passed and stays challenger: live traffic decides (`tuneline ab decide`)
    NEEDS_APPROVAL = "needs_approval"  # it passed; no (current) approval is recorded yet
    REJECTED = "rejected"  # the gate rejected it (it loses the challenger alias)
    APPROVAL_REJECTED = "approval_rejected"  # a person rejected it
    RETIRED = "retired"  # the A/B test (or the gate) retired it
    STALE_EVALUATION = "stale_evaluation"  # judged against another champion than the current one
    CONFLICT = "conflict"  # the aliases moved since the caller read them (compare-and-set refused)
    ALREADY_CHAMPION = "already_champion"  # nothing to do
    ALREADY_REGISTERED = "already_registered"  # this adapter is a judged version already
    ROLLED_BACK = "rolled_back"  # the previous champion serves again
    NOTHING_TO_ROLL_BACK = "nothing_to_roll_back"  # no previous champion alias


def passed(status: str | None) -> bool:
    """Whether a gate verdict (a `Decision`'s, or a version's `gate.status` tag, old tags included) let
    the version through."""
    verdict = Verdict.of_tag(status)
    return verdict is not None and verdict.passed
