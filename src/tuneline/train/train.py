"""`tuneline train`: fine-tune the base model on the train split, validated on val, tracked in MLflow.

The plan (`make_plan`) decides lr, warm-up, schedule, max length, batch split and precision; the
trainer obeys it. Records are rendered with the tokenizer's chat template and tokenized once, in
this process, with labels on assistant tokens only (`tuneline.train.tokenize`). Training uses the
transformers `Trainer`: evaluation on val every epoch, the best checkpoint by val loss is kept,
early stopping after `EARLY_STOPPING_PATIENCE` evaluations without improvement.

Outputs (written into a temp directory beside, then renamed into place):

    models/adapter/     adapter (or full model) safetensors + config, tokenizer with chat template,
                        train_summary.json (losses, steps, tokens, plan, loss history);
                        reports/train_run.json: wall time, tokens/s, MLflow run id, git commit
    reports/train.json  DVC metrics: losses, steps, tokens, counts; no wall-clock fields

MLflow (`tracking.uri` / `tracking.experiment`) gets flat params, per-step train loss, learning
rate and grad norm, val loss and perplexity, and tags git_commit, params_hash and data_hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.errors import InputFileError
from tuneline.jsonio import read_jsonl, write_json
from tuneline.layout import Layout
from tuneline.progress import enabled as progress_enabled
from tuneline.train.lora import count_parameters, prepare_model
from tuneline.train.plan import Plan, make_plan
from tuneline.train.tokenize import encode_records, pad_batch, token_lengths

logger = logging.getLogger(__name__)

ADAPTER_DIR = Path("models") / "adapter"
SUMMARY = "train_summary.json"
EARLY_STOPPING_PATIENCE = 3  # evaluations without a better val loss before training stops
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def sha256_files(paths: list[Path]) -> str:
    """sha256 over the bytes of `paths` in order (each prefixed by its name, so a swap changes it)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists -> {"a.b": "value"} strings (MLflow params are flat strings)."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(obj) if isinstance(obj, list) else str(obj)}


def git_commit(cwd: Path) -> str | None:
    """HEAD's commit of the repo holding `cwd`, or None outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def resolve_model_path(cfg: Config, layout: Layout) -> str:
    """`model.name_or_path` relative to the layout root when it exists there, else as given (hub id)."""
    given = Path(cfg.model.name_or_path).expanduser()
    local = given if given.is_absolute() else layout.root / given
    return str(local) if local.exists() else cfg.model.name_or_path


def read_split(layout: Layout, split: str) -> list[dict[str, Any]]:
    """Records of a processed split.

    Raises:
        InputFileError: the split is missing or empty.
    """
    path = layout.processed(split)
    if not path.is_file():
        raise InputFileError(f"{path}: {split} split not found; run the data stages first (`dvc repro`)")
    rows = list(read_jsonl(path))
    if not rows:
        raise InputFileError(f"{path}: {split} split is empty")
    return rows


class _Rows:
    """Map-style dataset over pre-tokenized rows."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def _sort_target_modules(path: Path) -> None:
    """peft stores target_modules from a set, in hash order; sorted, the file is the same on every run."""
    if not path.exists():
        return  # method: full saves no adapter config
    conf = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(conf.get("target_modules"), list):
        conf["target_modules"] = sorted(conf["target_modules"])
        write_json(path, conf)


def _mlflow_callback(client: Any, run_id: str, history: list[dict[str, float]]) -> Any:
    """A TrainerCallback logging each step's numbers to MLflow (and keeping them for the summary)."""
    from transformers import TrainerCallback

    names = {"loss": "train_loss", "learning_rate": "lr", "grad_norm": "grad_norm", "eval_loss": "val_loss"}

    class MlflowLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            metrics = {names[k]: float(v) for k, v in (logs or {}).items() if k in names}
            if "val_loss" in metrics:
                metrics["val_perplexity"] = math.exp(min(metrics["val_loss"], 50.0))
            if not metrics:
                return
            step = int(state.global_step)
            history.append({"step": step, **metrics})
            stamp = int(time.time() * 1000)
            from mlflow.entities import Metric

            client.log_batch(run_id, metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()])

    return MlflowLog()


