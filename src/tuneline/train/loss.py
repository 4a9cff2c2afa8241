"""The training loss without the whole logits: a chunked linear cross-entropy, or liger-kernel's fused one.

The plain causal-LM loss computes `[tokens x vocab]` logits, upcasts them to fp32 and takes a
cross-entropy over them: at 16k tokens and a 32k vocabulary that is 2 GiB of logits plus as much again
for their gradient, and most of the time of a small model's step. `train.loss_kernel` picks how it is
computed instead:

- `plain`: the model's own loss (what transformers does);
- `chunked`: `linear_cross_entropy` here, pure torch: the supervised tokens only (prompt tokens carry
  label -100 and are skipped, not multiplied), in chunks of tokens whose logits are about the size of
  the hidden states; each chunk's gradient (w.r.t. the hidden states and, when it trains, the output
  layer's weight) is computed as the chunk's loss is, so the backward pass only scales them;
- `liger`: liger-kernel's fused linear cross-entropy (Triton, CUDA only) on the same selected tokens;
- `auto`: liger on a CUDA GPU when liger-kernel is installed, else chunked on CUDA, plain on CPU (so
  CPU runs compute exactly what they always did) and plain under ZeRO-3 and FSDP sharding (the sharded
  output weight exists whole only inside the layer's own forward).

`LossKernel` installs a kernel on a transformers causal LM without patching its code: a forward
pre-hook on the output layer takes its input (the final hidden states, after the last norm) and hands
the layer an empty slice, so the model builds `[batch, 0, vocab]` logits; the model then calls its
`loss_function`, which the kernel has replaced by one computing the loss from the hidden states it
took. Both act only inside `computing_loss()` (the trainer's loss computation): generation, or a model
called outside the trainer, sees the usual logits and loss. Logit post-processing the model does after
the output layer is applied to each chunk: Gemma's final soft-capping, Cohere's `logit_scale`,
Granite's `logits_scaling`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from tuneline.errors import ConfigError

logger = logging.getLogger(__name__)

SETTING = "train.loss_kernel"
IGNORE_INDEX = -100


def liger_loss() -> Any:
    """liger-kernel's functional fused linear cross-entropy, imported on demand.

    Raises:
        ConfigError: liger-kernel (or the Triton it needs) cannot be imported.
    """
    try:
        from liger_kernel.transformers.functional import (  # lazy: optional liger-kernel
            liger_fused_linear_cross_entropy,
        )
    except ImportError as exc:
        raise ConfigError(
            f"{SETTING}: liger needs the liger-kernel package, which cannot be imported ({exc}); "
            "`pip install liger-kernel`, or use auto, chunked or plain"
        ) from None
    return liger_fused_linear_cross_entropy


def _liger_importable() -> bool:
    try:
        liger_loss()
    except ConfigError:
        return False
    return True


def resolve_loss_kernel(setting: str, *, cuda: bool, sharded: bool = False) -> str:
    """The kernel `train.loss_kernel` means on this machine: `plain`, `chunked` or `liger`.

    Args:
        setting: `auto`, `plain`, `chunked` or `liger`.
        cuda: a CUDA GPU trains.
        sharded: the output layer's weight is sharded across processes (ZeRO-3, FSDP).

    Raises:
        ConfigError: liger requested without liger-kernel or without a CUDA GPU; chunked or liger
            requested with a sharded output layer.
    """
    if setting == "plain":
        return "plain"
    if setting == "auto":
        if not cuda or sharded:
            return "plain"
        return "liger" if _liger_importable() else "chunked"
    if setting not in ("chunked", "liger"):
        raise ConfigError(f"{SETTING}: {setting!r} is not one of auto, plain, chunked, liger")
    if sharded:
        raise ConfigError(
            f"{SETTING}: {setting} needs the output layer's whole weight on every device, and ZeRO-3 "
            "(or FSDP) shards it; use auto or plain with train.zero_stage 3 or train.backend fsdp"
        )
    if setting == "liger":
        liger_loss()
        if not cuda:
            raise ConfigError(f"{SETTING}: liger runs Triton kernels on a CUDA GPU and none is available; "
                              "use chunked or plain")
    return setting


def loss_kernel_for(setting: str, zero_stage: int, backend: str = "deepspeed") -> str:
    """`resolve_loss_kernel` for this process's device and a plan's ZeRO stage and backend.

    The output layer counts as sharded under ZeRO-3 and under any FSDP sharding (2: shard grad op, 3: full
    shard): FSDP2 hands the layer's weight around as a DTensor, which the chunked and fused kernels do not
    read (their gradients would bypass FSDP's reduce-scatter).
    """
    sharded = zero_stage == 3 or (backend == "fsdp" and zero_stage > 0)
    return resolve_loss_kernel(setting, cuda=torch.cuda.is_available(), sharded=sharded)


def chunk_tokens(tokens: int, vocab: int, hidden: int) -> int:
    """Tokens per chunk: the chunk's logits are about as large as all the hidden states (as liger sizes
    its chunks), so the loss needs a few times the hidden states' memory, not the logits'."""
    chunks = max(1, math.ceil(vocab / max(1, hidden)))
    return max(1, math.ceil(tokens / chunks))


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    labels: Any,
    *,
    bias: Any = None,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
    scale: float = 1.0,
    chunk: int | None = None,
) -> tuple[Any, Any]:
    """Summed cross-entropy of `softcap(scale * (hidden @ weight.T + bias))` against `labels`, in chunks.

    Args:
        hidden: `[tokens, hidden]` (labels already aligned: shifted for a causal LM).
        weight: the output layer's `[vocab, hidden]` weight (frozen under LoRA: no gradient is made).
        labels: `[tokens]` target ids; `ignore_index` marks tokens without a target.
        chunk: tokens per chunk; None: `chunk_tokens`.

    Returns:
        (sum of the per-token losses in fp32, number of supervised tokens), both 0-d tensors; divide the
        sum by the count (a mean) or by the tokens of the whole accumulated batch.
    """
    labels = labels.reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    keep = (labels != ignore_index).nonzero().squeeze(1)
    count = keep.new_tensor(keep.numel())
    # Only supervised tokens are multiplied by the output layer; index_select's backward scatters the
    # gradient back into the prompt tokens' zeros.
    selected, targets = hidden.index_select(0, keep), labels.index_select(0, keep)
    grad = torch.is_grad_enabled()
    needs = (grad and hidden.requires_grad, grad and weight.requires_grad,
             grad and bias is not None and bias.requires_grad)
    size = chunk or chunk_tokens(max(1, keep.numel()), weight.shape[0], weight.shape[1])
    total = _chunked_function().apply(selected, weight, bias, targets, softcap, scale, size, needs)
    return total, count


@functools.cache
def _chunked_function() -> Any:
    """The autograd function, made on first use (the library imports torch lazily)."""
    class ChunkedLinearCE(torch.autograd.Function):
        """Forward computes each chunk's loss and its gradient at once (3 matmuls, no recomputation);
        backward scales the stored gradients by the incoming one."""

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, bias: Any, targets: Any, softcap: float | None,
                    scale: float, chunk: int, needs: tuple[bool, bool, bool]) -> Any:
            acc = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
            total = torch.zeros((), dtype=acc, device=hidden.device)
            g_hidden = torch.zeros_like(hidden) if needs[0] else None
            g_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if needs[1] else None
            g_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if needs[2] else None
            rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
            for start in range(0, hidden.shape[0], chunk):
                h, y = hidden[start:start + chunk], targets[start:start + chunk]
                z = torch.nn.functional.linear(h, weight, bias).to(acc)  # the output layer, upcast as HF does
                if scale != 1.0:
                    z.mul_(scale)
                capped = None
                if softcap is not None:
                    capped = torch.tanh(z / softcap)
                    z = capped * softcap
                lse = torch.logsumexp(z, dim=-1)
                total += (lse - z.gather(1, y.unsqueeze(1)).squeeze(1)).sum()
                if not any(needs):
                    continue
                dz = z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                dz[rows[: len(y)], y] -= 1.0
                if capped is not None:
                    dz.mul_(1.0 - capped * capped)
                if scale != 1.0:
                    dz.mul_(scale)
                if g_bias is not None:
                    g_bias += dz.sum(0)
                dz = dz.to(hidden.dtype)
                if g_hidden is not None:
                    g_hidden[start:start + chunk] = dz @ weight
                if g_weight is not None:
                    g_weight += (dz.t() @ h).to(acc)
            ctx.save_for_backward(*(g for g in (g_hidden, g_weight, g_bias) if g is not None))
            ctx.present = tuple(g is not None for g in (g_hidden, g_weight, g_bias))
            ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
            return total

        @staticmethod
        def backward(ctx: Any, grad_total: Any) -> Any:
            saved = iter(ctx.saved_tensors)
            grads = [(next(saved) * grad_total).to(dtype) if present else None
                     for present, dtype in zip(ctx.present, ctx.dtypes, strict=True)]
            return (*grads, None, None, None, None, None)

    return ChunkedLinearCE


def _causal_lm(model: Any) -> Any:
    """The transformers model under peft / wrapper layers (the one holding `loss_function`)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class LossKernel:
    """A chunked or liger loss installed on a causal LM (see the module docstring)."""

    def __init__(self, model: Any, kind: str) -> None:
        if kind not in ("chunked", "liger"):
            raise ValueError(f"no loss kernel to install for {kind!r}")
        self.kind = kind
        self.model = _causal_lm(model)
        head = self.model.get_output_embeddings()
        # A LoRA- or otherwise-wrapped output layer computes more than its weight says.
        if type(head) is not torch.nn.Linear:
            # the qualified name: peft's LoRA layer is also called `Linear`
            raise ConfigError(f"{SETTING}: {kind} needs a plain linear output layer; this model's is "
                              f"{type(head).__module__}.{type(head).__qualname__} (an adapter on the output "
                              "layer? see train.lora.target_modules): use plain")
        self.head = head
        config = self.model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = float(getattr(config, "logit_scale", None) or 1.0) / float(
            getattr(config, "logits_scaling", None) or 1.0)
        self._liger = liger_loss() if kind == "liger" else None
        self._plain = self.model.loss_function
        self._armed = False
        self._hidden: Any = None
        self.model.loss_function = self._loss
        self._hook = head.register_forward_pre_hook(self._take_hidden)

    def remove(self) -> None:
        """Put the model back as it was."""
        self._hook.remove()
        self.model.loss_function = self._plain

    @contextmanager
    def computing_loss(self) -> Iterator[None]:
        """While open, a forward pass with labels computes its loss with this kernel."""
        self._armed = True
        try:
            yield
        finally:
            self._armed, self._hidden = False, None

    def _take_hidden(self, module: Any, args: tuple) -> tuple | None:
        if not self._armed:
            return None
        self._hidden = args[0]
        return (args[0].narrow(-2, 0, 0), *args[1:])

    def _loss(self, logits: Any, labels: Any, vocab_size: int | None = None, num_items_in_batch: Any = None,
              ignore_index: int = IGNORE_INDEX, shift_labels: Any = None, **kwargs: Any) -> Any:
        hidden, self._hidden = self._hidden, None
        if hidden is None:  # the model ran outside `computing_loss`: its logits are whole
            return self._plain(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                               ignore_index=ignore_index, shift_labels=shift_labels, **kwargs)
        if shift_labels is None:  # tokens < n predict token n; the last predicts nothing
            shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        weight, bias = self.head.weight, self.head.bias
        if self.kind == "liger":
            total, count = self._liger_sum(hidden, weight, bias, shift_labels, ignore_index)
        else:
            total, count = linear_cross_entropy(hidden, weight, shift_labels, bias=bias,
                                                ignore_index=ignore_index, softcap=self.softcap,
                                                scale=self.scale)
        if num_items_in_batch is not None:  # the trainer's count over the whole accumulated batch
            if torch.is_tensor(num_items_in_batch):
                num_items_in_batch = num_items_in_batch.to(total.device)
            return total / num_items_in_batch
        return total / count  # a mean over supervised tokens (0/0 = nan, as the plain loss gives)

    def _liger_sum(self, hidden: Any, weight: Any, bias: Any, labels: Any, ignore_index: int) -> tuple:
        labels = labels.reshape(-1).to(hidden.device)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        keep = (labels != ignore_index).nonzero().squeeze(1)
        selected = hidden.index_select(0, keep)
        if not keep.numel():  # nothing supervised: a zero sum (the plain mean would be 0/0 as well)
            return selected.sum().float() * 0.0, keep.new_tensor(0)
        if self.scale != 1.0:  # scale * (h W^T + b) = (scale h) W^T + scale b
            selected = selected * self.scale
            bias = bias * self.scale if bias is not None else None
        out = self._liger(selected, weight, labels.index_select(0, keep), bias=bias,
                          ignore_index=ignore_index, reduction="sum", softcap=self.softcap)
        out = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)  # versions differ
        return out.float(), keep.new_tensor(keep.numel())


def install_loss_kernel(model: Any, kind: str, *, required: bool = True) -> LossKernel | None:
    """Install `kind` (`plain`, `chunked` or `liger`, as resolved) on `model`; None for plain.

    Args:
        required: the setting named the kernel; False (`auto`): a model it cannot serve keeps the plain
            loss, with a log line saying why.

    Raises:
        ConfigError: (required) the output layer is not a plain linear layer, or liger-kernel cannot be
            imported.
    """
    if kind == "plain":
        return None
    try:
        kernel = LossKernel(model, kind)
    except ConfigError as exc:
        if required:
            raise
        logger.info("train: the plain loss (%s)", exc)
        return None
    logger.info("train: loss computed by the %s linear cross-entropy (no full logits)", kind)
    return kernel
