"""Shared test setup: no progress bars, one thread, a temporary workspace fixture (all offline), the tiny
demo bases built once per session, and the check that a test run leaves the repository as it found it
(`repo_hygiene`). Builders shared by the test modules live in `helpers.py`."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from cluster_harness import cluster  # noqa: F401  (one team cluster per session, started on first use)
from postgres_harness import postgres_url  # noqa: F401  (one PostgreSQL server per session)
from prefect_harness import prefect_harness  # noqa: F401  (one Prefect test server per session)
from repo_hygiene import new_entries, repo_root, snapshot

os.environ.setdefault("TUNELINE_PROGRESS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every MLflow call names its store; a call that falls back on the process-wide default must not find
# the developer's ./mlflow.db by luck (MLflow 3 defaults to sqlite:///mlflow.db in the cwd).
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:////nonexistent-tuneline-test-default/mlflow.db"
# Hypothesis keeps its example database and caches in ./.hypothesis by default: a temporary folder instead,
# so a test run writes nothing into the checkout.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="tuneline-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, True)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace directory that is also the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _digest(folder: Path) -> str:
    """One hash of every file's name and bytes under `folder`."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _shared_base(tmp_path_factory: pytest.TempPathFactory, name: str, steps: int) -> Iterator[Path]:
    """Build a tiny demo base once for the session; fail the session if a test changed it (a test that
    writes into a base copies it first)."""
    # helpers imports torch+transformers+peft: 9.7 s by -X importtime on a busy 2-core machine, against 1 s
    # for this conftest; a run of modules that need no model must not pay it.
    from helpers import build_tiny_base  # lazy: torch+transformers+peft, ~9.7 s; model-free runs skip it

    base = build_tiny_base(tmp_path_factory.mktemp(name), steps=steps)
    before = _digest(base)
    yield base
    if _digest(base) != before:
        pytest.fail(f"a test wrote into the session's shared base {base}: copy it first "
                    "(shutil.copytree) and change the copy", pytrace=False)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny demo base (`helpers.TINY`, `helpers.TINY_BASE_STEPS` steps of pre-training), built once
    for the whole session. Read only: copy it before changing it."""
    from helpers import TINY_BASE_STEPS  # lazy: see _shared_base

    yield from _shared_base(tmp_path_factory, "tiny_base", TINY_BASE_STEPS)


@pytest.fixture(scope="session")
def learned_tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny demo base pre-trained until it has learned its corpus (`helpers.LEARNED_BASE_STEPS`):
    greedy replies depend on the prompt and end with EOS. Built once; read only."""
    from helpers import LEARNED_BASE_STEPS  # lazy: see _shared_base

    yield from _shared_base(tmp_path_factory, "learned_tiny_base", LEARNED_BASE_STEPS)


@pytest.fixture(scope="module")
def tokenizer(tiny_base: Path) -> Any:
    """The shared base's tokenizer (one per module: a test may change its padding side)."""
    from transformers import AutoTokenizer  # lazy: see _shared_base

    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture(scope="session", autouse=True)
def repository_left_as_found() -> Iterator[None]:
    """Fails the session when the tests wrote into the checkout (tests write only to temporary folders)."""
    root = repo_root(Path(__file__).resolve().parents[1])
    before = snapshot(root) if root is not None else None
    yield
    if root is None or before is None:  # not a git checkout: nothing to compare against
        return
    appeared = new_entries(before, snapshot(root))
    if appeared:
        more = f"\n  ... {len(appeared) - 30} more" if len(appeared) > 30 else ""
        shown = "\n  ".join(appeared[:30]) + more
        pytest.fail(f"the test run wrote into the repository {root} (tests must write only to temporary "
                    f"folders); new in `git status --porcelain --ignored`:\n  {shown}", pytrace=False)
