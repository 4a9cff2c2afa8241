"""`train.loss_kernel`: the chunked linear cross-entropy computes the plain loss and its gradients.

The plain loss materializes `[tokens x vocab]` fp32 logits (the memory and time sink of a packed LoRA
step on a GPU); the chunked one never does. These tests pin that it is the same function: loss and
gradients (hidden states, LoRA weights, a trainable output layer) on real architectures with packed rows
and -100 labels, the same loss curve through the train stage, and a clear refusal of what cannot run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from families import FAMILIES, model_config, train_tokenizer
from helpers import LORA_NO_DROPOUT, repeat_workspace, train_settings
from tuneline.config.loader import Config
from tuneline.config.train import TrainParams
from tuneline.errors import ConfigError
from tuneline.lm.labels import IGNORE_INDEX
from tuneline.train.loss import install_loss_kernel, linear_cross_entropy, resolve_loss_kernel
from tuneline.train.packing import collate_packed, pack_rows


def _plain(hidden: Any, weight: Any, bias: Any, labels: Any, softcap: float | None, scale: float) -> Any:
    import torch

    z = torch.nn.functional.linear(hidden, weight, bias) * scale
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    return torch.nn.functional.cross_entropy(z, labels, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("softcap,scale,with_bias,chunk", [(None, 1.0, False, 7), (3.0, 0.5, True, 4),
                                                           (None, 2.0, False, None), (30.0, 1.0, True, 1000)])
def test_chunked_equals_plain_loss_and_gradients(softcap: float | None, scale: float, with_bias: bool,
                                                 chunk: int | None) -> None:
    """Exact (float64) agreement of loss and gradients w.r.t. hidden states, weight and bias, with ignored
    labels, soft-capping (Gemma), a logit scale (Cohere / Granite) and chunks of every size."""
    import torch

    gen = torch.Generator().manual_seed(0)
    n, h, v = 53, 8, 37
    hidden = torch.randn(n, h, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::3] = IGNORE_INDEX
    leaves = [t for t in (hidden, weight, bias) if t is not None]

    total, count = linear_cross_entropy(hidden, weight, labels, bias=bias, softcap=softcap, scale=scale,
                                        chunk=chunk)
    assert int(count) == int((labels != IGNORE_INDEX).sum())
    got = torch.autograd.grad(total / count, leaves)
    want_loss = _plain(hidden, weight, bias, labels, softcap, scale)
    want = torch.autograd.grad(want_loss, leaves)
    torch.testing.assert_close(total / count, want_loss, rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert got[0][::3].abs().max() == 0  # ignored tokens get no gradient


def test_bf16_inputs_match_plain_within_bf16_rounding() -> None:
    """The GPU dtype path (bf16 hidden states and weight, fp32 softmax, bf16 gradients): the loss of
    transformers' own (bf16 logits upcast to fp32), and gradients no further from the exact (float64) ones
    than the plain loss's bf16 gradients are."""
    import torch

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 16, generator=gen).bfloat16().requires_grad_(True)
    weight = (torch.randn(50, 16, generator=gen) / 4).bfloat16().requires_grad_(True)
    labels = torch.randint(0, 50, (40,), generator=gen)
    labels[:10] = IGNORE_INDEX
    total, count = linear_cross_entropy(hidden, weight, labels, chunk=6)
    assert total.dtype == torch.float32
    got = torch.autograd.grad(total / count, (hidden, weight))
    plain = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hidden, weight).float(), labels)
    want = torch.autograd.grad(plain, (hidden, weight))
    exact_in = (hidden.detach().double().requires_grad_(True), weight.detach().double().requires_grad_(True))
    exact = torch.autograd.grad(torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(*exact_in), labels), exact_in)
    torch.testing.assert_close(total / count, plain, rtol=1e-5, atol=1e-5)
    # The weight's gradient is a sum over chunks, each chunk's part rounded to bf16 by its matmul (plain
    # rounds one matmul): up to ~1.5x plain's error here, bf16 rounding all the same.
    for g, w, e, slack in zip(got, want, exact, (1.5, 2.5), strict=True):
        assert g.dtype == torch.bfloat16
        assert (g.double() - e).abs().max() <= slack * (w.double() - e).abs().max()


def test_frozen_weight_gets_no_gradient_and_no_grad_mode_makes_none() -> None:
    """LoRA freezes the output layer: only the hidden states get a gradient; evaluation builds none."""
    import torch

    hidden = torch.randn(10, 4, requires_grad=True)
    weight = torch.randn(9, 4)  # frozen
    labels = torch.randint(0, 9, (10,))
    total, count = linear_cross_entropy(hidden, weight, labels, chunk=3)
    (total / count).backward()
    assert hidden.grad is not None and weight.grad is None
    with torch.no_grad():
        again, _ = linear_cross_entropy(hidden, weight, labels, chunk=3)
    assert not again.requires_grad and torch.allclose(again, total.detach())


