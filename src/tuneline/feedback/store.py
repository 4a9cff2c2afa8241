"""The feedback store: every served exchange and every piece of feedback on it, in SQL.

SQLite by default (embedded, one file, WAL so the A/B report can read while the server writes);
PostgreSQL for real deployments (`postgresql+psycopg://user:pass@host/db`, with `psycopg` installed).
Two tables, created on first use:

    exchanges   one row per answered request: request id, time, user hash (never the raw
                id), variant (champion | challenger), model name and version, whether the variant was
                pinned, latency, token counts, finish reason, the conversation and the answer.
    feedback    one row per POST /v1/feedback: request id, time, thumb (+1 / -1), rating (1-5),
                corrected answer, comment, and when (and into which file) it was exported.

The server never waits on the database: `tuneline.feedback.writer.ExchangeWriter` queues exchanges and a
background thread inserts them in batches (a row the database refuses is quarantined, the rest commit).

The engine hides SQL parameters (`hide_parameters=True`): a database error names the statement, never the
prompts, answers or corrections it carried, whatever `serve.log_content` says. PostgreSQL text cannot
hold NUL characters: an exchange's NULs are stored as U+FFFD; feedback with one is refused (StoreError).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from tuneline.feedback.errors import StoreError, UnknownRequest
from tuneline.redact import redact

logger = logging.getLogger(__name__)

metadata = MetaData()

exchanges = Table(
    "exchanges",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False, index=True),
    Column("user_hash", String(64), index=True),
    Column("variant", String(32), nullable=False, index=True),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(32), nullable=False, index=True),
    Column("pinned", Boolean, nullable=False, default=False),
    Column("latency_ms", Float, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("finish_reason", String(16), nullable=False),
    Column("messages", Text, nullable=False),  # JSON: the conversation as sent
    Column("answer", Text, nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(64), ForeignKey("exchanges.request_id"), nullable=False, index=True),
    Column("created_at", Float, nullable=False),
    Column("thumb", Integer),  # +1 up, -1 down, None
    Column("rating", Integer),  # 1..5 or None
    Column("correction", Text),  # the answer the user says was right
    Column("comment", Text),
    Column("exported_at", Float, index=True),
    Column("export_file", String(512)),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (ab report) do not block the writer
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(url: str) -> Engine:
    """A SQLAlchemy engine for `url`, with the tables created; sqlite files get their directory made.

    Raises:
        StoreError: the URL is malformed or the database cannot be reached.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with a terse message
        raise StoreError(redact(f"serve.store_url {url!r} is not a database URL: {exc}")) from exc
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        # hide_parameters: an error message must never carry the prompts and answers being written.
        engine = create_engine(url, future=True, hide_parameters=True)
        if sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        metadata.create_all(engine)
    except Exception as exc:
        where = parsed.render_as_string(hide_password=True)
        raise StoreError(redact(f"feedback store {where}: {error_summary(exc)}")) from exc
    return engine


