"""A bare `mlflow server` for a test: the team cluster's command (`tuneline.cluster.mlflow_server`) on a free
loopback port over a given backend store, started, health-checked and stopped (its whole process group)
with the cluster's own process helpers (`tuneline.cluster.procs`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuneline.cluster import procs
from tuneline.cluster.mlflow_server import mlflow_server_command

STARTUP_TIMEOUT_S = 120  # a cold `mlflow server` on a loaded 2-core machine


@contextmanager
def mlflow_server(backend: str, folder: Path) -> Iterator[str]:
    """An `mlflow server` over `backend` (runs and registry), its artifacts, log and pid file in `folder`;
    yields its http URI.

    Raises:
        ServiceError: it exited or did not answer /health in time (with its log's tail).
    """
    port = procs.free_port()
    log, pidfile = folder / "server.log", folder / "server.pid"
    cmd = mlflow_server_command(port, str(folder / "artifacts"), backend_store_uri=backend)
    pid = procs.spawn("mlflow", cmd, dict(os.environ), folder, log, pidfile)
    uri = f"http://127.0.0.1:{port}"
    try:
        procs.wait_healthy("mlflow", lambda: procs.http_ok(f"{uri}/health"), pid, log, STARTUP_TIMEOUT_S)
        yield uri
    finally:
        procs.stop(pidfile, grace_s=15)
