"""Promotion: the gate's pure decision (`gate`), the alias moves it leads to (`aliases`), and the words
both speak (`status`)."""

from tuneline.promote.aliases import (
    PromotionResult,
    RollbackResult,
    apply_decision,
    approval_of,
    promote,
    record_approval,
    retire_challenger,
    rollback,
)
from tuneline.promote.gate import Decision, decide
from tuneline.promote.status import MoveStatus, Verdict

__all__ = [
    "Decision",
    "MoveStatus",
    "PromotionResult",
    "RollbackResult",
    "apply_decision",
    "approval_of",
    "decide",
    "promote",
    "record_approval",
    "retire_challenger",
    "rollback",
    "Verdict",
]
