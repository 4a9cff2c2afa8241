"""`train` section: method, hyper-parameters (or `auto` from the guide's templates), batch and memory."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from tuneline.config.base import Section


class LoraParams(Section):
    r: int = Field(8, ge=1, description="LoRA rank (guide default 8).")
    alpha: int = Field(16, ge=1, description="LoRA scaling alpha (guide default 16 = 2 x r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path (guide default 0.05).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Modules that get adapters: the guide's q_proj, v_proj, or `all-linear`. A Llama name "
        "the model lacks is mapped to its layer with the same role (Phi-3 qkv_proj, GPT-2 c_attn, GPT-NeoX / "
        "Falcon query_key_value; table in tuneline/train/lora_targets.py); the plan reports the mapping.",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases train (guide: none).")


class HealthParams(Section):
    flat_loss_evals: int = Field(
        3, ge=2, description="Evaluations in a row whose val loss moves less than flat_loss_tolerance: warn."
    )
    flat_loss_tolerance: float = Field(
        0.002, ge=0, description="Relative change of val loss under which it counts as flat (0.002 = 0.2 %)."
    )
    overfit_evals: int = Field(
        2, ge=1,
        description="Evaluations in a row with val loss rising while train loss falls: stop early, keep the "
        "best checkpoint.",
    )
    lr_tolerance: float = Field(
        0.05, ge=0, description="Relative gap between the logged LR and the plan's schedule that warns."
    )
    min_gpu_utilization: float = Field(
        30.0, ge=0, le=100, description="Mean GPU utilization (%) under which a data-bottleneck warns."
    )


class TrainParams(Section):
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters or full fine-tuning.")
    lora: LoraParams = Field(default_factory=LoraParams, description="LoRA settings (method: lora).")
    lr: float | Literal["auto"] = Field(
        "auto",
        description="Peak learning rate, in (0, 1]; `auto`: from the template by model size and method.",
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
    max_length: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Tokens per sequence; `auto` picks from task.type and the measured lengths."
    )
    long_rows: Literal["truncate", "drop"] = Field(
        "truncate", description="Rows over max_length: cut at the end, or left out; counted either way."
    )
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    packing: bool = Field(
        True,
        description="Pack several rows into each sequence (positions restart per row, no attention across "
        "rows); with packing, effective_batch counts packed sequences.",
    )
    eval_every: Annotated[int, Field(ge=1)] | Literal["epoch"] = Field(
        "epoch", description="Evaluate on val (and checkpoint) every N optimizer steps, or once per epoch."
    )
    early_stopping_patience: int = Field(
        3, ge=1, description="Evaluations without a better val loss before training stops."
    )
    output_dir: Path = Field(
        Path("models/adapter"), description="Where the adapter (or full model) goes, relative to the root."
    )
    resume: Literal["auto", "never"] = Field(
        "auto", description="`auto`: a rerun after a crash resumes from the last checkpoint of the same run."
    )
    oom_retries: int = Field(
        2, ge=0,
        description="On CUDA out-of-memory: halve per_device_batch, double accumulation (same effective "
        "batch), turn on checkpointing and resume; at most this many times.",
    )
    launcher: Literal["auto", "torchrun", "deepspeed"] = Field(
        "auto",
        description="How world_size > 1 starts: `auto` = deepspeed when ZeRO > 0, else torchrun.",
    )
    hostfile: Path | None = Field(
        None, description="DeepSpeed hostfile for many nodes (`host slots=N` per line); None: this machine."
    )
    master_addr: str = Field("127.0.0.1", description="Rendezvous address of node 0 for many nodes.")
    master_port: int = Field(29500, ge=1, le=65535, description="Rendezvous port.")
    health: HealthParams = Field(default_factory=HealthParams, description="Danger-signal thresholds.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="`auto`: bf16 where supported, fp16 on GPUs without bf16, fp32 on CPU."
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="Trade compute for activation memory; `auto` turns it on when the plan needs it."
    )
    zero_stage: Literal["auto", 0, 2, 3] = Field(
        "auto", description="DeepSpeed ZeRO stage; `auto` picks the smallest that fits the device memory."
    )
    backend: Literal["deepspeed", "fsdp"] = Field(
        "deepspeed",
        description="Engine that shards a zero_stage 2/3 run: DeepSpeed ZeRO, or PyTorch FSDP2 (fully_shard "
        "through accelerate: stage 3 = full shard, stage 2 = shard grad op, the same memory per device). "
        "zero_stage 0 is plain DDP with either.",
    )
    device_memory_gib: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto", description="Memory per device the plan must fit; `auto` reads it from the device."
    )
    loss_kernel: Literal["auto", "plain", "chunked", "liger"] = Field(
        "auto",
        description="auto | plain | chunked | liger: how the loss is computed from the last hidden states. "
        "`plain`: the model's loss over full fp32 logits; `chunked`: linear + cross-entropy in chunks of "
        "supervised tokens, logits never whole (pure torch); `liger`: liger-kernel's fused kernel (CUDA, "
        "package installed); `auto`: liger on CUDA if installed, else chunked on CUDA, plain on CPU, under "
        "ZeRO-3 and under train.backend fsdp (zero_stage 2 or 3: the output layer is sharded). chunked / "
        "liger are refused there, and with lm_head among train.lora.target_modules.",
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

    @field_validator("lr")
    @classmethod
    def _sensible_lr(cls, lr: float | str) -> float | str:
        # A negative, zero or huge LR trains nothing or diverges at once: refuse it before any GPU time
        # (the plan only warns about a value outside the template's range, which may be deliberate).
        if lr != "auto" and not 0 < lr <= 1:  # also refuses NaN
            raise ValueError(
                f"{lr} is no learning rate: use `auto` or a number in (0, 1]; sensible peaks are about "
                "1e-4..1e-3 for LoRA (up to ~1e-2 on tiny models) and 1e-6..1e-4 for full fine-tuning"
            )
        return lr

    @model_validator(mode="after")
    def _divisible(self) -> "TrainParams":
        per_step = self.per_device_batch * self.world_size
        if self.effective_batch % per_step:
            raise ValueError(
                f"train.effective_batch ({self.effective_batch}) must be a multiple of per_device_batch x "
                f"world_size ({self.per_device_batch} x {self.world_size} = {per_step})"
            )
        return self

    @model_validator(mode="after")
    def _fsdp_needs_processes(self) -> "TrainParams":
        # FSDP shards across processes: in one there is nothing to shard, and FSDP has no single-process
        # group of its own (DeepSpeed does); refuse it at load time rather than in a worker.
        if self.backend == "fsdp" and self.zero_stage in (2, 3) and self.world_size == 1:
            raise ValueError(
                f"train.backend fsdp with zero_stage {self.zero_stage} needs world_size > 1 (num_processes x "
                "num_nodes); one process shards nothing: use zero_stage 0 or auto"
            )
        return self

    @model_validator(mode="after")
    def _kernel_reads_a_plain_output_layer(self) -> "TrainParams":
        # The chunked / fused loss multiplies by lm_head's weight; an adapter on lm_head adds a delta that
        # weight does not hold. The trainer refuses it too, but only after the model loaded (and the
        # MLflow run began): the common spelling is refused here, before anything runs.
        targets = self.lora.target_modules
        if (self.method == "lora" and self.loss_kernel in ("chunked", "liger") and isinstance(targets, list)
                and "lm_head" in targets):
            raise ValueError(
                f"train.loss_kernel {self.loss_kernel} reads the output layer's weight, and "
                "train.lora.target_modules puts an adapter on lm_head: use loss_kernel plain or auto, or "
                "leave lm_head out of the targets"
            )
        return self

