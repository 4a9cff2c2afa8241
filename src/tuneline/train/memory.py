"""Model shape without weights, LoRA trainable parameters, and the per-GPU memory estimate.

Formulas (bytes per parameter, activation elements per token and layer) are derived and sourced in
docs/training-plan.md; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tuneline.errors import ConfigError
from tuneline.train.lora_targets import is_linear, matches

GIB = 2**30
Precision = Literal["bf16", "fp16", "fp32"]
# CUDA context, kernels and the NCCL buffers: present whatever the model.
FIXED_OVERHEAD_GIB = 1.0
# The allocator fragments: plan against this share of the device only.
USABLE_FRACTION = 0.9


@dataclass
class ModelShape:
    """What the plan needs to know about a model, read from its config on the meta device."""

    params: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int | None
    layer_params: int  # parameters of one decoder layer (the ZeRO-3 gather unit)
    linears: dict[str, tuple[int, int, bool]] = field(repr=False)  # name -> (in, out, has_bias)
    output_linear: str | None = None  # lm_head: never gets an adapter under all-linear
    biases: int = 0  # bias parameters in the whole model


def _cfg(config: Any, *names: str, default: int | None = None) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return default


def model_shape(config: Any, trust_remote_code: bool = False) -> ModelShape:
    """Build the model from a transformers config on the meta device and read its shape.

    No weights are allocated or loaded: built under `torch.device("meta")`, so a 70B model costs a
    second and no memory. Not `accelerate.init_empty_weights`: it re-registers every parameter as a
    new meta tensor, which un-ties `lm_head` from the input embeddings (`tie_word_embeddings`), so a
    tied model's vocabulary matrix was counted twice (Qwen2.5-0.5B: 630M instead of 494M).

    Args:
        config: a `transformers.PretrainedConfig`.
        trust_remote_code: allow a checkpoint's own modelling code (`model.trust_remote_code`).
    """
    import torch  # lazy: torch ~9 s; `tuneline plan` (tuneline.train) stays torch-free
    from transformers import AutoModelForCausalLM  # lazy: transformers ~5 s; as above

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"cannot build a causal LM from the model config ({type(config).__name__}): {exc}"
        ) from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = _cfg(text, "hidden_size", "n_embd", "d_model")
    layers = _cfg(text, "num_hidden_layers", "n_layer", "num_layers")
    heads = _cfg(text, "num_attention_heads", "n_head")
    if not (hidden and layers and heads):
        raise ConfigError(f"{type(config).__name__}: no hidden size / layer count / head count to plan with")
    out_emb = model.get_output_embeddings()
    linears: dict[str, tuple[int, int, bool]] = {}
    output_linear = None
    for name, module in model.named_modules():
        if is_linear(module):
            # GPT-2's Conv1D stores its weight transposed: (in, out)
            n_in, n_out = (
                (module.in_features, module.out_features)
                if isinstance(module, torch.nn.Linear)
                else tuple(module.weight.shape)
            )
            linears[name] = (n_in, n_out, module.bias is not None)
            if module is out_emb:
                output_linear = name
    stack = next(
        (m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == layers), None
    )
    layer_params = sum(p.numel() for p in stack[0].parameters()) if stack is not None else 0
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),  # a shared tensor once
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=_cfg(text, "num_key_value_heads", default=heads) or heads,
        intermediate=_cfg(text, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden,
        vocab=_cfg(text, "vocab_size", default=0) or 0,
        max_positions=_cfg(text, "max_position_embeddings", "n_positions"),
        layer_params=layer_params,
        linears=linears,
        output_linear=output_linear,
        biases=sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias")),
    )


def lora_trainable(
    shape: ModelShape, r: int, target_modules: list[str] | str, bias: str = "none"
) -> tuple[int, dict[str, int]]:
    """Trainable parameters of LoRA adapters: r x (in + out) per adapted linear layer.

    Args:
        shape: the model shape.
        r: LoRA rank.
        target_modules: module name suffixes, or "all-linear" (every linear but the output layer).
        bias: "none", "all" (every bias trains) or "lora_only" (biases of adapted layers train).

    Returns:
        (total trainable parameters, per target breakdown).

    Raises:
        ConfigError: a target matches no linear layer (PEFT would refuse too).
    """
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    breakdown: dict[str, int] = {}
    adapted_bias = 0
    for name, (n_in, n_out, has_bias) in shape.linears.items():
        if targets == ["all-linear"]:
            key = None if name == shape.output_linear else name.rsplit(".", 1)[-1]
        else:
            key = next((t for t in targets if matches(name, t)), None)
        if key is None:
            continue
        breakdown[key] = breakdown.get(key, 0) + r * (n_in + n_out)
        adapted_bias += n_out if has_bias else 0
    missing = [t for t in targets if t != "all-linear" and t not in breakdown]
    if missing or not breakdown:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in shape.linears})
        raise ConfigError(
            f"train.lora.target_modules: {missing or targets} match no linear layer of this model; "
            f"its linear layers are {kinds}"
        )
    extra = {"all": shape.biases, "lora_only": adapted_bias}.get(bias, 0)
    if extra:
        breakdown["bias"] = extra
    return sum(breakdown.values()), breakdown


@dataclass
class MemoryEstimate:
    """Per-GPU memory of one configuration, in GiB."""

    zero_stage: int
    gradient_checkpointing: bool
    per_device_batch: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    total: float


def bytes_per_element(precision: Precision) -> int:
    return 4 if precision == "fp32" else 2


def activation_bytes(
    shape: ModelShape,
    batch: int,
    seq: int,
    precision: Precision,
    checkpointing: bool,
    lora_inputs: int = 0,
) -> int:
    """Activation memory kept for backward by a Llama-like decoder (SDPA attention, no dropout).

    Per layer and token, in elements: 6h + 2h_kv + 4i (norm inputs/outputs, Q, K, V, attention
    output, gate/up outputs, SiLU output and its product) plus `lora_inputs` (the copies LoRA dropout
    keeps of adapted layers' inputs). With checkpointing every layer keeps only its input (h) and one
    layer at a time is recomputed at full size. The logits add b x s x V in the compute dtype plus
    fp32 for the loss.
    """
    e = bytes_per_element(precision)
    tokens = batch * seq
    kv = shape.hidden * shape.kv_heads // shape.heads
    per_layer = tokens * e * (6 * shape.hidden + 2 * kv + 4 * shape.intermediate + lora_inputs)
    kept = shape.layers * tokens * e * shape.hidden + per_layer if checkpointing else shape.layers * per_layer
    logits = tokens * shape.vocab * (e + 4)
    return kept + logits + tokens * e * shape.hidden  # + the final norm's output


def estimate(
    shape: ModelShape,
    trainable: int,
    method: str,
    precision: Precision,
    zero_stage: int,
    world_size: int,
    per_device_batch: int,
    seq: int,
    checkpointing: bool,
    lora_inputs: int = 0,
    frozen: int | None = None,
) -> MemoryEstimate:
    """Memory per GPU for one configuration (AdamW; DeepSpeed ZeRO stage 0, 2 or 3).

    Trainable parameters cost 16 bytes under mixed precision (2 weight + 2 gradient + 4 fp32 master
    + 8 fp32 Adam moments; LoRA adapters are kept in fp32: 4 + 4 + 8) and 16 in fp32 (4 + 4 + 8).
    Frozen parameters (LoRA: the whole base, unless `frozen` says otherwise, e.g. with trained biases)
    cost their weight only. ZeRO-2 divides gradients and optimizer states by the
    world size, ZeRO-3 the weights too, plus two gathered layers (current + prefetched).
    """
    e = bytes_per_element(precision)
    if frozen is None:
        frozen = shape.params if method == "lora" else 0
    if method == "lora" or precision == "fp32":
        w_t, g_t, o_t = 4, 4, 8  # fp32 trainables: the weight is its own master copy
    else:
        w_t, g_t, o_t = 2, 2, 12
    weights = frozen * e + trainable * w_t
    grads = trainable * g_t
    optim = trainable * o_t
    n = max(world_size, 1)
    if zero_stage >= 2:
        grads, optim = grads / n, optim / n
    if zero_stage >= 3:
        weights = weights / n + 2 * shape.layer_params * e
    act = activation_bytes(shape, per_device_batch, seq, precision, checkpointing, lora_inputs)
    parts = [weights / GIB, grads / GIB, optim / GIB, act / GIB]
    return MemoryEstimate(
        zero_stage,
        checkpointing,
        per_device_batch,
        *parts,
        FIXED_OVERHEAD_GIB,
        sum(parts) + FIXED_OVERHEAD_GIB,
    )


def lora_dropout_inputs(shape: ModelShape, target_modules: list[str] | str, dropout: float) -> int:
    """Elements per token and layer that LoRA dropout keeps: the input width of each adapted layer."""
    if dropout <= 0:
        return 0
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    total = 0
    for name, (n_in, _, _) in shape.linears.items():
        if name == shape.output_linear and targets == ["all-linear"]:
            continue
        if targets == ["all-linear"] or any(matches(name, t) for t in targets):
            total += n_in
    return total // max(shape.layers, 1)
