"""Background servers: start one detached (its own session, log file, pid file), wait until it is
healthy, stop it and everything it started (the process group), free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tuneline.errors import TunelineError


class ServiceError(TunelineError):
    """A server did not start or did not become healthy; the message ends with its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def spawn(name: str, cmd: list[str], env: dict[str, str], cwd: Path, log: Path, pidfile: Path) -> int:
    """Start `cmd` detached in its own session (so `stop` ends its children too), output to `log`,
    its pid in `pidfile`. Returns the pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n", encoding="utf-8")
    return proc.pid


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a child of ours that exited stays a zombie until reaped: reap it, it is gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_pid(pidfile: Path) -> int | None:
    """The pid recorded in `pidfile`, or None."""
    try:
        return int(pidfile.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def http_ok(url: str, timeout_s: float = 2.0, accept: tuple[int, ...] = (200,)) -> bool:
    """Whether GET `url` answers with a status in `accept`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status in accept
    except urllib.error.HTTPError as exc:
        return exc.code in accept
    except (OSError, ValueError):
        return False


def wait_healthy(name: str, probe: Callable[[], bool], pid: int | None, log: Path, timeout_s: float) -> float:
    """Poll `probe` until it is true; returns the seconds it took.

    Raises:
        ServiceError: the process exited, or `timeout_s` passed; with the log's tail.
    """
    started = time.monotonic()
    while True:
        if probe():
            return round(time.monotonic() - started, 2)
        if pid is not None and not alive(pid):
            raise ServiceError(f"{name} exited before it was healthy; {log}:\n{_tail(log)}")
        if time.monotonic() - started > timeout_s:
            raise ServiceError(f"{name} not healthy within {timeout_s:g}s; {log}:\n{_tail(log)}")
        time.sleep(0.5)


def stop(pidfile: Path, sig: int = signal.SIGTERM, grace_s: float = 20.0) -> bool:
    """Stop the process group recorded in `pidfile` (`sig`, then SIGKILL after `grace_s`) and remove the
    pid file. False when nothing recorded there was running."""
    return bool(stop_all([pidfile], sig, grace_s))


def stop_all(pidfiles: list[Path], sig: int = signal.SIGTERM, grace_s: float = 20.0) -> list[Path]:
    """Stop the process groups of `pidfiles` together: `sig` to all, one shared grace period, then
    SIGKILL to what is left (and to children that outlived their leader). Removes the pid files; returns
    those whose process was running."""
    pids = {path: read_pid(path) for path in pidfiles}
    running = [path for path, pid in pids.items() if pid is not None and alive(pid)]
    for path in running:
        _signal_group(pids[path], sig)  # type: ignore[arg-type]
    deadline = time.monotonic() + grace_s
    while any(alive(pids[path]) for path in running) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.2)
    for path, pid in pids.items():
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    while any(alive(pids[path]) for path in running) and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.2)
    return running


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
