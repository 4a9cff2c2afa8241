"""Outputs never destroy what tuneline did not write (DESIGN §10), on every path that replaces a directory:
`tuneline data --output`, `build_base` (build_base.output_dir) and `train` (train.output_dir).

Each test here failed before `tuneline.outdirs` existed: `tuneline data` deleted DIR/work with the user's
files in it, `build_base` replaced a folder outside the workspace, and `--output` naming a file crashed with
a FileExistsError traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import TINY, tiny_records
from tuneline.cli import app
from tuneline.config import load_config
from tuneline.config.loader import Config
from tuneline.data_half import run_data
from tuneline.errors import OutputPathError
from tuneline.jsonio import write_jsonl
from tuneline.layout import Layout
from tuneline.outdirs import MARKER, check_replaceable, claim_dir, fresh_dir, inside_workspace, replace_dir
from tuneline.train.build_base import BUILD_INFO, build_base

runner = CliRunner()
GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi there!"}


def alpaca_file(path: Path, n: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps({**GOOD, "instruction": f"Say hi {i}."}) for i in range(n)) + "\n")
    return path


# --- tuneline data --output ---------------------------------------------------------------------------


def test_data_refuses_an_output_that_holds_the_input_and_deletes_nothing(workspace: Path) -> None:
    """Fault 1: `--input OUT/work/mine.jsonl --output OUT` deleted OUT/work (the input and a file in it)."""
    mine = alpaca_file(workspace / "OUT" / "work" / "mine.jsonl")
    other = workspace / "OUT" / "work" / "notes.txt"
    other.write_text("mine, not tuneline's")
    with pytest.raises(OutputPathError, match=r"OUT/work/mine\.jsonl.*inside the output directory OUT"):
        run_data([Path("OUT/work/mine.jsonl")], Path("OUT"), load_config(None))
    assert mine.is_file() and other.read_text() == "mine, not tuneline's"
    result = runner.invoke(app, ["data", "--input", "OUT/work/mine.jsonl", "--output", "OUT"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "OUT/work/mine.jsonl" in result.output and "OUT" in result.output
    assert mine.is_file() and other.is_file()
    assert sorted(p.name for p in (workspace / "OUT").iterdir()) == ["work"]  # nothing written either


def test_data_refuses_an_output_inside_an_input_directory(workspace: Path) -> None:
    alpaca_file(workspace / "raw" / "a.jsonl")
    with pytest.raises(OutputPathError, match=r"output directory raw/out .* is inside the input raw"):
        run_data([Path("raw")], Path("raw/out"), load_config(None))
    assert not (workspace / "raw" / "out").exists()


def test_data_refuses_a_non_empty_folder_it_did_not_write(workspace: Path) -> None:
    alpaca_file(workspace / "in.jsonl")
    (workspace / "mine").mkdir()
    (workspace / "mine" / "work").mkdir()
    (workspace / "mine" / "work" / "keep.txt").write_text("keep")
    with pytest.raises(OutputPathError, match=r"--output: mine is not empty and was not written by tuneline"):
        run_data([Path("in.jsonl")], Path("mine"), load_config(None))
    assert (workspace / "mine" / "work" / "keep.txt").read_text() == "keep"
    assert not (workspace / "mine" / MARKER).exists()


def test_data_output_that_is_a_file_is_a_clear_error(workspace: Path) -> None:
    """Fault 19: `--output` naming an existing file crashed with a FileExistsError traceback."""
    alpaca_file(workspace / "in.jsonl")
    (workspace / "out.txt").write_text("a file")
    result = runner.invoke(app, ["data", "--input", "in.jsonl", "--output", "out.txt"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "out.txt" in result.output and "is a file" in result.output
    assert not isinstance(result.exception, FileExistsError)
    assert (workspace / "out.txt").read_text() == "a file"
    result = runner.invoke(app, ["data", "--input", "in.jsonl", "--output", "out.txt/sub"])
    assert result.exit_code == 2 and "Traceback" not in result.output and "out.txt/sub" in result.output


@pytest.mark.integration
def test_data_reruns_into_its_own_output(workspace: Path) -> None:
    """The output tuneline wrote stays tuneline's: a rerun replaces its work dir and results."""
    alpaca_file(workspace / "in.jsonl", 40)
    cfg = load_config(None, ["validate_raw.min_rows=10", "split.eval_dir=null"])
    run_data([Path("in.jsonl")], Path("out"), cfg)
    (workspace / "out" / "work" / "leftover.txt").write_text("from the first run")
    run_data([Path("in.jsonl")], Path("out"), cfg)
    assert (workspace / "out" / MARKER).is_file() and (workspace / "out" / "work" / MARKER).is_file()
    assert not (workspace / "out" / "work" / "leftover.txt").exists()
    assert (workspace / "out" / "report.json").is_file()