def _packed_batch(vocab: int, seed: int) -> dict[str, Any]:
    """Three packed sequences of rows with prompt tokens (-100) and answers, right-padded."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(9):
        n = rng.randint(6, 20)
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        cut = rng.randint(1, n - 2)
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * cut + ids[cut:], "row_id": str(i)})
    packed = pack_rows(rows, max_length=40)
    assert len(packed) >= 3 and any(len(p["row_ids"]) > 1 for p in packed)
    return collate_packed(packed, pad_id=0)


def _family_model(name: str, method: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from tuneline.train.lora import prepare_model

    family = FAMILIES[name]
    config = model_config(family, train_tokenizer(family))
    config.use_cache = False
    if name == "gemma2":
        config.final_logit_softcapping = 5.0  # small enough that the tanh bends the tiny model's logits
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = prepare_model(base, TrainParams(method=method, lora={"r": 4, "alpha": 8, "dropout": 0.0,
                                                                 "target_modules": "all-linear"}))
    with torch.no_grad():  # lora_B starts at zero: give every LoRA weight a gradient to compare
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    return model


def _loss_and_grads(model: Any, batch: dict, kernel: Any, num_items: Any) -> tuple[Any, Any, dict]:
    from contextlib import nullcontext

    hidden: list[Any] = []
    norm = getattr(model, "get_base_model", lambda: model)().model.norm

    def keep(module: Any, args: Any, out: Any) -> None:
        out.retain_grad()
        hidden.append(out)

    handle = norm.register_forward_hook(keep)
    model.zero_grad(set_to_none=True)
    try:
        with kernel.computing_loss() if kernel is not None else nullcontext():
            out = model(**batch, num_items_in_batch=num_items)
        out.loss.backward()
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return out, hidden[0].grad.clone(), grads


@pytest.mark.parametrize("name", ["llama3_1", "qwen2_5", "gemma2"])
@pytest.mark.parametrize("method", ["lora", "full"])
def test_kernel_on_real_architectures_matches_plain(name: str, method: str) -> None:
    """Llama, Qwen2 (tied output layer) and Gemma-2 (final soft-capping) with packed rows and -100 labels:
    the installed chunked kernel gives the plain loss and the same gradients w.r.t. the final hidden states
    and every trainable weight (LoRA's; under full fine-tuning also the output layer / tied embedding),
    with the trainer's count of supervised tokens and without it (a mean)."""
    import torch

    model = _family_model(name, method)
    batch = _packed_batch(model.config.vocab_size, seed=1)
    supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    for num_items in (None, torch.tensor(supervised + 5)):  # + 5: as if accumulating with another batch
        plain, plain_hidden, plain_grads = _loss_and_grads(model, batch, None, num_items)
        kernel = install_loss_kernel(model, "chunked")
        try:
            chunked, hidden, grads = _loss_and_grads(model, batch, kernel, num_items)
            assert chunked.logits.shape[1] == 0  # the full logits were never made
            # Installed but outside the trainer's loss computation: the model is itself again.
            with torch.no_grad():
                outside = model(**batch, num_items_in_batch=num_items)
            assert outside.logits.shape == plain.logits.shape
            torch.testing.assert_close(outside.loss, plain.loss.detach())
        finally:
            kernel.remove()
        torch.testing.assert_close(chunked.loss, plain.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hidden, plain_hidden, rtol=1e-4, atol=1e-7)
        assert grads.keys() == plain_grads.keys()
        for key, g in grads.items():
            torch.testing.assert_close(g, plain_grads[key], rtol=1e-4, atol=1e-6, msg=key)
    if method == "full":
        assert any("lm_head" in k or "embed_tokens" in k for k in grads)


def test_resolve_loss_kernel() -> None:
    """`auto` keeps CPU runs on the plain loss (the demo's numbers do not move) and ZeRO-3 on plain; chunked
    runs anywhere it is asked for, except with a sharded output layer."""
    assert TrainParams().loss_kernel == "auto"
    assert resolve_loss_kernel("auto", cuda=False) == "plain"
    assert resolve_loss_kernel("auto", cuda=True, sharded=True) == "plain"
    assert resolve_loss_kernel("plain", cuda=True) == "plain"
    assert resolve_loss_kernel("chunked", cuda=False) == "chunked"
    with pytest.raises(ConfigError, match="train.loss_kernel: chunked .* ZeRO-3"):
        resolve_loss_kernel("chunked", cuda=True, sharded=True)


def test_fsdp_sharding_counts_as_a_sharded_output_layer() -> None:
    """FSDP's shard grad op (zero_stage 2) and full shard (3) shard the output layer too: a named kernel is
    refused there, `auto` stays plain; DeepSpeed ZeRO-2 keeps whole weights. (Before: only ZeRO-3 counted.)"""
    from tuneline.train.loss import loss_kernel_for

    for stage in (2, 3):
        with pytest.raises(ConfigError, match="train.backend fsdp"):
            loss_kernel_for("chunked", stage, "fsdp")
        assert loss_kernel_for("auto", stage, "fsdp") == "plain"
    assert loss_kernel_for("chunked", 2, "deepspeed") == "chunked"
    assert loss_kernel_for("chunked", 0, "fsdp") == "chunked"


def _liger_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


@pytest.mark.skipif(_liger_installed(), reason="liger-kernel is installed here")
def test_auto_on_cuda_without_liger_is_chunked() -> None:
    assert resolve_loss_kernel("auto", cuda=True) == "chunked"


def _stage(root: Path, base: Path, kernel: str) -> dict:
    from tuneline.train.train import run

    layout = repeat_workspace(root, train=24, val=6)
    settings = train_settings(root, base, effective_batch=4, per_device_batch=2, packing=True, max_length=64,
                              loss_kernel=kernel, lora=LORA_NO_DROPOUT)
    return run(Config.model_validate(settings), layout)


@pytest.mark.integration
def test_train_stage_with_chunked_loss_gives_the_plain_loss_curve(tiny_base: Path, tmp_path: Path) -> None:
    """The train stage with `loss_kernel: chunked` (packed rows, LoRA, CPU) logs the plain run's training
    and validation losses step for step, and says which kernel computed them."""
    import mlflow

    plain = _stage(tmp_path / "plain", tiny_base, "plain")
    chunked = _stage(tmp_path / "chunked", tiny_base, "chunked")

    def curve(root: Path, key: str) -> list[float]:
        summary = json.loads((root / "models" / "adapter" / "train_summary.json").read_text())
        return [h[key] for h in summary["history"] if key in h]

    for key in ("train_loss", "val_loss", "grad_norm"):
        want, got = curve(tmp_path / "plain", key), curve(tmp_path / "chunked", key)
        assert len(got) == len(want) > 1, key
        assert got == pytest.approx(want, rel=2e-4), key
    assert chunked["steps"] == plain["steps"]
    assert chunked["val_loss_best"] == pytest.approx(plain["val_loss_best"], rel=1e-4)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'chunked'}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.data.tags["loss_kernel"] == "chunked"


