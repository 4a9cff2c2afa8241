"""The deployments for real: one `prefect server` for the module; `python deploy/deployments.py` serving
both deployments (a nightly schedule the server's scheduler expands, an on-demand run triggered through
the REST API the UI uses, picked up by the served process); then the same deployments on a process work
pool, run by a `prefect worker`. Each run completes on a tiny workspace.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_harness import REPO, make_workspace

pytestmark = pytest.mark.integration
STARTUP_S = 120
RUN_S = 180
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RetryBusy(httpx.HTTPTransport):
    """Retries a 503: the server answers it when its SQLite database is busy (a retryable error its own
    clients retry), which happens under a loaded CI machine."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(10):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.read()
            response.close()
            time.sleep(0.5 * (attempt + 1))
        return response


def api_client(api: str) -> httpx.Client:
    return httpx.Client(base_url=api, timeout=10, transport=RetryBusy())


def poll(
    what: str, probe: Callable[[], Any], timeout_s: float, proc: subprocess.Popen[bytes], log: Path
) -> Any:
    """`probe()`'s first truthy value; fails naming `what` (with the process log) on timeout or exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            value = probe()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout_s:g}s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    """`sig` to the whole group (SIGINT: serve pauses its schedules on a clean shutdown), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    # Own process group: stop() ends the process and every run it started.
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A `prefect server start` on a free port with its own PREFECT_HOME; yields (api url, client env)."""
    tmp_path = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = start(cmd, log, env, tmp_path)
    api = f"http://127.0.0.1:{port}/api"
    try:
        poll(
            "server health",
            lambda: httpx.get(f"{api}/health", timeout=2).json() is True,
            STARTUP_S,
            proc,
            log,
        )
        clients = {
            "PREFECT_API_URL": api,
            "PREFECT_RUNNER_POLL_FREQUENCY": "2",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
        yield api, {**env, **clients}
    finally:
        stop(proc)


def run_on_demand(
    http: httpx.Client, stages: list[str], proc: subprocess.Popen[bytes], log: Path
) -> tuple[str, dict[str, Any]]:
    """Create an on-demand run the way the UI's run form does (the deployment's parameters, some fields
    changed) and wait for its final state; returns (flow run id, state)."""
    deployment = http.get("/deployments/name/retrain/on-demand").json()
    params = {**deployment["parameters"]["params"], "stages": stages, "force": []}
    created = http.post(
        f"/deployments/{deployment['id']}/create_flow_run", json={"parameters": {"params": params}}
    )
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]

    def finished() -> dict[str, Any] | None:
        state = http.get(f"/flow_runs/{run_id}").json()["state"]
        return state if state and state["type"] in FINAL else None

    state = poll("on-demand run", finished, RUN_S, proc, log)
    assert state["type"] == "COMPLETED", f"{state}\n{log.read_text()[-4000:]}"
    return run_id, state


def test_served_deployments_schedule_nightly_and_run_on_demand(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    api, env = server
    ws = make_workspace(tmp_path / "ws")
    log = tmp_path / "serve.log"
    serve = start(
        [sys.executable, str(REPO / "deploy" / "deployments.py"), "--workspace", str(ws)], log, env, tmp_path
    )
    try:
        with api_client(api) as http:

            def deployment(name: str) -> dict[str, Any] | None:
                resp = http.get(f"/deployments/name/retrain/{name}")
                return resp.json() if resp.status_code == 200 else None

            nightly = poll("nightly deployment", lambda: deployment("nightly"), STARTUP_S, serve, log)
            on_demand = poll("on-demand deployment", lambda: deployment("on-demand"), 30, serve, log)
            [schedule] = nightly["schedules"]
            assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == ("0 2 * * *", "UTC")
            assert schedule["active"] and on_demand["schedules"] == []
            assert on_demand["parameters"]["params"]["workspace"] == str(ws)
            form = on_demand["parameter_openapi_schema"]["definitions"]["RetrainParams"]["properties"]
            assert {"stages", "force", "overrides", "require_approval", "workspace"} <= set(form)

            def scheduled_nightly() -> list[dict[str, Any]]:
                body = {
                    "deployments": {"id": {"any_": [nightly["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
                }
                return http.post("/flow_runs/filter", json=body).json()

            runs = poll("scheduled nightly runs", scheduled_nightly, 60, serve, log)
            starts = [datetime.fromisoformat(r["expected_start_time"]) for r in runs]
            assert all((s.utcoffset().total_seconds(), s.hour, s.minute) == (0, 2, 0) for s in starts), starts

            run_id, _ = run_on_demand(http, ["ingest", "validate_raw"], serve, log)
            assert (ws / "reports" / "validate_raw.json").is_file()
            found = http.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}})
            assert {"ingest", "validate-raw"} <= {a["key"] for a in found.json()}
    finally:
        stop(serve)


def test_process_work_pool_worker_runs_the_on_demand_deployment(
    server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    api, env = server
    ws = make_workspace(tmp_path / "ws")
    prefect = [sys.executable, "-m", "prefect"]
    create = [*prefect, "work-pool", "create", "tuneline-test", "--type", "process"]
    subprocess.run(create, env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    register = [sys.executable, str(REPO / "deploy" / "deployments.py"), "--work-pool", "tuneline-test"]
    subprocess.run(
        [*register, "--workspace", str(ws)],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    log = tmp_path / "worker.log"
    worker = start([*prefect, "worker", "start", "--pool", "tuneline-test"], log, env, tmp_path)
    try:
        with api_client(api) as http:
            assert http.get("/deployments/name/retrain/on-demand").json()["work_pool_name"] == "tuneline-test"
            run_on_demand(http, ["ingest"], worker, log)
            assert (ws / "reports" / "ingest.json").is_file()
    finally:
        stop(worker, signal.SIGTERM)  # a worker waits out SIGINT while it retries the API
