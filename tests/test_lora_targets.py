"""LoRA targets on real architectures: the guide's q_proj/v_proj mapped to each model's own layers.

Regression: `train.lora.target_modules` (default [q_proj, v_proj]) was handed to peft and the plan as
is, so a model without those names (Phi-3's fused qkv_proj, GPT-2's c_attn, GPT-NeoX / Falcon
query_key_value) failed the plan and the train stage with "match no linear layer".
"""

from __future__ import annotations

from typing import Any

import pytest

from tuneline.config import Config
from tuneline.config.train import TrainParams
from tuneline.errors import ConfigError
from tuneline.train import make_plan, render_plan
from tuneline.train.lora import prepare_model
from tuneline.train.lora_targets import linear_names, resolve_targets

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

H, VOCAB = 32, 128


def tiny(model_type: str) -> Any:
    """A tiny config of a real architecture (random weights when built; nothing is downloaded)."""
    fields: dict[str, dict[str, Any]] = {
        "llama": dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        "phi3": dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, pad_token_id=0),
        "gpt2": dict(n_embd=H, n_layer=2, n_head=4, n_positions=64),
        "gpt_neox": dict(hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        "falcon": dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, multi_query=False),
    }
    return transformers.AutoConfig.for_model(model_type, vocab_size=VOCAB, **fields[model_type])


def plan_for(model_type: str, targets: Any = None) -> Any:
    lora: dict[str, Any] = {"r": 4}
    if targets is not None:
        lora["target_modules"] = targets
    cfg = Config.model_validate({"train": {"precision": "fp32", "lora": lora}})
    return make_plan(cfg, tiny(model_type))


def test_llama_names_are_kept_without_notes() -> None:
    plan = plan_for("llama")
    assert plan.lora_targets == ["q_proj", "v_proj"] and plan.lora_target_notes == []


def test_phi3_fused_qkv_gets_the_adapter_and_the_plan_says_so() -> None:
    plan = plan_for("phi3")
    assert plan.lora_targets == ["qkv_proj"]
    # one adapter per layer on the fused (32 -> 32 + 2 x 16) layer: r x (in + out)
    kv = H // 4 * 2
    assert plan.lora_breakdown == {"qkv_proj": 2 * 4 * (H + H + 2 * kv)}
    (note,) = plan.lora_target_notes
    assert note.startswith("q_proj, v_proj -> qkv_proj") and "k_proj too" in note
    assert plan.to_dict()["lora_targets"] == ["qkv_proj"]
    assert plan.to_dict()["lora_target_notes"] == [note]
    text = render_plan(plan)
    assert "lora targets     qkv_proj" in text and note in text


@pytest.mark.parametrize(
    ("model_type", "fused"),
    [("gpt2", "c_attn"), ("gpt_neox", "query_key_value"), ("falcon", "query_key_value")],
)
def test_other_families_map_query_and_value(model_type: str, fused: str) -> None:
    plan = plan_for(model_type)
    assert plan.lora_targets == [fused]
    assert plan.lora_breakdown[fused] == 2 * 4 * (H + 3 * H)  # both layers, q/k/v fused (no GQA)


def test_gpt2_attention_output_is_not_its_mlp_output() -> None:
    # GPT-2 names both its attention and its MLP output c_proj: o_proj maps to the attention one only.
    plan = plan_for("gpt2", ["o_proj"])
    assert plan.lora_targets == ["attn.c_proj"]
    assert plan.lora_breakdown == {"attn.c_proj": 2 * 4 * (H + H)}


def test_all_linear_is_passed_through() -> None:
    plan = plan_for("phi3", "all-linear")
    assert plan.lora_targets == "all-linear" and plan.lora_target_notes == []
    assert set(plan.lora_breakdown) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_unknown_name_lists_the_models_linear_layers() -> None:
    with pytest.raises(ConfigError) as err:
        plan_for("phi3", ["q_proj", "attn_out"])
    message = str(err.value)
    assert "['attn_out']" in message
    for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert name in message


def test_a_present_name_wins_over_the_table() -> None:
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.qkv_proj"]
    assert resolve_targets(["q_proj"], names).modules == ["q_proj"]


@pytest.mark.parametrize(("model_type", "adapted"), [("phi3", "qkv_proj"), ("gpt2", "c_attn")])
def test_peft_adapts_the_mapped_layers(model_type: str, adapted: str) -> None:
    """The real peft wrapper gets the same targets the plan reported, and the base stays frozen."""
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(tiny(model_type))
    assert not [n for n in linear_names(base) if n.endswith((".q_proj", ".v_proj"))]
    model = prepare_model(base, TrainParams.model_validate({"lora": {"r": 4}}))
    lora_a = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert lora_a and all(f".{adapted}.lora_A" in n for n in lora_a)
    assert len(lora_a) == 2  # one per layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_tuneline_plan_writes_and_prints_the_mapping(workspace: Any) -> None:
    import json

    from typer.testing import CliRunner

    from tuneline.cli import app

    tiny("phi3").save_pretrained(workspace / "phi3")
    result = CliRunner().invoke(app, ["plan", "--model-config", "phi3", "-s", "train.precision=fp32"])
    assert result.exit_code == 0, result.output
    assert "lora targets     qkv_proj" in result.output and "q_proj, v_proj -> qkv_proj" in result.output
    plan = json.loads((workspace / "reports" / "plan.json").read_text())
    assert plan["lora_targets"] == ["qkv_proj"] and plan["lora_target_notes"][0].startswith("q_proj, v_proj")
