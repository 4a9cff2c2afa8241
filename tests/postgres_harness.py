"""A real PostgreSQL for the feedback store tests: ONE server per test session, in a temporary folder.

`postgres_url` starts it on first use (`initdb` + `pg_ctl`, unix socket only, no TCP port) and stops it
and removes the folder at the end of the session. PostgreSQL refuses to run as root: as root, the
server runs as the `postgres` user (else `nobody`) through `runuser` (else `su`), and the folder is
given to that user. The binaries are looked up on PATH, then in /usr/lib/postgresql/<version>/bin.
Without them the tests that need the fixture are skipped, with a reason that says how to get them;
with them, a server that does not start fails the tests. TUNELINE_TEST_POSTGRES_URL, when set, names
an existing scratch database to use instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

DATABASE = "tuneline_test"
PORT = 5432  # only names the socket file: the folder is private, no TCP listener


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):  # newest version first
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _server_user() -> str | None:
    """None when this process may run PostgreSQL itself; else the user to run it as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` user exists")


def _as(user: str | None, cmd: list[str]) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def _run(cmd: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
        pytest.fail(f"PostgreSQL {what} failed ({shlex.join(cmd)}):\n{done.stdout}\n{done.stderr}\n{tail}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of an empty scratch database on a PostgreSQL started for this session."""
    given = os.environ.get("TUNELINE_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("POSTGRESQL NOT INSTALLED: the feedback store's PostgreSQL tests did NOT run. Install "
                    "it (Debian: apt-get install postgresql-15) or set TUNELINE_TEST_POSTGRES_URL.")
    try:
        import psycopg
    except ImportError:
        pytest.fail("psycopg is missing: install the dev environment with the postgres extra "
                    "(pip install -e '.[dev,postgres]', which `make test` does)")
    user = _server_user()
    # /tmp, not pytest's folder: the socket path must stay short, and the server's user must reach it.
    root = Path(tempfile.mkdtemp(prefix="tuneline-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    data, log = root / "data", root / "server.log"
    started = False
    try:
        if user is not None:
            shutil.chown(root, user)
        _run(_as(user, [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-locale", "--no-sync"]), "initdb")
        options = (f"-k {root} -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        _run(_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "-o", options, "start"]), "start", log)
        started = True
        with psycopg.connect(host=str(root), port=PORT, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg://postgres@/{DATABASE}?host={root}&port={PORT}"
    finally:
        if started:
            subprocess.run(_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                      "stop"]), capture_output=True, timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)
