"""MLflow bookkeeping for a training run: lineage hashes, flat params, per-step metrics.

One MLflow run per training. The parent process creates it (tags: git_commit, params_hash,
data_hash and one sha256 per split); whichever process trains logs per-step numbers into it by id,
so a multi-process run is still one run.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

from tuneline.redact import redact
from tuneline.urls import SQLITE

# Trainer log keys -> the metric names tuneline logs, in the order of a history entry (the trainer's
# own order; a checkpoint's log history comes back with sorted keys, and must give the same entries).
METRIC_NAMES = {
    "loss": "train_loss", "grad_norm": "grad_norm", "learning_rate": "lr", "eval_loss": "val_loss",
}


def sha256_files(paths: list[Path]) -> str:
    """sha256 over the bytes of `paths` in order (each prefixed by its name, so a swap changes it)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def adapter_sha256(adapter: Path) -> str:
    """Content hash of a trained model directory (every file, by name and bytes): the identity that
    evaluate records for what it scored and promote tags on the version it registers."""
    return sha256_files(sorted(p for p in adapter.rglob("*") if p.is_file()))


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists -> {"a.b": "value"} strings (MLflow params are flat strings)."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(obj) if isinstance(obj, list) else str(obj)}


def params_hash(flat: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def git_commit(cwd: Path) -> str | None:
    """HEAD's commit of the repo holding `cwd`, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of the store `uri` keeps its artifacts: `mlruns/` beside a sqlite database
    file; None (the store's own default) for a server or any other store.

    MLflow's default for a sqlite store is `./mlruns` of whichever directory the process happens to run
    in, which scatters artifacts (and lets a run from another directory write into this checkout).
    """
    if not uri.startswith(SQLITE) or uri.startswith(SQLITE + ":memory:"):
        return None
    database = Path(uri.removeprefix(SQLITE).split("?", 1)[0])  # relative: to the cwd, as MLflow reads it
    return str(database.resolve().parent / "mlruns")


def start_run(uri: str, experiment: str, tags: dict[str, str], params: dict[str, str], name: str) -> str:
    """Create the MLflow run with its tags and flat params; return its id.

    A new experiment keeps its artifacts beside its store (`artifact_location`).
    """
    import mlflow  # lazy: mlflow ~10 s; evaluate/promote/train import this, the CLI must not pay it
    from mlflow.entities import Param  # lazy: mlflow ~10 s

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=artifact_location(uri))
    # Params and tags are shown to everyone who can read the tracking server: no credentials in them.
    run_id = client.create_run(exp_id, tags=redact(tags), run_name=name).info.run_id
    items = sorted(redact(params).items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])
    return run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    import mlflow  # lazy: mlflow ~10 s
    from mlflow.entities import Metric  # lazy: mlflow ~10 s

    stamp = int(time.time() * 1000)
    mlflow.MlflowClient(tracking_uri=uri).log_batch(
        run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()]
    )


def end_run(uri: str, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """Set final tags and the run's status (FINISHED / FAILED / KILLED)."""
    import mlflow  # lazy: mlflow ~10 s

    client = mlflow.MlflowClient(tracking_uri=uri)
    for k, v in (tags or {}).items():
        client.set_tag(run_id, k, redact(v))
    client.set_terminated(run_id, status)


def metrics_callback(uri: str | None, run_id: str | None, history: list[dict[str, float]]) -> Any:
    """A TrainerCallback keeping each logged step's numbers in `history` and logging them to MLflow."""
    from transformers import TrainerCallback  # lazy: transformers ~5 s; only the training process needs it

    class MetricsLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            logs = logs or {}
            metrics = {name: float(logs[key]) for key, name in METRIC_NAMES.items() if key in logs}
            if "val_loss" in metrics:
                metrics["val_perplexity"] = math.exp(min(metrics["val_loss"], 50.0))
            if not metrics or not state.is_world_process_zero:
                return
            step = int(state.global_step)
            history.append({"step": step, **metrics})
            if uri and run_id:
                log_metrics(uri, run_id, metrics, step)

    return MetricsLog()