# --- build_base and train output dirs ------------------------------------------------------------------


def test_build_base_refuses_an_output_dir_outside_the_workspace(tmp_path: Path) -> None:
    """Fault 2: `--set build_base.output_dir=../victim` replaced a folder outside the workspace."""
    ws, victim = tmp_path / "ws", tmp_path / "victim"
    write_jsonl(ws / "data" / "processed" / "train.jsonl", tiny_records())
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    cfg = Config.model_validate({"build_base": {**TINY, "pretrain_steps": 2, "output_dir": "../victim"}})
    with pytest.raises(OutputPathError, match=r"build_base\.output_dir: \.\./victim .*outside the"):
        build_base(cfg, ws)
    # Allowed outside, a folder tuneline did not write is still never replaced.
    cfg.allow_outside_workspace = True
    with pytest.raises(OutputPathError, match="not written by tuneline"):
        build_base(cfg, ws)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim", "ws"]  # no temp dir beside it either


def test_build_base_outside_the_workspace_when_allowed(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    write_jsonl(ws / "data" / "processed" / "train.jsonl", tiny_records())
    cfg = Config.model_validate({"allow_outside_workspace": True, "model": {"name_or_path": "../base"},
                                 "build_base": {**TINY, "pretrain_steps": 2, "output_dir": "../base"}})
    build_base(cfg, ws)
    assert (tmp_path / "base" / BUILD_INFO).is_file() and (tmp_path / "base" / MARKER).is_file()
    build_base(cfg, ws)  # its own output: replaced
    assert (tmp_path / "base" / BUILD_INFO).is_file()


def test_build_base_never_replaces_a_foreign_folder_inside_the_workspace(tmp_path: Path) -> None:
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    (base / "keep.txt").write_text("keep")
    with pytest.raises(OutputPathError, match=r"models/base .*not written by tuneline"):
        build_base(Config(), tmp_path)  # refused before the train split is even read
    assert (base / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("output_dir", ["../victim", "/", ".", "models/../.."])
def test_train_refuses_an_output_dir_outside_the_workspace(tmp_path: Path, output_dir: str) -> None:
    """Fault 2, train.output_dir: refused before any data is read or any training starts."""
    from tuneline.train.train import run

    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("keep")
    cfg = Config.model_validate({"train": {"output_dir": output_dir}})
    with pytest.raises(OutputPathError, match=r"train\.output_dir"):
        run(cfg, Layout(ws))
    assert (tmp_path / "victim" / "keep.txt").read_text() == "keep"


def test_train_refuses_a_foreign_adapter_folder(tmp_path: Path) -> None:
    from tuneline.train.train import run

    adapter = tmp_path / "models" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "keep.txt").write_text("keep")
    with pytest.raises(OutputPathError, match=r"train\.output_dir: .*models/adapter .*not written by"):
        run(Config(), Layout(tmp_path))
    assert (adapter / "keep.txt").read_text() == "keep"


# --- the helper itself ---------------------------------------------------------------------------------


def test_replace_dir_replaces_only_its_own_output_and_spares_neighbours(tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    neighbour = tmp_path / ".adapter.old"  # the old train code deleted this name blindly
    neighbour.mkdir()
    (neighbour / "user.txt").write_text("mine")
    first = tmp_path / "t1"
    first.mkdir()
    (first / "a.txt").write_text("1")
    replace_dir(first, out, "x")
    second = tmp_path / "t2"
    second.mkdir()
    (second / "b.txt").write_text("2")
    replace_dir(second, out, "x")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    assert (neighbour / "user.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.old", "adapter"]
    (out / MARKER).unlink()  # no proof of ownership any more: a non-empty folder is left alone
    third = tmp_path / "t3"
    third.mkdir()
    with pytest.raises(OutputPathError):
        replace_dir(third, out, "x")
    assert (out / "b.txt").is_file()


def test_links_files_and_empty_dirs(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / MARKER).write_text("forged through a link")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(OutputPathError, match="symbolic link"):
        check_replaceable(tmp_path / "link", "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        fresh_dir(tmp_path / "file", "x")
    (tmp_path / "empty").mkdir()
    claim_dir(tmp_path / "empty", "x")  # an empty folder holds nothing to lose
    assert (tmp_path / "empty" / MARKER).is_file()


def test_inside_workspace(tmp_path: Path) -> None:
    assert inside_workspace(tmp_path, Path("models/base"), "x") == tmp_path / "models" / "base"
    assert inside_workspace(tmp_path, tmp_path / "m", "x") == tmp_path / "m"
    for bad in ("../m", "/tmp", ".", "a/../.."):
        with pytest.raises(OutputPathError):
            inside_workspace(tmp_path, Path(bad), "x")
    assert inside_workspace(tmp_path, Path("../m"), "x", allow_outside=True) == tmp_path / "../m"
