"""Hyper-parameter templates as data: learning rate / warm-up / decay by model size and method, and
max sequence length by task type. The rules between rows are documented in docs/training-plan.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Method = Literal["lora", "full"]
Schedule = Literal["cosine", "linear", "constant"]


@dataclass(frozen=True)
class LrRow:
    """One row of the learning-rate table: the recipe for a model of about `size_b` billion parameters."""

    method: Method
    size_b: float
    lr_min: float
    lr_max: float
    lr: float  # the value `lr: auto` picks (a published recipe's choice inside the range)
    warmup: float  # fraction of all optimizer steps
    schedule: Schedule
    source: str


# Full fine-tuning: the guide's table. The picked LR is the low end of each range (Stanford Alpaca
# used 2e-5 at 7B and 1e-5 at 13B): full updates of a big model forget fast, so err low.
# LoRA: same size anchors, warm-up and decay; LR from the QLoRA paper (2e-4 for 7B/13B, 1e-4 for
# 33B/65B), inside the 1e-4..3e-4 range that LoRA/PEFT practice uses.
LR_TABLE: tuple[LrRow, ...] = (
    LrRow("full", 7.0, 2e-5, 5e-5, 2e-5, 0.10, "cosine", "guide; Alpaca 7B lr 2e-5"),
    LrRow("full", 13.0, 1e-5, 3e-5, 1e-5, 0.05, "linear", "guide; Alpaca 13B lr 1e-5"),
    LrRow("full", 70.0, 5e-6, 1e-5, 5e-6, 0.01, "constant", "guide"),
    LrRow("lora", 7.0, 1e-4, 3e-4, 2e-4, 0.10, "cosine", "QLoRA 7B lr 2e-4; LoRA/PEFT practice"),
    LrRow("lora", 13.0, 1e-4, 3e-4, 2e-4, 0.05, "linear", "QLoRA 13B lr 2e-4"),
    LrRow("lora", 70.0, 5e-5, 2e-4, 1e-4, 0.01, "constant", "QLoRA 33B/65B lr 1e-4"),
)

# Nominal sizes are rounded (Llama-2-7B has 6.74 B parameters, Llama-2-70B 68.98 B): a model within
# this factor of an anchor uses that row as-is instead of an interpolation a hair away from it.
SNAP_FACTOR = 1.15

# Below the smallest anchor, smaller models take larger steps: the GPT-3 paper's table (Brown et al.
# 2020, Table 2.1: 125M 6e-4 ... 6.7B 1.2e-4) falls as size^-0.4. The 7B row's LR range is scaled by
# (7B / size)^0.4, capped at x30 so a toy model does not get an absurd step. (At x10, the cap until the
# demo base grew to 1.6M parameters, its LoRA at 2e-3 learnt nothing visible in 8 epochs; its x28.8,
# 5.8e-3, teaches it the identity and JSON answers: bench/RESULTS.md, "the demo learns".)
SMALL_EXPONENT = 0.4
SMALL_CAP = 30.0


@dataclass(frozen=True)
class LrPick:
    """The resolved template for one model: values plus how they were derived (reported in the plan)."""

    row: str  # e.g. "lora 7B", "full 7B-13B (log-interpolated, t=0.42)", "lora 7B (clamped)"
    lr_min: float
    lr_max: float
    lr: float
    warmup: float
    schedule: Schedule
    source: str


def _rows(method: Method) -> list[LrRow]:
    return sorted((r for r in LR_TABLE if r.method == method), key=lambda r: r.size_b)


def _as_pick(row: LrRow, label: str) -> LrPick:
    return LrPick(label, row.lr_min, row.lr_max, row.lr, row.warmup, row.schedule, row.source)


def anchor_row(method: Method, size: str) -> LrPick:
    """The table row for an anchor named like "7b" (the `train.template` override)."""
    want = float(size.lower().rstrip("b"))
    for row in _rows(method):
        if row.size_b == want:
            return _as_pick(row, f"{method} {row.size_b:g}B (pinned by train.template)")
    raise ValueError(f"no {method} template row for {size!r}")


def pick_lr(method: Method, params: int) -> LrPick:
    """Pick the LR / warm-up / schedule template for a model with `params` parameters.

    Rule: within x1.15 of an anchor size -> that row; between anchors -> learning rates interpolated
    geometrically (log-log) and warm-up linearly in log(size), schedule of the nearer anchor (in log
    size); below the smallest anchor -> its learning rates x (anchor / size)^0.4, at most x30, with its
    warm-up and schedule; above the largest anchor -> that row (clamped).

    Args:
        method: "lora" or "full".
        params: total parameter count of the base model.

    Returns:
        The resolved template with a label naming the row(s) used.
    """
    size = max(params, 1) / 1e9
    rows = _rows(method)
    for row in rows:
        if row.size_b / SNAP_FACTOR <= size <= row.size_b * SNAP_FACTOR:
            return _as_pick(row, f"{method} {row.size_b:g}B")
    if size < rows[0].size_b:
        return _scaled_down(rows[0], size)
    if size > rows[-1].size_b:
        return _as_pick(rows[-1], f"{method} {rows[-1].size_b:g}B (clamped: model {size:.3g}B is larger)")
    lo, hi = next((a, b) for a, b in zip(rows, rows[1:], strict=False) if a.size_b <= size <= b.size_b)
    t = (math.log(size) - math.log(lo.size_b)) / (math.log(hi.size_b) - math.log(lo.size_b))

    def geo(a: float, b: float) -> float:
        return math.exp(math.log(a) + t * (math.log(b) - math.log(a)))

    return LrPick(
        row=f"{method} {lo.size_b:g}B-{hi.size_b:g}B (log-interpolated at {size:.3g}B, t={t:.2f})",
        lr_min=geo(lo.lr_min, hi.lr_min),
        lr_max=geo(lo.lr_max, hi.lr_max),
        lr=geo(lo.lr, hi.lr),
        warmup=lo.warmup + t * (hi.warmup - lo.warmup),
        schedule=lo.schedule if t <= 0.5 else hi.schedule,
        source=f"{lo.source} | {hi.source}",
    )


def _scaled_down(row: LrRow, size: float) -> LrPick:
    """The smallest anchor's recipe with learning rates raised for a smaller model (SMALL_EXPONENT)."""
    factor = min(SMALL_CAP, (row.size_b / size) ** SMALL_EXPONENT)
    capped = " (capped)" if factor == SMALL_CAP else ""
    return LrPick(
        row=f"{row.method} {row.size_b:g}B scaled to {size:.3g}B: lr x (size ratio)^{SMALL_EXPONENT:g} "
        f"= x{factor:.3g}{capped}",
        lr_min=row.lr_min * factor,
        lr_max=row.lr_max * factor,
        lr=row.lr * factor,
        warmup=row.warmup,
        schedule=row.schedule,
        source=f"{row.source}; below {row.size_b:g}B: GPT-3 (Brown et al. 2020) lr ~ size^-0.4",
    )


