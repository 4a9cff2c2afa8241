"""The generation thread: requests queue up, are grouped into batches, and run one batch at a time.

The model is not thread-safe (one active adapter at a time), so exactly one thread generates. Requests
that arrive while it is busy wait in the queue; when it is free it takes the oldest request and up to
`max_batch_size - 1` more with the same (variant, max_new_tokens, sampling), so concurrent users share
a forward pass. A full queue is refused at once (`Overloaded`, HTTP 503) rather than growing without
bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tuneline.errors import TunelineError

logger = logging.getLogger(__name__)


class Overloaded(TunelineError):
    """The generation queue is full; the client should retry later."""


@dataclass
class Job:
    variant: str
    version: str  # the version routing chose; generation says which one really answered
    messages: list[dict[str, str]]
    max_new_tokens: int
    sampling: tuple[tuple[str, float], ...] | None
    streamer: Any = None  # a streamed request is generated alone (transformers streams batch size 1)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[Any, ...]:
        alone = id(self) if self.streamer is not None else None
        return (self.variant, self.version, self.max_new_tokens, self.sampling, alone)


class Batcher:
    """Owns the generation thread. `submit` returns a Future with the reply dict of `complete`."""

    def __init__(self, models: Any, max_batch_size: int = 8, batch_wait_ms: int = 5, max_queue: int = 1024):
        self.models = models
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.max_queue = max_queue
        self._pending: deque[Job] = deque()
        self._control: deque[tuple[Any, Future]] = deque()  # work that must run between batches
        self._cond = threading.Condition()
        self._closed = False
        self.batches = 0
        self.generated = 0
        self._thread = threading.Thread(target=self._run, name="tuneline-generate", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, variant: str, version: str, messages: list[dict[str, str]], max_new_tokens: int,
               sampling: dict[str, float] | None = None, streamer: Any = None) -> Future:
        """Queue one conversation for `variant` at `version`.

        Raises:
            Overloaded: `max_queue` requests are already waiting, or the batcher is closed.
        """
        frozen = tuple(sorted(sampling.items())) if sampling else None
        job = Job(variant, version, messages, max_new_tokens, frozen, streamer)
        with self._cond:
            if self._closed:
                raise Overloaded("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                waiting = len(self._pending)
                raise Overloaded(f"{waiting} requests are waiting (serve.max_queue); retry shortly")
            self._pending.append(job)
            self._cond.notify()
        return job.future

    def call(self, fn: Any) -> Future:
        """Run `fn()` on the generation thread between two batches (e.g. loading a new adapter)."""
        future: Future = Future()
        with self._cond:
            self._control.append((fn, future))
            self._cond.notify()
        return future

    def close(self, timeout: float = 60.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> list[Job] | tuple[Any, Future] | None:
        with self._cond:
            while not self._pending and not self._control:
                if self._closed:
                    return None
                self._cond.wait()
            if self._control:
                return self._control.popleft()
            # A short wait lets requests that arrive together share the batch.
            if self.batch_wait_s and len(self._pending) < self.max_batch_size and not self._closed:
                self._cond.wait(self.batch_wait_s)
            key = self._pending[0].key
            batch = [job for job in self._pending if job.key == key][: self.max_batch_size]
            for job in batch:
                self._pending.remove(job)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if isinstance(batch, tuple):
                fn, future = batch
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn())
                except Exception as exc:  # reported to the caller, the server goes on
                    future.set_exception(exc)
                continue
            # A request cancelled while it waited is dropped here; it must never reach set_result.
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            for job in batch:
                if job not in live and job.streamer is not None:
                    job.streamer.fail()
            batch = live
            if not batch:
                continue
            head = batch[0]
            extra = {"streamer": head.streamer} if head.streamer is not None else {}
            try:
                replies = self.models.generate(
                    head.variant, [j.messages for j in batch], head.max_new_tokens,
                    dict(head.sampling) if head.sampling else None, version=head.version, **extra,
                )
            except Exception as exc:  # one bad batch must not kill the server: each request gets the error
                logger.exception("generation failed for a batch of %d (%s)", len(batch), head.variant)
                for job in batch:
                    if job.streamer is not None:
                        job.streamer.fail()
                    job.future.set_exception(exc)
                continue
            self.batches += 1
            self.generated += len(batch)
            for job, reply in zip(batch, replies, strict=True):
                job.future.set_result(reply)