@pytest.mark.skipif(_liger_installed(), reason="liger-kernel is installed here")
def test_liger_without_the_package_is_refused_naming_the_setting(tiny_base: Path, tmp_path: Path) -> None:
    """Asking for liger where liger-kernel is missing stops the stage before training, with the key and
    the fix in the message (not an ImportError deep inside the first step)."""
    with pytest.raises(ConfigError, match=r"train\.loss_kernel: liger needs the liger-kernel package") as err:
        _stage(tmp_path, tiny_base, "liger")
    assert "pip install liger-kernel" in str(err.value)
    assert not (tmp_path / "models" / "adapter").exists() and not (tmp_path / "mlflow.db").exists()


def test_adapter_on_the_output_layer_is_refused_or_left_plain() -> None:
    """LoRA on lm_head adds a delta the layer's weight does not hold: a named kernel is refused (naming the
    setting), `auto` keeps the plain loss instead of computing a wrong one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    family = FAMILIES["llama3_1"]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config(family, train_tokenizer(family)))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "lm_head"], task_type="CAUSAL_LM"))
    refused = r"train\.loss_kernel: chunked needs a plain linear output layer"
    with pytest.raises(ConfigError, match=refused) as err:
        install_loss_kernel(model, "chunked")
    # peft's LoRA layer is also named `Linear`: "this model's is Linear" told the reader nothing
    assert "peft." in str(err.value) and "target_modules" in str(err.value)
    assert install_loss_kernel(model, "chunked", required=False) is None


@pytest.mark.parametrize("kernel", ["chunked", "liger"])
def test_named_kernel_with_lora_on_lm_head_is_refused_at_load(kernel: str) -> None:
    """chunked / liger with lm_head among the LoRA targets was accepted at load and refused only inside the
    trainer, after the model loaded and the MLflow run began; now the config says so, naming both keys."""
    from tuneline.config.loader import load_config

    with pytest.raises(ConfigError, match=r"train\.loss_kernel .*train\.lora\.target_modules"):
        load_config(None, [f"train.loss_kernel={kernel}", "train.lora.target_modules=[q_proj,lm_head]"])
    # auto keeps the plain loss for such a model (no refusal), and full fine-tuning has no adapter
    load_config(None, ["train.loss_kernel=auto", "train.lora.target_modules=[q_proj,lm_head]"])
    load_config(None, [f"train.loss_kernel={kernel}", "train.method=full",
                       "train.lora.target_modules=[q_proj,lm_head]"])


def test_loss_kernel_help_names_every_case_auto_keeps_plain() -> None:
    """The help of train.loss_kernel said `auto` keeps the plain loss "on CPU and under ZeRO-3"; the code
    also keeps it under train.backend fsdp at zero_stage 2 (`loss_kernel_for`)."""
    from tuneline.config.train import TrainParams
    from tuneline.train.loss import loss_kernel_for

    assert loss_kernel_for("auto", 2, "fsdp") == "plain"
    with pytest.raises(ConfigError):
        loss_kernel_for("chunked", 2, "fsdp")
    help_text = TrainParams.model_fields["loss_kernel"].description
    assert "ZeRO-3" in help_text and "fsdp" in help_text and "target_modules" in help_text
