"""Promotion: the gate's pure decision (`gate`) and the alias moves it leads to (`aliases`)."""

from tuneline.promote.aliases import (
    AliasNames,
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

__all__ = [
    "AliasNames",
    "Decision",
    "PromotionResult",
    "RollbackResult",
    "apply_decision",
    "approval_of",
    "decide",
    "promote",
    "record_approval",
    "retire_challenger",
    "rollback",
]
