"""The one error a conversation that a chat template cannot render raises."""

from __future__ import annotations


class RenderError(ValueError):
    """A conversation the chat template cannot render (or cannot render faithfully).

    `reason` is machine-readable (the rejected row's `reason`); `detail` says what happened, in words
    a user can act on (it names the template's own error message or the message that was dropped).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
