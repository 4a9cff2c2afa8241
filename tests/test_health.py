"""Training health: each danger-signal check, the LR schedule against transformers' own scheduler, the
non-finite diagnosis rules, and the monitor inside real (tiny) Trainer runs."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tuneline.config.train import HealthParams
from tuneline.train.health import (
    GpuSampler,
    HealthMonitor,
    check_flat,
    check_gpu_utilization,
    check_lr,
    check_nonfinite,
    check_overfit,
    diagnose_nonfinite,
    expected_lr,
    warmup_steps,
)

NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


# ---- the schedule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize(
    ("total", "warmup"), [(10, 0.0), (10, 0.1), (37, 0.03), (37, 0.25), (18, 0.5), (20, 3)]
)
def test_expected_lr_equals_the_real_scheduler(
    tmp_path: Path, schedule: str, total: int, warmup: float
) -> None:
    import torch
    from transformers import TrainingArguments, get_scheduler

    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=warmup, use_cpu=True, report_to="none")
    warm = args.get_warmup_steps(total)
    assert warm == warmup_steps(total, warmup)
    peak = 3e-4
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=peak)
    sched = get_scheduler(NAMES[schedule], opt, num_warmup_steps=warm, num_training_steps=total)
    for step in range(total + 3):  # past the end too: decay stays at 0, constant stays at the peak
        assert sched.get_last_lr()[0] == expected_lr(step, total, peak, warmup, schedule), step
        opt.step()
        sched.step()


def test_warmup_rounds_a_fraction_up_and_takes_a_count_as_is() -> None:
    assert warmup_steps(18, 0.1) == 2 and warmup_steps(100, 0.03) == 3 and warmup_steps(10, 0.0) == 0
    assert warmup_steps(18, 5) == 5
    assert expected_lr(0, 18, 1.0, 0.1, "cosine") == 0.0 and expected_lr(2, 18, 1.0, 0.1, "cosine") == 1.0
    with pytest.raises(ValueError, match="schedule 'step'"):
        expected_lr(0, 10, 1.0, 0.1, "step")


# ---- the checks -----------------------------------------------------------------------------------


def test_nonfinite_fires_on_nan_or_inf_loss_and_on_grad_norm_outside_fp16() -> None:
    assert check_nonfinite(3, 2.5, 1.0) is None
    for loss in (math.nan, math.inf, -math.inf):
        alert = check_nonfinite(3, loss)
        assert alert is not None and alert["kind"] == "nonfinite_loss" and alert["severity"] == "error"
        assert alert["step"] == 3 and set(alert) == {"kind", "severity", "step", "message", "remedy"}
    assert check_nonfinite(4, 2.5, math.nan, "bf16") is not None
    assert check_nonfinite(4, 2.5, math.inf, "fp16") is None  # fp16's loss scaler skips such steps by design
    assert check_nonfinite(4, math.nan, math.inf, "fp16") is not None


def test_flat_needs_every_move_under_tolerance_for_n_evaluations() -> None:
    tol = 0.002
    assert check_flat(5, [2.0, 2.001, 2.0015, 2.002], 3, tol)["kind"] == "flat_val_loss"
    assert check_flat(5, [2.0, 2.001, 2.0015], 3, tol) is None  # 2 moves < 3 evaluations
    assert check_flat(5, [2.0, 2.001, 1.9, 1.9005], 3, tol) is None  # one real move breaks it
    assert check_flat(5, [3.0, 2.0, 2.001, 2.0015, 2.002], 3, tol) is not None  # only the last n count
    # Boundary: a move of exactly the tolerance is not flat.
    assert check_flat(5, [1.0, 1.0, 1.0, 1.25], 3, 0.25) is None
    assert check_flat(5, [1.0, 1.0, 1.0, 1.2499], 3, 0.25) is not None
    assert check_flat(5, [2.0, 2.0, math.nan, 2.0], 3, tol) is None


def test_overfit_needs_val_up_and_train_down_n_times_in_a_row() -> None:
    val, train = [2.0, 2.1, 2.2], [3.0, 2.5, 2.0]
    alert = check_overfit(9, val, train, 2)
    assert alert is not None and alert["kind"] == "overfitting" and alert["severity"] == "warning"
    assert check_overfit(9, val, train, 3) is None  # needs 4 evaluations
    assert check_overfit(9, [2.0, 2.1, 2.1], train, 2) is None  # val equal is not rising
    assert check_overfit(9, val, [3.0, 2.5, 2.6], 2) is None  # train rose too: not overfitting
    assert check_overfit(9, [2.0, 2.1, 2.2], [None, 2.5, 2.0], 2) is None  # no train window before
    assert check_overfit(9, [2.0, 1.5, 1.6], [3.0, 2.5, 2.0], 1) is not None  # only the last ones count
    assert check_overfit(9, [2.0, 1.5, 1.4], [3.0, 2.5, 2.0], 1) is None


def test_lr_gap_is_relative_and_near_zero_uses_the_peak() -> None:
    assert check_lr(3, 1.05e-4, 1e-4, 0.05, 2e-4) is None  # exactly on the tolerance
    alert = check_lr(3, 1.06e-4, 1e-4, 0.05, 2e-4)
    assert alert is not None and alert["kind"] == "lr_off_schedule" and "gap 6.0%" in alert["message"]
    assert check_lr(3, 0.94e-4, 1e-4, 0.05, 2e-4) is not None
    assert check_lr(0, 0.0, 0.0, 0.05, 2e-4) is None
    assert check_lr(0, 1e-16, 0.0, 0.05, 2e-4) is None and check_lr(0, 1e-5, 0.0, 0.05, 2e-4) is not None
    assert check_lr(3, math.nan, 1e-4, 0.05, 2e-4) is not None


def test_gpu_utilization_under_the_minimum_warns() -> None:
    assert check_gpu_utilization(5, 29.9, 30)["kind"] == "gpu_underutilized"
    assert check_gpu_utilization(5, 30.0, 30) is None and check_gpu_utilization(5, None, 30) is None


# ---- the diagnosis --------------------------------------------------------------------------------


def _hist(norms: list[float], lr: float = 1e-4) -> list[dict[str, Any]]:
    return [{"step": i + 1, "train_loss": 2.0, "lr": lr, "grad_norm": g} for i, g in enumerate(norms)]


def test_diagnosis_rules_in_order() -> None:
    rng = (1e-5, 5e-4)

    def causes(**kw: Any) -> list[str]:
        base: dict[str, Any] = {
            "step": 9,
            "loss": math.nan,
            "lr": 1e-4,
            "grad_norm": 1.0,
            "row_ids": ["a", "b"],
            "plan_lr_range": rng,
            "precision": "bf16",
            "recent_history": _hist([1.0] * 5),
        }
        return [c["cause"] for c in diagnose_nonfinite(**{**base, **kw})["causes"]]

    assert causes() == ["bad_rows"]
    assert causes(lr=1e-3) == ["lr_above_range"]
    assert causes(lr=1e-5, peak_lr=1e-3) == ["lr_above_range"]  # still warming up towards a too-high peak
    assert causes(lr=math.inf, plan_lr_range=None) == ["lr_above_range"]
    assert causes(lr=1e-4, plan_lr_range=None) == ["bad_rows"]
    assert causes(grad_norm=5.0) == ["exploding_gradients"]  # 5 x the median 1.0
    assert causes(grad_norm=4.9) == ["bad_rows"]
    assert causes(grad_norm=None, recent_history=_hist([1.0, 1.2, 0.9, 30.0])) == ["exploding_gradients"]
    assert causes(grad_norm=math.nan, recent_history=[]) == ["bad_rows"]  # no history: nothing exploded
    assert causes(precision="fp16") == ["fp16_overflow"]
    assert causes(lr=1e-3, grad_norm=50.0, precision="fp16") == [
        "lr_above_range",
        "exploding_gradients",
        "fp16_overflow",
    ]


def test_diagnosis_is_strict_json_with_rows_and_remedies() -> None:
    d = diagnose_nonfinite(
        7, math.inf, 1e-4, math.nan, ["r1", "r2"], (1e-5, 5e-4), "fp32", _hist([1.0, math.nan])
    )
    assert (d["step"], d["loss"], d["grad_norm"], d["row_ids"]) == (7, "inf", "nan", ["r1", "r2"])
    assert "r1, r2" in d["causes"][0]["evidence"] and d["causes"][0]["remedy"]
    assert d["recent"][1]["grad_norm"] == "nan"
    json.dumps(d, allow_nan=False)


# ---- the GPU sampler ------------------------------------------------------------------------------


def test_gpu_sampler_is_a_no_op_without_a_gpu_and_says_why() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the sampler samples")
    sampler = GpuSampler(interval_s=0.01)
    assert sampler.start() is False
    sampler.stop()
    summary = sampler.summary()
    assert summary["available"] is False and summary["samples"] == 0 and summary["reason"]
    assert sampler.mean_utilization is None


def test_gpu_sampler_thread_aggregates_samples() -> None:
    seen: list[float] = []

    def read() -> tuple[float, float, float]:
        seen.append(10.0 if len(seen) % 2 else 20.0)
        return seen[-1], float(len(seen)), 80.0

    sampler = GpuSampler(interval_s=0.005, read=read)
    assert sampler.start() is True
    deadline = time.monotonic() + 5
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    sampler.stop()
    summary = sampler.summary()
    n = summary["samples"]
    assert n >= 4 and summary["available"] is True and summary["reason"] is None
    assert summary["utilization_min"] == 10.0 and summary["utilization_max"] == 20.0
    assert summary["memory_used_max_gib"] == float(n) and summary["memory_total_gib"] == 80.0
    assert not any(t.name == "gpu-sampler" for t in threading.enumerate())


# ---- the monitor in real Trainer runs -------------------------------------------------------------

BAD_TOKEN = 300  # id of a token no row of the corpus uses; its embedding is poisoned in one test


def _rows(tokenizer: Any, answers: list[str], prefix: str, eos_label: bool = True) -> list[dict[str, Any]]:
    """Rows with labels on the answer (and its closing eos unless `eos_label` is False)."""
    out = []
    for i, word in enumerate(answers):
        enc = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Say a word."}, {"role": "assistant", "content": word}],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True)]
        if not eos_label:
            labels = [-100 if t == tokenizer.eos_token_id else t for t in labels]
        out.append({"input_ids": list(enc["input_ids"]), "labels": labels, "row_id": f"{prefix}{i}"})
    return out


def _collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": mask,
        "row_ids": [r["row_id"] for r in rows],
    }


def _run(
    base: Path,
    out: Path,
    train: list[str],
    val: list[str],
    lr: float,
    monitor_kw: dict[str, Any],
    poison_row: int | None = None,
    **args: Any,
) -> tuple[Any, HealthMonitor]:
    """Train the tiny base with the monitor; the trainer reports each non-finite batch with its row ids."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    # Val scores the answer word alone, so a contradicting val set measures only what the train set teaches.
    train_rows, val_rows = _rows(tokenizer, train, "t"), _rows(tokenizer, val, "v", eos_label=False)
    if poison_row is not None:  # one garbage row: a token whose embedding is inf
        assert not any(BAD_TOKEN in r["input_ids"] for r in train_rows + val_rows)
        train_rows[poison_row]["input_ids"].insert(1, BAD_TOKEN)
        train_rows[poison_row]["labels"].insert(1, -100)
        # The demo base ties lm_head to the embeddings: untie so only rows holding the token see the inf.
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        with torch.no_grad():
            model.get_input_embeddings().weight[BAD_TOKEN] = math.inf
    params = monitor_kw.pop("params", HealthParams())
    monitor = HealthMonitor(
        params, lr, monitor_kw.pop("warmup", 0.2), monitor_kw.pop("schedule", "cosine"), **monitor_kw
    )

    class RowTrainer(Trainer):
        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            rows = inputs.pop("row_ids")
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss):
                monitor.record_nonfinite(self.state.global_step + 1, float(loss), rows)
            return loss

    settings = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": lr,
        "warmup_steps": 0.2,
        "lr_scheduler_type": "cosine",
        "num_train_epochs": 2,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "logging_steps": 1,
        "use_cpu": True,
        "report_to": "none",
        "seed": 0,
        "data_seed": 0,
        "remove_unused_columns": False,
        "disable_tqdm": True,
        **args,
    }
    trainer = RowTrainer(
        model=model,
        args=TrainingArguments(**settings),
        train_dataset=train_rows,
        eval_dataset=val_rows,
        data_collator=_collate,
        callbacks=[monitor],
    )
    trainer.train()
    return trainer, monitor


