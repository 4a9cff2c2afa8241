"""The plan as a readable terminal table (what `tuneline plan` prints)."""

from __future__ import annotations

from tuneline.train.memory import MemoryEstimate
from tuneline.train.plan import Plan


def _mem_row(m: MemoryEstimate, budget: float | None, chosen: bool) -> str:
    fits = "" if budget is None else ("fits" if m.total <= budget else "too big")
    return (
        f"{'*' if chosen else ' '} ZeRO-{m.zero_stage}  ckpt {'on ' if m.gradient_checkpointing else 'off'}  "
        f"batch {m.per_device_batch:>3}  {m.weights:8.2f} {m.gradients:8.2f} {m.optimizer:8.2f} "
        f"{m.activations:8.2f} {m.total:8.2f}  {fits}"
    )


def render_plan(plan: Plan) -> str:
    """Render a plan as plain text: settings, memory per GPU by option, adjustments and warnings.

    Args:
        plan: the result of `make_plan`.

    Returns:
        Multi-line text (no colour codes, safe for logs and CI).
    """
    device = plan.device_memory_gib
    budget = device * 0.9 if isinstance(device, float) else None
    lora = ", ".join(f"{k} {v:,}" for k, v in plan.lora_breakdown.items())
    lines = [
        f"model            {plan.model}  ({plan.params:,} parameters, {plan.params / 1e9:.2f} B)",
        f"method           {plan.method}  trainable {plan.trainable_params:,} "
        f"({plan.trainable_percent:.4f} %)" + (f"  [{lora}]" if lora else ""),
        *(
            [f"lora targets     {_targets(plan.lora_targets)}"]
            + [f"                   {note}" for note in plan.lora_target_notes]
            if plan.method == "lora"
            else []
        ),
        f"template         {plan.template_row}  ({plan.template_source})",
        f"learning rate    {plan.lr:.3g}  from {plan.lr_from}; "
        f"range {plan.lr_range[0]:.2g}..{plan.lr_range[1]:.2g}",
        f"warm-up          {plan.warmup:.3g} of steps, then {plan.schedule}",
        f"batch            {plan.per_device_batch} per device x {plan.world_size} devices x "
        f"{plan.grad_accum} accumulation = {plan.effective_batch} effective",
        f"max length       {plan.max_length}  ({plan.max_length_from})"
        + (
            f"; {plan.truncated_rows} of {plan.measured_rows} rows truncated"
            if plan.measured_rows is not None
            else ""
        ),
        f"precision        {plan.precision}  ({plan.precision_from})",
        "device memory    "
        + (
            f"{device:.1f} GiB per GPU ({budget:.1f} usable)"
            if budget is not None
            else f"{device} (no fit check)"
        ),
        f"chosen           ZeRO-{plan.zero_stage}, gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}, {plan.memory.total:.2f} GiB per GPU"
        + ("" if plan.fits is None else (" - fits" if plan.fits else " - DOES NOT FIT")),
        "",
        "  memory per GPU (GiB)             weights    grads    optim    activ    total",
    ]
    rows = list(plan.options)
    if not any(_same(m, plan.memory) for m in rows):
        rows.append(plan.memory)
    lines += [_mem_row(m, budget, _same(m, plan.memory)) for m in rows]
    lines += [f"  (+ {plan.memory.overhead:.1f} GiB fixed CUDA/NCCL overhead in every total)"]
    lines += _lora_vs_full_lines(plan)
    if plan.adjustments:
        lines += ["", "adjusted to fit:"] + [f"  - {a}" for a in plan.adjustments]
    if plan.warnings:
        lines += ["", "warnings:"] + [f"  ! {w}" for w in plan.warnings]
    return "\n".join(lines)


def _lora_vs_full_lines(plan: Plan) -> list[str]:
    """LoRA and full fine-tuning at the chosen configuration: memory per GPU and compute per token."""
    c = plan.lora_vs_full
    if c is None:
        return []
    m = plan.memory
    ckpt = "on" if m.gradient_checkpointing else "off"
    lines = [
        "",
        f"LoRA vs full fine-tuning (estimate; both at {plan.precision}, ZeRO-{m.zero_stage}, "
        f"{m.per_device_batch} x {plan.max_length} tokens, ckpt {ckpt})",
        "  method   trainable         weights    grads    optim    activ    total  GFLOP/token",
    ]
    for cost in (c.lora, c.full):
        e = cost.memory
        fits = "" if cost.fits is None else ("  fits" if cost.fits else "  too big")
        lines.append(
            f"{'*' if cost.method == plan.method else ' '} {cost.method:<6} {cost.trainable_params:>15,} "
            f"{e.weights:8.2f} {e.gradients:8.2f} {e.optimizer:8.2f} {e.activations:8.2f} {e.total:8.2f} "
            f"{cost.flops_per_token / 1e9:12.3f}{fits}"
        )
    lines += [
        f"  LoRA / full: memory per GPU {c.memory_ratio:.2f} (saves {100 * (1 - c.memory_ratio):.0f} %), "
        f"weights + grads + optimizer {c.states_ratio:.2f} (saves {100 * (1 - c.states_ratio):.0f} %)",
        f"               compute per token {c.compute_ratio:.2f} (full does {1 / c.compute_ratio:.2f}x "
        "LoRA's work; see docs/training-plan.md for what this leaves out)",
    ]
    return lines


def _targets(modules: list[str] | str) -> str:
    return modules if isinstance(modules, str) else ", ".join(modules)


def _same(a: MemoryEstimate, b: MemoryEstimate) -> bool:
    return (a.zero_stage, a.gradient_checkpointing, a.per_device_batch) == (
        b.zero_stage,
        b.gradient_checkpointing,
        b.per_device_batch,
    )
