"""The pre-flight plan: templates, batch math, max length, memory and the fit decision (meta device only)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest

from tuneline.config import Config
from tuneline.errors import ConfigError
from tuneline.train import PlanError, make_plan, render_plan
from tuneline.train.memory import GIB, lora_trainable, model_shape
from tuneline.train.templates import percentile, pick_lr, pick_max_length

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

LLAMA2_7B = 6_738_415_616


@pytest.fixture(scope="module")
def llama7b() -> Any:
    return transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )


@pytest.fixture(scope="module")
def tiny() -> Any:
    return transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256
    )


def cfg_of(**train: Any) -> Config:
    task = train.pop("task", "dialogue")
    return Config.model_validate({"task": {"type": task}, "train": train})


# ---- parameter counts ----


def test_llama2_7b_lora_q_v_and_bf16_weights(llama7b: Any) -> None:
    plan = make_plan(cfg_of(precision="bf16"), llama7b)
    assert plan.params == LLAMA2_7B
    assert plan.trainable_params == 4_194_304
    assert plan.lora_breakdown == {"q_proj": 2_097_152, "v_proj": 2_097_152}
    assert plan.trainable_percent == pytest.approx(100 * 4_194_304 / LLAMA2_7B)
    base_bf16 = LLAMA2_7B * 2 / GIB
    assert round(base_bf16, 1) == 12.6
    # frozen base in bf16 plus fp32 adapters
    assert plan.memory.weights == pytest.approx(base_bf16 + 4_194_304 * 4 / GIB)


def test_all_linear_and_full(llama7b: Any) -> None:
    shape = model_shape(llama7b)
    total, parts = lora_trainable(shape, 8, "all-linear")
    # per layer: 4 attention (4096->4096), gate/up (4096->11008), down (11008->4096); lm_head excluded
    assert total == 32 * 8 * (4 * 8192 + 2 * 15104 + 15104) == 19_988_480
    assert "lm_head" not in parts and set(parts) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    full = make_plan(cfg_of(method="full"), llama7b)
    assert full.trainable_params == LLAMA2_7B and full.lora_breakdown == {}


def test_unknown_target_module_is_a_config_error(tiny: Any) -> None:
    with pytest.raises(ConfigError, match="c_attn"):
        make_plan(Config.model_validate({"train": {"lora": {"target_modules": ["q_proj", "c_attn"]}}}), tiny)


# Published configs (the size fields of each repository's config.json on the Hugging Face hub, copied
# here; nothing is downloaded) and the parameter counts their model cards / safetensors metadata state.
# Regression: the model was built under accelerate.init_empty_weights, which un-ties lm_head from the
# input embeddings, so a tied model (Qwen2.5-0.5B, Gemma-2-2b) counted its vocabulary matrix twice.
PUBLISHED: dict[str, tuple[dict[str, Any], int]] = {
    # https://huggingface.co/Qwen/Qwen2.5-0.5B/blob/main/config.json
    "Qwen2.5-0.5B": (
        dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
             max_position_embeddings=32768, tie_word_embeddings=True),
        494_032_768,
    ),
    # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json
    "Qwen2.5-7B": (
        dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
             max_position_embeddings=131072, tie_word_embeddings=False),
        7_615_616_512,
    ),
    # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json
    "Llama-3.1-8B": (
        dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
             max_position_embeddings=131072, tie_word_embeddings=False),
        8_030_261_248,
    ),
    # https://huggingface.co/mistralai/Mistral-7B-v0.3/blob/main/config.json (vocabulary grown to 32768)
    "Mistral-7B-v0.3": (
        dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=32768,
             max_position_embeddings=32768, tie_word_embeddings=False),
        7_248_023_552,
    ),
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json (vocabulary 32000)
    "Mistral-7B-v0.1": (
        dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
             max_position_embeddings=32768, tie_word_embeddings=False),
        7_241_732_096,
    ),
    # https://huggingface.co/google/gemma-2-2b/blob/main/config.json (tied: Gemma2Config's default)
    "gemma-2-2b": (
        dict(model_type="gemma2", hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
             num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000,
             max_position_embeddings=8192, tie_word_embeddings=True),
        2_614_341_888,
    ),
    # https://huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/config.json
    "Phi-3-mini-4k": (
        dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
             max_position_embeddings=4096, tie_word_embeddings=False),
        3_821_079_552,
    ),
}


def published(name: str) -> Any:
    fields, _ = PUBLISHED[name]
    fields = dict(fields)
    return transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_params_match_published_counts(name: str) -> None:
    config, expected = published(name), PUBLISHED[name][1]
    assert model_shape(config).params == expected
    # the plan's count is the one a real (meta-device) build of the same config gives
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_tied_embeddings_pick_the_template_of_the_true_size() -> None:
    """Qwen2.5-0.5B was planned as a 0.63B model: a smaller LR step than its 0.494B deserves."""
    plan = make_plan(cfg_of(precision="bf16", method="full"), published("Qwen2.5-0.5B"))
    assert plan.params == 494_032_768
    assert "0.494B" in plan.template_row
    assert plan.lr == pytest.approx(pick_lr("full", 494_032_768).lr)
    assert plan.lr > pick_lr("full", 630_167_424).lr
    gemma = make_plan(cfg_of(precision="bf16", method="full"), published("gemma-2-2b"))
    assert gemma.params == 2_614_341_888 and "2.61B" in gemma.template_row


# ---- templates ----


def test_template_rows_at_anchor_sizes() -> None:
    lora7 = pick_lr("lora", LLAMA2_7B)
    assert (lora7.row, lora7.lr, lora7.warmup, lora7.schedule) == ("lora 7B", 2e-4, 0.10, "cosine")
    full7 = pick_lr("full", LLAMA2_7B)
    assert (full7.lr_min, full7.lr_max, full7.warmup, full7.schedule) == (2e-5, 5e-5, 0.10, "cosine")
    full13 = pick_lr("full", 13_015_864_320)
    assert (full13.row, full13.lr_min, full13.lr_max, full13.warmup, full13.schedule) == (
        "full 13B",
        1e-5,
        3e-5,
        0.05,
        "linear",
    )
    full70 = pick_lr("full", 68_976_648_192)
    assert (full70.row, full70.lr_min, full70.lr_max, full70.warmup, full70.schedule) == (
        "full 70B",
        5e-6,
        1e-5,
        0.01,
        "constant",
    )
    assert pick_lr("lora", 68_976_648_192).lr == 1e-4


def test_template_between_and_outside_anchors(tiny: Any) -> None:
    mid = pick_lr("full", 30_000_000_000)
    t = math.log(30 / 13) / math.log(70 / 13)
    assert "13B-70B" in mid.row and f"t={t:.2f}" in mid.row
    assert mid.lr_max == pytest.approx(math.exp(math.log(3e-5) + t * math.log(1e-5 / 3e-5)))
    assert 1e-5 < mid.lr_max < 3e-5 and 5e-6 < mid.lr_min < 1e-5
    assert mid.warmup == pytest.approx(0.05 + t * (0.01 - 0.05))
    assert mid.schedule == "linear"  # t < 0.5: the nearer (13B) anchor's schedule
    assert pick_lr("full", 60_000_000_000).schedule == "constant"
    big = pick_lr("full", 400_000_000_000)
    assert "clamped" in big.row and big.lr == 5e-6
    plan = make_plan(cfg_of(), tiny)  # a 60k-parameter model: the 7B row, lr raised x30 (the cap)
    assert "capped" in plan.template_row and plan.lr == pytest.approx(6e-3) and plan.schedule == "cosine"
    one_b = pick_lr("lora", 1_000_000_000)  # (7 / 1)^0.4 = 2.18: below the cap
    assert one_b.lr == pytest.approx(2e-4 * 7**0.4) and one_b.lr_max == pytest.approx(3e-4 * 7**0.4)


def test_template_can_be_pinned(tiny: Any) -> None:
    plan = make_plan(cfg_of(template="70b"), tiny)
    assert plan.lr == 1e-4 and plan.schedule == "constant" and "pinned" in plan.template_row


def test_explicit_lr_out_of_range_warns(llama7b: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tuneline.train.plan"):
        plan = make_plan(cfg_of(method="full", lr=1e-3, precision="bf16"), llama7b)
    assert plan.lr == 1e-3 and plan.lr_from == "config"
    assert any("outside the template range" in w for w in plan.warnings)
    assert any("outside the template range" in r.getMessage() for r in caplog.records)
    assert "outside the template range" in render_plan(plan)
    ok = make_plan(cfg_of(method="full", lr=3e-5, precision="bf16"), llama7b)
    assert not any("outside" in w for w in ok.warnings)


# ---- max length ----


def test_max_length_auto_by_task(tiny: Any) -> None:
    assert pick_max_length("classification").max_length == 512
    assert pick_max_length("ner").max_length == 512
    assert pick_max_length("instruction").max_length == 1024
    assert pick_max_length("tool_use").max_length == 2048
    assert pick_max_length("long_document").max_length == 4096
    assert make_plan(cfg_of(task="classification"), tiny).max_length == 512


def test_max_length_auto_by_percentile() -> None:
    lengths = list(range(1, 101))  # p99 (nearest rank) = 99
    assert percentile(lengths, 99) == 99
    pick = pick_max_length("dialogue", [300] * 99 + [5000])
    assert (pick.p99, pick.max_length, pick.truncated_rows, pick.total_rows) == (300, 512, 1, 100)
    capped = pick_max_length("dialogue", [3000] * 100)  # the task's cap wins over the percentile
    assert capped.max_length == 2048 and capped.truncated_rows == 100
    assert pick_max_length("long_document", [10_000] * 50).max_length == 16384
    assert pick_max_length("long_document", [10_000] * 50, model_max=4096).max_length == 4096
    explicit = pick_max_length("dialogue", [100, 700], explicit=512)
    assert explicit.max_length == 512 and explicit.truncated_rows == 1


def test_plan_reports_truncation(tiny: Any) -> None:
    plan = make_plan(cfg_of(), tiny, token_lengths=[100] * 198 + [900, 4000])
    assert plan.length_p99 == 100
    assert plan.max_length == 128 and plan.truncated_rows == 2 and plan.measured_rows == 200
    assert any("2 of 200 rows exceed" in w for w in plan.warnings)


# ---- batch, memory and the fit decision ----


def test_batch_math(tiny: Any) -> None:
    plan = make_plan(cfg_of(effective_batch=64, per_device_batch=4, num_processes=4, num_nodes=2), tiny)
    assert (plan.per_device_batch, plan.world_size, plan.grad_accum) == (4, 8, 2)
    assert plan.per_device_batch * plan.world_size * plan.grad_accum == plan.effective_batch == 64


def test_zero_stage_follows_device_memory(llama7b: Any) -> None:
    cfg = cfg_of(method="full", precision="bf16", num_processes=8, effective_batch=32, per_device_batch=4)
    roomy = make_plan(cfg, llama7b, device_memory_gib=80)
    assert (roomy.zero_stage, roomy.gradient_checkpointing, roomy.fits) == (2, False, True)
    tight = make_plan(cfg, llama7b, device_memory_gib=24)
    assert (tight.zero_stage, tight.gradient_checkpointing, tight.fits) == (3, True, True)
    assert tight.memory.total <= 24 * 0.9 < roomy.memory.total
    # full fine-tuning under mixed precision: 16 bytes per parameter before partitioning
    stage0 = next(m for m in roomy.options if m.zero_stage == 0)
    assert stage0.weights + stage0.gradients + stage0.optimizer == pytest.approx(16 * LLAMA2_7B / GIB)
    assert stage0.optimizer == pytest.approx(12 * LLAMA2_7B / GIB)
    assert tight.per_device_batch == 4  # nothing adjusted: only `auto` knobs were resolved
    assert tight.adjustments == []


def test_checkpointing_cuts_activations(llama7b: Any) -> None:
    plan = make_plan(
        cfg_of(precision="bf16", effective_batch=16, per_device_batch=4), llama7b, device_memory_gib=24
    )
    assert plan.gradient_checkpointing and plan.fits and plan.zero_stage == 0
    off = next(m for m in plan.options if not m.gradient_checkpointing)
    assert off.activations > 5 * plan.memory.activations


def test_refuse_vs_adjust_keeps_effective_batch(llama7b: Any) -> None:
    settings = {
        "precision": "bf16",
        "effective_batch": 32,
        "per_device_batch": 8,
        "max_length": 1024,
        "gradient_checkpointing": "off",
    }
    with pytest.raises(PlanError, match="on_plan_too_big: adjust"):
        make_plan(cfg_of(**settings), llama7b, device_memory_gib=24)
    plan = make_plan(cfg_of(**settings, on_plan_too_big="adjust"), llama7b, device_memory_gib=24)
    assert plan.fits and plan.memory.total <= 24 * 0.9
    assert plan.per_device_batch < 8 and not plan.gradient_checkpointing
    assert plan.per_device_batch * plan.grad_accum * plan.world_size == 32 == plan.effective_batch
    assert plan.adjustments and "effective batch stays 32" in plan.adjustments[0]


def test_adjust_enables_checkpointing_then_zero(llama7b: Any) -> None:
    cfg = cfg_of(
        method="full",
        precision="bf16",
        num_processes=8,
        effective_batch=32,
        per_device_batch=4,
        gradient_checkpointing="off",
        zero_stage=2,
        on_plan_too_big="adjust",
    )
    plan = make_plan(cfg, llama7b, device_memory_gib=24)
    assert plan.fits and plan.effective_batch == 32
    assert plan.gradient_checkpointing and plan.zero_stage == 3
    assert any("zero_stage 2 -> 3" in a for a in plan.adjustments)
    assert any("gradient_checkpointing off -> on" in a for a in plan.adjustments)


def test_nothing_fits_is_refused_even_with_adjust(llama7b: Any) -> None:
    with pytest.raises(PlanError, match="more GPUs"):
        make_plan(
            cfg_of(method="full", precision="bf16", on_plan_too_big="adjust"), llama7b, device_memory_gib=24
        )


def test_precision_auto_on_cpu_is_fp32(tiny: Any) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    plan = make_plan(cfg_of(), tiny)
    assert plan.precision == "fp32"
    assert plan.device_memory_gib == "cpu" and plan.fits is None


# ---- model config sources and output ----


def test_model_config_from_dir_file_and_missing(tiny: Any, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path / "m")
    by_dir = make_plan(Config.model_validate({"model": {"name_or_path": str(tmp_path / "m")}}))
    by_file = make_plan(Config(), tmp_path / "m" / "config.json")
    assert by_dir.params == by_file.params == model_shape(tiny).params
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="nope"):
        make_plan(Config.model_validate({"model": {"name_or_path": str(missing)}}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        make_plan(Config(), str(tmp_path / "empty"))


def test_to_dict_and_render(tiny: Any) -> None:
    plan = make_plan(cfg_of(precision="bf16"), tiny, device_memory_gib=16)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["trainable_params"] == plan.trainable_params and data["memory"]["total"] > 0
    text = render_plan(plan)
    assert "effective" in text and "ZeRO-0" in text and "fits" in text


def test_missing_demo_base_names_the_path(workspace: Path) -> None:
    with pytest.raises(ConfigError, match=r"model.name_or_path 'models/base'.*build_base"):
        make_plan(Config())


# ---- LoRA vs full fine-tuning: what LoRA buys, before GPU time ----
# Regression: the plan priced only the configured method, so a user could not see what LoRA saves over
# full fine-tuning (the guide's "70 %+ less memory") before spending GPU time.

LLAMA2_7B_MATMUL = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 32000 * 4096  # every linear, lm_head too


def test_lora_vs_full_memory_follows_the_formula(llama7b: Any) -> None:
    cfg = cfg_of(precision="bf16", effective_batch=16, per_device_batch=4, gradient_checkpointing="off")
    plan = make_plan(cfg, llama7b, device_memory_gib=80)
    c = plan.lora_vs_full
    assert c is not None and (c.lora.method, c.full.method) == ("lora", "full")
    p, t = LLAMA2_7B, 4_194_304
    # full under mixed precision: bf16 weights 2P + bf16 grads 2P + (fp32 master + Adam m, v) 12P = 16P
    assert (c.full.memory.weights, c.full.memory.gradients, c.full.memory.optimizer) == pytest.approx(
        (2 * p / GIB, 2 * p / GIB, 12 * p / GIB)
    )
    assert c.full.states == pytest.approx(16 * p / GIB)
    # LoRA: frozen base in bf16 (2P) + fp32 adapters (4T weights, 4T grads, 8T Adam)
    assert (c.lora.memory.weights, c.lora.memory.gradients, c.lora.memory.optimizer) == pytest.approx(
        ((2 * p + 4 * t) / GIB, 4 * t / GIB, 8 * t / GIB)
    )
    assert c.states_ratio == pytest.approx((2 * p + 16 * t) / (16 * p))  # 0.126: saves 87 %
    assert c.memory_ratio == pytest.approx(c.lora.memory.total / c.full.memory.total) and c.memory_ratio < 0.5
    # the configured method's entry is the plan's own estimate; the other is priced the same way
    assert c.lora.memory == plan.memory
    assert (c.lora.trainable_params, c.full.trainable_params) == (t, p)
    assert c.lora.fits is True and c.full.fits is False  # 140 GiB > 72 usable


def test_lora_vs_full_fp32_optimizer_is_8_bytes_per_param(tiny: Any) -> None:
    plan = make_plan(cfg_of(method="full", precision="fp32"), tiny)
    c = plan.lora_vs_full
    assert c is not None and c.full.memory == plan.memory
    p = plan.params
    assert c.full.memory.optimizer == pytest.approx(8 * p / GIB)  # AdamW m and v in fp32
    assert c.full.memory.gradients == pytest.approx(4 * p / GIB)
    assert c.full.memory.weights == pytest.approx(4 * p / GIB)
    assert c.lora.fits is None and c.full.fits is None  # planned on a CPU host: no fit check


def test_lora_vs_full_compute_follows_the_formula(llama7b: Any) -> None:
    plan = make_plan(cfg_of(precision="bf16", max_length=2048, gradient_checkpointing="off"), llama7b)
    c = plan.lora_vs_full
    assert c is not None
    m, t = LLAMA2_7B_MATMUL, 4_194_304
    attn = 4 * 4096 * 32 * 2048 / 2  # QK^T and AV forward, causal: s/2 tokens attended on average
    assert c.full.flops_per_token == pytest.approx(6 * m + 3 * attn)
    assert c.lora.flops_per_token == pytest.approx(4 * m + 6 * t + 3 * attn)
    # no weight gradients for the frozen base: LoRA does about 2/3 of full's work per token, not 1/3
    assert 0.66 < c.compute_ratio < 0.70
    ckpt = make_plan(cfg_of(precision="bf16", max_length=2048, gradient_checkpointing="on"), llama7b)
    assert ckpt.lora_vs_full is not None
    assert ckpt.lora_vs_full.full.flops_per_token == pytest.approx(8 * m + 4 * attn)  # forward recomputed


def test_plan_output_shows_the_comparison(llama7b: Any, tmp_path: Path) -> None:
    plan = make_plan(cfg_of(precision="bf16", per_device_batch=4, effective_batch=16), llama7b,
                     device_memory_gib=80)
    text = render_plan(plan)
    assert "LoRA vs full fine-tuning" in text
    c = plan.lora_vs_full
    assert c is not None
    assert f"{c.full.memory.total:8.2f}" in text and f"{c.lora.memory.total:8.2f}" in text
    assert f"memory per GPU {c.memory_ratio:.2f}" in text and "too big" in text
    assert f"full does {1 / c.compute_ratio:.2f}x" in text
    # reports/plan.json carries it, and a worker rebuilds the same plan from that JSON
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["lora_vs_full"]["full"]["states"] == pytest.approx(c.full.states)
    assert type(plan).from_dict(data) == plan


def test_lora_vs_full_without_a_lora_target_is_left_out(tiny: Any) -> None:
    cfg = Config.model_validate({"train": {"method": "full", "lora": {"target_modules": ["c_attn"]}}})
    plan = make_plan(cfg, tiny)
    assert plan.lora_vs_full is None and plan.method == "full"
    assert "LoRA vs full" not in render_plan(plan)


def test_backoff_drops_the_comparison_priced_at_the_old_batch(tiny: Any) -> None:
    """After an out-of-memory back-off the comparison's batch and checkpointing no longer hold."""
    from tuneline.train.plan import backoff

    plan = make_plan(cfg_of(effective_batch=8, per_device_batch=4), tiny)
    assert plan.lora_vs_full is not None and plan.lora_vs_full.lora.memory.per_device_batch == 4
    smaller = backoff(plan)
    assert smaller is not None and smaller.per_device_batch == 2 and smaller.lora_vs_full is None
    assert "LoRA vs full" not in render_plan(smaller)
