"""The command line: --help teaches, config show resolves, errors are one clear screen with an exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tuneline.cli import app
from tuneline.stages import PIPELINE, STAGE

runner = CliRunner()


def _command_lines() -> list[list[str]]:
    """Every command of the CLI, sub-apps included, with its required arguments."""
    required = {"data": ["--input", "in.jsonl", "--output", "out"]}
    lines = [[c.name, *required.get(c.name or "", [])] for c in app.registered_commands]
    for group in app.registered_groups:
        lines += [[group.name, c.name] for c in group.typer_instance.registered_commands]
    return lines


def test_help_lists_every_stage_and_data() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in (*PIPELINE, "data", "config"):
        assert stage in result.output


@pytest.mark.parametrize("stage", PIPELINE)
def test_stage_help_opens_with_the_tables_description(stage: str) -> None:
    result = runner.invoke(app, [stage, "--help"], terminal_width=400)
    assert result.exit_code == 0
    assert STAGE[stage].description in " ".join(result.output.split())


def test_model_stages_keep_their_own_options() -> None:
    assert "--node-rank" in runner.invoke(app, ["train", "--help"]).output
    promote = runner.invoke(app, ["promote", "--help"]).output
    assert all(option in promote for option in ("--approve", "--approver", "--note"))


@pytest.mark.parametrize("line", _command_lines(), ids=" ".join)
def test_every_command_turns_a_typed_error_into_one_line_and_its_exit_code(
    workspace: Path, line: list[str]
) -> None:
    """One error wrapper for every command (cli_common.command): a typed error is one red line and the
    error's exit code, never a traceback."""
    (workspace / "params.yaml").write_text("dedup:\n  treshold: 0.9\n")
    result = runner.invoke(app, line)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "dedup.treshold: unknown key" in result.output
    assert "Traceback" not in result.output


def test_cli_import_stays_light() -> None:
    """`tuneline --help` must not pay for torch, transformers, MLflow or SQLAlchemy: the stage table names
    entry modules by dotted path and imports one only when its stage runs."""
    code = ("import sys, tuneline.cli; heavy = ('torch', 'transformers', 'mlflow', 'sqlalchemy', 'peft'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stage_help_shows_params_and_set() -> None:
    result = runner.invoke(app, ["dedup", "--help"])
    assert result.exit_code == 0
    assert "--set" in result.output and "--params" in result.output


def test_config_show_applies_overrides(workspace: Path) -> None:
    result = runner.invoke(app, ["config", "show", "--set", "dedup.threshold=0.9", "-s", "seed=3"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["dedup"]["threshold"] == 0.9 and shown["seed"] == 3


def test_config_error_is_one_clear_message(workspace: Path) -> None:
    (workspace / "params.yaml").write_text("dedup:\n  treshold: 0.9\n")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2
    assert "params.yaml" in result.output and "dedup.treshold: unknown key" in result.output
    assert "Traceback" not in result.output


def test_stage_without_inputs_fails_cleanly(workspace: Path) -> None:
    result = runner.invoke(app, ["ingest", "--set", "ingest.sources=[{path: missing_dir}]"])
    assert result.exit_code == 2
    assert "missing_dir" in result.output
    assert "Traceback" not in result.output


def test_data_with_missing_input_names_it(workspace: Path) -> None:
    result = runner.invoke(app, ["data", "--input", "nope.jsonl", "--output", "out"])
    assert result.exit_code == 2
    assert "nope.jsonl" in result.output


def test_plan_for_a_locally_built_llama_2_7b_config(workspace: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000).save_pretrained(workspace / "llama7b")
    args = ["plan", "--model-config", "llama7b", "-s", "train.num_processes=8",
            "-s", "train.effective_batch=64", "-s", "train.device_memory_gib=80",
            "-s", "train.precision=bf16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "4,194,304" in result.output and "fits" in result.output
    assert (workspace / "reports" / "plan.json").exists()
    # what LoRA buys over full fine-tuning, on screen and in the report
    assert "LoRA vs full fine-tuning" in result.output and "LoRA / full: memory per GPU" in result.output
    report = json.loads((workspace / "reports" / "plan.json").read_text())
    assert report["lora_vs_full"]["full"]["trainable_params"] == 6_738_415_616


def test_plan_that_cannot_fit_is_refused(workspace: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000).save_pretrained(workspace / "llama7b")
    args = ["plan", "--model-config", "llama7b", "-s", "train.method=full", "-s", "train.device_memory_gib=8",
            "-s", "train.precision=bf16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 4
    assert "Traceback" not in result.output


def test_build_base_says_it_was_not_built_when_another_model_is_named(workspace: Path) -> None:
    """`dvc exp run -S model.name_or_path=<your model>` runs `tuneline build_base` first: it must succeed
    (and say why it built nothing), not fail on the missing pre-training numbers."""
    from tuneline.jsonio import write_jsonl

    write_jsonl(workspace / "data" / "processed" / "train.jsonl", [
        {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}])
    result = runner.invoke(app, ["build_base", "--set", "model.name_or_path=/models/Qwen2.5-0.5B-Instruct"])
    assert result.exit_code == 0, result.output
    assert "not built" in result.output and "Qwen2.5-0.5B-Instruct" in result.output
