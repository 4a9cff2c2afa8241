"""Which layers get LoRA adapters: `train.lora.target_modules` resolved against the model's own layers.

The guide names its targets the Llama way (`q_proj`, `v_proj`: the query and value projections).
Other families give the same role another name (GPT-2 `c_attn`, GPT-NeoX / Falcon / BLOOM
`query_key_value`, OPT / GPT-J `out_proj`) or fuse several roles into one layer (Phi-3 `qkv_proj`,
`gate_up_proj`). A requested name present in the model is used as is; otherwise the table below maps
the role to the first of its names that is present, found by the module names of the model itself
(never by the model's name). The plan and the train report say which names were mapped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneline.errors import ConfigError

ALL_LINEAR = "all-linear"

# role (the guide's Llama name) -> names of the layer carrying that role elsewhere, tried in order.
# A dotted name matches a module path suffix (peft's rule), so `attn.c_proj` is GPT-2's attention
# output and not its MLP's `mlp.c_proj`.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "q_proj": ("q_proj", "query", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "k_proj": ("k_proj", "key", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "v_proj": ("v_proj", "value", "qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack"),
    "o_proj": ("o_proj", "out_proj", "attn.c_proj", "attention.dense", "self_attention.dense",
               "self_attn.dense"),
    "gate_proj": ("gate_proj", "gate_up_proj"),
    "up_proj": ("up_proj", "gate_up_proj", "mlp.c_fc", "dense_h_to_4h", "fc_in", "fc1"),
    "down_proj": ("down_proj", "mlp.c_proj", "dense_4h_to_h", "fc_out", "fc2"),
}

# fused layer -> the roles it computes in one matrix (an adapter on it adapts all of them).
FUSED: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "c_attn": ("q_proj", "k_proj", "v_proj"),
    "query_key_value": ("q_proj", "k_proj", "v_proj"),
    "Wqkv": ("q_proj", "k_proj", "v_proj"),
    "W_pack": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


@dataclass(frozen=True)
class LoraTargets:
    """The target modules handed to peft, and one line per requested name that was mapped."""

    modules: list[str] | Literal["all-linear"]
    notes: list[str] = field(default_factory=list)


def matches(name: str, target: str) -> bool:
    """peft's rule: the module's full name equals the target or ends with "." + target."""
    return name == target or name.endswith("." + target)


def is_linear(module: Any) -> bool:
    """A layer peft can adapt as a linear one: `torch.nn.Linear` or GPT-2's transposed `Conv1D`."""
    import torch  # lazy: torch ~9 s; `tuneline plan` (tuneline.train) stays torch-free
    from transformers.pytorch_utils import Conv1D  # lazy: transformers ~5 s; as above

    return isinstance(module, torch.nn.Linear | Conv1D)


def linear_names(model: Any) -> list[str]:
    """Full module names of the model's linear layers (the output layer included)."""
    return [name for name, module in model.named_modules() if is_linear(module)]


def resolve_targets(requested: list[str] | str, names: Iterable[str]) -> LoraTargets:
    """Map the requested target modules onto the model's linear layers.

    Args:
        requested: `train.lora.target_modules` (a list of names, or "all-linear").
        names: full module names of the model's linear layers (`linear_names`).

    Returns:
        The modules to adapt (requested names kept where present, roles mapped where not) and notes
        saying what was mapped.

    Raises:
        ConfigError: a name is neither in the model nor a role with a counterpart in it; the message
            lists the model's linear layer names.
    """
    wanted = [requested] if isinstance(requested, str) else list(requested)
    if wanted == [ALL_LINEAR]:
        return LoraTargets(ALL_LINEAR)
    names = list(names)

    def present(target: str) -> bool:
        return any(matches(n, target) for n in names)

    modules: list[str] = []
    mapped: dict[str, list[str]] = {}
    unknown: list[str] = []
    for want in wanted:
        got = want if present(want) else next((c for c in ROLE_NAMES.get(want, ()) if present(c)), None)
        if got is None:
            unknown.append(want)
            continue
        if got not in modules:
            modules.append(got)
        if got != want:
            mapped.setdefault(got, []).append(want)
    if unknown:
        kinds = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise ConfigError(
            f"train.lora.target_modules: {unknown} match no linear layer of this model and no layer with "
            f"the same role; its linear layers are {kinds} (name some of them, or use all-linear)"
        )
    return LoraTargets(modules, [_note(got, roles) for got, roles in mapped.items()])


def _note(got: str, roles: list[str]) -> str:
    fused = FUSED.get(got.rsplit(".", 1)[-1])
    line = f"{', '.join(roles)} -> {got}"
    if fused:
        extra = [r for r in fused if r not in roles]
        line += f" (this model computes {', '.join(fused)} in one layer"
        line += f": the adapter covers {', '.join(extra)} too)" if extra else ")"
    else:
        line += " (this model's name for the same projection)"
    return line
