"""Streamed chat completions (`stream: true`): tokens go out as server-sent events while they are made.

The generation thread hands each new token id to a `TokenStream` (a transformers streamer); the request
handler reads them and decodes the text generated so far, sending only what is new. A token that ends
in the middle of a multi-byte character is held back until the character is complete, and text that
could be the start of a stop sequence is held back until it is clear it is not. When generation ends,
whatever the final answer has beyond what was sent goes out, so a streamed answer is exactly the
non-streamed one (same `complete`, same stops).
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator
from typing import Any

_DONE = object()


class TokenStream:
    """A transformers streamer: the first `put` is the prompt (skipped), then one put per new token."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(int(token))

    def end(self) -> None:
        self._queue.put(_DONE)

    def fail(self) -> None:
        """Unblock the reader when generation failed before `end`."""
        self._queue.put(_DONE)

    async def tokens(self) -> AsyncIterator[int]:
        while True:
            item = await asyncio.to_thread(self._queue.get)
            if item is _DONE:
                return
            yield item


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(`text` up to the first stop sequence in it, whether one was found): OpenAI's `stop`."""
    cuts = [text.find(s) for s in stops if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def safe_prefix(text: str, stops: list[str]) -> tuple[str, bool]:
    """(the part of `text` that can be sent now, whether a stop sequence was reached).

    With a stop sequence in the text, everything from it on is dropped. Otherwise the end of the text
    that could still become a stop sequence (or a half-decoded character) is held back.
    """
    cut, hit = cut_at_stop(text, stops)
    if hit:
        return cut, True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence decodes to the replacement character
        hold = max(hold, 1)
    return text[: len(text) - hold], False


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """One `chat.completion.chunk` event."""
    return {**base, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