ANIMALS = ["cat", "dog", "fox", "owl"] * 4


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_normal_run_is_healthy_and_lr_follows_the_schedule(
    tiny_base: Path, tmp_path: Path, schedule: str
) -> None:
    trainer, monitor = _run(
        tiny_base,
        tmp_path,
        ANIMALS,
        ANIMALS[:4],
        1e-3,
        {"schedule": schedule, "lr_range": (1e-5, 1e-2), "gpu": GpuSampler(0.01)},
        lr_scheduler_type=NAMES[schedule],
    )
    assert trainer.state.global_step == trainer.state.max_steps == 8
    report = monitor.report()
    assert report["status"] in ("ok", "warning") and report["diagnosis"] is None
    assert not [a for a in report["alerts"] if a["severity"] == "error" or a["kind"] == "lr_off_schedule"]
    assert report["lr_off_schedule_steps"] == 0 and [e["step"] for e in report["evaluations"]] == [4, 8]
    assert not monitor.stopped
    assert report["gpu"]["available"] is False and report["gpu"]["reason"]
    assert monitor.tags()["health.status"] == report["status"]
    json.dumps(report, allow_nan=False)


def test_lr_off_schedule_warns_once_and_counts(tiny_base: Path, tmp_path: Path) -> None:
    # The plan says cosine; the trainer runs linear: off from the first decay step onwards.
    _, monitor = _run(
        tiny_base,
        tmp_path,
        ANIMALS,
        ANIMALS[:4],
        1e-3,
        {"schedule": "cosine"},
        lr_scheduler_type="linear",
        num_train_epochs=1,
    )
    lr_alerts = [a for a in monitor.alerts if a["kind"] == "lr_off_schedule"]
    assert len(lr_alerts) == 1 and lr_alerts[0]["step"] == 3  # warm-up (1 step) agrees, then it differs
    assert monitor.report()["lr_off_schedule_steps"] == 2 and monitor.status == "warning"
    assert monitor.tags() == {"health.status": "warning", "health.alerts": "lr_off_schedule"}


