"""Wire the configured method onto a loaded base model: LoRA adapters via peft, or full fine-tuning."""

from __future__ import annotations

import logging
from typing import Any

from tuneline.config.train import TrainParams
from tuneline.errors import ConfigError
from tuneline.train.lora_targets import linear_names, resolve_targets

logger = logging.getLogger(__name__)


def lora_config(params: TrainParams, model: Any) -> Any:
    """The peft `LoraConfig` for `train.lora` (causal LM), its targets resolved against `model`'s layers.

    Raises:
        ConfigError: a target module matches no layer of the model (nor a layer with its role).
    """
    from peft import LoraConfig, TaskType  # lazy: peft ~25 s; `import tuneline.train` (plan) stays light

    lora = params.lora
    targets = resolve_targets(lora.target_modules, linear_names(model))
    for note in targets.notes:
        logger.info("LoRA target %s", note)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets.modules,
        bias=lora.bias,
        task_type=TaskType.CAUSAL_LM,
    )


def prepare_model(model: Any, params: TrainParams) -> Any:
    """Return the model to train: the base wrapped with LoRA adapters, or the base itself (`full`).

    Raises:
        ConfigError: a LoRA target module matches nothing in the model.
    """
    if params.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import get_peft_model  # lazy: peft ~25 s; as above

    try:
        return get_peft_model(model, lora_config(params, model))
    except ValueError as exc:
        # peft says "Target modules {...} not found in the base model" - name the config key.
        raise ConfigError(f"train.lora.target_modules {params.lora.target_modules!r}: {exc}") from None


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts of the model as it will train."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
