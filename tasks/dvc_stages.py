"""Prefect tasks that run the pipeline's stages through DVC: one task per stage, `dvc pull`, `dvc push`.

DVC owns the artifact DAG and its cache (`dvc.lock`, the run cache, remotes): a stage task runs
`dvc repro -s <stage>` in the workspace, so DVC skips an unchanged stage and a retrain after a params
change reruns only what depends on it. With parameter overrides the stage runs as a DVC experiment
(`dvc exp run -s <stage> --set-param k=v`), which records the exact params next to `dvc.lock`.

Retries live on the steps that fail transiently (remote storage), never on a stage: a failed data
contract or a diverged training run fails the same way on a second try. The registry's tasks are in
`tasks.registry`, the workspace's config and run lock in `tasks.workspace`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Literal

import yaml
from configobj import ConfigObj  # DVC's own config parser (a DVC dependency)
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from tuneline.config.loader import has_key
from tuneline.stages import PIPELINE

StageName = Literal[PIPELINE]  # type: ignore[valid-type]  # the verbs of tuneline.stages.STAGES, in order
"""A stage's verb; the retrain flow's `stages` parameter, so Prefect's run form offers exactly these."""
TAIL_LINES = 40

log = logging.getLogger(__name__)


class CommandFailed(RuntimeError):
    """A workspace command (a stage, `dvc pull`, `dvc push`) exited non-zero; the message ends with its
    stderr tail."""


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


def hydra_overrides(workspace: Path, overrides: dict[str, str]) -> list[str]:
    """`--set-param` values for `dvc exp run`: `key=value`, or `+key=value` for a key that params.yaml
    leaves at its default (DVC's override grammar appends only with `+`)."""
    raw = yaml.safe_load((workspace / "params.yaml").read_text(encoding="utf-8")) or {}
    return [f"{'' if has_key(raw, k) else '+'}{k}={v}" for k, v in sorted(overrides.items())]


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
    from dvc.repo import Repo  # lazy: ~0.65 s measured; every flow imports this module, one push needs it
    from dvc_data.hashfile.hash_info import HashInfo  # lazy: with dvc.repo above

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