def test_infinite_lr_stops_the_run_with_a_diagnosis(tiny_base: Path, tmp_path: Path) -> None:
    trainer, monitor = _run(tiny_base, tmp_path, ANIMALS, ANIMALS[:4], math.inf, {"lr_range": (1e-5, 5e-4)})
    assert trainer.state.global_step < trainer.state.max_steps
    report = monitor.report()
    assert report["status"] == "failed" and monitor.failed
    assert [a["kind"] for a in report["alerts"]] == ["nonfinite_loss"]
    diagnosis = report["diagnosis"]
    assert diagnosis["step"] == trainer.state.global_step and diagnosis["row_ids"]
    assert diagnosis["causes"][0]["cause"] == "lr_above_range"
    tags = monitor.tags()
    assert tags["health.status"] == "failed" and tags["health.causes"].startswith("lr_above_range")
    json.dumps(report, allow_nan=False)


def test_garbage_row_is_named_in_the_diagnosis(tiny_base: Path, tmp_path: Path) -> None:
    trainer, monitor = _run(
        tiny_base,
        tmp_path,
        ANIMALS,
        ANIMALS[:4],
        1e-3,
        {"lr_range": (1e-5, 1e-2)},
        poison_row=13,
        logging_nan_inf_filter=False,
    )
    d = monitor.diagnosis
    assert d is not None and "t13" in d["row_ids"] and len(d["row_ids"]) == 4
    assert [c["cause"] for c in d["causes"]] == ["bad_rows"] and "t13" in d["causes"][0]["evidence"]
    assert trainer.state.global_step == d["step"] < trainer.state.max_steps  # stopped at the failing step
    assert monitor.status == "failed" and len(monitor.alerts) == 1  # one failure, reported once
    assert d["loss"] == "nan" and d["grad_norm"] == "nan"  # merged from the step's log


