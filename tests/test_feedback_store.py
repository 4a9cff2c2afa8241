"""The feedback store on SQLite and on a real PostgreSQL (started for the session by `postgres_url`,
tests/postgres_harness.py): the latest feedback wins, bad feedback is refused with a reason, and the
background writer loses nothing: not under concurrency, not on a row the database refuses, not when the
database is down at shutdown."""

from __future__ import annotations

import json
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest

from tuneline.feedback.store import FeedbackStore, StoreError, UnknownRequest, metadata
from tuneline.feedback.writer import ExchangeWriter


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        db = FeedbackStore(f"sqlite:///{tmp_path / 'sub' / 'feedback.db'}")
    else:
        db = FeedbackStore(request.getfixturevalue("postgres_url"))
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


def test_writer_loses_nothing_from_many_threads(store: FeedbackStore, tmp_path: Path) -> None:
    writer = ExchangeWriter(store, batch_size=50, local_dir=tmp_path)
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
    writer = ExchangeWriter(store, retry_s=0.05, local_dir=tmp_path)
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


def wait_until(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_commit(store: FeedbackStore,
                                                                       tmp_path: Path) -> None:
    """Fault: one refused row made the writer retry forever and every later exchange queued behind it."""
    writer = ExchangeWriter(store, retry_s=0.05, local_dir=tmp_path)
    bad = [exchange(2, answer=None)]  # NOT NULL: refused by every database
    if store.engine.dialect.name == "postgresql":
        bad.append(exchange(3, model_name="m" * 300))  # varchar(256): PostgreSQL refuses, SQLite does not
    for row in [exchange(1), *bad, exchange(4)]:
        writer.submit(row)
    assert writer.flush(30), writer.health()
    assert store.exchange("req-1") and store.exchange("req-4") and store.count() == 2
    kept = [json.loads(line) for line in writer.quarantine_path.read_text(encoding="utf-8").splitlines()]
    assert [k["row"]["request_id"] for k in kept] == [r["request_id"] for r in bad]
    assert kept[0]["reason"].startswith("IntegrityError")
    if len(kept) > 1:
        assert kept[1]["reason"].startswith("DataError") and "too long" in kept[1]["reason"]
    assert writer.health()["state"] == "ok" and writer.health()["quarantined"] == len(bad)
    writer.submit(exchange(5))  # the writer goes on
    assert writer.flush(30) and store.count() == 3
    writer.close()


def test_an_answer_with_a_nul_character_is_stored(store: FeedbackStore, tmp_path: Path) -> None:
    """Fault: PostgreSQL refuses NUL in text; the writer retried the answer forever. NULs (which a model can
    emit) are stored as U+FFFD on every database, so feedback on the exchange still finds it."""
    writer = ExchangeWriter(store, retry_s=0.05, local_dir=tmp_path)
    writer.submit(exchange(1, answer="a\x00b", messages=[{"role": "user", "content": "q\x00"}]))
    writer.submit(exchange(2))
    assert writer.flush(30), writer.health()
    row = store.exchange("req-1")
    assert row["answer"] == "a\ufffdb" and row["messages"][0]["content"] == "q\x00"  # JSON keeps it escaped
    assert store.count() == 2 and writer.quarantined == 0
    writer.close()


def test_feedback_with_a_nul_character_is_refused_with_a_reason(store: FeedbackStore) -> None:
    """Fault: a NUL in a correction, comment or request id was a database error (HTTP 500) on PostgreSQL."""
    store.record_exchanges([exchange(1)])
    for field, value in (("correction", "fix\x00ed"), ("comment", "\x00")):
        with pytest.raises(StoreError, match=f"{field} contains a NUL"):
            store.record_feedback("req-1", thumb=1, **{field: value})
    with pytest.raises(StoreError, match="request_id contains a NUL"):
        store.record_feedback("req-\x001", thumb=1)
    assert store.count("feedback") == 0


def test_a_stuck_writer_says_so_and_shutdown_spills_rows_that_the_next_start_writes(
        store: FeedbackStore, tmp_path: Path) -> None:
    """Fault: a database that took nothing left /health "ok", held feedback 30 s, and Ctrl-C lost the queue.
    (The tables are dropped: SQLite says OperationalError; PostgreSQL ProgrammingError, which only the
    probe insert tells from a bad row.)"""
    metadata.drop_all(store.engine)
    writer = ExchangeWriter(store, retry_s=0.05, max_retry_s=0.2, local_dir=tmp_path)
    for i in range(3):
        writer.submit(exchange(i))
    wait_until(lambda: writer.stuck)
    health = writer.health()
    assert health["state"] == "stuck" and health["backlog"] == 3
    assert health["last_error"] in ("OperationalError", "ProgrammingError")
    assert writer.wait_for("req-1", timeout=600) is False  # at once: no request waits on a stuck store
    assert writer.quarantined == 0  # the database is sick, not the rows
    writer.close(timeout=1)
    spilled = list(tmp_path.glob("*.spill-*.jsonl"))
    assert len(spilled) == 1 and len(spilled[0].read_text(encoding="utf-8").splitlines()) == 3
    metadata.create_all(store.engine)
    again = ExchangeWriter(store, local_dir=tmp_path)  # the next start
    assert again.flush(30) and store.count() == 3
    wait_until(lambda: not list(tmp_path.glob("*.spill-*.jsonl")))
    again.close()


def test_database_errors_never_show_prompts_answers_or_corrections(store: FeedbackStore, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Fault: a database error's traceback printed the SQL parameters: the conversation, the answer, the
    correction (even with serve.log_content: false)."""
    secrets = {"prompt": "SECRET-" + "PROMPT", "answer": "SECRET-" + "ANSWER",
               "fix": "SECRET-" + "CORRECTION"}
    store.record_exchanges([exchange(1)])
    metadata.drop_all(store.engine)
    writer = ExchangeWriter(store, retry_s=0.05, max_retry_s=0.1, local_dir=tmp_path)
    asked = [{"role": "user", "content": secrets["prompt"]}]
    writer.submit(exchange(2, answer=secrets["answer"], messages=asked))
    wait_until(lambda: writer.failures >= 2)
    writer.close(timeout=0.5)
    with pytest.raises(Exception) as failed:
        store.record_feedback("req-1", thumb=-1, correction=secrets["fix"])
    # (the secrets are built above so that the traceback's source lines do not spell them)
    shown = caplog.text + "".join(traceback.format_exception(failed.value))
    assert "feedback store" in caplog.text  # the failure is logged...
    for secret in secrets.values():
        assert secret not in shown  # ...without the rows' content
