"""The registry's alias lock across hosts (`promote/locks.py`): which lock a tracking store gets, and, on a
real PostgreSQL (tests/postgres_harness.py) behind a real MLflow store, that the advisory lock serializes
promoters that share no lock file, that a killed holder does not wedge the registry, and that the lock
database's password never reaches a message.

The fault these cover: the alias compare-and-set was guarded by an `fcntl` lock file only, which
serializes the promoters of one host; promoters on two hosts against one PostgreSQL-backed MLflow store
(simulated here by two processes with separate workspaces and lock files) could both read the same
champion and both move it (two winners, or aliases left inconsistent).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_harness import mlflow_server
from tuneline import urls
from tuneline.config.registry import RegistryParams
from tuneline.promote import locks
from tuneline.promote.aliases import promote, registry_lock
from tuneline.promote.locks import NAMESPACE, advisory_key, choose_lock
from tuneline.registry.registry import RegistryError, aliases_of, client

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    env.pop(locks.LOCK_URL_ENV, None)
    return {**env, **extra}


# --- which lock (pure) -------------------------------------------------------------------------------


def test_choose_lock_prefers_a_database(tmp_path: Path) -> None:
    pg = "postgresql+psycopg://app:s3cretpw@db:5432/mlflow"
    lock, url = choose_lock(pg, environ={})
    assert (lock.kind, lock.source, lock.cross_host) == ("postgres", "tracking.uri", True)
    assert url == "postgresql://app:s3cretpw@db:5432/mlflow"  # libpq's scheme, credentials kept to connect
    assert "s3cretpw" not in str(lock) and "s3cretpw" not in lock.target  # what messages show
    # An http server: registry.lock_url names the database; the environment variable wins over it.
    http = "http://mlflow:5000"
    lock, url = choose_lock(http, lock_url="postgresql://app@db/mlflow", environ={})
    assert (lock.kind, lock.source, url) == ("postgres", "registry.lock_url", "postgresql://app@db/mlflow")
    lock, url = choose_lock(http, lock_url="postgresql://app@db/mlflow",
                            environ={locks.LOCK_URL_ENV: "postgres://app:pw123456@db2/mlflow"})
    assert (lock.source, url) == (locks.LOCK_URL_ENV, "postgresql://app:pw123456@db2/mlflow")
    # No database: the file beside a sqlite store covers its hosts; an http server's temp file does not.
    lock, url = choose_lock(f"sqlite:///{tmp_path}/mlflow.db", environ={})
    assert (lock.kind, lock.cross_host, url) == ("file", True, None)
    assert Path(lock.target).parent == tmp_path
    lock, _ = choose_lock(http, environ={})
    assert (lock.kind, lock.cross_host) == ("file", False)
    lock, _ = choose_lock(http, lock_path=tmp_path / "shared.lock", environ={})
    assert (lock.target, lock.cross_host) == (str(tmp_path / "shared.lock"), True)
    with pytest.raises(RegistryError, match="needs a PostgreSQL") as err:
        choose_lock(http, lock_url="mysql://app:s3cretpw@db/mlflow", environ={})
    assert "s3cretpw" not in str(err.value)


def test_advisory_key_is_deterministic_per_model() -> None:
    assert advisory_key("m") == advisory_key("m") != advisory_key("n")
    assert all(-(2**31) <= k < 2**31 for k in advisory_key("m"))  # both int4 (the two-key form)
    assert advisory_key("m")[0] == NAMESPACE


def test_http_without_lock_database_warns_once_or_refuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http tracking URI with no lock database used to get a host-local lock file silently."""
    monkeypatch.delenv(locks.LOCK_URL_ENV, raising=False)
    monkeypatch.setattr(locks, "_warned", set())
    monkeypatch.setattr(locks.tempfile, "gettempdir", lambda: str(tmp_path))
    uri = f"http://127.0.0.1:9/{uuid.uuid4().hex}"
    with pytest.raises(RegistryError, match=r"registry\.lock_url.*require_cross_host_lock is on"):
        with registry_lock(uri, "m", RegistryParams(require_cross_host_lock=True)):
            pass
    with caplog.at_level(logging.WARNING, logger="tuneline.promote.locks"):
        for _ in range(3):
            with registry_lock(uri, "m", RegistryParams()) as lock:
                assert lock.kind == "file" and not lock.cross_host
    warned = [r for r in caplog.records if "registry.lock_url" in r.getMessage()]
    assert len(warned) == 1 and "this host" in warned[0].getMessage()


