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

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneline.cluster import postgres as pg

DATABASE = "tuneline_test"
PORT = 5432  # only names the socket file: the folder is private, no TCP listener


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of an empty scratch database on a PostgreSQL started for this session."""
    given = os.environ.get("TUNELINE_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    bindir = pg.postgres_bindir()
    if bindir is None:
        pytest.skip("POSTGRESQL NOT INSTALLED: the feedback store's PostgreSQL tests did NOT run. Install "
                    "it (Debian: apt-get install postgresql-15) or set TUNELINE_TEST_POSTGRES_URL.")
    try:
        import psycopg
    except ImportError:
        pytest.fail("psycopg is missing: install the dev environment with the postgres extra "
                    "(pip install -e '.[dev,postgres]', which `make test` does)")
    user = pg.server_user()
    # /tmp, not pytest's folder: the socket path must stay short, and the server's user must reach it.
    root = Path(tempfile.mkdtemp(prefix="tuneline-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    data, log = root / "data", root / "server.log"
    started = False
    try:
        pg.give_to(root, user)
        options = (f"-k {root} -p {PORT} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        try:
            pg.initdb(bindir, data, user)
            pg.start(bindir, data, log, user, options)
        except pg.PostgresError as exc:
            pytest.fail(str(exc))
        started = True
        with psycopg.connect(host=str(root), port=PORT, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg://postgres@/{DATABASE}?host={root}&port={PORT}"
    finally:
        if started:
            pg.stop(bindir, data, user, mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
