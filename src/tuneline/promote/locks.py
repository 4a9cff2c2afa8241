"""The registry's alias lock: which lock covers the promoters of a tracking store, and holding it.

MLflow has no compare-and-set on aliases, so `aliases.promote` re-reads and moves them under an
exclusive lock. That lock must be one every promoter of the store takes, on every host:

- a database: a PostgreSQL session-level advisory lock on a dedicated connection, held for the
  critical section. Taken on `TUNELINE_LOCK_DATABASE_URL` when set (the full URL, password
  included: the environment is where secrets live), else on `registry.lock_url` (no password in
  it: libpq reads PGPASSWORD or ~/.pgpass), else on the tracking store itself when the tracking URI
  is `postgresql://` / `postgresql+psycopg://`. The key is (`NAMESPACE`, a hash of the registered
  model name): alias moves of one model exclude each other, other models and other programs'
  advisory locks are untouched (`SELECT * FROM pg_locks WHERE locktype = 'advisory' AND classid =
  <NAMESPACE>` lists tuneline's). The server releases a session lock when the connection ends, so a
  promoter killed mid-move (kill -9, OOM) cannot wedge the registry. A host that vanishes without
  closing its TCP connection holds it until the server's TCP keepalive gives up: the lock's session
  sets it to about a minute (`KEEPALIVE`). Connect directly or through a session-pooling proxy: a
  transaction-pooling pgbouncer hands the session to another client and breaks the lock.
- a file (`fcntl.flock`): next to a sqlite database, or in a file store's directory, so it covers
  every host that uses that file (a local disk, or a network filesystem with working flock); or at
  an explicit `lock_path` (the caller vouches that every promoter uses that path).
- nothing better known: an `http(s)://` MLflow server (or a mysql/mssql store) with no lock
  database configured gets a lock file in this host's temp directory, which serializes the
  promoters of this host only. That is sound for one promoting host (e.g. one Prefect worker), and
  said once per process in a warning that names `registry.lock_url`; with
  `registry.require_cross_host_lock` on, the alias move is refused (`RegistryError`) instead.

The URL of a lock database never reaches a log line or an error message with its password
(`safe_url`, and every driver message goes through `redact`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from tuneline import filelock
from tuneline.redact import MASK, redact_text
from tuneline.registry.registry import RegistryError
from tuneline.urls import is_postgres, libpq_url, safe_url

logger = logging.getLogger(__name__)

LOCK_NAME = ".tuneline-aliases.lock"
LOCK_URL_ENV = "TUNELINE_LOCK_DATABASE_URL"
# classid of tuneline's advisory locks: the first 31 bits of sha256("tuneline.registry.aliases").
NAMESPACE = int.from_bytes(hashlib.sha256(b"tuneline.registry.aliases").digest()[:4], "big") >> 1
_warned: set[str] = set()


@dataclass(frozen=True)
class Lock:
    """The lock that serializes alias moves: `kind` and `target` (a password-free database URL or a path).

    `cross_host` is False only for the temp-directory fallback, which covers this host alone.
    """

    kind: Literal["postgres", "file"]
    target: str
    cross_host: bool
    source: str  # where the choice came from, for messages: "registry.lock_url", "tracking.uri", ...

    def __str__(self) -> str:
        what = "advisory lock on" if self.kind == "postgres" else "lock file"
        return f"{what} {self.target} ({self.source})"


def lock_path_for(uri: str) -> Path:
    """The lock file that serializes alias moves for the file-locked tracking store at `uri`."""
    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url  # lazy: sqlalchemy ~1.4 s; the CLI's promote path imports this

        database = make_url(uri).database
        if database and database != ":memory:":
            db = Path(database).resolve()
            return db.with_name(f".{db.name}{LOCK_NAME}")
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri).resolve() / LOCK_NAME
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"tuneline-aliases-{digest}.lock"


def choose_lock(
    uri: str,
    lock_url: str | None = None,
    lock_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Lock, str | None]:
    """The lock for the tracking store at `uri`, and the URL to connect to (None for a file lock).

    Pure but for reading `environ` (default: the process environment). First match wins: the
    TUNELINE_LOCK_DATABASE_URL variable, `lock_url` (registry.lock_url), a PostgreSQL tracking URI,
    `lock_path`, the file next to a sqlite / file store, the temp-directory fallback.

    Raises:
        RegistryError: the chosen lock database is not a valid URL, or not PostgreSQL.
    """
    env = os.environ if environ is None else environ
    candidates = ((env.get(LOCK_URL_ENV), LOCK_URL_ENV), (lock_url, "registry.lock_url"),
                  (uri if is_postgres(uri) else None, "tracking.uri"))
    for url, source in candidates:
        if url:
            try:
                urlparse(url).port  # noqa: B018 -- parses the netloc (host, port): a bad one raises here
            except ValueError:
                # Neither the URL nor the parser's text (it quotes the bad port, which in
                # `user:password/db`, the host forgotten, is the password) can be shown.
                raise RegistryError(f"{source}: not a valid database URL (its host or port cannot be read): "
                                    "expected postgresql://user@host:port/database") from None
            if not is_postgres(url):
                raise RegistryError(f"{source} {safe_url(url)}: the registry lock needs a PostgreSQL "
                                    "database (postgresql://...)")
            return Lock("postgres", safe_url(url), True, source), libpq_url(url)
    if lock_path is not None:
        return Lock("file", str(lock_path), True, "lock_path"), None
    path = lock_path_for(uri)
    local = urlparse(uri).scheme in ("", "file", "sqlite")
    return Lock("file", str(path), local, "next to the store" if local else "this host only"), None


def advisory_key(model_name: str) -> tuple[int, int]:
    """(classid, objid) of the advisory lock of `model_name`'s aliases: both int4, deterministic."""
    digest = hashlib.sha256(model_name.encode()).digest()
    return NAMESPACE, int.from_bytes(digest[:4], "big", signed=True)


