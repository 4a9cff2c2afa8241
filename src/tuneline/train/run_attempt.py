"""One training attempt under a given plan: in this process, or in N launched worker processes.

A single device trains in-process. Several processes (or any DeepSpeed ZeRO stage) are started by
torchrun / deepspeed (`distributed.launch_command`) running `tuneline.train.worker`, which reads a
job file written here: the config, the plan, and the already tokenized and packed rows, so workers
never tokenize (slow tokenization inside workers stalls the collectives of the others). Rank 0
writes the result file this process reads back. A CUDA out-of-memory in any process surfaces as
`OutOfMemory`, so the caller can back the plan off and resume.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuneline.config.loader import Config
from tuneline.errors import TunelineError
from tuneline.tracking import metrics_callback
from tuneline.train.distributed import (
    check_same_job,
    init_worker,
    job_fingerprint,
    launch_command,
    worker_env,
)
from tuneline.train.gpu_monitor import GpuSampler
from tuneline.train.lora import count_parameters, prepare_model
from tuneline.train.loss import loss_kernel_for
from tuneline.train.plan import Plan
from tuneline.train.trainer import FitResult, fit, latest_checkpoint, training_args

logger = logging.getLogger(__name__)

OOM_EXIT = 75  # a worker's exit code after CUDA out-of-memory


class OutOfMemory(Exception):
    """CUDA ran out of memory during an attempt (the caller backs the plan off)."""


@dataclass
class Attempt:
    """What every attempt of one training run shares."""

    cfg: Config
    plan: Plan
    model_path: str
    train_rows: list[dict[str, Any]]
    val_rows: list[dict[str, Any]]
    checkpoints: Path
    save_to: Path
    work: Path
    tracking_uri: str | None
    run_id: str | None
    node_rank: int | None = None  # this node's rank in a many-node run (None: node 0, see launch_command)


@dataclass
class Outcome:
    fit: FitResult
    history: list[dict[str, float]]
    health: dict[str, Any]
    tags: dict[str, str]
    counts: tuple[int, int]
    resumed_from: str | None
    oom_events: list[str] = field(default_factory=list)


def needs_launch(plan: Plan) -> bool:
    """Several processes, or DeepSpeed (which needs its process group even for one process)."""
    return plan.world_size > 1 or plan.zero_stage > 0


def run_attempt(attempt: Attempt, plan: Plan) -> Outcome:
    """Train once under `plan`, resuming from the newest checkpoint when `train.resume` is auto.

    Raises:
        OutOfMemory: CUDA ran out of memory.
        TunelineError: a worker process failed for another reason.
    """
    if needs_launch(plan):
        return _launched(attempt, plan)
    return train_here(attempt, plan)


def load_model(cfg: Config, plan: Plan, model_path: str) -> tuple[Any, Any]:
    """Tokenizer (with a pad id) and the model to train (LoRA-wrapped or full) for `plan`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers ~15 s; launcher skips

    remote = cfg.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # batches need a pad id; labels mask it anyway
    # LoRA keeps the frozen base in the compute precision (peft keeps adapters in fp32); full
    # fine-tuning keeps fp32 master weights and lets autocast compute in bf16/fp16.
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(plan.precision)
    dtype = half if half is not None and cfg.train.method == "lora" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=remote, use_safetensors=True,
                                                dtype=dtype)
    # No KV cache while training: with one, transformers ignores the restarting position ids and
    # packed rows would attend to each other.
    base.config.use_cache = False
    return tokenizer, prepare_model(base, cfg.train)


def make_monitor(cfg: Config, plan: Plan) -> Any:
    """The health monitor for `plan`; on a GPU it also samples utilization and memory (NVML)."""
    from tuneline.train.health import HealthMonitor  # lazy: transformers ~15 s; launcher skips

    gpu = GpuSampler() if torch.cuda.is_available() else None
    return HealthMonitor(cfg.train.health, plan_lr=plan.lr, warmup_frac=plan.warmup, schedule=plan.schedule,
                         lr_range=plan.lr_range, precision=plan.precision, gpu=gpu)


