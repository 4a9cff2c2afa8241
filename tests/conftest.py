"""Shared test setup: no progress bars, one thread, and a temporary workspace fixture (all offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from postgres_harness import postgres_url  # noqa: F401  (one PostgreSQL server per session)
from prefect_harness import prefect_harness  # noqa: F401  (one Prefect test server per session)

os.environ.setdefault("TUNELINE_PROGRESS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Every MLflow call names its store; a call that falls back on the process-wide default must not find
# the developer's ./mlflow.db by luck (MLflow 3 defaults to sqlite:///mlflow.db in the cwd).
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:////nonexistent-tuneline-test-default/mlflow.db"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty workspace directory that is also the current directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
