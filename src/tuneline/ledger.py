"""Row accounting: every stage proves rows read = rows kept + rows rejected, and says why rows left.

`finish_stage` is how a data stage ends: the ledger is checked before any output is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneline.jsonio import write_json, write_jsonl
from tuneline.layout import Layout


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


def finish_stage(
    layout: Layout,
    ledger: Ledger,
    rejected: list[dict[str, Any]],
    outputs: dict[Any, list[dict[str, Any]]],
) -> dict[str, Any]:
    """Check the ledger, then write every output, the stage's rejected file and its report, atomically.

    Raises:
        LedgerError: the ledger does not add up, or `rejected` holds another number of rows than it counted
            (nothing is written then).
    """
    if len(rejected) != ledger.rows_rejected:
        raise LedgerError(
            f"{ledger.stage}: {len(rejected)} rejected rows written but {ledger.rows_rejected} counted"
        )
    report = ledger.report()
    for path, rows in outputs.items():
        write_jsonl(path, rows)
    write_jsonl(layout.rejected(ledger.stage), rejected)
    write_json(layout.report(ledger.stage), report)
    return report
