"""Row accounting: every stage proves rows read = rows kept + rows rejected, and says why rows left."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class LedgerError(AssertionError):
    """A stage lost or invented rows: a bug in tuneline, never a data problem."""


@dataclass
class Ledger:
    stage: str
    rows_in: int = 0
    rows_kept: int = 0
    rows_added: int = 0
    rejected_by_reason: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def rows_out(self) -> int:
        return self.rows_kept + self.rows_added

    def check(self) -> None:
        if self.rows_in != self.rows_kept + self.rows_rejected:
            raise LedgerError(
                f"{self.stage}: rows in ({self.rows_in}) != kept ({self.rows_kept}) + rejected "
                f"({self.rows_rejected})"
            )

    def report(self) -> dict[str, Any]:
        """The `reports/<stage>.json` body (checked: a ledger that does not add up never gets written)."""
        self.check()
        return {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "rows_rejected": self.rows_rejected,
            "rows_added": self.rows_added,
            "rows_out": self.rows_out,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            **self.extra,
        }
