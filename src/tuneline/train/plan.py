"""`tuneline plan`: resolve every `auto` of the train section and check the plan fits, before GPU time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from tuneline.config import Config
from tuneline.errors import ConfigError, TunelineError
from tuneline.train.lora_targets import LoraTargets, resolve_targets
from tuneline.train.lora_vs_full import MethodComparison, compare_methods
from tuneline.train.memory import (
    USABLE_FRACTION,
    MemoryEstimate,
    ModelShape,
    Precision,
    estimate,
    lora_dropout_inputs,
    lora_trainable,
    model_shape,
)
from tuneline.train.templates import LengthPick, LrPick, anchor_row, pick_lr, pick_max_length

logger = logging.getLogger(__name__)


class PlanError(TunelineError):
    """The training plan cannot fit the devices (or cannot be made): refused before any GPU time."""

    exit_code = 4


@dataclass
class Plan:
    """Everything `auto` resolved to, the memory estimate per GPU, and what was changed or doubted."""

    model: str
    params: int
    method: str
    trainable_params: int
    trainable_percent: float
    lora_breakdown: dict[str, int]
    template_row: str
    template_source: str
    lr: float
    lr_range: tuple[float, float]
    lr_from: str
    warmup: float
    schedule: str
    per_device_batch: int
    world_size: int
    grad_accum: int
    effective_batch: int
    max_length: int
    max_length_from: str
    length_p99: int | None
    truncated_rows: int | None
    measured_rows: int | None
    precision: str
    precision_from: str
    device_memory_gib: float | str
    zero_stage: int
    gradient_checkpointing: bool
    memory: MemoryEstimate
    fits: bool | None
    options: list[MemoryEstimate] = field(default_factory=list)
    adjustments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # the modules that get adapters (train.lora.target_modules resolved against this model's layers)
    lora_targets: list[str] | str = field(default_factory=list)
    lora_target_notes: list[str] = field(default_factory=list)  # requested names mapped to other layers
    backend: str = "deepspeed"  # the engine that shards a zero_stage 2/3 run: deepspeed | fsdp
    # memory per device of each sharding strategy of the backend, at the chosen batch and checkpointing
    sharding: dict[str, MemoryEstimate] = field(default_factory=dict)
    # the same configuration priced for LoRA and for full fine-tuning (None: LoRA cannot target this model)
    lora_vs_full: MethodComparison | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (reports/plan.json)."""
        out = asdict(self)
        out["lr_range"] = list(self.lr_range)
        out["lora_vs_full"] = self.lora_vs_full.to_dict() if self.lora_vs_full else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of `to_dict` (a worker process receives its plan this way)."""
        fields = dict(data)
        fields["lr_range"] = tuple(fields["lr_range"])
        fields["memory"] = MemoryEstimate(**fields["memory"])
        fields["options"] = [MemoryEstimate(**o) for o in fields.get("options", [])]
        fields["sharding"] = {k: MemoryEstimate(**v) for k, v in fields.get("sharding", {}).items()}
        if fields.get("lora_vs_full"):
            fields["lora_vs_full"] = MethodComparison.from_dict(fields["lora_vs_full"])
        return cls(**fields)


# What each sharding strategy divides by the world size equals a ZeRO stage: FSDP's full shard splits
# weights, gradients and optimizer states (ZeRO-3), shard grad op gradients and optimizer states and keeps
# the weights gathered from forward to backward (ZeRO-2), no shard replicates everything (ZeRO-0 = DDP).
SHARDING_STRATEGIES = {
    "deepspeed": {"zero-3": 3, "zero-2": 2, "zero-0": 0},
    "fsdp": {"full_shard": 3, "shard_grad_op": 2, "no_shard": 0},
}


def sharding_estimates(
    backend: str, fit: Callable[[int, bool, int], MemoryEstimate], checkpointing: bool, per_device_batch: int
) -> dict[str, MemoryEstimate]:
    """Memory per device of each sharding strategy of `backend`, at the chosen batch and checkpointing.

    FSDP full shard / shard grad op / no shard hold per device what ZeRO-3 / 2 / 0 hold (same estimate,
    `memory.estimate` at that stage). Under FSDP2 the plan's zero_stage picks the strategy: 3 full shard,
    2 shard grad op, 0 plain DDP (which is what no shard is).

    Args:
        backend: `train.backend` (deepspeed or fsdp).
        fit: the estimate for (zero stage, checkpointing, per-device batch) of this model and world size.
        checkpointing: gradient checkpointing as chosen.
        per_device_batch: the per-device batch as chosen.

    Returns:
        Strategy name -> per-device memory, largest sharding first.
    """
    strategies = SHARDING_STRATEGIES[backend]
    return {name: fit(zero, checkpointing, per_device_batch) for name, zero in strategies.items()}


def backoff(plan: Plan) -> Plan | None:
    """The plan after a CUDA out-of-memory: half the per-device batch, twice the accumulation (the
    effective batch stays), gradient checkpointing on. None when there is nothing left to give."""
    if plan.per_device_batch == 1 and plan.gradient_checkpointing:
        return None
    # the largest divisor of the batch at most half of it, so the effective batch stays exact
    size = plan.per_device_batch
    batch = max((d for d in range(1, size // 2 + 1) if size % d == 0), default=1)
    accum = plan.grad_accum * plan.per_device_batch // batch
    change = (f"out of memory: per_device_batch {size} -> {batch}, grad_accum {plan.grad_accum} -> "
              f"{accum}, gradient checkpointing on (effective batch {plan.effective_batch})")
    # the LoRA vs full comparison was priced at the old batch: dropped rather than left stale
    return replace(plan, per_device_batch=batch, grad_accum=accum, gradient_checkpointing=True,
                   adjustments=[*plan.adjustments, change], lora_vs_full=None)


def load_model_config(cfg: Config, model_config: Any = None) -> Any:
    """The base model's transformers config: given object, a path (dir or config.json), or model.name_or_path.

    Raises:
        ConfigError: naming the path when it is missing or unreadable.
    """
    if model_config is not None and not isinstance(model_config, str | Path):
        return model_config
    from transformers import AutoConfig  # lazy: pulls in torch, ~2.6 s (see `resolve_precision`)

    given = str(model_config) if model_config is not None else cfg.model.name_or_path
    key = "--model-config" if model_config is not None else "model.name_or_path"
    path = Path(given).expanduser()
    local = path.exists() or given.startswith((".", "/", "~")) or given.endswith(".json")
    # "models/base" looks like a hub id too: a first component that exists here means a local path.
    local = local or given.count("/") > 1 or ("/" in given and Path(given.split("/")[0]).is_dir())
    local = local or Path(given) == Path(cfg.build_base.output_dir)  # the demo base is never on the hub
    if local and not path.exists():
        raise ConfigError(
            f"{key} {given!r}: no such file or directory (build the demo base with `tuneline build_base`, "
            "or point it at a model directory with a config.json)"
        )
    if path.is_dir() and not (path / "config.json").exists():
        raise ConfigError(f"{key} {given!r}: directory has no config.json")
    try:
        return AutoConfig.from_pretrained(
            str(path) if local else given, trust_remote_code=cfg.model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{key} {given!r}: cannot read a model config: {exc}") from None


def resolve_precision(requested: str) -> tuple[Precision, str]:
    """`auto`: bf16 where the GPU supports it, fp16 on GPUs without bf16, fp32 on CPU."""
    if requested != "auto":
        return requested, "config"  # type: ignore[return-value]
    # Measured with python -X importtime (shared machine): torch 5-12 s against 0.4-0.6 s for `import
    # tuneline.train`, whose package imports this module; the HTML reports (train.curves) and `tuneline plan`
    # with a set precision and device memory need no torch.
    import torch  # lazy: 5-12 s, only `auto` needs it (see above)

    if not torch.cuda.is_available():
        return "fp32", "auto: no GPU here (set train.precision when planning for a GPU target)"
    if torch.cuda.is_bf16_supported():
        return "bf16", "auto: GPU supports bf16"
    return "fp16", "auto: GPU lacks bf16"


def resolve_device_memory(requested: float | str | None) -> float | str:
    """GiB per device: explicit, or `auto` from torch.cuda; "cpu" when there is no GPU (no fit check)."""
    if isinstance(requested, int | float):
        return float(requested)
    import torch  # lazy: see `resolve_precision`

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    return "cpu"


def _search(
    cfg: Config, fit: Any, device: float | str, world: int
) -> tuple[MemoryEstimate, bool | None, list[MemoryEstimate], list[str]]:
    """Smallest ZeRO stage, then checkpointing, at the configured per-device batch; with `adjust`,
    more accumulation first, then checkpointing, then a higher ZeRO stage, always same effective batch."""
    t = cfg.train
    # With one process ZeRO partitions nothing: stages 2/3 would only add communication.
    auto_zero = [0, 2, 3] if world > 1 else [0]
    zeros = auto_zero if t.zero_stage == "auto" else [t.zero_stage]
    ckpts = {"auto": [False, True], "on": [True], "off": [False]}[t.gradient_checkpointing]
    first = fit(zeros[0], ckpts[0], t.per_device_batch)
    options = [fit(z, c, t.per_device_batch) for z in auto_zero for c in (False, True)]
    if not isinstance(device, float):
        return first, None, options, []
    budget = device * USABLE_FRACTION
    per_rank = t.effective_batch // world
    batches = [b for b in range(t.per_device_batch, 0, -1) if per_rank % b == 0]
    levels = [(zeros, ckpts, batches[:1])]
    if t.on_plan_too_big == "adjust":
        all_zero = sorted(z for z in {*auto_zero, *zeros} if z >= zeros[0])
        levels += [
            (zeros, ckpts, batches),
            (zeros, [*ckpts, True], batches),
            (all_zero, [*ckpts, True], batches),
        ]
    for zs, cs, bs in levels:
        for b in bs:
            for z in zs:
                for c in dict.fromkeys(cs):
                    est = fit(z, c, b)
                    if est.total <= budget:
                        return est, True, options, _changes(cfg, est)
    best = fit(auto_zero[-1], True, 1)
    raise PlanError(
        f"the plan needs {first.total:.1f} GiB per GPU (zero_stage {first.zero_stage}, checkpointing "
        f"{'on' if first.gradient_checkpointing else 'off'}, per_device_batch {t.per_device_batch}) but "
        f"{budget:.1f} of {device:.1f} GiB are usable"
        + (
            "; set train.on_plan_too_big: adjust to back off keeping the effective batch"
            if t.on_plan_too_big == "refuse" and best.total <= budget
            else f"; even ZeRO-{best.zero_stage} + checkpointing + per_device_batch 1 needs "
            f"{best.total:.1f} GiB: use more GPUs, LoRA, or a shorter train.max_length"
        )
    )


def _changes(cfg: Config, est: MemoryEstimate) -> list[str]:
    t = cfg.train
    out = []
    if est.per_device_batch != t.per_device_batch:
        accum = t.effective_batch // (est.per_device_batch * t.world_size)
        out.append(
            f"per_device_batch {t.per_device_batch} -> {est.per_device_batch} (grad_accum {t.grad_accum} -> "
            f"{accum}; effective batch stays {t.effective_batch})"
        )
    if t.gradient_checkpointing == "off" and est.gradient_checkpointing:
        out.append("gradient_checkpointing off -> on")
    if t.zero_stage != "auto" and est.zero_stage != t.zero_stage:
        out.append(f"zero_stage {t.zero_stage} -> {est.zero_stage}")
    for line in out:
        logger.warning("plan adjusted to fit: %s", line)
    return out


def lora_vs_full(
    cfg: Config, shape: ModelShape, precision: Precision, chosen: MemoryEstimate, seq: int,
    device: float | str,
) -> MethodComparison | None:
    """The chosen configuration priced for LoRA and for full fine-tuning, whichever method is configured.

    None when `train.lora.target_modules` matches nothing in this model and the method is `full` (the
    comparison would need a LoRA that cannot be built; with `method: lora` that is a ConfigError earlier).
    """
    t = cfg.train
    try:
        return compare_methods(shape, t.lora, precision, chosen.zero_stage, t.world_size,
                               chosen.per_device_batch, seq, chosen.gradient_checkpointing, device)
    except ConfigError as exc:
        logger.info("plan: no LoRA vs full comparison: %s", exc)
        return None


def make_plan(
    cfg: Config,
    model_config: Any = None,
    token_lengths: list[int] | None = None,
    device_memory_gib: float | None = None,
) -> Plan:
    """Resolve the train section against the model and the devices, before any GPU time.

    Args:
        cfg: the whole config (model, task and train sections are read).
        model_config: a transformers config object, a path to a model dir / config.json, or None to
            read `model.name_or_path`.
        token_lengths: tokens per training row (for `max_length: auto` and the truncation count).
        device_memory_gib: GiB per GPU; overrides `train.device_memory_gib`.

    Returns:
        The resolved plan.

    Raises:
        ConfigError: the model config cannot be read or a LoRA target matches nothing.
        PlanError: the plan does not fit and `train.on_plan_too_big` is `refuse` (or nothing fits).
    """
    t = cfg.train
    shape: ModelShape = model_shape(load_model_config(cfg, model_config), cfg.model.trust_remote_code)
    lora = _trainable(cfg, shape)
    tpl, lr, lr_from, warnings = _learning_rate(cfg, shape)
    length = _max_length(cfg, shape, token_lengths, warnings)
    precision, precision_from = resolve_precision(t.precision)
    device = resolve_device_memory(t.device_memory_gib if device_memory_gib is None else device_memory_gib)
    world = t.world_size
    fit = partial(_fit, shape, lora, t.method, precision, world, length.max_length)
    chosen, fits, options, adjustments = _search(cfg, fit, device, world)
    if device == "cpu":
        warnings.append("no GPU here: fit check skipped (set train.device_memory_gib to plan for a target)")
    _log_notes(warnings, lora.targets.notes)
    return Plan(
        model=str(model_config) if isinstance(model_config, str | Path) else cfg.model.name_or_path,
        params=shape.params,
        method=t.method,
        trainable_params=lora.trainable,
        trainable_percent=100.0 * lora.trainable / shape.params,
        lora_breakdown=lora.breakdown,
        template_row=tpl.row,
        template_source=tpl.source,
        lr=lr,
        lr_range=(tpl.lr_min, tpl.lr_max),
        lr_from=lr_from,
        warmup=tpl.warmup if t.warmup == "auto" else t.warmup,
        schedule=tpl.schedule if t.schedule == "auto" else t.schedule,
        per_device_batch=chosen.per_device_batch,
        world_size=world,
        grad_accum=t.effective_batch // (chosen.per_device_batch * world),
        effective_batch=t.effective_batch,
        max_length=length.max_length,
        max_length_from=length.source,
        length_p99=length.p99,
        truncated_rows=length.truncated_rows,
        measured_rows=length.total_rows,
        precision=precision,
        precision_from=precision_from,
        device_memory_gib=device,
        zero_stage=chosen.zero_stage,
        gradient_checkpointing=chosen.gradient_checkpointing,
        memory=chosen,
        fits=fits,
        options=options,
        adjustments=adjustments,
        warnings=warnings,
        lora_targets=lora.targets.modules,
        lora_target_notes=lora.targets.notes,
        backend=t.backend,
        sharding=sharding_estimates(t.backend, fit, chosen.gradient_checkpointing, chosen.per_device_batch),
        lora_vs_full=lora_vs_full(cfg, shape, precision, chosen, length.max_length, device),
    )


@dataclass
class _Trainable:
    """What the method trains: LoRA's targets and parameters, or every parameter (full fine-tuning)."""

    targets: LoraTargets
    trainable: int
    breakdown: dict[str, int]  # trainable parameters by kind (LoRA: A/B matrices, bias)
    dropout_inputs: int  # activations LoRA's dropout keeps per token (0 without LoRA)
    frozen: int  # frozen parameters the memory model counts apart (LoRA), else 0


