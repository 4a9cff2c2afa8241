"""The workspace a flow runs in: its config, and the lock that lets one run at a time touch it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tuneline import filelock
from tuneline.config import Config, load_config
from tuneline.urls import anchored_url

LOCK_FILE = ".tuneline/run.lock"


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace lock."""


def workspace_config(workspace: str | Path) -> Config:
    """The workspace's params.yaml, with its tracking URI anchored to the workspace."""
    root = Path(workspace).resolve()
    cfg = load_config(root / "params.yaml")
    tracking = cfg.tracking.model_copy(update={"uri": anchored_url(cfg.tracking.uri, root)})
    return cfg.model_copy(update={"tracking": tracking})


# ---------------------------------------------------------------- one run per workspace


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
    except json.JSONDecodeError:
        return "another process"
    return (
        f"run {info.get('flow_run_name')!r} ({info.get('flow_run_id')}, pid {info.get('pid')} on "
        f"{info.get('host')}, since {info.get('started_at')})"
    )


@contextmanager
def workspace_lock(workspace: Path, holder: dict[str, Any], wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the workspace's exclusive run lock (`.tuneline/run.lock`, an `fcntl.flock`) for a whole run.

    The lock belongs to the open file, so it is released when the process ends, however it ends: a
    crashed run never leaves a stale lock. The file names the holder for the next one's message.

    Raises:
        WorkspaceBusy: still held by another run after `wait_s` seconds; the message names the holder.
    """
    path = workspace / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        if not filelock.acquire(handle, wait_s):
            handle.seek(0)
            raise WorkspaceBusy(
                f"workspace {workspace} is busy: {_describe(handle.read())} holds {path}. "
                "Two runs on one workspace would corrupt it; this run stops without touching it. "
                "Retry when that run ends, or pass lock_wait_s to wait for it."
            )
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder))
        handle.flush()
        try:
            yield path
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            filelock.release(handle)