def test_overfitting_stops_training_and_keeps_the_best(tiny_base: Path, tmp_path: Path) -> None:
    # Val answers contradict the train answers: learning the train set makes val worse at every step.
    train, val = ["cat"] * 8, ["dog"] * 4
    trainer, monitor = _run(
        tiny_base,
        tmp_path,
        train,
        val,
        2e-2,
        {"schedule": "constant", "warmup": 0.0},
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0,
        per_device_train_batch_size=8,
        num_train_epochs=10,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_only_model=True,
    )
    alerts = [a for a in monitor.alerts if a["kind"] == "overfitting"]
    assert len(alerts) == 1 and alerts[0]["step"] == 3 == trainer.state.global_step < trainer.state.max_steps
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    assert monitor.status == "warning" and monitor.stopped and not monitor.failed


def test_flat_val_loss_warns_once_per_stretch() -> None:
    from transformers import TrainerControl, TrainerState

    monitor = HealthMonitor(HealthParams(flat_loss_evals=2), 1e-3, 0.0, "constant")
    state, control = TrainerState(), TrainerControl()
    for step, val in enumerate([3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0], start=1):
        state.global_step = step
        monitor.on_log(None, state, control, logs={"loss": 5.0 - step * 0.1, "learning_rate": 1e-3})
        monitor.on_evaluate(None, state, control, metrics={"eval_loss": val})
    assert [a["step"] for a in monitor.alerts if a["kind"] == "flat_val_loss"] == [4, 8]
    monitor.on_evaluate(None, state, control, metrics={"eval_loss": 9.0})  # same step again: ignored
    assert len(monitor.evals) == 8 and not control.should_training_stop


