"""The command line: --help teaches, config show resolves, errors are one clear screen with an exit code."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from tuneline.cli import app
from tuneline.stages import DATA_STAGES

runner = CliRunner()


def test_help_lists_every_stage_and_data() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in (*DATA_STAGES, "data", "config"):
        assert stage in result.output


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