@contextmanager
def registry_lock(
    uri: str,
    model_name: str = "",
    registry: Any = None,
    *,
    lock_path: str | Path | None = None,
    timeout_s: float = 60.0,
) -> Iterator[Lock]:
    """Hold the exclusive alias lock of `model_name` in the tracking store at `uri` (see the module doc).

    Args:
        uri: tracking / registry URI.
        model_name: the registered model whose aliases move (keys the database lock).
        registry: the `registry` params (`lock_url`, `require_cross_host_lock`), or None.
        lock_path: lock file override, used when no lock database is configured.
        timeout_s: how long to wait for the lock.

    Raises:
        RegistryError: the lock was not acquired within `timeout_s`, the lock database is unreachable,
            or the lock covers only this host while `require_cross_host_lock` is on.
    """
    lock, url = choose_lock(uri, getattr(registry, "lock_url", None), lock_path)
    if not lock.cross_host:
        _refuse_or_warn(uri, bool(getattr(registry, "require_cross_host_lock", False)))
    if url is not None:
        with _advisory(url, lock, advisory_key(model_name), timeout_s):
            yield lock
    else:
        with _flock(Path(lock.target), timeout_s):
            yield lock


def _refuse_or_warn(uri: str, required: bool) -> None:
    what = (f"tracking URI {safe_url(uri)} has no database lock: the alias lock is a file in this host's "
            f"temp directory, which does not serialize promoters on other hosts. Set registry.lock_url (the "
            f"PostgreSQL database behind the MLflow server) or {LOCK_URL_ENV}")
    if required:
        raise RegistryError(f"{what}; refusing to move aliases (registry.require_cross_host_lock is on)")
    if uri not in _warned:
        _warned.add(uri)
        logger.warning("registry: %s, or promote from one host only.", what)


@contextmanager
def _flock(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # flock locks belong to the open file description, so two threads of one process exclude each
    # other too (each opens the file itself), not only two processes.
    with path.open("a+") as handle:
        if not filelock.acquire(handle, timeout_s):
            raise RegistryError(f"registry lock {path} still held after {timeout_s:g}s; another promotion or "
                                "rollback is running (or hung): retry later")
        try:
            yield
        finally:
            filelock.release(handle)


@contextmanager
def _advisory(url: str, lock: Lock, key: tuple[int, int], timeout_s: float) -> Iterator[Any]:
    """Hold the session-level advisory lock `key` on a connection of its own to `url` (yielded)."""
    try:
        import psycopg  # lazy: an optional extra (tuneline[postgres]); only a PostgreSQL lock needs it
    except ImportError as exc:
        raise RegistryError(f"the registry lock ({lock}) needs psycopg: pip install 'tuneline[postgres]'"
                            ) from exc
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout_s)),
                               application_name="tuneline-registry-lock")
    except psycopg.Error as exc:
        raise RegistryError(f"registry lock: cannot connect to {lock.target}: {_clean(exc, url)}") from None
    with conn:
        try:
            # Blocking wait under lock_timeout (a queue the server keeps, visible in pg_locks as not
            # granted), not polling: the lock passes to the next waiter as soon as it is released.
            conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', '0', "
                         "false)", (f"{max(1, int(timeout_s * 1000))}ms",))
            _keepalive(conn)
            conn.execute("SELECT pg_advisory_lock(%s::int4, %s::int4)", key)
        except psycopg.errors.LockNotAvailable:
            raise RegistryError(f"registry lock ({lock}) still held after {timeout_s:g}s; another promotion "
                                "or rollback is running (or hung): retry later") from None
        except psycopg.Error as exc:
            raise RegistryError(f"registry lock ({lock}): {_clean(exc, url)}") from None
        try:
            yield conn
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s::int4, %s::int4)", key)
            except psycopg.Error as exc:  # the connection closes next, which releases it anyway
                logger.warning("registry lock (%s): unlock failed (%s); closing the connection releases it",
                               lock, _clean(exc, url))


# The server's TCP keepalive on the lock's session (seconds idle, seconds between probes, probes): a
# promoter host that vanishes without closing its connection (power loss, network partition) loses the
# lock after about a minute instead of the OS default (~2 h). Ignored on a unix socket (always local).
KEEPALIVE = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}


def _keepalive(conn: Any) -> None:
    """Set `KEEPALIVE` on the server side of `conn` (user-settable parameters, this session only)."""
    for name, value in KEEPALIVE.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))


def _clean(exc: BaseException, url: str) -> str:
    """A driver error as one line, credentials masked (libpq may echo connection parameters)."""
    text = redact_text(" ".join(str(exc).split()) or type(exc).__name__)
    password = urlparse(url).password
    return text.replace(password, MASK) if password else text
