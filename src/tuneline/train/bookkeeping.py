"""The train stage's bookkeeping: its run key, its MLflow run, its work folders and the numbers it logs.

Kept apart so that `train.train` reads as the stage's recipe. Nothing here touches what is trained: the run
key names the checkpoint folder (params, data and base model), the MLflow run records tags, params and the
final metrics, and the work folder beside the output is where the adapter is written before it replaces the
output in one rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.layout import Layout
from tuneline.outdirs import replace_dir
from tuneline.redact import redact
from tuneline.tracking import (
    end_run,
    flatten,
    git_commit,
    log_metrics,
    params_hash,
    sha256_files,
    start_run,
)
from tuneline.train.plan import Plan
from tuneline.train.recovery import (
    REPLACES_TAG,
    OutputClaim,
    mark_killed,
    new_work_dir,
    remove_dead_work_dirs,
    stale_run,
)
from tuneline.train.run_attempt import Outcome
from tuneline.urls import anchored_url

OUTPUT_SETTING = "train.output_dir"
CHECKPOINTS = Path(".tuneline") / "checkpoints"
# The plan's parts that are in reports/plan.json only: too big or too nested for MLflow params.
PLAN_NOT_LOGGED = ("memory", "options", "warnings", "sharding", "lora_vs_full")


@dataclass
class RunKey:
    """What names a training run: its flat params and their hash, the data's hash, its checkpoint folder."""

    params_flat: dict[str, Any]
    p_hash: str
    data_hash: str
    checkpoints: Path


def model_fingerprint(model_path: str) -> str:
    """Hash of a local model's config and weights files (names + sizes + config bytes); the id otherwise."""
    path = Path(model_path)
    if not path.is_dir():
        return model_path
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}\0".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()


def run_key(cfg: Config, layout: Layout, model_path: str) -> RunKey:
    """The run key of these params, splits and base model: a rerun after a crash finds its checkpoints."""
    dumped = {"train": cfg.train.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json")}
    params_flat = flatten({**dumped, "seed": cfg.seed})
    p_hash = params_hash(params_flat)
    data_hash = sha256_files([layout.processed("train"), layout.processed("val")])
    key = hashlib.sha256(f"{p_hash}\0{data_hash}\0{model_fingerprint(model_path)}".encode()).hexdigest()
    # Absolute: the trainer state records the best checkpoint's path, which a rerun from another working
    # directory (the CLI killed, the rerun in a flow) must still find.
    checkpoints = (layout.root / CHECKPOINTS / key[:16]).resolve()
    return RunKey(params_flat, p_hash, data_hash, checkpoints)


@dataclass
class TrackedRun:
    """The MLflow run of one training attempt."""

    uri: str
    run_id: str
    commit: str | None  # the workspace's git commit, when it is a checkout

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        end_run(self.uri, self.run_id, status, tags)


def open_run(cfg: Config, layout: Layout, claim: OutputClaim, key: RunKey, plan: Plan,
             loss_kernel: str) -> TrackedRun:
    """Start the MLflow run (tags: hashes, commit, loss kernel; params: the sections and the plan).

    The run is recorded in the output's lock file; the run of an attempt that died while holding the lock
    (kill -9) is marked KILLED and linked to this one both ways.
    """
    plan_flat = {f"plan.{k}": v for k, v in flatten({k: v for k, v in plan.to_dict().items()
                                                     if k not in PLAN_NOT_LOGGED}).items()}
    tags = {"params_hash": key.p_hash, "data_hash": key.data_hash, "stage": "train",
            "method": cfg.train.method, "data_train_sha256": sha256_files([layout.processed("train")]),
            "data_val_sha256": sha256_files([layout.processed("val")])}
    commit = git_commit(layout.root.resolve())
    if commit:
        tags["git_commit"] = commit
    tags["loss_kernel"] = loss_kernel
    uri = cfg.tracking.uri
    killed = stale_run(claim.previous)  # the run of an attempt that died (kill -9) while holding the lock
    if killed:
        tags[REPLACES_TAG] = killed
    run_id = start_run(uri, cfg.tracking.experiment, tags, {**key.params_flat, **plan_flat},
                       f"train-{cfg.train.method}")
    claim.record(mlflow_run_id=run_id, tracking_uri=anchored_url(uri, layout.root), pid=os.getpid())
    if killed:
        mark_killed(claim.previous, killed, replaced_by=run_id)
    return TrackedRun(uri, run_id, commit)


def fresh_work_dir(out: Path, checkpoints: Path, resume: str) -> Path:
    """A new work folder beside `out` (dead attempts' removed); the checkpoints too with `resume: never`."""
    if resume == "never":
        shutil.rmtree(checkpoints, ignore_errors=True)
    remove_dead_work_dirs(out)  # only dead attempts' work folders exist while this process holds the lock
    return new_work_dir(out)


def publish(final: Path, out: Path, work: Path, checkpoints: Path) -> None:
    """Rename the finished adapter into `out`; the work folder and the checkpoints are then not needed."""
    replace_dir(final, out, OUTPUT_SETTING)
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: nothing left to resume


def tokens_per_second(report: dict[str, Any], train_seconds: float | None) -> float | None:
    return report["tokens_seen"] / train_seconds if train_seconds else None


def run_facts(tracked: TrackedRun, started: float, outcome: Outcome, report: dict[str, Any],
              tokens_cached: bool) -> dict[str, Any]:
    """reports/train_run.json: what differs between identical runs (wall time, engine, the MLflow run)."""
    result = outcome.fit
    return {"seconds": time.monotonic() - started, "train_seconds": result.train_seconds,
            "engine": result.engine,
            "tokens_per_second": tokens_per_second(report, result.train_seconds),
            "oom_retries": outcome.oom_events,
            "resumed_from": outcome.resumed_from,
            "tokens_cached": tokens_cached,
            "mlflow_run_id": tracked.run_id, "tracking_uri": redact(tracked.uri),
            "git_commit": tracked.commit}


def finish_run(tracked: TrackedRun, report: dict[str, Any], outcome: Outcome) -> None:
    """Log the final metrics (best val loss, speed, GPU use) at the last step and end the run FINISHED."""
    result, health = outcome.fit, outcome.health
    final_metrics = {"val_loss_best": report["val_loss_best"], "train_seconds": result.train_seconds}
    if report["useful_token_fraction"] is not None:
        final_metrics["useful_token_fraction"] = report["useful_token_fraction"]
    speed = tokens_per_second(report, result.train_seconds)
    if speed:
        final_metrics["tokens_per_second"] = speed
    gpu = health.get("gpu") or {}
    for key in ("utilization_mean", "memory_used_max_gib"):
        if gpu.get(key) is not None:
            final_metrics[f"gpu_{key}"] = float(gpu[key])
    log_metrics(tracked.uri, tracked.run_id, final_metrics, step=report["steps"])
    tracked.end("FINISHED", outcome.tags)
