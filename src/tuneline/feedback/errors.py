"""The feedback store's errors, apart from the store itself so that a module that only catches them (the
server's stream handler) does not import SQLAlchemy (~1.4 s) at start-up."""

from __future__ import annotations

from tuneline.errors import TunelineError


class StoreError(TunelineError):
    """The feedback store cannot be opened or refused a write (unknown request id, bad URL)."""


class UnknownRequest(StoreError):
    """Feedback names a request id the store has never seen."""

    exit_code = 4
