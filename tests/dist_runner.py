"""A training worker for tests/test_distributed.py: the tiny Llama + LoRA, trained by the real Trainer.

Started by the command `tuneline.train.distributed.launch_command` builds (with `module="dist_runner"`
and tests/ on PYTHONPATH), so the tests exercise the real launchers, the generated DeepSpeed config and
`training_kwargs` as the `train` stage's worker uses them. The job file names the base model, the
train section (`Config.train`), the step count and the output directory. Like the stage, every rank
evaluates, trains with evaluation and checkpoints every 2 steps, restores the best checkpoint, and
calls `save_model` (rank 0 writes `<out>/adapter`). Every rank then writes `<out>/rank<R>.json`:
losses, the trainable weights before and after (gathered under ZeRO-3), and the row ids of every
training batch it saw. With `resume` (a `checkpoint-N` folder) the job continues from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test_demo_base: the tiny corpus

VAL_ROWS = 8


def _collate(pad_id: int, seen: list[list[str]]) -> Any:
    """Right-pad a batch; remember which training rows it held (val rows are named v*)."""
    import torch

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        ids = [r["row_id"] for r in rows]
        if not ids[0].startswith("v"):
            seen.append(ids)
        width = max(len(r["input_ids"]) for r in rows)

        def pad(seq: list[int], value: int) -> list[int]:
            return seq + [value] * (width - len(seq))

        return {
            "input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
            "labels": torch.tensor([pad(r["labels"], -100) for r in rows]),
        }

    return collate


def _trainable(model: Any, zero3: bool) -> dict[str, list[float]]:
    """Trainable weights as lists; ZeRO-3 and FSDP hold only a shard per rank, so gather them first."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not zero3:
        # FSDP2: each parameter is a DTensor sharded over the ranks; full_tensor() is a collective
        full = {n: p.full_tensor() if hasattr(p, "full_tensor") else p for n, p in params.items()}
        return {n: p.detach().float().flatten().tolist() for n, p in full.items()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {n: p.detach().float().flatten().tolist() for n, p in params.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_runner")
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args(argv)
    job = json.loads(args.job.read_text(encoding="utf-8"))

    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from helpers import tiny_records
    from tuneline.config.loader import Config
    from tuneline.lm.chat import ChatFormat
    from tuneline.lm.labels import encode_records
    from tuneline.train.distributed import fsdp_on_cpu, init_worker, training_kwargs, uses_deepspeed
    from tuneline.train.lora import prepare_model
    from tuneline.train.plan import make_plan

    cfg = Config.model_validate({"seed": 0, "train": job["train"]})
    base, out = job["base"], Path(job["out"])
    use_cpu = not torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(base)
    train_rows = encode_records(ChatFormat(tokenizer), tiny_records(job["rows"]), 64).rows
    val_records = [{**r, "id": f"v{i}"} for i, r in enumerate(tiny_records(VAL_ROWS))]
    val_rows = encode_records(ChatFormat(tokenizer), val_records, 64).rows
    plan = make_plan(cfg, model_config=base, token_lengths=[len(r["input_ids"]) for r in train_rows])

    # The order the worker must keep: process group, then TrainingArguments (which registers the
    # DeepSpeed config, so ZeRO-3 partitions the model while loading), then the model.
    info = init_worker(plan, use_cpu)
    set_seed(cfg.seed)
    targs = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=plan.per_device_batch,
        per_device_eval_batch_size=plan.per_device_batch,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=plan.lr,
        lr_scheduler_type="linear",
        max_steps=job["steps"],
        eval_strategy="steps",
        eval_steps=2,
        # Under DeepSpeed `evaluate()` before `train()` fails (ZeRO-2: "ZeRO inference only makes sense
        # with ZeRO Stage 3"; ZeRO-3: the inference engine is kept and backward() then fails), so the
        # base model's val loss comes from the step-0 evaluation inside train().
        eval_on_start=True,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        **training_kwargs(cfg.train, plan, use_cpu),
    )
    model = prepare_model(AutoModelForCausalLM.from_pretrained(base), cfg.train)
    zero3 = uses_deepspeed(plan) and plan.zero_stage == 3
    before = _trainable(model, zero3)
    seen: list[list[str]] = []
    with fsdp_on_cpu(targs):
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=train_rows,
            eval_dataset=val_rows,
            data_collator=_collate(tokenizer.pad_token_id, seen),
            callbacks=[EarlyStoppingCallback(early_stopping_patience=3)],
        )
    result = trainer.train(resume_from_checkpoint=job.get("resume"))  # a checkpoint-N folder, or None
    val_before = next(h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h)
    val_best = float(trainer.evaluate()["eval_loss"])
    trainer.save_model(str(out / "adapter"))  # a collective under ZeRO-3: every rank calls it
    after = _trainable(trainer.model, zero3)
    history = trainer.state.log_history
    ds_plugin = trainer.accelerator.state.deepspeed_plugin
    report = {
        "rank": info.rank,
        "world_size": info.world_size,
        "is_main": info.is_main,
        "trainer_world_size": targs.world_size,
        "deepspeed": trainer.is_deepspeed_enabled,
        "ds_config": ds_plugin.deepspeed_config if ds_plugin is not None else None,
        "fsdp_version": trainer.accelerator.state.fsdp_plugin.fsdp_version if trainer.is_fsdp_enabled else 0,
        # FSDP2 turns every shard unit's parameters into DTensors sharded over the ranks
        "dtensors": sum(type(p).__name__ == "DTensor" for p in trainer.model_wrapped.parameters()),
        "checkpointing": bool(getattr(trainer.model, "is_activation_checkpointing", False)),
        "steps": int(result.global_step),
        "losses": [h["loss"] for h in history if "loss" in h],
        "eval_losses": [h["eval_loss"] for h in history if "eval_loss" in h],
        "val_before": val_before,
        "val_best": val_best,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "batches": seen,
        "before": before,
        "after": after,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{info.rank}.json").write_text(json.dumps(report), encoding="utf-8")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
