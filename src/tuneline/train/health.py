"""Training health: the guide's danger signals, checked while the `Trainer` runs.

    kind               severity  fires when                                             then
    nonfinite_loss     error     train/val loss NaN/inf (grad norm too, except fp16)    stop, diagnose
    flat_val_loss      warning   val loss moved < flat_loss_tolerance (relative) at     once per flat
                                 each of flat_loss_evals evaluations in a row           stretch
    overfitting        warning   val loss up while train loss down, overfit_evals       stop; the best
                                 evaluations in a row                                   checkpoint is kept
    lr_off_schedule    warning   logged LR off the plan's schedule by > lr_tolerance    once, then counted
                                 (fp16 steps the loss scaler skipped are allowed for)
    gpu_underutilized  warning   mean GPU utilization < min_gpu_utilization             at the end

The checks are pure functions returning an alert dict ({"kind", "severity", "step", "message",
"remedy"}) or None; `HealthMonitor` is the `TrainerCallback` that feeds them and gives
reports/train_health.json (`report`) and MLflow tags (`tags`). `diagnose_nonfinite` turns the first
non-finite loss into likely causes and remedies by a fixed rule table (see its docstring).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from tuneline.train.gpu_monitor import GpuSampler

if TYPE_CHECKING:
    from tuneline.config.train import HealthParams

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "linear", "constant")  # 'constant' is transformers' constant_with_warmup
GRAD_EXPLODE_FACTOR = 5.0  # last finite grad norm >= this x the median of the steps before: exploding
RECENT_STEPS = 20  # logged steps kept for the diagnosis
Alert = dict[str, Any]

# kind -> (severity, remedy): what a reader of the report should do about each signal.
ALERTS = {
    "nonfinite_loss": (
        "error",
        "see the diagnosis: lower the LR, clip gradients, use bf16 instead of fp16, or "
        "inspect the rows of the failing batch",
    ),
    "flat_val_loss": (
        "warning",
        "the model learns nothing more at this LR: raise the LR within the template "
        "range, check that the answer tokens are supervised, or stop earlier",
    ),
    "overfitting": (
        "warning",
        "fewer epochs, more (or more varied) data, a lower LR, a smaller LoRA rank or more dropout",
    ),
    "lr_off_schedule": (
        "warning",
        "something else drives the LR (a scheduler in the DeepSpeed config, a "
        "resumed optimizer, a changed step count): align it with the plan or re-plan",
    ),
    "gpu_underutilized": (
        "warning",
        "the input pipeline is the bottleneck: more dataloader workers, pinned "
        "memory, pre-tokenized data, packing, or a larger per-device batch",
    ),
}
# cause -> remedy, for `diagnose_nonfinite` (rules in this order).
CAUSES = {
    "lr_above_range": "lower train.lr (or set it to auto: the template's value)",
    "exploding_gradients": "lower the LR, clip gradients (max_grad_norm 1.0), or lengthen the warm-up",
    "fp16_overflow": "train in bf16 (train.precision: bf16) or fp32",
    "bad_rows": "inspect those rows for inf/NaN, garbage or extreme lengths; rerun validate_splits",
}


def warmup_steps(total_steps: int, warmup_frac: float) -> int:
    """Warm-up steps as transformers' `TrainingArguments.get_warmup_steps`: a value < 1 is a fraction
    of all steps, rounded up; a value >= 1 is a step count."""
    return int(warmup_frac) if warmup_frac >= 1 else math.ceil(total_steps * warmup_frac)


def expected_lr(step: int, total_steps: int, peak: float, warmup_frac: float, schedule: str) -> float:
    """The LR the schedule sets after `step` optimizer (scheduler) steps, as transformers' `get_scheduler`.

    Linear warm-up from 0 over `warmup_steps(total_steps, warmup_frac)` steps, then cosine (half a
    cycle) or linear decay to 0 at `total_steps`, or constant (`constant_with_warmup`). The factor is
    computed with the same float operations as transformers, so the values agree bit for bit.

    Raises:
        ValueError: unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    warm = warmup_steps(total_steps, warmup_frac)
    if step < warm:
        factor = float(step) / float(max(1, warm))
    elif schedule == "constant":
        factor = 1.0
    elif schedule == "linear":
        factor = max(0.0, float(total_steps - step) / float(max(1, total_steps - warm)))
    else:
        progress = float(step - warm) / float(max(1, total_steps - warm))
        factor = max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return peak * factor