# ---- max sequence length by task type ----

STANDARD_LENGTHS: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
LENGTH_PERCENTILE = 99.0


@dataclass(frozen=True)
class LengthRow:
    """Max-length template for a task type: the default without measurements and the cap."""

    default: int
    cap: int


# Classification/NER inputs are short; dialogue/instruction/tool use live at 1024-2048; long
# documents need 4096 and up (the cap is what a modern long-context base accepts).
LENGTH_TABLE: dict[str, LengthRow] = {
    "classification": LengthRow(512, 512),
    "ner": LengthRow(512, 512),
    "instruction": LengthRow(1024, 2048),
    "dialogue": LengthRow(2048, 2048),
    "tool_use": LengthRow(2048, 2048),
    "long_document": LengthRow(4096, 32768),
}


def percentile(values: list[int], pct: float) -> int:
    """Nearest-rank percentile (an actual observed value, no interpolation)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class LengthPick:
    """The resolved max length and what it costs in truncated rows."""

    max_length: int
    source: str
    p99: int | None
    truncated_rows: int | None
    total_rows: int | None


def pick_max_length(
    task_type: str,
    token_lengths: list[int] | None = None,
    explicit: int | None = None,
    model_max: int | None = None,
) -> LengthPick:
    """Resolve `train.max_length`.

    Explicit values are kept. `auto` without measurements takes the task's default; with measured
    token lengths it takes the smallest standard size >= the 99th percentile, capped by the task's
    maximum (and by the model's position limit when known).

    Args:
        task_type: `task.type`.
        token_lengths: tokens per training row, when measured.
        explicit: the configured max length, or None for `auto`.
        model_max: the model's `max_position_embeddings`, if known.

    Returns:
        The chosen length, how it was chosen, and the rows that would be truncated.
    """
    row = LENGTH_TABLE[task_type]
    cap = min(row.cap, model_max) if model_max else row.cap
    p99 = percentile(token_lengths, LENGTH_PERCENTILE) if token_lengths else None
    if explicit is not None:
        length, source = explicit, "config"
    elif p99 is None:
        length, source = min(row.default, cap), f"task {task_type} default"
    else:
        fitting = [s for s in STANDARD_LENGTHS if s >= p99]
        length = min(fitting[0] if fitting else STANDARD_LENGTHS[-1], cap)
        source = f"task {task_type}: smallest standard size >= p99 ({p99}), cap {cap}"
    truncated = sum(1 for n in token_lengths if n > length) if token_lengths else None
    return LengthPick(length, source, p99, truncated, len(token_lengths) if token_lengths else None)
