"""A PostgreSQL server in a folder: `initdb` + `pg_ctl`, shared by the team cluster and the test harness.

PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user (else `nobody`)
through `runuser` (else `su`), and its folder is given to that user. The binaries are looked up on
PATH, then in /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH).
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

from tuneline.errors import TunelineError


class PostgresError(TunelineError):
    """PostgreSQL is missing, or `initdb` / `pg_ctl` failed; the message ends with the server's log."""


def postgres_bindir() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):  # newest version first
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def server_user() -> str | None:
    """None when this process may run PostgreSQL itself; else the user to run it as (we are root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise PostgresError("running as root and neither a `postgres` nor a `nobody` user exists")


def as_user(user: str | None, cmd: list[str]) -> list[str]:
    """`cmd` run as `user` (None: as this process)."""
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd]
    return ["su", user, "-s", "/bin/sh", "-c", shlex.join(cmd)]


def give_to(path: Path, user: str | None) -> None:
    """Make `path` (and what is in it) the server user's; a no-op when we are not root."""
    if user is None:
        return
    shutil.chown(path, user)
    for child in path.rglob("*"):
        shutil.chown(child, user)


def _run(cmd: list[str], what: str, log: Path | None = None, timeout_s: float = 120) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
        raise PostgresError(
            f"PostgreSQL {what} failed ({shlex.join(cmd)}):\n{done.stdout}\n{done.stderr}\n{tail}"
        )


def initdb(
    bindir: Path, data: Path, user: str | None, superuser: str = "postgres", pwfile: Path | None = None
) -> None:
    """A new cluster in `data` (must not exist), UTF-8, no locale. With `pwfile` (readable by the server
    user) the superuser gets that password and every connection must give it (scram-sha-256);
    without, connections are trusted (only for a private unix socket)."""
    auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"] if pwfile is not None else ["--auth=trust"]
    _run(
        as_user(
            user,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                superuser,
                *auth,
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        ),
        "initdb",
    )


def start(bindir: Path, data: Path, log: Path, user: str | None, options: str, timeout_s: int = 60) -> None:
    """`pg_ctl start -w` with server `options` (`-o`); returns once the server accepts connections."""
    _run(
        as_user(
            user,
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                str(timeout_s),
                "-o",
                options,
                "start",
            ],
        ),
        "start",
        log,
        timeout_s=timeout_s + 30,
    )


def stop(bindir: Path, data: Path, user: str | None, mode: str = "fast") -> bool:
    """`pg_ctl stop -m mode -w`; False when no server was running there (nothing to stop)."""
    if not (data / "postmaster.pid").is_file():
        return False
    done = subprocess.run(
        as_user(user, [str(bindir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"]),
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode == 0