def make_alert(kind: str, step: int, message: str) -> Alert:
    """An alert of `kind` (a key of ALERTS, which gives its severity and remedy)."""
    severity, remedy = ALERTS[kind]
    return {"kind": kind, "severity": severity, "step": int(step), "message": message, "remedy": remedy}


def finite(value: Any) -> bool:
    """True for a finite number (a missing value is not finite)."""
    return isinstance(value, int | float) and math.isfinite(value)


def json_number(value: Any) -> float | str | None:
    """JSON-safe: finite numbers as floats, NaN/inf as "nan"/"inf"/"-inf" (strict JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def check_nonfinite(
    step: int, loss: float, grad_norm: float | None = None, precision: str = "fp32", what: str = "train"
) -> Alert | None:
    """Error when the loss is NaN/inf, or the grad norm is, outside fp16 (whose loss scaler skips such
    steps by design while it calibrates)."""
    if not math.isfinite(loss):
        return make_alert("nonfinite_loss", step, f"{what} loss is {loss} at step {step}; training stopped")
    if grad_norm is not None and not math.isfinite(grad_norm) and precision != "fp16":
        message = f"gradient norm is {grad_norm} at step {step} ({what} loss {loss}); training stopped"
        return make_alert("nonfinite_loss", step, message)
    return None


def relative_change(new: float, old: float) -> float:
    """|new - old| / |old| (old == 0: 0 when equal, else inf)."""
    if old == 0:
        return 0.0 if new == 0 else math.inf
    return abs(new - old) / abs(old)


def check_flat(step: int, val_losses: list[float], evals: int, tolerance: float) -> Alert | None:
    """Warning when each of the last `evals` evaluations moved the val loss by less than `tolerance`
    (relative to the evaluation before): `evals` + 1 evaluations in one flat stretch."""
    window = val_losses[-(evals + 1) :]
    if len(window) < evals + 1 or not all(finite(v) for v in window):
        return None
    if not all(relative_change(b, a) < tolerance for a, b in zip(window, window[1:], strict=False)):
        return None
    moved = f"{window[0]:.4f} -> {window[-1]:.4f}, each move < {tolerance:.2%}"
    return make_alert("flat_val_loss", step, f"val loss flat for {evals} evaluations ({moved})")


def check_overfit(
    step: int, val_losses: list[float], train_losses: list[float | None], evals: int
) -> Alert | None:
    """Warning when, at each of the last `evals` evaluations, the val loss rose while the mean train
    loss since the evaluation before fell. Both lists hold one value per evaluation, aligned."""
    n = len(val_losses)
    if n < evals + 1 or len(train_losses) != n:
        return None
    for i in range(n - evals, n):
        v0, v1, t0, t1 = val_losses[i - 1], val_losses[i], train_losses[i - 1], train_losses[i]
        if not (finite(v0) and finite(v1) and finite(t0) and finite(t1) and v1 > v0 and t1 < t0):  # type: ignore[operator]
            return None
    v0, t0 = val_losses[n - evals - 1], train_losses[n - evals - 1]
    message = (
        f"val loss rose for {evals} evaluations ({v0:.4f} -> {val_losses[-1]:.4f}) while train loss fell "
        f"({t0:.4f} -> {train_losses[-1]:.4f}); training stopped, the best checkpoint is kept"
    )
    return make_alert("overfitting", step, message)


def check_lr(step: int, logged: float, expected: float, tolerance: float, peak: float) -> Alert | None:
    """Warning when the logged LR is more than `tolerance` (relative) off the schedule's value. Near an
    expected 0 (warm-up start, decay end) the gap is relative to 1e-6 x the peak instead."""
    gap = abs(logged - expected) / max(abs(expected), abs(peak) * 1e-6) if math.isfinite(logged) else math.inf
    if gap <= tolerance:
        return None
    message = (
        f"logged LR {logged:.4g} at step {step}, the plan's schedule says {expected:.4g} (gap {gap:.1%})"
    )
    return make_alert("lr_off_schedule", step, message)


def check_gpu_utilization(step: int, mean_utilization: float | None, minimum: float) -> Alert | None:
    """Warning when the mean GPU utilization (%) is under `minimum`: the GPU waits for data."""
    if mean_utilization is None or mean_utilization >= minimum:
        return None
    message = f"mean GPU utilization {mean_utilization:.0f} % < {minimum:.0f} %: the GPU is waiting for data"
    return make_alert("gpu_underutilized", step, message)


def diagnose_nonfinite(
    step: int,
    loss: float | None,
    lr: float | None,
    grad_norm: float | None,
    row_ids: list[str] | None,
    plan_lr_range: tuple[float, float] | None,
    precision: str,
    recent_history: list[dict[str, Any]],
    peak_lr: float | None = None,
) -> dict[str, Any]:
    """Likely causes of a non-finite loss, by these rules in order (remedies in CAUSES):

    1. lr_above_range: the highest of `lr`, `peak_lr` and the recent LRs is not finite or above the
       template range's maximum.
    2. exploding_gradients: the last finite grad norm (this step's, else the latest logged) is at
       least GRAD_EXPLODE_FACTOR x the median of the (two or more) finite ones logged before it.
    3. fp16_overflow: precision is fp16 (max 65504: activations and losses overflow).
    4. bad_rows: only when no rule above matched: the batch itself is suspect (inf/garbage, extreme
       lengths); its rows are named.

    Args:
        step: the optimizer step whose loss is not finite.
        loss: that loss.
        lr: that step's LR.
        grad_norm: that step's gradient norm (None when unknown).
        row_ids: ids of the rows in the failing batch (None when the trainer could not tell).
        plan_lr_range: the template's (min, max) LR; None: rule 1 checks finiteness only.
        precision: "bf16", "fp16" or "fp32".
        recent_history: logged steps before this one ({"step", "train_loss", "lr", "grad_norm"}).
        peak_lr: the plan's peak LR (during warm-up `lr` is still below it).

    Returns:
        {"summary" (one line), "step", "loss", "lr", "grad_norm", "row_ids", "precision", "causes":
        [{"cause", "evidence", "remedy"}] (at least one), "recent": recent_history}; strict-JSON safe.
    """
    found: list[tuple[str, str]] = []
    lrs = [v for v in [lr, peak_lr, *(h.get("lr") for h in recent_history)] if isinstance(v, int | float)]
    top = max(lrs, key=lambda v: math.inf if math.isnan(v) else v) if lrs else None
    if top is not None and not math.isfinite(top):
        found.append(("lr_above_range", f"LR {top} is not finite"))
    elif top is not None and plan_lr_range and top > plan_lr_range[1]:
        low, high = plan_lr_range
        found.append(("lr_above_range", f"LR {top:.4g} is above the template range {low:.2g}..{high:.2g}"))
    norms = [float(h["grad_norm"]) for h in recent_history if finite(h.get("grad_norm"))]
    norms += [float(grad_norm)] if finite(grad_norm) else []  # type: ignore[arg-type]
    if len(norms) >= 3 and norms[-1] >= GRAD_EXPLODE_FACTOR * statistics.median(norms[:-1]):
        median = statistics.median(norms[:-1])
        found.append(("exploding_gradients", f"grad norm {norms[-1]:.4g}, median {median:.4g} before"))
    if precision == "fp16":
        found.append(("fp16_overflow", "training in fp16 (max 65504)"))
    if not found:
        rows = ", ".join(row_ids) if row_ids else "unknown (the batch was not recorded)"
        found.append(("bad_rows", f"LR and gradients looked sane; batch rows: {rows}"))
    causes = [{"cause": c, "evidence": e, "remedy": CAUSES[c]} for c, e in found]
    rows = f" (batch rows {', '.join(row_ids[:10])}{' ...' if len(row_ids) > 10 else ''})" if row_ids else ""
    likely = "; ".join(f"{c['cause']}: {c['evidence']} -> {c['remedy']}" for c in causes)
    return {
        "summary": f"loss {loss} at step {step}{rows}; likely {likely}",
        "step": int(step),
        "loss": json_number(loss),
        "lr": json_number(lr),
        "grad_norm": json_number(grad_norm),
        "row_ids": list(row_ids) if row_ids else None,
        "precision": precision,
        "causes": causes,
        "recent": [{k: v if k == "step" else json_number(v) for k, v in h.items()} for h in recent_history],
    }


class HealthMonitor(TrainerCallback):
    """Watches a `Trainer` run for the danger signals in the module docstring.

    Args:
        params: the thresholds (`train.health`).
        plan_lr: the plan's peak LR.
        warmup_frac: the plan's warm-up (a fraction of all steps; >= 1: a step count).
        schedule: "cosine", "linear" or "constant".
        total_steps_fn: the run's optimizer steps from the Trainer state; default `state.max_steps`
            (what transformers builds its scheduler with).
        lr_range: the template's (min, max) LR, for the diagnosis.
        precision: "bf16", "fp16" or "fp32".
        gpu: a sampler started with training and stopped at its end; None samples nothing.
    """

    def __init__(
        self,
        params: HealthParams,
        plan_lr: float,
        warmup_frac: float,
        schedule: str,
        total_steps_fn: Callable[[Any], int] | None = None,
        *,
        lr_range: tuple[float, float] | None = None,
        precision: str = "fp32",
        gpu: GpuSampler | None = None,
    ) -> None:
        self.params, self.plan_lr, self.warmup_frac, self.schedule = params, plan_lr, warmup_frac, schedule
        self.total_steps_fn = total_steps_fn or (lambda state: int(state.max_steps))
        self.lr_range, self.precision, self.gpu = lr_range, precision, gpu
        self.alerts: list[Alert] = []
        self.diagnosis: dict[str, Any] | None = None
        self.lr_off_schedule_steps = 0
        self.skipped_steps = 0  # fp16 steps the loss scaler skipped (non-finite grad norm)
        # One row per evaluation: {"step", "val_loss", "train_loss" (mean since the evaluation before)}.
        self.evals: list[dict[str, Any]] = []
        self._train: list[tuple[int, float]] = []  # finite train losses by step
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_STEPS)
        self._failure: dict[str, Any] | None = None  # facts of the first non-finite step
        self._flat_open = False  # inside a flat stretch already reported
        self._ended = False

    @property
    def failed(self) -> bool:
        """A non-finite loss stopped the run."""
        return self._failure is not None

    @property
    def stopped(self) -> bool:
        """The monitor stopped the run: a non-finite loss or overfitting."""
        return self.failed or any(a["kind"] == "overfitting" for a in self.alerts)

    def _add(self, alert: Alert) -> None:
        self.alerts.append(alert)
        log = logger.error if alert["severity"] == "error" else logger.warning
        log(
            "training health: %s at step %d: %s. Remedy: %s",
            *(alert[k] for k in ("kind", "step", "message", "remedy")),
        )

    def record_nonfinite(
        self,
        step: int,
        loss: float,
        row_ids: list[str] | None = None,
        lr: float | None = None,
        grad_norm: float | None = None,
        what: str = "train",
    ) -> None:
        """Record a non-finite loss: an error alert, a diagnosis, and a stop at the next step end.

        The callback calls it for logged losses; the trainer's `training_step` calls it for a batch, with
        the batch's row ids (`step` = state.global_step + 1: the optimizer step the batch belongs to).
        Facts of the same step are merged; a later step is ignored (the first failure is the one to fix).
        """
        f = self._failure
        if f is not None and f["step"] != step:
            return
        if f is None:
            f = self._failure = {"step": step, "loss": loss, "row_ids": None, "lr": None, "grad_norm": None}
            message = f"{what} loss is {loss} at step {step}; training stopped"
            self._add(
                check_nonfinite(step, loss, grad_norm, self.precision, what)
                or make_alert("nonfinite_loss", step, message)
            )
        for key, value in (("row_ids", row_ids), ("lr", lr), ("grad_norm", grad_norm)):
            if f[key] is None and value is not None:
                f[key] = list(value) if key == "row_ids" else value
        recent = [h for h in self._recent if h["step"] < step]
        d = diagnose_nonfinite(
            step,
            f["loss"],
            f["lr"],
            f["grad_norm"],
            f["row_ids"],
            self.lr_range,
            self.precision,
            recent,
            peak_lr=self.plan_lr,
        )
        if d != self.diagnosis:  # merged facts change it; the same facts again are not news
            self.diagnosis = d
            logger.error("training health: %s", d["summary"])

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._ended = False
        if self.gpu is not None:
            self.gpu.start()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.failed:  # reported by training_step: no further optimizer step
            control.should_training_stop = True

    on_substep_end = on_step_end

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        logs = logs or {}
        if "loss" not in logs:  # eval logs and the end-of-training summary
            return
        step, loss, lr, grad_norm = (
            int(state.global_step),
            float(logs["loss"]),
            logs.get("learning_rate"),
            logs.get("grad_norm"),
        )
        if check_nonfinite(step, loss, grad_norm, self.precision) is not None:
            self.record_nonfinite(step, loss, lr=lr, grad_norm=grad_norm)
            control.should_training_stop = True
        else:
            self._train.append((step, loss))
        self._recent.append({"step": step, "train_loss": loss, "lr": lr, "grad_norm": grad_norm})
        # The scheduler moves only on steps the optimizer took: fp16's loss scaler skips overflowing ones.
        taken = step - self.skipped_steps
        if self.precision == "fp16" and grad_norm is not None and not math.isfinite(grad_norm):
            self.skipped_steps += 1
        if lr is None or not math.isfinite(self.plan_lr):
            return
        total = self.total_steps_fn(state)
        # The train loop logs the LR the step just taken used (the scheduler after taken - 1 steps); a log
        # at an epoch end outside the loop reads it after the step: either value is on schedule.
        expected = [
            expected_lr(s, total, self.plan_lr, self.warmup_frac, self.schedule) for s in (taken - 1, taken)
        ]
        closest = min(expected, key=lambda e: abs(float(lr) - e))
        alert = check_lr(step, float(lr), closest, self.params.lr_tolerance, self.plan_lr)
        if alert is not None:
            self.lr_off_schedule_steps += 1
            if self.lr_off_schedule_steps == 1:
                self._add(alert)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> None:
        val, step = (metrics or {}).get("eval_loss"), int(state.global_step)
        # After training the restored best checkpoint is evaluated again: not a point of the curve.
        if val is None or self._ended or (self.evals and self.evals[-1]["step"] == step):
            return
        if not math.isfinite(val):
            self.record_nonfinite(step, float(val), what="val")
            control.should_training_stop = True
            return
        since = self.evals[-1]["step"] if self.evals else -1
        window = [loss for s, loss in self._train if since < s <= step]
        self.evals.append(
            {"step": step, "val_loss": float(val), "train_loss": statistics.fmean(window) if window else None}
        )
        vals, p = [e["val_loss"] for e in self.evals], self.params
        flat = check_flat(step, vals, p.flat_loss_evals, p.flat_loss_tolerance)
        if flat is not None and not self._flat_open:
            self._add(flat)
        self._flat_open = flat is not None
        over = check_overfit(step, vals, [e["train_loss"] for e in self.evals], p.overfit_evals)
        if over is not None and not any(a["kind"] == "overfitting" for a in self.alerts):
            self._add(over)
            control.should_training_stop = True  # load_best_model_at_end then restores the best checkpoint

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._ended = True
        if self.gpu is not None:
            self.gpu.stop()
            minimum = self.params.min_gpu_utilization
            alert = check_gpu_utilization(int(state.global_step), self.gpu.mean_utilization, minimum)
            if alert is not None:
                self._add(alert)

    @property
    def status(self) -> str:
        """`failed` (an error alert), `warning` (any alert) or `ok`."""
        if any(a["severity"] == "error" for a in self.alerts):
            return "failed"
        return "warning" if self.alerts else "ok"

    def report(self) -> dict[str, Any]:
        """reports/train_health.json: {"status", "alerts", "diagnosis", "gpu", "lr_off_schedule_steps",
        "skipped_steps", "evaluations"}; strict JSON (no NaN)."""
        return {
            "status": self.status,
            "alerts": list(self.alerts),
            "diagnosis": self.diagnosis,
            "gpu": self.gpu.summary()
            if self.gpu is not None
            else {"available": False, "reason": "not sampled"},
            "lr_off_schedule_steps": self.lr_off_schedule_steps,
            "skipped_steps": self.skipped_steps,
            "evaluations": [
                {k: v if k == "step" else json_number(v) for k, v in e.items()} for e in self.evals
            ],
        }

    def tags(self) -> dict[str, str]:
        """MLflow tags: health.status; health.alerts (the alert kinds in order, comma-separated, or
        "none"); on a failure health.nonfinite_step and health.causes."""
        kinds = ",".join(dict.fromkeys(a["kind"] for a in self.alerts)) or "none"
        out = {"health.status": self.status, "health.alerts": kinds}
        if self.diagnosis is not None:
            out["health.nonfinite_step"] = str(self.diagnosis["step"])
            out["health.causes"] = ",".join(c["cause"] for c in self.diagnosis["causes"])
        return out