def _training_args(cfg: Config, plan: Plan, out: Path, use_cpu: bool) -> Any:
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=plan.per_device_batch,
        per_device_eval_batch_size=plan.per_device_batch,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=plan.lr,
        warmup_steps=plan.warmup,  # a float < 1 is a fraction of all steps (transformers 5)
        lr_scheduler_type=SCHEDULES[plan.schedule],
        num_train_epochs=cfg.train.epochs,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_only_model=True,  # optimizer state is never resumed from: don't write it
        save_total_limit=2,  # the best and the latest
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        activation_checkpointing=plan.gradient_checkpointing,
        use_cpu=use_cpu,
        report_to="none",
        dataloader_num_workers=0,
        disable_tqdm=not progress_enabled(),  # a bar with loss and ETA on a terminal; quiet in CI
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` into `out`, replacing any previous output with a rename (never half-written)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run(cfg: Config, layout: Layout) -> dict:
    """The `train` stage: fine-tune `model.name_or_path` on the train split; see the module docstring.

    Returns:
        The report (also written to reports/train.json).

    Raises:
        InputFileError: a split is missing or empty.
        ConfigError: the model or its chat template cannot serve (no template, no generation block,
            LoRA targets not found).
        PlanError: the plan does not fit the device.
    """
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback, Trainer, set_seed
    from transformers.trainer_callback import PrinterCallback

    started = time.monotonic()
    train_path, val_path = layout.processed("train"), layout.processed("val")
    train_records, val_records = read_split(layout, "train"), read_split(layout, "val")
    model_path = resolve_model_path(cfg, layout)
    remote = cfg.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # batches need a pad id; labels mask it anyway

    plan = make_plan(cfg, model_config=model_path, token_lengths=token_lengths(tokenizer, train_records))
    train_enc = encode_records(tokenizer, train_records, plan.max_length)
    val_enc = encode_records(tokenizer, val_records, plan.max_length)
    if not train_enc.rows or not val_enc.rows:
        raise InputFileError(f"{train_path if not train_enc.rows else val_path}: no row has an answer token")

    set_seed(cfg.seed)
    use_cpu = not torch.cuda.is_available()
    base = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=remote, use_safetensors=True)
    model = prepare_model(base, cfg.train)
    trainable, total = count_parameters(model)

    dumped = {"train": cfg.train.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json")}
    params_flat = flatten({**dumped, "seed": cfg.seed})
    plan_flat = {f"plan.{k}": v for k, v in flatten({k: v for k, v in plan.to_dict().items()
                                                     if k not in ("memory", "options", "warnings")}).items()}
    params_hash = hashlib.sha256(json.dumps(params_flat, sort_keys=True).encode()).hexdigest()
    data_hash = sha256_files([train_path, val_path])
    tags = {"params_hash": params_hash, "data_hash": data_hash, "stage": "train", "method": cfg.train.method,
            "data_train_sha256": sha256_files([train_path]), "data_val_sha256": sha256_files([val_path])}
    commit = git_commit(layout.root.resolve())
    if commit:
        tags["git_commit"] = commit

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(cfg.tracking.experiment)
    mlrun = client.create_run(exp_id, tags=tags, run_name=f"train-{cfg.train.method}")
    run_id = mlrun.info.run_id
    from mlflow.entities import Param

    items = sorted({**params_flat, **plan_flat}.items())
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in items[i : i + 100]])

    out = layout.root / ADAPTER_DIR
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    history: list[dict[str, float]] = []
    try:
        trainer = Trainer(
            model=model,
            args=_training_args(cfg, plan, work / "checkpoints", use_cpu),
            train_dataset=_Rows(train_enc.rows),
            eval_dataset=_Rows(val_enc.rows),
            data_collator=lambda rows: pad_batch(rows, tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=[_mlflow_callback(client, run_id, history),
                       EarlyStoppingCallback(early_stopping_patience=EARLY_STOPPING_PATIENCE)],
        )
        trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout: MLflow and the log have them
        val_before = float(trainer.evaluate()["eval_loss"])  # step 0: the base model's val loss
        train_started = time.monotonic()
        result = trainer.train()
        train_seconds = time.monotonic() - train_started
        val_best = float(trainer.evaluate()["eval_loss"])  # the loaded best checkpoint
        final = work / "final"
        trainer.model.save_pretrained(final, safe_serialization=True)
        tokenizer.save_pretrained(final)
        _sort_target_modules(final / "adapter_config.json")
        shutil.rmtree(work / "checkpoints", ignore_errors=True)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        shutil.rmtree(work, ignore_errors=True)
        raise

    train_losses = [h["train_loss"] for h in history if "train_loss" in h]
    val_losses = [h["val_loss"] for h in history if "val_loss" in h]
    steps = int(result.global_step)
    epochs_done = float(trainer.state.epoch or 0.0)
    tokens_seen = round(train_enc.tokens * epochs_done)
    report = {
        "method": cfg.train.method,
        "train_rows": len(train_enc.rows),
        "val_rows": len(val_enc.rows),
        "truncated_rows": train_enc.truncated_rows,
        "val_truncated_rows": val_enc.truncated_rows,
        "dropped_no_target": len(train_enc.dropped_no_target),
        "val_dropped_no_target": len(val_enc.dropped_no_target),
        "train_tokens": train_enc.tokens,
        "train_target_tokens": train_enc.target_tokens,
        "tokens_seen": tokens_seen,
        "steps": steps,
        "epochs": epochs_done,
        "trainable_params": trainable,
        "total_params": total,
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss_final": train_losses[-1] if train_losses else None,
        # Single steps are noisy: the mean of the first and last tenth of the logged steps show the trend.
        "train_loss_start_avg": _mean(train_losses[: max(1, len(train_losses) // 10)]),
        "train_loss_end_avg": _mean(train_losses[-max(1, len(train_losses) // 10) :]),
        "train_loss_mean": float(result.training_loss),
        "val_loss_before": val_before,
        "val_loss_best": val_best,
        "val_loss_final": val_losses[-2] if len(val_losses) >= 2 else val_best,  # last epoch's eval
        "val_perplexity_best": math.exp(min(val_best, 50.0)),
        "early_stopped": steps < int(trainer.state.max_steps),
        "lr": plan.lr,
        "warmup": plan.warmup,
        "schedule": plan.schedule,
        "max_length": plan.max_length,
        "effective_batch": plan.effective_batch,
        "precision": plan.precision,
        "params_hash": params_hash,
        "data_hash": data_hash,
    }
    # The adapter directory (a DVC output) holds only what the training determines, so a rerun of the
    # same inputs yields the same hash; wall time, the MLflow run id and the commit go to train_run.json.
    summary = {**report, "plan": plan.to_dict(), "history": history,
               "dropped_ids": train_enc.dropped_no_target}
    write_json(final / SUMMARY, summary)
    run_facts = {"seconds": time.monotonic() - started, "train_seconds": train_seconds,
                 "tokens_per_second": tokens_seen / train_seconds if train_seconds else None,
                 "mlflow_run_id": run_id, "tracking_uri": cfg.tracking.uri, "git_commit": commit}
    _replace_dir(final, out)
    shutil.rmtree(work, ignore_errors=True)
    client.log_metric(run_id, "val_loss_best", val_best, step=steps)
    client.log_metric(run_id, "train_seconds", train_seconds)
    client.set_terminated(run_id, "FINISHED")
    write_json(layout.report("train"), report)
    write_json(layout.report("train_run"), run_facts)
    logger.info(
        "train: %d steps in %.1fs (%.0f tokens/s); train loss %.3f -> %.3f, val loss %.3f -> %.3f (best); "
        "adapter in %s", steps, train_seconds, run_facts["tokens_per_second"] or 0.0,
        report["train_loss_first"] or float("nan"), report["train_loss_final"] or float("nan"),
        val_before, val_best, out,
    )
    return report
