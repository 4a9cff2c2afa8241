"""The generation thread: batches by (variant, version, budget), survives cancelled requests and failing
batches, runs control calls between batches, and drains the queue on close."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tuneline.serve.engine import Batcher, Overloaded


class Recorder:
    """Stands in for the model: records the batches it is asked for (the batcher is what is tested)."""

    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, str | None, int]] = []
        self.gate = gate
        self.fail_on = fail_on

    def generate(self, variant: str, conversations: list[Any], max_new_tokens: int,
                 sampling: Any = None, version: str | None = None) -> list[dict[str, Any]]:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append((variant, version, len(conversations)))
        if variant == self.fail_on:
            raise RuntimeError("boom")
        return [{"text": c[0]["content"], "variant": variant, "version": version} for c in conversations]


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_batches_group_by_variant_and_version_and_keep_order() -> None:
    gate = threading.Event()
    model = Recorder(gate)
    batcher = Batcher(model, max_batch_size=4, batch_wait_ms=0)
    blocker = batcher.submit("champion", "1", ask("first"), 8)  # holds the thread while the rest queue
    time.sleep(0.1)
    futures = [batcher.submit("champion", "1", ask(f"c{i}"), 8) for i in range(5)]
    futures += [batcher.submit("challenger", "2", ask("x"), 8), batcher.submit("champion", "3", ask("y"), 8)]
    gate.set()
    assert [f.result(10)["text"] for f in futures] == ["c0", "c1", "c2", "c3", "c4", "x", "y"]
    assert blocker.result(10)["text"] == "first"
    assert model.calls == [("champion", "1", 1), ("champion", "1", 4), ("champion", "1", 1),
                           ("challenger", "2", 1), ("champion", "3", 1)]
    batcher.close()


def test_cancelled_and_failing_requests_do_not_stop_the_thread() -> None:
    gate = threading.Event()
    batcher = Batcher(Recorder(gate, fail_on="challenger"), max_batch_size=8, batch_wait_ms=0)
    busy = batcher.submit("champion", "1", ask("busy"), 8)
    time.sleep(0.1)
    cancelled = batcher.submit("champion", "1", ask("gone"), 8)
    assert cancelled.cancel()  # e.g. the client went away while it waited
    failing = batcher.submit("challenger", "2", ask("bad"), 8)
    gate.set()
    assert busy.result(10)["text"] == "busy"
    with pytest.raises(RuntimeError, match="boom"):
        failing.result(10)
    assert batcher.alive and batcher.submit("champion", "1", ask("after"), 8).result(10)["text"] == "after"
    assert batcher.call(lambda: "between batches").result(10) == "between batches"
    batcher.close()
    assert not batcher.alive


def test_full_queue_is_refused_and_close_drains() -> None:
    gate = threading.Event()
    batcher = Batcher(Recorder(gate), max_batch_size=1, batch_wait_ms=0, max_queue=2)
    first = batcher.submit("champion", "1", ask("a"), 8)
    time.sleep(0.1)
    queued = [batcher.submit("champion", "1", ask(t), 8) for t in ("b", "c")]
    with pytest.raises(Overloaded, match="serve.max_queue"):
        batcher.submit("champion", "1", ask("d"), 8)
    gate.set()
    batcher.close()
    assert [f.result(0)["text"] for f in [first, *queued]] == ["a", "b", "c"]
    with pytest.raises(Overloaded, match="shutting down"):
        batcher.submit("champion", "1", ask("e"), 8)
