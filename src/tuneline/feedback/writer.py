"""The exchange writer: the server queues each answered exchange; a background thread commits them.

A queue that feeds a database must never block forever and never drop rows:

- A row the database refuses (a value it cannot hold, a constraint) is **quarantined**: appended, with
  the reason, to `<name>.quarantine.jsonl` in the local folder, while the other rows of its batch commit.
  A refused batch is retried row by row; when every row fails, a probe insert (rolled back) tells a
  sick database (retry) from bad rows (quarantine).
- A database that takes nothing (down, locked, table gone) is retried with back-off; meanwhile `health`
  says the writer is stuck (backlog, since when, the last error class), and `wait_for` answers at once
  instead of letting feedback requests wait out their timeout.
- `close` (Ctrl-C) commits what it can, then **spills** every row not committed to
  `<name>.spill-<time>-<pid>.jsonl`; the next writer on the same store replays the spill files first and
  deletes them once their rows are committed (a row committed twice is skipped by the store).

Log lines name the error class and the database's message, never the rows' content.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from tuneline.feedback.store import FeedbackStore, StoreError, error_summary
from tuneline.jsonio import atomic_write

logger = logging.getLogger(__name__)

# Errors of the database or the connection, not of a row: retrying later can succeed.
_DATABASE_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def local_files(url: str, local_dir: str | Path | None = None) -> tuple[Path, str]:
    """(folder, file name stem) of a store's quarantine and spill files.

    Default folder: beside a sqlite store's file; `./feedback-local` for a server database. The stem names
    the database, so two stores sharing a folder never replay each other's rows.
    """
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if sqlite:
        db = Path(parsed.database)
        return (Path(local_dir) if local_dir else db.parent), db.stem
    where = f"{parsed.get_backend_name()}-{parsed.host or 'local'}-{parsed.database or 'default'}"
    return Path(local_dir or "feedback-local"), re.sub(r"[^A-Za-z0-9_.-]", "_", where)


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, _DATABASE_ERRORS) or bool(getattr(exc, "connection_invalidated", False))


class ExchangeWriter:
    """Queues exchanges and inserts them from a background thread, so a response never waits on SQL.

    `pending` says how many are neither committed nor quarantined; `health` whether the writer is stuck.
    """

    def __init__(self, store: FeedbackStore, batch_size: int = 256, retry_s: float = 0.5,
                 local_dir: str | Path | None = None, max_retry_s: float = 10.0) -> None:
        self.store = store
        self.batch_size = batch_size
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        folder, stem = local_files(store.url, local_dir)
        self.quarantine_path = folder / f"{stem}.quarantine.jsonl"
        self._spill_prefix = folder / f"{stem}.spill-"
        self._rows: dict[int, dict[str, Any]] = {}  # not committed nor quarantined yet, in arrival order
        self._todo: deque[int] = deque()  # queued, not taken by the thread
        self._ids: Counter[str] = Counter()  # request ids of `_rows`
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._closed = False
        self.failures = 0  # failed attempts to write (database errors)
        self.quarantined = 0
        self.committed = 0
        self.last_error: str | None = None  # error_summary of the last failure
        self.failing_since: float | None = None  # time of the first failure of the current outage
        self._replayed: list[Path] = []
        self._replay_left: set[int] = set()
        self._replay()
        self._thread = threading.Thread(target=self._run, name="tuneline-feedback-writer", daemon=True)
        self._thread.start()

    # --- what the server calls -----------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._rows)

    @property
    def stuck(self) -> bool:
        """The database has refused every attempt since `failing_since` (rows are kept, not lost)."""
        return self.failing_since is not None

    def health(self) -> dict[str, Any]:
        """For /health: state ("ok" | "stuck"), backlog, how long it has been failing, the last error's
        class, and how many rows were quarantined (and where)."""
        since = self.failing_since
        last = self.last_error
        return {
            "state": "stuck" if since is not None else "ok",
            "backlog": self.pending,
            "failing_for_s": None if since is None else round(time.time() - since, 1),
            "last_error": None if since is None or last is None else last.split(":", 1)[0],
            "quarantined": self.quarantined,
            "quarantine_file": str(self.quarantine_path) if self.quarantined else None,
        }

    def submit(self, row: dict[str, Any]) -> None:
        """Queue one exchange (never blocks).

        Raises:
            StoreError: the writer is closed.
        """
        with self._cond:
            if self._closed:
                raise StoreError("the exchange writer is closed")
            self._add(row)
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted exchange is committed or quarantined; False on timeout."""
        return self._wait(lambda: not self._rows, timeout)

    def wait_for(self, request_id: str, timeout: float = 30.0) -> bool:
        """Wait until the exchange `request_id` is committed or quarantined (not the whole queue).

        False on timeout, and at once while the writer is stuck: the caller answers "retry later"
        instead of holding a request for the whole timeout.
        """
        return self._wait(lambda: not self._ids[request_id], timeout, give_up_when_stuck=True)

    def close(self, timeout: float = 60.0, stuck_grace_s: float = 5.0) -> None:
        """Commit what can be committed, stop the thread, spill what is left to a local file.

        Waits up to `timeout` while rows commit, but only `stuck_grace_s` once the database is failing:
        shutting down must not hang on a database that is down.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + timeout
        while not self.flush(min(stuck_grace_s, max(0.0, deadline - time.monotonic()))):
            if self.stuck or time.monotonic() >= deadline:
                break
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(min(stuck_grace_s, max(0.1, deadline - time.monotonic())))
        self._spill()

    # --- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._todo and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set():
                    return  # what is left is spilled by close
                seqs = [self._todo.popleft() for _ in range(min(self.batch_size, len(self._todo)))]
                batch = [(s, self._rows[s]) for s in seqs]
            self._commit(batch)

    def _commit(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        delay = self.retry_s
        while batch:
            try:
                self.store.record_exchanges([row for _, row in batch])
                self._settled([s for s, _ in batch], committed=True)
                self._recovered()
                return
            except Exception as exc:  # sorted below: the database's fault, or a row's
                error = exc
            if not _is_database_error(error):
                batch, error = self._row_by_row(batch)
                if not batch:
                    self._recovered()
                    return
            self._failed(error, len(batch), delay)
            if self._stop.wait(delay):
                return  # closing: close() spills what is left
            delay = min(delay * 2, self.max_retry_s)

    def _row_by_row(self, batch: list[tuple[int, dict[str, Any]]]
                    ) -> tuple[list[tuple[int, dict[str, Any]]], BaseException | None]:
        """Commit the rows of a refused batch one by one and quarantine those the database refuses.

        Returns the rows left for a retry (the database itself failed) and that failure.
        """
        refused: list[tuple[int, dict[str, Any], BaseException]] = []
        landed = 0
        for i, (seq, row) in enumerate(batch):
            try:
                self.store.record_exchanges([row])
            except Exception as exc:
                if _is_database_error(exc):
                    return [(s, r) for s, r, _ in refused] + batch[i:], exc
                refused.append((seq, row, exc))
                continue
            landed += 1
            self._settled([seq], committed=True)
        if refused and not landed:
            try:  # every row failed: is it the rows, or a database that takes no row at all?
                self.store.check_writable()
            except Exception as exc:
                return [(s, r) for s, r, _ in refused], exc
        kept = [(s, r) for s, r, exc in refused if not self._quarantine(s, r, exc)]
        return kept, (refused[0][2] if kept else None)

    def _quarantine(self, seq: int, row: dict[str, Any], exc: BaseException) -> bool:
        reason = error_summary(exc)
        line = json.dumps({"quarantined_at": time.time(), "reason": reason, "row": row},
                          ensure_ascii=False, default=repr)
        try:
            self.quarantine_path.parent.mkdir(parents=True, exist_ok=True)
            with self.quarantine_path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:  # cannot keep it aside: keep it queued and retry
            logger.error("feedback store: cannot write %s (%s); exchange kept in memory",
                         self.quarantine_path, err)
            return False
        logger.warning("feedback store refused exchange %s (%s); kept in %s", row.get("request_id"), reason,
                       self.quarantine_path)
        self.quarantined += 1
        self._settled([seq], committed=False)
        return True

    # --- bookkeeping ---------------------------------------------------------------------------
    def _add(self, row: dict[str, Any]) -> int:
        seq = next(self._seq)
        self._rows[seq] = row
        self._ids[str(row.get("request_id"))] += 1
        self._todo.append(seq)
        return seq

    def _settled(self, seqs: list[int], committed: bool) -> None:
        with self._cond:
            for seq in seqs:
                row = self._rows.pop(seq, None)
                if row is None:
                    continue
                rid = str(row.get("request_id"))
                self._ids[rid] -= 1
                if self._ids[rid] <= 0:
                    del self._ids[rid]
                self._replay_left.discard(seq)
            if committed:
                self.committed += len(seqs)
            done_replaying = self._replayed and not self._replay_left
            replayed, self._replayed = (self._replayed, []) if done_replaying else ([], self._replayed)
            self._cond.notify_all()
        for path in replayed:
            path.unlink(missing_ok=True)

    def _failed(self, exc: BaseException, rows: int, delay: float) -> None:
        self.failures += 1
        self.last_error = error_summary(exc)
        if self.failing_since is None:
            self.failing_since = time.time()
        logger.error("feedback store: %d exchanges not written yet (%s); retrying in %.1f s", rows,
                     self.last_error, delay)
        with self._cond:
            self._cond.notify_all()  # wake wait_for callers: the writer is stuck

    def _recovered(self) -> None:
        if self.failing_since is not None:
            logger.info("feedback store: writing again after %.1f s", time.time() - self.failing_since)
        self.failing_since = None

    def _wait(self, done: Any, timeout: float, give_up_when_stuck: bool = False) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or (give_up_when_stuck and self.stuck):
                    return False
                self._cond.wait(left)
        return True

    # --- spill and replay ----------------------------------------------------------------------
    def _spill(self) -> None:
        with self._cond:
            rows = [self._rows[s] for s in sorted(self._rows)]
            replayed, self._replayed = self._replayed, []
        if rows:
            path = Path(f"{self._spill_prefix}{time.time_ns()}-{os.getpid()}.jsonl")
            with atomic_write(path) as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, default=repr) + "\n")
            logger.warning("feedback store: %d exchanges not committed at shutdown; kept in %s (written at "
                           "the next start)", len(rows), path)
        for old in replayed:  # their rows are committed or in the new spill file
            old.unlink(missing_ok=True)

    def _replay(self) -> None:
        paths = sorted(self._spill_prefix.parent.glob(f"{self._spill_prefix.name}*.jsonl"))
        for path in paths:
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:  # a torn line: keep it, with the reason
                    row = {"spill_file": str(path), "line": number, "text": line}
                    self._quarantine(next(self._seq), row, exc)
                    continue
                self._replay_left.add(self._add(row))
            self._replayed.append(path)
        if paths and not self._replay_left:  # nothing in them to write
            for path in paths:
                path.unlink(missing_ok=True)
            self._replayed = []
        elif paths:
            logger.info("feedback store: replaying %d exchanges spilled at the last shutdown (%s)",
                        len(self._replay_left), ", ".join(p.name for p in paths))
