"""The session check of `conftest.py`: a test run must leave `git status --ignored` of the checkout as it
was (tests write only to temporary folders); tool caches and the virtual environment are allowed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from repo_hygiene import new_entries, repo_root, snapshot

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _repo(root: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/mlruns/\n*.egg-info/\n__pycache__/\n.venv/\n.pytest_cache/\n")
    (root / "tracked.txt").write_text("v1\n")
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], cwd=root,
                   check=True)
    return root


def test_new_ignored_and_untracked_paths_are_reported(tmp_path: Path) -> None:
    root = _repo(tmp_path / "repo")
    (root / "mlruns" / "1").mkdir(parents=True)
    (root / "mlruns" / "1" / "old.json").write_text("{}")  # there before the session: not the tests' doing
    before = snapshot(root)
    (root / "mlruns" / "1" / "meta.yaml").write_text("x")  # inside an ignored folder that already existed
    (root / "stray.txt").write_text("x")
    (root / "tracked.txt").write_text("v2\n")  # an edit of the code meanwhile: not the tests' doing
    for allowed in (".venv/lib/x.py", "src/pkg/__pycache__/m.pyc", ".pytest_cache/v", "src/p.egg-info/PKG"):
        (root / allowed).parent.mkdir(parents=True, exist_ok=True)
        (root / allowed).write_text("x")
    assert new_entries(before, snapshot(root)) == ["!! mlruns/1/meta.yaml", "?? stray.txt"]


def test_outside_a_checkout_the_check_is_skipped(tmp_path: Path) -> None:
    assert repo_root(tmp_path) is None
    root = _repo(tmp_path / "repo")
    (root / "sub").mkdir()
    assert repo_root(root) == root and repo_root(root / "sub") is None  # only the top of a checkout counts
