"""One training attempt in one process: the transformers `Trainer` set up from the plan.

`fit` is what every process runs: in-process for a single device, or in each worker that
`tuneline.train.worker` starts under torchrun / deepspeed. It evaluates val before training (the
base's loss), trains with evaluation and a checkpoint every `train.eval_every`, stops early after
`train.early_stopping_patience` evaluations without a better val loss (or when the health monitor
says so), restores the best checkpoint, and saves it (main process only).

Checkpoints hold the optimizer, scheduler and RNG states, so `resume=True` continues a killed run
exactly where its last checkpoint left it. They also hold the trainer state: its log history and the
state of the stateful callbacks (early stopping's patience, the token counts). A resumed run puts both
back (`_resume_callback`): the metrics log and the health monitor see the steps before the checkpoint
again, so the history, the report and the adapter's summary are those of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneline.config.loader import Config
from tuneline.lm.batching import collate_padded
from tuneline.progress import enabled as progress_enabled
from tuneline.train.distributed import fsdp_on_cpu, training_kwargs
from tuneline.train.loss import install_loss_kernel
from tuneline.train.packing import collate_packed
from tuneline.train.plan import Plan

logger = logging.getLogger(__name__)

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class FitResult:
    """What one training attempt produced (the main process's view)."""

    global_step: int
    max_steps: int
    epoch: float
    training_loss: float
    val_before: float
    val_best: float | None
    useful_token_fraction: float | None
    train_seconds: float
    # what actually trained: "fsdp2", "deepspeed", "ddp" or "single" (accelerate can drop a requested
    # engine without a word, e.g. FSDP on CPU, so the report says what ran, not what was asked for)
    engine: str = "single"


class Rows:
    """Map-style dataset over tokenized (possibly packed) rows; each item knows its index."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.rows[i], "index": i}

    def row_ids(self, index: int) -> list[str]:
        row = self.rows[index]
        return list(row.get("row_ids") or [row.get("row_id")])

    def tokens(self, index: int) -> int:
        return len(self.rows[index]["input_ids"])


def make_collator(packed: bool, pad_id: int) -> Any:
    """Collate rows into a batch, plus `pack_index` (the trainer maps a bad batch back to row ids)."""
    collate = collate_packed if packed else collate_padded

    def collator(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(rows, pad_id)
        batch["pack_index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        return batch

    return collator


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest `checkpoint-N` in `directory` holding a trainer state (a complete checkpoint)."""
    if not directory.is_dir():
        return None
    done = [p for p in directory.glob("checkpoint-*") if _complete(p)]
    return max(done, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def _complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last: a readable one means the checkpoint is whole."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return checkpoint.name.rsplit("-", 1)[-1].isdigit()


def training_args(cfg: Config, plan: Plan, out: Path) -> Any:
    """TrainingArguments that obey the plan (batch split, LR schedule, precision, checkpointing, ZeRO).

    Under DeepSpeed, create them before loading the model: ZeRO-3 then partitions weights as they load.
    """
    from transformers import TrainingArguments  # lazy: transformers ~15 s; launcher skips

    every = cfg.train.eval_every
    cadence = {"strategy": "epoch"} if every == "epoch" else {"strategy": "steps", "steps": every}
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=plan.per_device_batch,
        per_device_eval_batch_size=plan.per_device_batch,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=plan.lr,
        warmup_steps=plan.warmup,  # a float < 1 is a fraction of all steps (transformers 5)
        lr_scheduler_type=SCHEDULES[plan.schedule],
        num_train_epochs=cfg.train.epochs,
        eval_strategy=cadence["strategy"],
        save_strategy=cadence["strategy"],
        eval_steps=cadence.get("steps"),
        save_steps=cadence.get("steps"),
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss must reach the log and the health monitor
        seed=cfg.seed,
        data_seed=cfg.seed,
        # precision, clipping, checkpointing, DDP backend and the DeepSpeed / FSDP config must agree
        **training_kwargs(cfg.train, plan, use_cpu=not torch.cuda.is_available()),
        # DeepSpeed cannot evaluate before train() has set it up; FSDP would evaluate the unsharded model
        eval_on_start=plan.zero_stage > 0,
        report_to="none",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=not progress_enabled(),  # a bar with loss and ETA on a terminal; quiet in CI
    )


def _token_counts() -> Any:
    """Real vs. padded tokens of the training batches (the useful-token fraction): a stateful callback,
    so checkpoints keep the counts and a resumed run goes on counting from them."""
    from transformers import TrainerCallback  # lazy: transformers ~15 s; launcher skips
    from transformers.trainer_callback import ExportableState  # lazy: transformers ~15 s; launcher skips

    class TokenCounts(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.real = 0
            self.total = 0

        @property
        def useful_fraction(self) -> float | None:
            return self.real / self.total if self.total else None

        def state(self) -> dict[str, Any]:
            return {"args": {}, "attributes": {"real": self.real, "total": self.total}}

    return TokenCounts()


def _resume_callback(replay_to: list[Any], restore: list[Any]) -> Any:
    """A callback that, when training resumes from a checkpoint, puts back what the checkpoint's trainer
    state remembers: the attributes of the stateful callbacks in `restore`, and the log history before
    the checkpoint, replayed into `replay_to` (each entry as the log, and the evaluation, it was)."""
    from transformers import TrainerCallback, TrainerControl  # lazy: transformers ~15 s; launcher skips

    class ResumeFromTrainerState(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.global_step:
                return  # a fresh start: nothing to put back
            for callback in restore:
                name = type(callback).__name__
                saved = state.stateful_callbacks.get(name)
                if isinstance(saved, dict):
                    for key, value in (saved.get("attributes") or {}).items():
                        setattr(callback, key, value)
                else:  # a checkpoint from before this callback kept state: the next save must find a slot
                    state.stateful_callbacks[name] = callback.state()
            for entry in list(state.log_history):
                view = copy.copy(state)
                view.global_step = int(entry.get("step", 0))
                for callback in replay_to:
                    # A scratch control: the replayed past must not stop (or save) the present.
                    callback.on_log(args, view, TrainerControl(), logs=dict(entry))
                    if "eval_loss" in entry:
                        callback.on_evaluate(args, view, TrainerControl(), metrics=dict(entry))

    return ResumeFromTrainerState()


def _trainer_class() -> Any:
    from transformers import Trainer  # lazy: transformers ~15 s; launcher skips

    class TunelineTrainer(Trainer):
        """Trainer that counts the real tokens of its training batches, maps a non-finite training loss
        back to the rows of its batch, and computes the loss with `loss_kernel` when one is installed."""

        monitor: Any = None
        token_counts: Any = None
        loss_kernel: Any = None  # a `tuneline.train.loss.LossKernel`; None: the model's own loss

        def compute_loss(self, model: Any, inputs: dict, return_outputs: bool = False, **kw: Any) -> Any:
            index = inputs.pop("pack_index", None)
            if model.training and index is not None and self.token_counts is not None:
                self.token_counts.real += sum(self.train_dataset.tokens(i) for i in index.tolist())
                self.token_counts.total += int(inputs["input_ids"].numel())
            kernel = self.loss_kernel
            with kernel.computing_loss() if kernel is not None and "labels" in inputs else nullcontext():
                out = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            loss = out[0] if return_outputs else out
            if model.training and self.monitor is not None and not torch.isfinite(loss.detach()).all():
                rows = [r for i in (index.tolist() if index is not None else [])
                        for r in self.train_dataset.row_ids(i)]
                self.monitor.record_nonfinite(
                    step=int(self.state.global_step) + 1, loss=float(loss.detach().float()), row_ids=rows,
                    lr=float(self.lr_scheduler.get_last_lr()[0]) if self.lr_scheduler else None,
                    grad_norm=None,
                )
            return out

    return TunelineTrainer


def fit(
    cfg: Config,
    args: Any,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    *,
    resume: bool,
    callbacks: list[Any],
    monitor: Any = None,
    save_to: Path | None = None,
    loss_kernel: str = "plain",
) -> FitResult:
    """Train `model` (already wrapped by `prepare_model`) on the rows; see the module docstring.

    Args:
        args: `training_args(...)`; its output_dir holds the `checkpoint-N` folders (kept between
            attempts for resuming).
        resume: continue from the newest complete checkpoint in args.output_dir, if any.
        callbacks: extra TrainerCallbacks (metrics logging, health monitor).
        monitor: receives `record_nonfinite` with the rows of a batch whose loss is NaN/inf.
        save_to: where the main process saves the best model and the tokenizer (None: do not save).
        loss_kernel: `plain`, `chunked` or `liger` (`train.loss_kernel` resolved: `loss.loss_kernel_for`).
    """
    from transformers import EarlyStoppingCallback  # lazy: transformers ~15 s; launcher skips
    from transformers.trainer_callback import PrinterCallback  # lazy: transformers ~15 s; launcher skips

    checkpoints = Path(args.output_dir)
    counts = _token_counts()
    stopping = EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience)
    with fsdp_on_cpu(args):  # FSDP on CPU (tests, CI) too, not silently DDP
        trainer = _trainer_class()(
            model=model,
            args=args,
            train_dataset=Rows(train_rows),
            eval_dataset=Rows(val_rows),
            data_collator=make_collator(cfg.train.packing, tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=[_resume_callback(replay_to=callbacks, restore=[counts, stopping]), *callbacks,
                       stopping, counts],
        )
    trainer.monitor = monitor
    trainer.token_counts = counts
    trainer.loss_kernel = install_loss_kernel(model, loss_kernel, required=cfg.train.loss_kernel != "auto")
    trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout: MLflow and the log have them
    start = latest_checkpoint(checkpoints) if resume else None
    if start is not None:
        logger.info("train: resuming from %s", start)
    val_before = None if args.eval_on_start else float(trainer.evaluate()["eval_loss"])  # the base's
    began = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(start) if start else None)
    seconds = time.monotonic() - began
    if val_before is None:  # evaluated by the trainer at its start (eval_on_start)
        val_before = float(next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h))
    failed = monitor is not None and getattr(monitor, "failed", False)
    val_best = None if failed else float(trainer.evaluate()["eval_loss"])  # the restored best checkpoint
    if save_to is not None and not failed:
        trainer.save_model(str(save_to))  # every rank calls it (ZeRO-3 gathers weights); rank 0 writes
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(save_to)
            # the pickled TrainingArguments name this run's temp paths: not part of the model
            (save_to / "training_args.bin").unlink(missing_ok=True)
    return FitResult(
        global_step=int(result.global_step),
        max_steps=int(trainer.state.max_steps),
        epoch=float(trainer.state.epoch or 0.0),
        training_loss=float(result.training_loss),
        val_before=val_before,
        val_best=val_best,
        useful_token_fraction=counts.useful_fraction,
        train_seconds=seconds,
        engine=_engine(trainer),
    )


def _engine(trainer: Any) -> str:
    """The engine the Trainer's accelerator ran (see `FitResult.engine`)."""
    if trainer.is_fsdp_enabled:
        return f"fsdp{trainer.accelerator.state.fsdp_plugin.fsdp_version}"
    if trainer.is_deepspeed_enabled:
        return "deepspeed"
    return "ddp" if trainer.args.world_size > 1 else "single"
