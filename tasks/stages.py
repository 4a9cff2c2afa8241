"""Prefect tasks for the pipeline's steps: one DVC stage, one DVC remote call or one registry call each.

DVC owns the artifact DAG and its cache (`dvc.lock`, the run cache, remotes): a stage task runs
`dvc repro -s <stage>` in the workspace, so DVC skips an unchanged stage and a retrain after a params
change reruns only what depends on it. With parameter overrides the stage runs as a DVC experiment
(`dvc exp run -s <stage> --set-param k=v`), which records the exact params next to `dvc.lock`.

Retries live on the steps that fail transiently (remote storage, the tracking server), never on a
stage: a failed data contract or a diverged training run fails the same way on a second try.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Literal, get_args

import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from tuneline import filelock
from tuneline.config import Config, load_config
from tuneline.errors import TunelineError
from tuneline.layout import Layout
from tuneline.urls import anchored_url

StageName = Literal[
    "ingest",
    "validate_raw",
    "clean",
    "dedup",
    "split",
    "augment",
    "validate_splits",
    "build_base",
    "train",
    "evaluate",
    "promote",
]
PIPELINE: tuple[str, ...] = get_args(StageName)
TAIL_LINES = 40
LOCK_FILE = ".tuneline/run.lock"

log = logging.getLogger(__name__)


class CommandFailed(RuntimeError):
    """A workspace command (a stage, `dvc pull`, `dvc push`) exited non-zero; the message ends with its
    stderr tail."""


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace lock."""


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def command_env() -> dict[str, str]:
    """The environment of workspace commands: this interpreter's bin first (so `dvc` and `tuneline`
    resolve to the installed ones) and one OpenMP thread unless the caller chose otherwise."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("COLUMNS", "160")  # rich wraps log lines at 80 columns when not on a terminal
    return env


def run_command(args: list[str], cwd: Path) -> dict[str, Any]:
    """Run `args` in `cwd`, streaming both outputs to the run log line by line (training runs are long).

    Returns:
        {"command", "returncode", "seconds", "stdout" (all lines), "stderr_tail" (last TAIL_LINES)}.

    Raises:
        CommandFailed: non-zero exit; the message names the command and ends with the stderr tail.
    """
    logger = _logger()
    started = time.monotonic()
    stdout: list[str] = []
    stderr: deque[str] = deque(maxlen=TAIL_LINES)
    logger.info("$ %s  (in %s)", " ".join(args), cwd)
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )

    def pump(stream: IO[str], sink: list[str] | deque[str], level: int) -> None:
        for line in stream:
            line = line.rstrip("\n")
            sink.append(line)
            logger.log(level, "%s", line)

    assert proc.stdout is not None and proc.stderr is not None
    # Two readers: a child that fills one pipe while we block on the other would deadlock.
    readers = [
        threading.Thread(target=pump, args=(proc.stdout, stdout, logging.INFO), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, stderr, logging.INFO), daemon=True),
    ]
    for reader in readers:
        reader.start()
    returncode = proc.wait()
    for reader in readers:
        reader.join()
    result = {
        "command": args,
        "returncode": returncode,
        "seconds": round(time.monotonic() - started, 2),
        "stdout": stdout,
        "stderr_tail": list(stderr),
    }
    if returncode != 0:
        tail = "\n".join(stderr) or "\n".join(stdout[-TAIL_LINES:])
        raise CommandFailed(f"`{' '.join(args)}` failed in {cwd} (exit {returncode}); last lines:\n{tail}")
    return result


def _has_key(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def hydra_overrides(workspace: Path, overrides: dict[str, str]) -> list[str]:
    """`--set-param` values for `dvc exp run`: `key=value`, or `+key=value` for a key that params.yaml
    leaves at its default (DVC's override grammar appends only with `+`)."""
    raw = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8")) or {}
    return [f"{'' if _has_key(raw, k) else '+'}{k}={v}" for k, v in sorted(overrides.items())]


def stage_command(
    stage: str,
    force: bool = False,
    set_params: list[str] | None = None,
    experiment: str | None = None,
    pull: bool = False,
) -> list[str]:
    """The DVC command for one stage: `dvc repro -s [-f] [--pull] STAGE`, or as an experiment with params
    (`dvc exp run -s [-f] [--pull] [-n NAME] -S k=v ... STAGE`). `pull`: a run-cache hit fetches the
    cached outputs from the remote (without it DVC reruns a stage whose outputs are only remote)."""
    if stage not in PIPELINE:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(PIPELINE)}")
    forced = ["-f"] if force else []
    pulled = ["--pull"] if pull else []
    if set_params is None:
        return ["dvc", "repro", "-s", *forced, *pulled, stage]
    named = ["-n", experiment] if experiment else []
    sets = [a for p in set_params for a in ("-S", p)]
    return ["dvc", "exp", "run", "-s", *forced, *pulled, *named, *sets, stage]