class FeedbackStore:
    """Reads and writes of the two tables; safe to share between threads (one engine, pooled)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(url)

    def close(self) -> None:
        self.engine.dispose()

    # --- writes ---------------------------------------------------------------------------------
    def record_exchanges(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert exchanges (dicts with the `exchanges` columns; `messages` may be a list). Returns count."""
        batch = [_exchange_row(r) for r in rows]
        if batch:
            with self.engine.begin() as conn:
                conn.execute(_insert_new(self.engine.dialect.name), batch)
        return len(batch)

    def check_writable(self) -> None:
        """Insert a probe exchange and roll it back: raises what the database raises when it takes no row
        at all (unreachable, table gone, no permission), so a refused row is told apart from a sick
        database."""
        probe = _exchange_row({
            "request_id": f"tuneline-probe-{uuid.uuid4().hex}", "created_at": time.time(), "variant": "probe",
            "model_name": "probe", "model_version": "0", "latency_ms": 0.0, "prompt_tokens": 0,
            "completion_tokens": 0, "finish_reason": "probe", "messages": [], "answer": "",
        })
        with self.engine.connect() as conn:
            trans = conn.begin()
            try:
                conn.execute(insert(exchanges), [probe])
            finally:
                trans.rollback()

    def record_feedback(
        self,
        request_id: str,
        thumb: int | None = None,
        rating: int | None = None,
        correction: str | None = None,
        comment: str | None = None,
    ) -> int:
        """Store one piece of feedback on an exchange; returns its id.

        Raises:
            UnknownRequest: no exchange has this request id.
            StoreError: nothing to record (no thumb, rating, correction or comment), or a bad value.
        """
        if thumb is None and rating is None and not correction and not comment:
            raise StoreError(f"feedback on {request_id}: give a thumb, a rating, a correction or a comment")
        if thumb not in (None, 1, -1):
            raise StoreError(f"feedback on {request_id}: thumb must be 1 (up) or -1 (down), got {thumb!r}")
        if rating is not None and not 1 <= rating <= 5:
            raise StoreError(f"feedback on {request_id}: rating must be 1..5, got {rating!r}")
        for name, text in (("request_id", request_id), ("correction", correction), ("comment", comment)):
            if text and NUL in text:  # PostgreSQL text cannot hold it; refused the same on every database
                raise StoreError(f"feedback: {name} contains a NUL character (\\u0000), which is not text")
        with self.engine.begin() as conn:
            found = conn.execute(
                select(exchanges.c.request_id).where(exchanges.c.request_id == request_id)
            ).first()
            if found is None:
                raise UnknownRequest(f"no exchange with request id {request_id!r} in the feedback store")
            result = conn.execute(
                insert(feedback).values(
                    request_id=request_id,
                    created_at=time.time(),
                    thumb=thumb,
                    rating=rating,
                    correction=correction or None,
                    comment=comment or None,
                )
            )
            return int(result.inserted_primary_key[0])

    def mark_exported(self, feedback_ids: list[int], export_file: str, at: float | None = None) -> None:
        """Record that these feedback rows, and the earlier feedback on the same exchanges (merged into
        them), went into `export_file`, so the next export skips them."""
        if not feedback_ids:
            return
        with self.engine.begin() as conn:
            latest = conn.execute(
                select(feedback.c.request_id, func.max(feedback.c.id))
                .where(feedback.c.id.in_(feedback_ids)).group_by(feedback.c.request_id)
            ).all()
            for request_id, upto in latest:
                conn.execute(
                    update(feedback)
                    .where(feedback.c.request_id == request_id, feedback.c.id <= upto,
                           feedback.c.exported_at.is_(None))
                    .values(exported_at=at or time.time(), export_file=export_file)
                )

    # --- reads ----------------------------------------------------------------------------------
    def count(self, table: str = "exchanges") -> int:
        tbl = {"exchanges": exchanges, "feedback": feedback}[table]
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tbl)).scalar_one())

    def exchange(self, request_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            query = select(exchanges).where(exchanges.c.request_id == request_id)
            row = conn.execute(query).mappings().first()
        return None if row is None else _decoded(row)

    def exchanges_with_feedback(
        self, model_name: str | None = None, since: float | None = None, only_unexported: bool = False
    ) -> list[dict[str, Any]]:
        """Every exchange (optionally of one model, since a time) with its feedback MERGED.

        A user may send several pieces of feedback on one answer (a thumb, later a correction, later a
        comment): each field holds its latest non-empty value, so a later comment never erases an
        earlier verdict or correction. Each dict has the exchange columns (messages decoded) plus
        `thumb`, `rating`, `correction`, `comment`, `feedback_id` (the latest feedback row's id),
        `feedback_ids` (all of them), `feedback_at` (latest) and `exported_at` (None while any of the
        exchange's feedback is not exported; all None without feedback). With `only_unexported`, only
        exchanges that have feedback not exported yet.
        """
        query = select(exchanges).order_by(exchanges.c.created_at, exchanges.c.request_id)
        if model_name is not None:
            query = query.where(exchanges.c.model_name == model_name)
        if since is not None:
            query = query.where(exchanges.c.created_at >= since)
        rated = select(feedback.c.request_id)
        if only_unexported:
            rated = rated.where(feedback.c.exported_at.is_(None))
            query = query.where(exchanges.c.request_id.in_(rated))
        with self.engine.connect() as conn:
            rows = [_decoded(r) for r in conn.execute(query).mappings()]
            notes = conn.execute(
                select(feedback).where(feedback.c.request_id.in_(query.with_only_columns(exchanges.c.request_id)))
                .order_by(feedback.c.id)
            ).mappings().all()
        merged: dict[str, dict[str, Any]] = {}
        for note in notes:
            m = merged.setdefault(note["request_id"], {"feedback_ids": [], "pending": False})
            m["feedback_ids"].append(note["id"])
            m["feedback_id"], m["feedback_at"] = note["id"], note["created_at"]
            m["pending"] = m["pending"] or note["exported_at"] is None
            m["exported_max"] = max(m.get("exported_max") or 0.0, note["exported_at"] or 0.0)
            for key in ("thumb", "rating", "correction", "comment"):
                if note[key] is not None and note[key] != "":
                    m[key] = note[key]
        for row in rows:
            m = merged.get(row["request_id"], {})
            row.update({key: m.get(key) for key in FEEDBACK_FIELDS})
            row["feedback_ids"] = m.get("feedback_ids", [])
            row["exported_at"] = None if m.get("pending", True) else m.get("exported_max")
        return rows


FEEDBACK_FIELDS = ("feedback_id", "feedback_at", "thumb", "rating", "correction", "comment")
NUL = "\x00"


def error_summary(exc: BaseException) -> str:
    """One line about a database error: its class and the database's message, never the SQL parameters
    (a DBAPI error's own message names the problem, e.g. "value too long for type character varying")."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        message = str(exc.orig)
    else:
        message = str(exc).split("\n[SQL", 1)[0]
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def _insert_new(dialect: str) -> Any:
    """INSERT that skips a request id already stored: a retried batch whose first commit did land (the
    acknowledgement was lost) must not fail forever on its own rows."""
    if dialect == "sqlite":
        return sqlite_insert(exchanges).on_conflict_do_nothing(index_elements=["request_id"])
    if dialect == "postgresql":
        return postgresql_insert(exchanges).on_conflict_do_nothing(index_elements=["request_id"])
    return insert(exchanges)


def _exchange_row(row: dict[str, Any]) -> dict[str, Any]:
    out = {c.name: row.get(c.name) for c in exchanges.columns}
    if not isinstance(out["messages"], str):
        out["messages"] = json.dumps(out["messages"], ensure_ascii=False)  # escapes NUL as \u0000
    out["pinned"] = bool(out["pinned"])
    for key, value in out.items():
        if isinstance(value, str) and NUL in value:  # a model may emit one; PostgreSQL refuses it
            out[key] = value.replace(NUL, "\ufffd")
    return out


def _decoded(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["messages"] = json.loads(out["messages"])
    return out
