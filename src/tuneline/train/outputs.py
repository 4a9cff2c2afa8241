"""What the train stage writes: the DVC metrics report, and the adapter directory's finishing touches."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.jsonio import write_json
from tuneline.lm.labels import Encoded
from tuneline.train.plan import Plan
from tuneline.train.trainer import FitResult


def sort_target_modules(path: Path) -> None:
    """peft stores target_modules from a set, in hash order; sorted, the file is the same on every run."""
    if not path.exists():
        return  # method: full saves no adapter config
    conf = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(conf.get("target_modules"), list):
        conf["target_modules"] = sorted(conf["target_modules"])
        write_json(path, conf)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _loss_mean(losses: list[float]) -> float | None:
    """Mean of the per-step losses of the whole run, summed in order as transformers sums its
    `training_loss` (the same float for an uninterrupted run); the trainer's own number covers only
    the steps since the last resume."""
    total = 0.0
    for loss in losses:
        total += loss
    return total / len(losses) if losses else None


def train_report(
    cfg: Config,
    plan: Plan,
    train_enc: Encoded,
    val_enc: Encoded,
    result: FitResult,
    history: list[dict[str, float]],
    params_hash: str,
    data_hash: str,
    train_sequences: int,
    val_sequences: int,
    counts: tuple[int, int],
) -> dict[str, Any]:
    """reports/train.json: losses, steps, tokens, counts and the plan's choices; no wall-clock fields."""
    train_losses = [h["train_loss"] for h in history if "train_loss" in h]
    val_losses = [h["val_loss"] for h in history if "val_loss" in h]
    tenth = max(1, len(train_losses) // 10)
    val_best = float(result.val_best) if result.val_best is not None else math.nan
    return {
        "method": cfg.train.method,
        "train_rows": len(train_enc.rows),
        "val_rows": len(val_enc.rows),
        "packing": cfg.train.packing,
        "train_sequences": train_sequences,
        "val_sequences": val_sequences,
        "truncated_rows": train_enc.truncated_rows,
        "val_truncated_rows": val_enc.truncated_rows,
        "dropped_too_long": len(train_enc.dropped_too_long),
        "val_dropped_too_long": len(val_enc.dropped_too_long),
        "dropped_no_target": len(train_enc.dropped_no_target),
        "val_dropped_no_target": len(val_enc.dropped_no_target),
        "train_tokens": train_enc.tokens,
        "train_target_tokens": train_enc.target_tokens,
        "tokens_seen": round(train_enc.tokens * result.epoch),
        "useful_token_fraction": result.useful_token_fraction,
        "steps": result.global_step,
        "epochs": result.epoch,
        # the layers that got adapters, and any guide name mapped onto this model's own (e.g. Phi-3 qkv_proj)
        "lora_targets": plan.lora_targets,
        "lora_target_notes": plan.lora_target_notes,
        "trainable_params": counts[0],
        "total_params": counts[1],
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss_final": train_losses[-1] if train_losses else None,
        # Single steps are noisy: the means of the first and last tenth of the logged steps show the trend.
        "train_loss_start_avg": _mean(train_losses[:tenth]),
        "train_loss_end_avg": _mean(train_losses[-tenth:]),
        "train_loss_mean": _loss_mean(train_losses),
        "val_loss_before": result.val_before,
        "val_loss_best": val_best,
        # history ends with the evaluation of the restored best checkpoint; the one before is the last epoch's
        "val_loss_final": val_losses[-2] if len(val_losses) >= 2 else val_best,
        "val_perplexity_best": math.exp(min(val_best, 50.0)),
        "early_stopped": result.global_step < result.max_steps,
        "lr": plan.lr,
        "warmup": plan.warmup,
        "schedule": plan.schedule,
        "max_length": plan.max_length,
        "effective_batch": plan.effective_batch,
        "world_size": plan.world_size,
        "zero_stage": plan.zero_stage,
        "per_device_batch": plan.per_device_batch,
        "grad_accum": plan.grad_accum,
        "precision": plan.precision,
        "params_hash": params_hash,
        "data_hash": data_hash,
    }
