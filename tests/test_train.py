"""The train stage: assistant-only labels, LoRA on a tiny demo base, outputs, MLflow tracking."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from helpers import LORA_NO_DROPOUT, repeat_records, repeat_workspace, train_settings
from tuneline.config.loader import Config
from tuneline.layout import Layout
from tuneline.lm.chat import ChatFormat
from tuneline.lm.labels import IGNORE_INDEX, build_rows, encode_records


def test_labels_supervise_only_assistant_tokens(tokenizer: Any) -> None:
    rec = {"id": "x", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Repeat the word cat."},
        {"role": "assistant", "content": "cat"},
        {"role": "user", "content": "And dog?"},
        {"role": "assistant", "content": "dog"},
    ]}
    enc = encode_records(ChatFormat(tokenizer), [rec], max_length=512)
    row = enc.rows[0]
    supervised = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "cat<|eos|>dog<|eos|>"
    prompt = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == IGNORE_INDEX]
    assert "Repeat the word cat." in tokenizer.decode(prompt) and "Be brief." in tokenizer.decode(prompt)
    assert enc.target_tokens == len(supervised) and enc.truncated_rows == 0


def test_truncation_counted_and_answerless_rows_dropped(tokenizer: Any) -> None:
    long = {"id": "long", "messages": [{"role": "user", "content": "word " * 200},
                                       {"role": "assistant", "content": "ok"}]}
    short = repeat_records(1)[0]
    limit = len(encode_records(ChatFormat(tokenizer), [short], max_length=10_000).rows[0]["input_ids"])
    enc = encode_records(ChatFormat(tokenizer), [long, short], max_length=limit)
    assert enc.truncated_rows == 1 and enc.dropped_no_target == ["long"]
    assert len(enc.rows) == 1 and len(enc.rows[0]["input_ids"]) == limit
    rendered = [tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True,
                                              return_assistant_tokens_mask=True) for r in (long, short)]
    dropped = build_rows(["long", short["id"]], [list(r["input_ids"]) for r in rendered],
                         [list(r["assistant_masks"]) for r in rendered], limit, drop_long=True)
    assert dropped.dropped_too_long == ["long"] and dropped.truncated_rows == 0 and len(dropped.rows) == 1


@pytest.fixture(scope="module")
def trained(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Config]:
    from tuneline.train.train import run

    root = tmp_path_factory.mktemp("ws")
    layout = repeat_workspace(root)
    cfg = Config.model_validate(train_settings(root, tiny_base, epochs=3, lora=LORA_NO_DROPOUT))
    report = run(cfg, layout)
    return root, report, cfg


@pytest.mark.integration
def test_loss_falls_and_report_has_no_timings(trained: tuple[Path, dict, Config]) -> None:
    root, report, _ = trained
    assert report["steps"] == 18  # 48 rows / effective batch 8 x 3 epochs
    assert report["train_loss_final"] < report["train_loss_first"]
    assert report["train_loss_end_avg"] < report["train_loss_start_avg"]
    assert report["val_loss_best"] < report["val_loss_before"]
    on_disk = json.loads((root / "reports" / "train.json").read_text())
    assert on_disk == report
    assert not [k for k in on_disk if "second" in k or "time" in k or "runtime" in k]


@pytest.mark.integration
def test_adapter_dir_contract_and_only_lora_weights_changed(
    trained: tuple[Path, dict, Config], tiny_base: Path
) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    root, report, _ = trained
    out = root / "models" / "adapter"
    names = {p.name for p in out.iterdir()}
    expected = {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "train_summary.json"}
    assert expected <= names
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    conf = json.loads((out / "adapter_config.json").read_text())
    assert (conf["r"], conf["lora_alpha"]) == (4, 8)
    assert conf["target_modules"] == ["q_proj", "v_proj"]  # sorted: the same file whatever the hash seed
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["plan"]["lr"] == 0.02 and summary["steps"] == report["steps"]
    assert "seconds" not in summary and "mlflow_run_id" not in summary  # the DVC output stays reproducible
    run_facts = json.loads((root / "reports" / "train_run.json").read_text())
    assert run_facts["seconds"] > 0 and run_facts["mlflow_run_id"]

    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    # lora_B starts at zero: non-zero means the adapter trained.
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)

    base = AutoModelForCausalLM.from_pretrained(tiny_base)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, out)
    for name, value in tuned.get_base_model().state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            assert torch.equal(value, original[key]), name


@pytest.mark.integration
def test_mlflow_run_has_params_metrics_and_tags(trained: tuple[Path, dict, Config]) -> None:
    import mlflow

    root, report, cfg = trained
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = client.get_experiment_by_name("test")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lora.r"] == "4" and run.data.params["plan.lr"] == "0.02"
    # the plan's estimates (memory options, the LoRA vs full comparison) stay in reports, not ~40 params
    assert not [k for k in run.data.params if k.startswith(("plan.lora_vs_full", "plan.memory"))]
    for metric in ("train_loss", "lr", "grad_norm", "val_loss", "val_perplexity"):
        assert metric in run.data.metrics, metric
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == report["steps"]
    tags = run.data.tags
    assert tags["params_hash"] == report["params_hash"] and len(tags["data_hash"]) == 64
    # Artifacts go beside the store, not into ./mlruns of whatever directory the process ran in (the
    # test suite used to write the repository's mlruns/ this way).
    assert Path(exp.artifact_location.removeprefix("file://")) == root / "mlruns"


@pytest.mark.integration
def test_same_inputs_and_seed_give_the_same_adapter(
    trained: tuple[Path, dict, Config], tmp_path: Path
) -> None:
    """CPU training is reproducible: the adapter directory (a DVC output) is byte-identical on a rerun."""
    from tuneline.train.train import run

    root, report, cfg = trained
    layout = Layout(tmp_path)
    for split in ("train", "val"):
        layout.processed(split).parent.mkdir(parents=True, exist_ok=True)
        layout.processed(split).write_bytes(Layout(root).processed(split).read_bytes())
    again = run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"uri": f"sqlite:///{tmp_path}/mlflow.db"})}), layout)
    assert again == report
    for name in ("adapter_model.safetensors", "train_summary.json", "adapter_config.json"):
        first = (root / "models" / "adapter" / name).read_bytes()
        assert (tmp_path / "models" / "adapter" / name).read_bytes() == first, name


@pytest.fixture(scope="module")
def phi3_base(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Phi-3 (fused qkv_proj, no q_proj/v_proj) with the demo tokenizer."""
    import shutil

    import torch
    from transformers import AutoTokenizer, Phi3Config, Phi3ForCausalLM

    out = tmp_path_factory.mktemp("phi3") / "base"
    tok = AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(Phi3Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_base / name).exists():
            shutil.copy(tiny_base / name, out / name)
    return out


@pytest.mark.integration
def test_phi3_default_targets_train_its_fused_qkv(phi3_base: Path, tmp_path: Path) -> None:
    """Regression: the guide's default [q_proj, v_proj] failed on Phi-3 ("match no linear layer"); it now
    adapts the fused qkv_proj, and the train report and the adapter config say so."""
    from tuneline.train.train import run

    layout = repeat_workspace(tmp_path, train=16, val=4)
    cfg = Config.model_validate(train_settings(tmp_path, phi3_base, epochs=1, lora=LORA_NO_DROPOUT))
    report = run(cfg, layout)
    assert report["lora_targets"] == ["qkv_proj"]
    (note,) = report["lora_target_notes"]
    assert note.startswith("q_proj, v_proj -> qkv_proj")
    out = tmp_path / "models" / "adapter"
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["target_modules"] == ["qkv_proj"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["plan"]["lora_targets"] == ["qkv_proj"]
    assert report["steps"] == 2 and math.isfinite(report["train_loss_final"])
