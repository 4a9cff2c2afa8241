"""Shared fixtures: a temporary workspace and a tiny config, offline by construction."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TUNELINE_PROGRESS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace directory that is also the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
