"""Shared test setup: no progress bars, one thread, and a temporary workspace fixture (all offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TUNELINE_PROGRESS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace directory that is also the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