def _trainable(cfg: Config, shape: ModelShape) -> _Trainable:
    t = cfg.train
    if t.method != "lora":
        return _Trainable(LoraTargets([]), shape.params, {}, 0, 0)
    targets = resolve_targets(t.lora.target_modules, shape.linears)
    trainable, breakdown = lora_trainable(shape, t.lora.r, targets.modules, t.lora.bias)
    dropout_inputs = lora_dropout_inputs(shape, targets.modules, t.lora.dropout)
    return _Trainable(targets, trainable, breakdown, dropout_inputs, shape.params - breakdown.get("bias", 0))


def _learning_rate(cfg: Config, shape: ModelShape) -> tuple[LrPick, float, str, list[str]]:
    """(the template row, the learning rate, where it came from, a warning when a set lr is off the row)."""
    t = cfg.train
    tpl = pick_lr(t.method, shape.params) if t.template == "auto" else anchor_row(t.method, t.template)
    warnings: list[str] = []
    if t.lr == "auto":
        return tpl, tpl.lr, f"template {tpl.row}", warnings
    lr = t.lr
    if not tpl.lr_min <= lr <= tpl.lr_max:
        warnings.append(
            f"train.lr {lr:g} is outside the template range {tpl.lr_min:.2g}..{tpl.lr_max:.2g} "
            f"({tpl.row}); the template would pick {tpl.lr:.2g}"
        )
    return tpl, lr, "config", warnings


def _max_length(cfg: Config, shape: ModelShape, token_lengths: list[int] | None,
                warnings: list[str]) -> LengthPick:
    """`train.max_length` (auto: from the task type and the measured lengths); warns of truncated rows."""
    t = cfg.train
    length = pick_max_length(
        cfg.task.type, token_lengths, None if t.max_length == "auto" else t.max_length, shape.max_positions
    )
    if length.truncated_rows:
        warnings.append(
            f"{length.truncated_rows} of {length.total_rows} rows exceed max_length {length.max_length}"
        )
    return length


def _log_notes(warnings: list[str], target_notes: list[str]) -> None:
    for line in warnings:
        logger.warning("plan: %s", line)
    for line in target_notes:
        logger.info("plan: LoRA target %s", line)


def _fit(shape: ModelShape, lora: _Trainable, method: str, precision: Precision, world: int, seq: int,
         zero: int, ckpt: bool, batch: int) -> MemoryEstimate:
    """The memory estimate per device for (zero stage, checkpointing, per-device batch) of this model."""
    return estimate(shape, lora.trainable, method, precision, zero, world, batch, seq, ckpt,
                    lora.dropout_inputs, frozen=lora.frozen)
