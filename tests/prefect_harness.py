"""Prefect test fixtures: ONE `prefect_test_harness` per test session, and a tiny DVC workspace.

Import this module from tests/conftest.py (`from prefect_harness import prefect_harness  # noqa: F401`)
before anything imports prefect: the settings below are read when prefect loads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# The ephemeral API server takes 10-20 s to start on 2 busy cores; prefect's default gives up at 30 s
# only in theory. No telemetry from tests.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]

# Shared by every module that uses the fixture, however it was imported: the harness starts on first
# use and stops when the last user's session-scoped teardown runs.
_HARNESS: dict[str, Any] = {"users": 0, "context": None}

# Small enough for a CPU test (~1 min for the model stages), big enough for the data contracts and a
# gate that passes: one demo source, a barely pre-trained base, one epoch, a few generations.
TINY_PARAMS: dict[str, Any] = {
    "ingest.sources": [
        {"path": "data/raw/demo/messages.jsonl", "format": "auto", "category": None, "columns": {}}
    ],
    "build_base.pretrain_steps": 20,
    "build_base.hidden_size": 64,
    "build_base.num_layers": 2,
    "build_base.vocab_size": 2048,
    "task.output_schema": None,  # messages.jsonl has no extraction rows: nothing for the schema floor
    "train.epochs": 1,
    "evaluate.max_rows": 8,
    "evaluate.max_new_tokens": 16,
    "evaluate.review_samples": 4,
    "evaluate.include_eval_sets": False,
    "promote.parity_probe_rows": 2,
    # A one-epoch toy cannot be relied on to beat its base; the gate itself is tested elsewhere.
    "promote.min_gain": -1.0,
    "promote.max_never_stop_rate": 1.0,
}


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A temporary Prefect API (sqlite in a temp dir) for the whole session; flows run against it."""
    from prefect.testing.utilities import prefect_test_harness

    if _HARNESS["users"] == 0:
        # Read here, not through prefect's settings: prefect may have been imported before this module.
        timeout = int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
        context = prefect_test_harness(server_startup_timeout=timeout)
        context.__enter__()
        _HARNESS["context"] = context
    _HARNESS["users"] += 1
    try:
        yield
    finally:
        _HARNESS["users"] -= 1
        if _HARNESS["users"] == 0 and _HARNESS["context"] is not None:
            _HARNESS["context"].__exit__(None, None, None)
            _HARNESS["context"] = None


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def _git(workspace: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=tuneline-tests",
            "-c",
            "user.email=tests@tuneline.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=workspace,
        check=True,
        capture_output=True,
    )


def make_workspace(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """A DVC workspace in `dest`, its own git repo, built from this checkout's working tree: dvc.yaml,
    params.yaml with `TINY_PARAMS` and `params` applied, the library sources the stages depend on, the
    demo data. Offline; nothing from the repo's DVC cache. DVC remote: `dest/dvc-remote` (git-ignored)."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in (
        "dvc.yaml",
        ".gitignore",
        ".dvcignore",
        "data/.gitignore",
        "data/interim/.gitignore",
        "data/rejected/.gitignore",
    ):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    (dest / ".dvc").mkdir(exist_ok=True)
    for name in ("config", ".gitignore"):
        shutil.copy2(REPO / ".dvc" / name, dest / ".dvc" / name)
    shutil.copytree(REPO / "src", dest / "src", ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(REPO / "data" / "raw" / "demo", dest / "data" / "raw" / "demo", dirs_exist_ok=True)
    for folder in ("eval", "schemas", "pretrain"):  # dependencies of stages in dvc.yaml
        shutil.copytree(REPO / "data" / folder, dest / "data" / folder, dirs_exist_ok=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    for key, value in {**TINY_PARAMS, **(params or {})}.items():
        _set(raw, key, value)
    (dest / "params.yaml").write_text(
        yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "workspace")
    return dest