def test_nonfinite_facts_of_one_step_merge_and_a_later_step_is_ignored() -> None:
    from transformers import TrainerControl, TrainerState

    monitor = HealthMonitor(HealthParams(), 1e-4, 0.0, "constant", lr_range=(1e-5, 5e-4))
    state, control = TrainerState(global_step=4, max_steps=10), TrainerControl()
    for step in (1, 2, 3, 4):
        state.global_step = step
        monitor.on_log(None, state, control, logs={"loss": 2.0, "learning_rate": 1e-4, "grad_norm": 1.0})
    # training_step of step 5 sees the NaN first (rows known, grad norm not yet) ...
    monitor.record_nonfinite(5, math.nan, ["x1", "x2"], lr=1e-4)
    assert monitor.failed and monitor.diagnosis["grad_norm"] is None
    monitor.on_substep_end(None, state, control)
    assert control.should_training_stop
    # ... then the step's log adds the grad norm; a later step changes nothing.
    state.global_step = 5
    monitor.on_log(None, state, control, logs={"loss": math.nan, "learning_rate": 1e-4, "grad_norm": 30.0})
    monitor.record_nonfinite(6, math.inf, ["y"])
    d = monitor.diagnosis
    assert (d["step"], d["row_ids"], d["grad_norm"]) == (5, ["x1", "x2"], 30.0)
    assert [c["cause"] for c in d["causes"]] == ["exploding_gradients"]  # 30 vs a median of 1.0 before
    assert [h["step"] for h in d["recent"]] == [1, 2, 3, 4]
    assert d["summary"].startswith("loss nan at step 5 (batch rows x1, x2); likely exploding_gradients")
    assert len(monitor.alerts) == 1 and monitor.stopped
    assert monitor.tags() == {
        "health.status": "failed",
        "health.alerts": "nonfinite_loss",
        "health.nonfinite_step": "5",
        "health.causes": "exploding_gradients",
    }


def test_fp16_skipped_steps_are_no_failure_and_shift_the_schedule() -> None:
    from transformers import TrainerControl, TrainerState

    # Linear warm-up over 10 steps; the loss scaler skips steps 1 and 2 (inf grad norm), so the scheduler
    # has moved 2 steps less: the LR logged at step 5 is the schedule's after 2 steps, not after 4.
    monitor = HealthMonitor(HealthParams(), 1.0, 10, "constant", precision="fp16")
    state, control = TrainerState(max_steps=20), TrainerControl()
    logs = [(1, 0.0, math.inf), (2, 0.0, math.inf), (3, 0.0, 1.0), (4, 0.1, 1.0), (5, 0.2, 1.0)]
    for step, lr, grad_norm in logs:
        state.global_step = step
        monitor.on_log(None, state, control, logs={"loss": 2.0, "learning_rate": lr, "grad_norm": grad_norm})
    assert monitor.alerts == [] and monitor.skipped_steps == 2 and not control.should_training_stop
    assert monitor.report()["skipped_steps"] == 2
    bf16 = HealthMonitor(HealthParams(), 1.0, 10, "constant", precision="bf16")
    bf16.on_log(None, state, control, logs={"loss": 2.0, "learning_rate": 0.0, "grad_norm": math.inf})
    assert bf16.failed and bf16.skipped_steps == 0


def test_low_gpu_utilization_warns_at_the_end() -> None:
    from transformers import TrainerControl, TrainerState

    sampler = GpuSampler(interval_s=0.005, read=lambda: (12.0, 3.0, 80.0))
    monitor = HealthMonitor(HealthParams(min_gpu_utilization=30), 1e-3, 0.0, "constant", gpu=sampler)
    state, control = TrainerState(global_step=5), TrainerControl()
    monitor.on_train_begin(None, state, control)
    time.sleep(0.03)
    monitor.on_train_end(None, state, control)
    report = monitor.report()
    assert [a["kind"] for a in report["alerts"]] == ["gpu_underutilized"] and report["status"] == "warning"
    assert report["gpu"]["utilization_mean"] == 12.0 and report["gpu"]["samples"] >= 1
