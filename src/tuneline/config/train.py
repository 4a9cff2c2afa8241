"""`train` section: method, hyper-parameters (or `auto` from the guide's templates), batch and memory."""

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section


class LoraParams(Section):
    r: int = Field(8, ge=1, description="LoRA rank (guide default 8).")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha (guide default 16 = 2 x r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path (guide default 0.05).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Modules that get adapters: the guide's q_proj, v_proj, or `all-linear`.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train (guide: none).")


class TrainParams(Section):
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters or full fine-tuning.")
    lora: LoraParams = Field(default_factory=LoraParams, description="LoRA settings (method: lora).")
    lr: float | Literal["auto"] = Field(
        "auto", description="Peak learning rate; `auto`: from the template by model size and method."
    )
    template: Literal["auto", "7b", "13b", "70b"] = Field(
        "auto",
        description="Template row for lr/warmup/schedule `auto`: by the model's parameter count, or pin "
        "the 7b / 13b / 70b row (e.g. a model whose size misleads, like a mixture of experts).",
    )
    warmup: Annotated[float, Field(ge=0, lt=1)] | Literal["auto"] = Field(
        "auto", description="Warm-up as a fraction of all steps; `auto`: the template's."
    )
    schedule: Literal["auto", "cosine", "linear", "constant"] = Field(
        "auto", description="LR decay after warm-up; `auto` follows the template."
    )
    effective_batch: int = Field(16, ge=1, description="Sequences per optimizer step, across all devices.")
    per_device_batch: int = Field(4, ge=1, description="Sequences per device per forward pass.")
    num_processes: int = Field(1, ge=1, description="Data-parallel processes (GPUs) per node.")
    num_nodes: int = Field(1, ge=1, description="Machines taking part.")
    max_length: int | Literal["auto"] = Field(
        "auto", description="Tokens per sequence; `auto` picks from task.type and the measured lengths."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="`auto`: bf16 where supported, fp16 on GPUs without bf16, fp32 on CPU."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="Trade compute for activation memory; `auto` turns it on when the plan needs it."
    )
    zero_stage: Literal["auto", 0, 2, 3] = Field(
        "auto", description="DeepSpeed ZeRO stage; `auto` picks the smallest that fits the device memory."
    )
    device_memory_gib: float | Literal["auto"] = Field(
        "auto", description="Memory per device the plan must fit; `auto` reads it from the device."
    )
    on_plan_too_big: Literal["refuse", "adjust"] = Field(
        "refuse",
        description="A plan that does not fit: refuse before any GPU time, or adjust (more accumulation, "
        "checkpointing, a higher ZeRO stage) keeping the effective batch.",
    )

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_nodes

    @property
    def grad_accum(self) -> int:
        """Accumulation steps derived so that per_device x world_size x accumulation = effective_batch."""
        return self.effective_batch // (self.per_device_batch * self.world_size)

    @model_validator(mode="after")
    def _divisible(self) -> "TrainParams":
        per_step = self.per_device_batch * self.world_size
        if self.effective_batch % per_step:
            raise ValueError(
                f"train.effective_batch ({self.effective_batch}) must be a multiple of per_device_batch x "
                f"world_size ({self.per_device_batch} x {self.world_size} = {per_step})"
            )
        return self
