"""Streamed chat completions (`stream: true`): tokens go out as server-sent events while they are made.

The generation thread hands each new token id to a `TokenStream` (a transformers streamer); the request
handler reads them and decodes the text generated so far, sending only what is new. A token that ends
in the middle of a multi-byte character is held back until the character is complete, and text that
could be the start of a stop sequence is held back until it is clear it is not. When generation ends,
whatever the final answer has beyond what was sent goes out, so a streamed answer is exactly the
non-streamed one (same `complete`, same stops).

A waiting stream holds no thread: tokens are handed to the event loop (`call_soon_threadsafe`) and read
from an asyncio queue, so a hundred open streams leave the thread pool to the other requests. A client
that hangs up cancels its stream (`cancel`): generation stops at the next token (`cancel_criteria`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from tuneline.feedback.errors import StoreError
from tuneline.serve.schemas import openai_error

logger = logging.getLogger(__name__)
CANCELLED = "cancelled"  # finish_reason stored for a streamed answer whose client went away

_DONE = object()


class TokenStream:
    """A transformers streamer: the first `put` is the prompt (skipped), then one put per new token.

    Create it in the request handler (it hands tokens to that event loop); `put`, `end` and `fail` are
    called from the generation thread.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._prompt_seen = False
        self.cancelled = threading.Event()  # the client went away: stop generating

    def _deliver(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed (server stopped): nobody reads any more
            pass

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._deliver(int(token))

    def end(self) -> None:
        self._deliver(_DONE)

    def fail(self) -> None:
        """Unblock the reader when generation failed before `end`."""
        self._deliver(_DONE)

    def cancel(self) -> None:
        self.cancelled.set()

    async def tokens(self) -> AsyncIterator[int]:
        while True:
            item = await self._queue.get()
            if item is _DONE:
                return
            yield item


def cancel_criteria(flag: threading.Event) -> Any:
    """A transformers stopping criterion: stop every sequence once `flag` is set (checked per token)."""
    # Measured with python -X importtime (shared machine): torch ~12 s and transformers ~6 s on top of
    # `import tuneline.serve.app` (3.8 s); a server in front of a remote backend never generates here.
    import torch  # lazy: ~12 s; a server over serve.backend_url never needs it
    from transformers import StoppingCriteria, StoppingCriteriaList  # lazy: ~6 s, as torch above

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), flag.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


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


async def stream_events(stream: TokenStream, future: Any, tokenizer: Any, stops: list[str],
                        base: dict[str, Any], record: Any, usage: Any, include_usage: bool,
                        on_disconnect: Any = None) -> Any:
    """The server-sent events of one streamed completion (see the module docstring).

    A client that goes away (the response task is cancelled) cancels generation, and the exchange is
    stored as generated so far, with finish_reason "cancelled".
    """
    recorded = False
    try:
        yield sse(chunk(base, {"role": "assistant", "content": ""}))
        ids: list[int] = []
        sent, hit = "", False
        async for token in stream.tokens():
            if hit:
                continue  # a stop sequence was reached: the rest is generated but never sent
            ids.append(token)
            ready, hit = safe_prefix(tokenizer.decode(ids, skip_special_tokens=True), stops)
            if len(ready) > len(sent):
                yield sse(chunk(base, {"content": ready[len(sent):]}))
                sent = ready
        try:
            reply = await asyncio.wrap_future(future)
        except Exception as exc:
            recorded = True  # nothing to store
            logger.error("request %s failed in generation: %s", base["id"], exc)
            failed = f"generation failed: {exc.__class__.__name__}"
            yield sse(openai_error(failed, "server_error", "generation"))
            return
        text, finish = apply_stops(reply["text"], stops, "stop" if reply["stopped"] else "length")
        if text.startswith(sent) and len(text) > len(sent):  # held-back characters, or a backend's one chunk
            yield sse(chunk(base, {"content": text[len(sent):]}))
        elif not text.startswith(sent):
            logger.warning("request %s: streamed text diverged from the final answer", base["id"])
        record(reply, text, finish)
        recorded = True
    finally:
        if not recorded:  # the client went away: stop generating, store what was generated
            stream.cancel()
            if on_disconnect is not None:
                on_disconnect()
            future.add_done_callback(lambda done: record_cancelled(done, record, stops))
    yield sse(chunk(base, {}, finish))
    if include_usage:
        yield sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage(reply)})
    yield sse("[DONE]")


def record_cancelled(done: Any, record: Any, stops: list[str]) -> None:
    """Store a cancelled stream's exchange once generation has stopped (on the generation thread)."""
    if done.cancelled() or done.exception() is not None:
        return
    reply = done.result()
    try:
        record(reply, cut_at_stop(reply["text"], stops)[0], CANCELLED)
    except StoreError as exc:  # the server is shutting down and its writer is closed
        logger.warning("a cancelled stream's exchange was not stored: %s", exc)


def apply_stops(text: str, stops: list[str], finish: str) -> tuple[str, str]:
    """Cut the answer at the first stop sequence (OpenAI's `stop`); finish_reason is then "stop"."""
    cut, hit = cut_at_stop(text, stops)
    return cut, "stop" if hit else finish
