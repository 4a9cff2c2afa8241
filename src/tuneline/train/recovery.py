"""What a killed `train` leaves behind, and how the next run of the same output clears it.

A `kill -9` (or a lost machine) stops the stage between any two lines. It leaves the checkpoints (they
are the point: the next run resumes from them), but also the MLflow run, still RUNNING, and the work
folder `.<output>.tmp-*` beside the output. While it runs, the stage holds an exclusive lock for its
output (`.tuneline/train/<output>-<key>.lock`: an flock, which the kernel drops when its process ends
however it ends), so the next run that takes the lock knows every earlier holder is dead, and:

- removes the work folders of dead attempts: only tuneline's own (the name pattern `mkdtemp` gives
  them) and only beside this output;
- reads, from the lock file, the MLflow run its last holder recorded; if that run is still RUNNING, it
  is marked KILLED and tagged with the run that replaces it (tagged back), so no run stays RUNNING
  forever and the lineage says which run finished the work.

A second `tuneline train` for the same output while one runs stops at once with a clear error, instead
of both training into the same checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tuneline import filelock
from tuneline.errors import TunelineError

logger = logging.getLogger(__name__)

LOCKS = Path(".tuneline") / "train"
REPLACES_TAG = "tuneline.replaces_run"  # on a run: the killed run whose work it resumed
REPLACED_BY_TAG = "tuneline.replaced_by"  # on a killed run: the run that resumed its work
LIVE = ("RUNNING", "SCHEDULED")


class OutputBusy(TunelineError):
    """Another `tuneline train` writing the same output is running."""


@dataclass
class OutputClaim:
    """The held lock of one output, and what its previous holder recorded (empty: it ended cleanly)."""

    out: Path
    lock_path: Path
    handle: IO[str]
    previous: dict[str, Any] = field(default_factory=dict)

    def record(self, **facts: Any) -> None:
        """Write `facts` (the MLflow run of this attempt) into the lock file for a successor to read."""
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(facts, sort_keys=True))
        self.handle.flush()
        os.fsync(self.handle.fileno())


def _lock_path(root: Path, out: Path) -> Path:
    key = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
    return root / LOCKS / f"{out.name}-{key}.lock"


@contextmanager
def claim_output(root: Path, out: Path) -> Iterator[OutputClaim]:
    """Hold the output's lock for the block; a clean exit empties the record, an exception keeps it.

    Raises:
        OutputBusy: another live process holds the lock.
    """
    path = _lock_path(root, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)
    handle = path.open("r+", encoding="utf-8")
    try:
        if not filelock.acquire(handle, 0):
            raise OutputBusy(
                f"another `tuneline train` writing {out} is running (it holds {path}); wait for it to "
                "finish, or stop it: a rerun after it ends resumes from its last checkpoint"
            )
        handle.seek(0)
        try:
            previous = json.loads(handle.read() or "{}")
        except ValueError:  # torn by a crash mid-write: nothing usable
            previous = {}
        claim = OutputClaim(out, path, handle, previous if isinstance(previous, dict) else {})
        yield claim
        claim.record()  # ended here (finished, or failed and said so): nothing for a successor to fix
    finally:
        handle.close()  # closing the file drops the lock


def dead_work_dirs(out: Path) -> list[Path]:
    """The work folders `new_work_dir` made for `out` (call it while holding the output's lock: then
    their attempts are dead)."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.tmp-[a-z0-9_]{{8}}")
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.iterdir()
                  if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def new_work_dir(out: Path) -> Path:
    """A fresh work folder beside `out` (the adapter is written there, then renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))


def remove_dead_work_dirs(out: Path) -> list[Path]:
    """Remove the work folders of dead attempts at `out`; returns them."""
    dead = dead_work_dirs(out)
    for path in dead:
        shutil.rmtree(path, ignore_errors=True)
    if dead:
        logger.info("train: removed %d work folder(s) of killed attempts: %s", len(dead),
                    ", ".join(p.name for p in dead))
    return dead


def stale_run(previous: dict[str, Any]) -> str | None:
    """The MLflow run the dead holder recorded when it is still RUNNING (its process is gone), else None.

    An unreachable store only warns: a stale run must not stop the retraining that replaces it.
    """
    run_id, uri = previous.get("mlflow_run_id"), previous.get("tracking_uri")
    if not run_id or not uri:
        return None
    try:
        import mlflow  # lazy: mlflow ~10 s; only after a killed run, train.train imports this module

        status = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).info.status
    except Exception as exc:  # any store error: MlflowException, a connection error, a vanished db
        logger.warning("train: cannot read the killed attempt's MLflow run %s at %s: %s", run_id, uri, exc)
        return None
    return run_id if status in LIVE else None


def mark_killed(previous: dict[str, Any], run_id: str, replaced_by: str) -> None:
    """End the dead holder's run `run_id` as KILLED, tagged with the run that replaces it."""
    import mlflow  # lazy: mlflow ~10 s; only after a killed run

    uri = previous["tracking_uri"]
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.set_tag(run_id, REPLACED_BY_TAG, replaced_by)
        client.set_terminated(run_id, "KILLED")
    except Exception as exc:  # as in stale_run: warn, train on
        logger.warning("train: cannot mark the killed attempt's MLflow run %s at %s: %s", run_id, uri, exc)
        return
    logger.info("train: MLflow run %s of a killed attempt marked KILLED (replaced by %s)", run_id,
                replaced_by)