def train_here(attempt: Attempt, plan: Plan) -> Outcome:
    """The attempt in this process (also what each launched worker runs)."""
    from transformers import set_seed  # lazy: transformers ~15 s; launcher skips

    cfg = attempt.cfg
    set_seed(cfg.seed)
    init_worker(plan, use_cpu=not torch.cuda.is_available())  # DeepSpeed's process group, if any
    args = training_args(cfg, plan, attempt.checkpoints)  # before the model: ZeRO-3 partitions as it loads
    # every rank (of every node) the same job, rank 0 under node 0's stage; args made the process group
    check_same_job(job_fingerprint(plan, attempt.train_rows, attempt.val_rows, attempt.checkpoints),
                   owns_outputs=not attempt.node_rank)
    tokenizer, model = load_model(cfg, plan, attempt.model_path)
    history: list[dict[str, float]] = []
    monitor = make_monitor(cfg, plan)
    resume = cfg.train.resume == "auto"
    start = latest_checkpoint(attempt.checkpoints) if resume else None
    callbacks = [metrics_callback(attempt.tracking_uri, attempt.run_id, history), monitor]
    try:
        result = fit(cfg, args, model, tokenizer, attempt.train_rows, attempt.val_rows,
                     resume=resume, callbacks=callbacks, monitor=monitor, save_to=attempt.save_to,
                     loss_kernel=loss_kernel_for(cfg.train.loss_kernel, plan.zero_stage, plan.backend))
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(str(exc).splitlines()[0]) from None
    return Outcome(result, history, monitor.report(), monitor.tags(), count_parameters(model),
                   str(start) if start else None)


def _launch(attempt: Attempt, plan: Plan) -> tuple[subprocess.CompletedProcess, list[str], Path]:
    """Write the job file, start this node's workers and wait for them; the result file rank 0 writes."""
    job = attempt.work / "job.json"
    result_path = attempt.work / "result.json"
    result_path.unlink(missing_ok=True)
    job.write_text(json.dumps({
        "config": attempt.cfg.model_dump(mode="json"), "plan": plan.to_dict(),
        "model_path": attempt.model_path,
        "train_rows": attempt.train_rows, "val_rows": attempt.val_rows,
        "checkpoints": str(attempt.checkpoints), "save_to": str(attempt.save_to), "work": str(attempt.work),
        "tracking_uri": attempt.tracking_uri, "run_id": attempt.run_id, "result": str(result_path),
        "node_rank": attempt.node_rank,
    }), encoding="utf-8")
    cmd = launch_command(attempt.cfg.train, plan, ["--job", str(job)], python=sys.executable,
                         node_rank=attempt.node_rank)
    logger.info("train: launching %s", " ".join(cmd))
    done = subprocess.run(cmd, env={**os.environ, **worker_env(attempt.cfg.train, plan)}, check=False)
    return done, cmd, result_path


def run_node(attempt: Attempt, plan: Plan) -> None:
    """This node's workers of a many-node run whose rank 0 is on another node (which reports the result).

    Raises:
        OutOfMemory: a worker here ran out of CUDA memory.
        TunelineError: the workers failed for another reason.
    """
    done, cmd, _ = _launch(attempt, plan)
    if done.returncode == OOM_EXIT or list(attempt.work.glob("oom.rank*.json")):
        raise OutOfMemory("CUDA out of memory in a worker")
    if done.returncode != 0:
        raise TunelineError(
            f"training workers failed (exit code {done.returncode}): {' '.join(cmd)}; see the log above"
        )


def _launched(attempt: Attempt, plan: Plan) -> Outcome:
    done, cmd, result_path = _launch(attempt, plan)
    if result_path.is_file():
        data = json.loads(result_path.read_text(encoding="utf-8"))
        if data.get("status") == "oom":
            raise OutOfMemory(data.get("error", "CUDA out of memory in a worker"))
        if data.get("status") == "ok" and done.returncode == 0:
            return Outcome(FitResult(**data["fit"]), data["history"], data["health"], data["tags"],
                           tuple(data["counts"]), data.get("resumed_from"))
    if done.returncode == OOM_EXIT:
        raise OutOfMemory("CUDA out of memory in a worker")
    raise TunelineError(
        f"training workers failed (exit code {done.returncode}): {' '.join(cmd)}; see the log above"
    )


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """What rank 0 writes for the parent (`_launched` reads it back)."""
    return {"status": "ok", "fit": asdict(outcome.fit), "history": outcome.history, "health": outcome.health,
            "tags": outcome.tags, "counts": list(outcome.counts), "resumed_from": outcome.resumed_from}
