"""What LoRA buys over full fine-tuning, estimated for one model and one plan: memory and compute.

Both methods are priced at the same configuration (precision, ZeRO stage, world size, per-device batch,
sequence length, gradient checkpointing) with the memory model of `tuneline.train.memory`, and with a
FLOP count per trained token. The formulas and their limits are in docs/training-plan.md ("LoRA vs full
fine-tuning"); `bench/train_throughput.py --methods` measures the same comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tuneline.config.train import LoraParams
from tuneline.train.lora_targets import resolve_targets
from tuneline.train.memory import (
    USABLE_FRACTION,
    MemoryEstimate,
    ModelShape,
    Precision,
    estimate,
    lora_dropout_inputs,
    lora_trainable,
)


@dataclass
class MethodCost:
    """One method at the plan's configuration: what trains, memory per GPU, training FLOPs per token."""

    method: str
    trainable_params: int
    memory: MemoryEstimate
    flops_per_token: float
    fits: bool | None  # None: no device memory to check against (planning on a CPU host)

    @property
    def states(self) -> float:
        """GiB of weights, gradients and optimizer states (what does not depend on the batch)."""
        return self.memory.weights + self.memory.gradients + self.memory.optimizer


@dataclass
class MethodComparison:
    """LoRA and full fine-tuning side by side; ratios are LoRA / full (below 1: LoRA needs less)."""

    lora: MethodCost
    full: MethodCost
    memory_ratio: float  # total per GPU
    states_ratio: float  # weights + gradients + optimizer states
    compute_ratio: float  # training FLOPs per token

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("lora", "full"):
            out[name]["states"] = getattr(self, name).states
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodComparison:
        """Inverse of `to_dict` (the plan travels to worker processes as JSON)."""
        costs = {}
        for name in ("lora", "full"):
            fields = {k: v for k, v in data[name].items() if k != "states"}
            fields["memory"] = MemoryEstimate(**fields["memory"])
            costs[name] = MethodCost(**fields)
        return cls(costs["lora"], costs["full"], data["memory_ratio"], data["states_ratio"],
                   data["compute_ratio"])


def matmul_params(shape: ModelShape) -> int:
    """Weights that multiply every token: all linear layers, the output layer included (tied or not).

    The input embedding is a lookup, not a matmul, and costs no FLOPs.
    """
    return sum(n_in * n_out for n_in, n_out, _ in shape.linears.values())


def attention_flops_per_token(shape: ModelShape, seq: int) -> float:
    """Forward FLOPs per token of the attention scores and their weighted sum (QK^T and AV).

    2 matmuls x 2 FLOPs x width h x the tokens attended, s/2 on average under a causal mask over a full
    sequence of s tokens (shorter packed rows attend to fewer: an upper bound). Width is taken as the
    hidden size (heads x head_dim equals it in most families; Gemma's is narrower).
    """
    return 4 * shape.hidden * shape.layers * seq / 2


def training_flops_per_token(
    shape: ModelShape, seq: int, method: str, adapter_params: int = 0, checkpointing: bool = False
) -> float:
    """Forward + backward FLOPs per token, matmuls only (norms, activations, loss, optimizer left out).

    Full: forward 2M, backward 2M (input gradients) + 2M (weight gradients): 6M, plus attention A
    forward and 2A backward. LoRA: the frozen weights need no weight gradients (4M), the adapters
    (T matmul parameters) cost 6T, attention the same 3A. Checkpointing recomputes the forward once
    more (2M + A, and 2T for adapters).
    """
    m = matmul_params(shape)
    a = attention_flops_per_token(shape, seq)
    if method == "full":
        flops, forward = 6 * m + 3 * a, 2 * m + a
    else:
        flops, forward = 4 * m + 6 * adapter_params + 3 * a, 2 * m + 2 * adapter_params + a
    return flops + (forward if checkpointing else 0)


def compare_methods(
    shape: ModelShape,
    lora: LoraParams,
    precision: Precision,
    zero_stage: int,
    world_size: int,
    per_device_batch: int,
    seq: int,
    checkpointing: bool,
    device_memory_gib: float | str,
) -> MethodComparison:
    """LoRA (with `train.lora`'s settings) and full fine-tuning at one configuration.

    Args:
        shape: the model shape (`memory.model_shape`).
        lora: the `train.lora` section (rank, targets, bias, dropout).
        precision: compute precision; full fine-tuning keeps fp32 master weights under bf16/fp16.
        zero_stage: DeepSpeed ZeRO stage (0, 2 or 3).
        world_size: data-parallel ranks.
        per_device_batch: sequences per device and micro-step.
        seq: tokens per sequence (the plan's max length).
        checkpointing: gradient checkpointing on.
        device_memory_gib: GiB per GPU, or "cpu" (no fit check).

    Raises:
        ConfigError: a LoRA target matches no layer of the model.
    """
    targets = resolve_targets(lora.target_modules, shape.linears)
    trainable, breakdown = lora_trainable(shape, lora.r, targets.modules, lora.bias)
    bias = breakdown.get("bias", 0)
    budget = device_memory_gib * USABLE_FRACTION if isinstance(device_memory_gib, float) else None

    def cost(method: str, trains: int, mem: MemoryEstimate, adapters: int) -> MethodCost:
        flops = training_flops_per_token(shape, seq, method, adapters, checkpointing)
        return MethodCost(method, trains, mem, flops, None if budget is None else mem.total <= budget)

    common = (precision, zero_stage, world_size, per_device_batch, seq, checkpointing)
    lora_mem = estimate(shape, trainable, "lora", *common,
                        lora_dropout_inputs(shape, targets.modules, lora.dropout), frozen=shape.params - bias)
    full_mem = estimate(shape, shape.params, "full", *common)
    lo = cost("lora", trainable, lora_mem, trainable - bias)
    full = cost("full", shape.params, full_mem, 0)
    return MethodComparison(lo, full, lo.memory.total / full.memory.total, lo.states / full.states,
                            lo.flops_per_token / full.flops_per_token)