def test_lock_errors_never_show_the_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "pw-" + uuid.uuid4().hex
    monkeypatch.setenv(locks.LOCK_URL_ENV, f"postgresql://app:{secret}@/mlflow?host={tmp_path}/nowhere")
    with pytest.raises(RegistryError, match="cannot connect") as err:
        with registry_lock("http://127.0.0.1:9", "m", timeout_s=2):
            pass
    assert secret not in str(err.value) and "***" in str(err.value)


def test_lock_url_in_params_holds_no_password() -> None:
    """params.yaml is committed: a password in registry.lock_url is refused, and not repeated."""
    from tuneline.config.loader import load_config
    from tuneline.errors import ConfigError

    for url in ("postgresql://app:s3cretpw@db/mlflow", "postgresql://app@db/mlflow?password=s3cretpw"):
        with pytest.raises(ConfigError, match="must not contain a password") as err:
            load_config(None, [f"registry.lock_url={url}"])
        assert "s3cretpw" not in str(err.value)
    with pytest.raises(ConfigError, match="must be a PostgreSQL URL"):
        load_config(None, ["registry.lock_url=mysql://app@db/mlflow"])
    assert load_config(None, ["registry.lock_url=postgresql://app@db/mlflow"]).registry.lock_url


# --- on a real PostgreSQL --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_store(postgres_url: str) -> Iterator[str]:
    """A fresh database of the session's PostgreSQL holding an MLflow tracking store (schema created)."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"mlflow_{uuid.uuid4().hex[:12]}"
    admin = urls.libpq_url(str(make_url(postgres_url).set(database="postgres")))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    uri = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    client(uri).search_registered_models()  # the migrations run once, here, not in racing processes
    yield uri
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def advisory_locks(uri: str) -> list[tuple[int, bool]]:
    """(objid, granted) of tuneline's advisory locks in `uri`'s database, as the server sees them."""
    import psycopg

    with psycopg.connect(urls.libpq_url(uri), autocommit=True) as conn:
        return [(int(objid), bool(granted)) for objid, granted in conn.execute(
            "SELECT objid::bigint, granted FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (NAMESPACE % 2**32,))]


def _wait_for(predicate: Any, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


HOLDER = """
import sys, time
from tuneline.promote.aliases import registry_lock
with registry_lock(sys.argv[1], sys.argv[2], lock_path=sys.argv[3]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.integration
def test_a_killed_holder_releases_the_lock(pg_store: str, tmp_path: Path) -> None:
    """kill -9 of a promoter inside the critical section: the server ends its session and the lock with it,
    so the next promoter gets it (a file lock on a host that died would be gone with the host anyway)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_store, "killed", str(tmp_path / "a.lock")],
                              stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        key = advisory_key("killed")[1] % 2**32  # pg_locks shows objid as an unsigned oid
        assert (key, True) in advisory_locks(pg_store)
        with pytest.raises(RegistryError, match="still held after 1s"):  # another host, another lock file
            with registry_lock(pg_store, "killed", lock_path=tmp_path / "b.lock", timeout_s=1):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with registry_lock(pg_store, "killed", lock_path=tmp_path / "b.lock", timeout_s=30) as lock:
            assert lock.kind == "postgres" and (key, True) in advisory_locks(pg_store)
        assert all(objid != key for objid, _ in advisory_locks(pg_store))  # released on exit
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)


@pytest.mark.integration
def test_a_waiting_promoter_is_queued_in_the_database(pg_store: str, tmp_path: Path) -> None:
    """While one promoter holds the lock, another (its own lock file) waits in pg_locks, then sees the
    champion the holder set and refuses with "conflict"."""
    mc = client(pg_store)
    mc.create_registered_model("queued")
    for i in range(3):
        mc.create_model_version("queued", source=f"/nowhere/queued/{i + 1}")
    promote(pg_store, "queued", "1", None)
    key = advisory_key("queued")[1] % 2**32
    results: list[Any] = []
    with registry_lock(pg_store, "queued", lock_path=tmp_path / "host-a.lock"):
        waiter = threading.Thread(target=lambda: results.append(
            promote(pg_store, "queued", "2", "1", lock_path=tmp_path / "host-b.lock")))
        waiter.start()
        _wait_for(lambda: sorted(advisory_locks(pg_store)) == [(key, False), (key, True)],
                  "the second promoter to queue on the advisory lock")
        assert not results
        mc.set_registered_model_alias("queued", "champion", "3")  # the holder moves it meanwhile
    waiter.join(60)
    assert results[0].status == "conflict" and results[0].champion_before == "3"
    assert aliases_of(pg_store, "queued") == {"champion": "3"}


# Each racer is one "host": its own workspace (cwd) and its own lock file. The in-lock read of the
# aliases is widened into a window (the instrumentation below) so that the race is decided by the lock,
# not by luck: after reading, a racer waits until the other racer has read too (no mutual exclusion) or
# is queued on the advisory lock in pg_locks (mutual exclusion), and says which it saw.
RACER = r"""
import json, pathlib, sys, time
import psycopg
import tuneline.promote.aliases as aliases
from tuneline import urls
from tuneline.promote import locks

uri, name, me, other, rounds_dir = sys.argv[1:6]
registry = None
if len(sys.argv) > 6:
    from tuneline.config.registry import RegistryParams
    registry = RegistryParams(model_name=name, lock_url=sys.argv[6])
lock_db = urls.libpq_url(sys.argv[6] if registry is not None else uri)
read = aliases.aliases_of
state = {}

def queued() -> bool:
    with psycopg.connect(lock_db, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s "
                            "AND NOT granted", (locks.NAMESPACE % 2**32,)).fetchone()[0] > 0

def widened(uri_, name_):
    out = read(uri_, name_)
    if "saw" not in state:
        (round_dir / f"read-{me}").touch()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (round_dir / f"read-{other}").exists():
                state["saw"] = "other_read"
                break
            if queued():
                state["saw"] = "other_queued"
                break
            time.sleep(0.01)
        else:
            state["saw"] = "nothing"
    return out

aliases.aliases_of = widened
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    round_dir = pathlib.Path(rounds_dir) / str(job["round"])
    while not (round_dir / "go").exists():
        time.sleep(0.002)
    state.clear()
    try:
        out = aliases.promote(uri, name, job["version"], job["expected"], registry,
                              lock_path=pathlib.Path.cwd() / "aliases.lock", timeout_s=120).to_dict()
    except Exception as exc:
        out = {"promoted": False, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({**out, "saw": state.get("saw")}), flush=True)
"""


def race(uri: str, name: str, tmp_path: Path, rounds: int, lock_url: str | None = None) -> None:
    """`rounds` rounds of two racers promoting different versions against the same expected champion."""
    mc = client(uri)
    mc.create_registered_model(name)
    for i in range(1 + 2 * rounds):
        # Never read: a remote-looking source, because a server refuses local paths outside a run.
        mc.create_model_version(name, source=f"s3://nowhere/{name}/{i + 1}")
    promote(uri, name, "1", None, lock_path=tmp_path / "setup.lock")
    rounds_dir = tmp_path / "rounds"
    hosts = []
    for me, other in (("a", "b"), ("b", "a")):
        workspace = tmp_path / f"host-{me}"
        workspace.mkdir()
        argv = [sys.executable, "-c", RACER, uri, name, me, other, str(rounds_dir)]
        hosts.append(subprocess.Popen(argv + ([lock_url] if lock_url else []), cwd=workspace, env=_env(),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for host in hosts:
            assert host.stdout is not None and host.stdout.readline().strip() == "ready"
        champion = "1"
        for r in range(rounds):
            (rounds_dir / str(r)).mkdir(parents=True)
            versions = (str(2 + 2 * r), str(3 + 2 * r))
            for host, version in zip(hosts, versions, strict=True):
                assert host.stdin is not None
                host.stdin.write(json.dumps({"round": r, "version": version, "expected": champion}) + "\n")
                host.stdin.flush()
            (rounds_dir / str(r) / "go").touch()
            results = [json.loads(host.stdout.readline()) for host in hosts if host.stdout is not None]
            winners = [res for res in results if res["promoted"]]
            assert len(winners) == 1, (r, results)
            loser = next(res for res in results if not res["promoted"])
            assert loser["status"] == "conflict", results
            assert loser["champion_before"] == winners[0]["version"], results
            # The first holder saw the other promoter queued on the lock: the database serialized them.
            assert "other_queued" in {res["saw"] for res in results}, results
            assert aliases_of(uri, name) == {"champion": winners[0]["version"], "previous_champion": champion}
            assert mc.get_model_version(name, winners[0]["version"]).tags["promotion.replaced"] == champion
            champion = winners[0]["version"]
    finally:
        for host in hosts:
            if host.stdin is not None:
                host.stdin.close()
        for host in hosts:
            try:
                host.wait(60)
            except subprocess.TimeoutExpired:
                host.kill()
                host.wait(30)


@pytest.mark.integration
def test_two_hosts_race_on_a_postgresql_store(pg_store: str, tmp_path: Path) -> None:
    """The acceptance race: 20 rounds, two processes with separate workspaces and lock files, one
    PostgreSQL-backed MLflow store. Before the database lock, both read the same champion and both moved
    it (two "promoted", or a RegistryError from the read-back): never one winner and one conflict."""
    race(pg_store, "two-hosts", tmp_path, rounds=20)


@pytest.mark.integration
def test_two_hosts_race_through_an_mlflow_server(pg_store: str, tmp_path: Path) -> None:
    """Promoters that reach the registry over http lock on the server's database named by
    registry.lock_url: one winner and one conflict every round."""
    with mlflow_server(pg_store, tmp_path) as uri:
        race(uri, "over-http", tmp_path, rounds=5, lock_url=pg_store)


@pytest.mark.parametrize(
    "url",
    [
        # libpq's client-key passphrase: `sslpassword=` was not a secret name, shown in every lock message
        "postgresql://app@/mlflow?host={nowhere}&sslpassword={secret}&sslmode=require",
        # an unencoded space: the userinfo pattern stopped at it and the lock's target showed the password
        "postgresql://app:{secret} x@/mlflow?host={nowhere}",
        # the host forgotten: the password reads as the port, which libpq and urlparse both quote
        "postgresql://app:{secret}/mlflow",
        # a malformed netloc made urlparse raise a bare ValueError instead of a RegistryError
        "postgresql://app:{secret}@[::1/mlflow",
    ],
)
def test_malformed_or_unusual_lock_urls_never_show_the_password(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "pw" + uuid.uuid4().hex
    monkeypatch.setenv(locks.LOCK_URL_ENV, url.format(secret=secret, nowhere=f"{tmp_path}/nowhere"))
    with pytest.raises(RegistryError) as err:
        with registry_lock("http://127.0.0.1:9", "m", timeout_s=1):
            pass
    assert secret not in str(err.value)
    lock_url = url.format(secret=secret, nowhere="/run/pg")
    if "@" in url:  # a password where a password goes: recognised and masked
        assert urls.has_password(lock_url) and secret not in urls.safe_url(lock_url)


def test_lock_url_in_params_refuses_unusual_passwords_without_repeating_them() -> None:
    """registry.lock_url accepted an `sslpassword=` item and a password read as the port (`app:pw/db`)."""
    from tuneline.config.loader import load_config
    from tuneline.errors import ConfigError

    for url in ("postgresql://app@db/mlflow?sslpassword=s3cretpw", "postgresql://app:s3cretpw/mlflow"):
        with pytest.raises(ConfigError, match="registry.lock_url") as err:
            load_config(None, [f"registry.lock_url={url}"])
        assert "s3cretpw" not in str(err.value)
