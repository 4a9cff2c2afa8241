"""The `mlflow server` command: the team cluster runs it (`deploy/cluster.py`), the tests start it on a
folder; one command line, so both run the same server."""

from __future__ import annotations

import sys


def mlflow_server_command(
    port: int, artifacts: str, workers: int = 1, backend_store_uri: str | None = None, host: str = "127.0.0.1"
) -> list[str]:
    """The command line of an `mlflow server` that proxies artifacts (clients need only its URI).

    Args:
        port: the port it listens on.
        artifacts: where it stores artifacts (`--artifacts-destination`: a folder or an `s3://` URI).
        workers: its worker processes.
        backend_store_uri: runs and registry (`--backend-store-uri`); None leaves it to the environment
            (`MLFLOW_BACKEND_STORE_URI`, which keeps a password off the command line).
        host: the address it binds.
    """
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
           "--workers", str(workers), "--artifacts-destination", artifacts]
    if backend_store_uri is not None:
        cmd += ["--backend-store-uri", backend_store_uri]
    return cmd