def experiment_name(run_name: str, stage: str) -> str:
    """A git-ref-safe DVC experiment name for one stage of one flow run."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{run_name}-{stage}").strip("-")


def stage_skipped(stage: str, line: str) -> bool:
    """Whether a line of `dvc repro` says it did not run `stage`: unchanged against dvc.lock, or found in
    the run cache (a checkout that pulled another host's run: outputs checked out, command not run)."""
    return f"Stage '{stage}' didn't change, skipping" in line or (
        f"Stage '{stage}' is cached - skipping run" in line
    )


def _run_stage(
    workspace: str,
    stage: str,
    force: bool = False,
    set_params: list[str] | None = None,
    experiment: str | None = None,
    pull: bool = False,
) -> dict[str, Any]:
    result = run_command(stage_command(stage, force, set_params, experiment, pull), Path(workspace))
    skipped = any(stage_skipped(stage, line) for line in result["stdout"])
    return {
        "stage": stage,
        "ran": not skipped,
        "forced": force,
        "seconds": result["seconds"],
        "experiment": experiment if set_params is not None else None,
    }


def _stage_task(stage: str) -> Any:
    # One named task per stage: the Prefect task name is the stage's verb, as everywhere else.
    return task(name=stage, task_run_name=stage, cache_policy=NO_CACHE)(_run_stage)


STAGE_TASKS: dict[str, Any] = {stage: _stage_task(stage) for stage in PIPELINE}


def checkout_remote(workspace: str | Path) -> str | None:
    """The default DVC remote this checkout names for itself (`.dvc/config.local`, e.g. a cluster worker's
    `s3://` remote), or None. The committed `.dvc/config` is not consulted: its default is the single
    machine's local folder, which `make run` does not sync with."""
    path = Path(workspace) / ".dvc" / "config.local"
    if not path.is_file():
        return None
    from configobj import ConfigObj  # DVC's own config parser (a DVC dependency)

    remote = ConfigObj(str(path)).get("core", {}).get("remote")
    return str(remote) if remote else None


@task(name="dvc_pull", retries=2, retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def dvc_pull(workspace: str) -> float:
    """`dvc pull --allow-missing --run-cache`: bring cached inputs and outputs, and the run cache, from
    the remote (transient: retried). With the run cache, `dvc repro` in a fresh checkout restores a
    stage another host already ran (same command, deps and params) instead of running it; outputs the
    remote does not have yet are rebuilt by the stages."""
    return float(run_command(["dvc", "pull", "--allow-missing", "--run-cache"], Path(workspace))["seconds"])


@task(name="dvc_push", retries=2, retry_delay_seconds=[10, 60], cache_policy=NO_CACHE)
def dvc_push(workspace: str) -> float:
    """`dvc push --run-cache`: store this run's outputs and its run-cache entries on the remote, so another
    checkout can skip the stages this one ran (transient: retried)."""
    seconds = float(run_command(["dvc", "push", "--run-cache"], Path(workspace))["seconds"])
    pushed = push_run_cache_reports(Path(workspace))
    if pushed:
        _logger().info("pushed %d uncached outputs the run cache refers to (reports)", pushed)
    return seconds


def push_run_cache_reports(workspace: Path) -> int:
    """Push the objects of the run cache's `cache: false` outputs (the stages' reports/*.json metrics).

    `dvc repro` commits them to the local cache with each run-cache entry, but `dvc push --run-cache`
    pushes only the outputs of the workspace's cached outs; another checkout then finds the entry, misses
    its report and reruns the stage. DVC's own transfer, on the objects the entries name. Returns how many
    objects were sent."""
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    runs = workspace / ".dvc" / "cache" / "runs"
    oids: set[str] = set()
    for entry in runs.glob("*/*/*") if runs.is_dir() else []:
        for out in (yaml.safe_load(entry.read_text(encoding="utf-8")) or {}).get("outs", []):
            md5 = out.get("md5")
            if md5 and not md5.endswith(".dir"):
                oids.add(md5)
    with Repo(str(workspace)) as repo:
        objs = {HashInfo("md5", oid) for oid in oids if repo.cache.local.exists(oid)}
        if not objs:
            return 0
        return len(repo.cloud.push(objs).transferred)


# ---------------------------------------------------------------- registry (in process)


def workspace_config(workspace: str | Path) -> Config:
    """The workspace's params.yaml, with its tracking URI anchored to the workspace."""
    root = Path(workspace).resolve()
    cfg = load_config(root / "params.yaml")
    tracking = cfg.tracking.model_copy(update={"uri": anchored_url(cfg.tracking.uri, root)})
    return cfg.model_copy(update={"tracking": tracking})


def transient(_task: Any, _run: TaskRun, state: State) -> bool:
    """Retry a registry call unless it failed for a reason a retry cannot fix (tuneline's typed errors,
    a bad argument)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return not isinstance(exc, TunelineError | ValueError)


@task(
    name="recorded_approval",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def recorded_approval(workspace: str, version: str) -> dict[str, str] | None:
    """The approval decision recorded on `version` ({"decision", "by", "at", "note"}), or None."""
    from tuneline.promote.aliases import approval_of

    cfg = workspace_config(workspace)
    return approval_of(cfg.tracking.uri, cfg.registry.model_name, version)


@task(
    name="approve_release",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def approve_release(workspace: str, version: str, approver: str, note: str = "") -> dict[str, Any]:
    """Record the approval of `version` and promote it (`tuneline promote --approve`); the promotion's
    result, e.g. status "promoted" or "conflict" when the champion moved meanwhile."""
    from tuneline.promote.stage import approve

    root = Path(workspace)
    return approve(workspace_config(root), Layout(root), version, approver, note)


@task(
    name="reject_release",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def reject_release(workspace: str, version: str, approver: str, note: str = "") -> dict[str, str]:
    """Record a person's rejection of `version`; the champion stays."""
    from tuneline.promote.aliases import record_approval

    cfg = workspace_config(workspace)
    return record_approval(cfg.tracking.uri, cfg.registry.model_name, version, approver, "rejected", note)


@task(
    name="record_no_decision",
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=transient,
    cache_policy=NO_CACHE,
)
def record_no_decision(workspace: str, version: str, waited_s: int, run_name: str) -> dict[str, str]:
    """Tag `version` with an approval request that timed out; no approval.decision is written, so
    `tuneline promote --approve VERSION` still works later. The champion stays."""
    from datetime import UTC, datetime

    from tuneline.registry.registry import set_version_tags

    cfg = workspace_config(workspace)
    tags = {
        "approval.no_decision_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "approval.no_decision_after_s": str(waited_s),
        "approval.no_decision_run": run_name,
    }
    set_version_tags(cfg.tracking.uri, cfg.registry.model_name, version, tags)
    return tags


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
