"""The feedback store on SQLite (always) and PostgreSQL (when TUNELINE_TEST_POSTGRES_URL names a scratch
database, e.g. postgresql+psycopg://postgres@/tuneline_test?host=/tmp/pg&port=5433): the latest feedback
wins, bad feedback is refused with a reason, and the background writer loses nothing under concurrency."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tuneline.feedback.store import ExchangeWriter, FeedbackStore, StoreError, UnknownRequest, metadata

POSTGRES = os.environ.get("TUNELINE_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        db = FeedbackStore(f"sqlite:///{tmp_path / 'sub' / 'feedback.db'}")
    else:
        if not POSTGRES:
            pytest.skip("set TUNELINE_TEST_POSTGRES_URL to run the store tests on PostgreSQL")
        db = FeedbackStore(POSTGRES)
        metadata.drop_all(db.engine)
        metadata.create_all(db.engine)
    yield db
    db.close()


def exchange(i: int, **extra: Any) -> dict[str, Any]:
    row = {"request_id": f"req-{i}", "created_at": time.time(), "user_hash": "u" * 32, "variant": "champion",
           "model_name": "m", "model_version": "1", "pinned": False, "latency_ms": 12.5, "prompt_tokens": 3,
           "completion_tokens": 4, "finish_reason": "stop",
           "messages": [{"role": "user", "content": f"question {i} – ünïcode 中文"}], "answer": f"answer {i}"}
    row.update(extra)
    return row


def test_latest_feedback_wins_and_round_trips(store: FeedbackStore) -> None:
    store.record_exchanges([exchange(1), exchange(2, variant="challenger", model_version="2")])
    store.record_feedback("req-1", thumb=1)
    store.record_feedback("req-1", thumb=-1, correction="better answer", comment="not quite")
    rows = {r["request_id"]: r for r in store.exchanges_with_feedback()}
    assert rows["req-1"]["thumb"] == -1 and rows["req-1"]["correction"] == "better answer"
    assert rows["req-1"]["messages"][0]["content"] == "question 1 – ünïcode 中文"
    assert rows["req-2"]["feedback_id"] is None and rows["req-2"]["variant"] == "challenger"
    pending = store.exchanges_with_feedback(only_unexported=True)
    assert [r["request_id"] for r in pending] == ["req-1"]
    store.mark_exported([pending[0]["feedback_id"]], "feedback-x.jsonl")
    assert store.exchanges_with_feedback(only_unexported=True) == []
    assert store.count("feedback") == 2 and store.count() == 2


def test_bad_feedback_is_refused_with_a_reason(store: FeedbackStore) -> None:
    store.record_exchanges([exchange(1)])
    with pytest.raises(UnknownRequest, match="req-404"):
        store.record_feedback("req-404", thumb=1)
    with pytest.raises(StoreError, match="thumb"):
        store.record_feedback("req-1", thumb=3)
    with pytest.raises(StoreError, match="rating"):
        store.record_feedback("req-1", rating=0)
    with pytest.raises(StoreError, match="give a thumb"):
        store.record_feedback("req-1")
    assert store.count("feedback") == 0


def test_writer_loses_nothing_from_many_threads(store: FeedbackStore) -> None:
    writer = ExchangeWriter(store, batch_size=50)
    ids = [[uuid.uuid4().hex for _ in range(100)] for _ in range(8)]

    def submit(chunk: list[str]) -> None:
        for rid in chunk:
            writer.submit(exchange(0, request_id=rid))

    threads = [threading.Thread(target=submit, args=(chunk,)) for chunk in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()  # drains first
    assert writer.pending == 0 and store.count() == 800
    with pytest.raises(StoreError, match="closed"):
        writer.submit(exchange(9))


def test_writer_retries_until_the_database_takes_the_rows(tmp_path: Path) -> None:
    """A failing write (here: the table is gone) is retried, not dropped; once it is back, rows land."""
    store = FeedbackStore(f"sqlite:///{tmp_path / 'f.db'}")
    from tuneline.feedback.store import exchanges

    exchanges.drop(store.engine)
    writer = ExchangeWriter(store, retry_s=0.05)
    writer.submit(exchange(1))
    deadline = time.monotonic() + 10
    while writer.failures < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert writer.pending == 1
    metadata.create_all(store.engine)
    assert writer.flush(10) and store.count() == 1
    writer.close()


def test_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        FeedbackStore("no-such-scheme")


def test_later_feedback_adds_to_earlier_feedback_instead_of_erasing_it(store: FeedbackStore) -> None:
    store.record_exchanges([exchange(1), exchange(2)])
    store.record_feedback("req-1", thumb=-1, correction="the right answer")
    store.record_feedback("req-1", comment="thanks")  # must not erase the verdict or the correction
    store.record_feedback("req-2", thumb=1)
    rows = {r["request_id"]: r for r in store.exchanges_with_feedback()}
    one = rows["req-1"]
    assert (one["thumb"], one["correction"], one["comment"]) == (-1, "the right answer", "thanks")
    assert len(one["feedback_ids"]) == 2 and one["feedback_id"] == max(one["feedback_ids"])
    store.mark_exported([one["feedback_id"]], "feedback-a.jsonl")  # marks the merged earlier row too
    assert [r["request_id"] for r in store.exchanges_with_feedback(only_unexported=True)] == ["req-2"]
    store.record_feedback("req-1", rating=5)  # new feedback after the export: pending again
    pending = store.exchanges_with_feedback(only_unexported=True)
    assert {r["request_id"] for r in pending} == {"req-1", "req-2"}


def test_a_retried_batch_that_already_landed_is_not_a_failure(store: FeedbackStore) -> None:
    store.record_exchanges([exchange(1)])
    store.record_exchanges([exchange(1), exchange(2)])  # req-1 again: skipped, req-2 stored
    assert store.count() == 2
