"""The cluster's workers: the `tuneline` process work pool (one queue per worker), the deployments on it,
and per worker a `git clone` of the repo configured for the team servers and a `prefect worker`.

A worker's checkout differs from the repo in two git-ignored or committed-locally places only:
`.dvc/config.local` names the object store as its default DVC remote (so the `retrain` flow pulls
before and pushes after its stages, run cache included), and one local commit on branch `cluster-worker`
points `tracking.uri` at the MLflow server, `serve.store_url` at the feedback database and
`registry.lock_url` at the MLflow database, with `registry.require_cross_host_lock: true` (URLs without
passwords: the worker's environment carries them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
POOL = "tuneline"
REMOTE = "cluster"
GIT_ID = [
    "-c",
    "user.name=tuneline-cluster",
    "-c",
    "user.email=cluster@tuneline.invalid",
    "-c",
    "commit.gpgsign=false",
]


def register_deployments(env: dict[str, str], schedules: bool, log: Path, n_workers: int = 2) -> None:
    """Create the pool and its queues and register the deployments, in one child process (prefect
    reads PREFECT_API_URL when it is imported)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--workers", str(n_workers)]
    if not schedules:
        cmd.append("--paused")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(
            cmd, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False
        )
    if done.returncode != 0:
        raise SystemExit(f"registering the deployments failed; {log}:\n{log.read_text()[-3000:]}")


def set_param(text: str, section: str, key: str, value: str) -> str:
    """params.yaml text with `section.key` set to `value`, its comment and every other line kept."""
    lines = text.splitlines(keepends=True)
    inside = False
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(section)}:\s*(#.*)?$", line):
            inside = True
            continue
        if inside and re.match(r"^\S", line) and not line.startswith("#"):
            break
        found = re.match(rf"^(\s+{re.escape(key)}:\s*)(\S+)(\s*#.*)?(\n?)$", line) if inside else None
        if found:
            lines[i] = f"{found.group(1)}{value}{found.group(3) or ''}{found.group(4)}"
            out = "".join(lines)
            if yaml.safe_load(out)[section][key] != yaml.safe_load(value):
                raise ValueError(f"params.yaml: could not set {section}.{key}")
            return out
    raise ValueError(f"params.yaml has no {section}.{key} to set")


def _git(checkout: Path, *args: str) -> None:
    subprocess.run(["git", *GIT_ID, *args], cwd=checkout, check=True, capture_output=True, timeout=120)


def _dvc(checkout: Path, env: dict[str, str], *args: str, check: bool = True) -> bool:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if check and done.returncode != 0:
        raise SystemExit(f"`dvc {' '.join(args)}` failed in {checkout}:\n{done.stderr[-2000:]}")
    return done.returncode == 0


def prepare_checkout(
    folder: Path, repo: Path, info: dict[str, Any], database_urls: dict[str, str], env: dict[str, str]
) -> Path:
    """The worker's own checkout under `folder` (cloned the first time), configured for the cluster."""
    checkout = folder / "checkout"
    folder.mkdir(parents=True, exist_ok=True)
    if not (checkout / ".git").is_dir():
        subprocess.run(
            ["git", "clone", "-q", str(repo), str(checkout)], check=True, capture_output=True, timeout=300
        )
        _git(checkout, "checkout", "-q", "-B", "cluster-worker")
    _dvc(
        checkout,
        env,
        "remote",
        "add",
        "--local",
        "--default",
        "--force",
        REMOTE,
        f"s3://{info['bucket']}/dvc",
    )
    _dvc(checkout, env, "remote", "modify", "--local", REMOTE, "endpointurl", info["s3_endpoint"])
    params = checkout / "params.yaml"
    text = params.read_text(encoding="utf-8")
    settings = [
        ("tracking", "uri", info["mlflow_uri"]),
        ("serve", "store_url", database_urls["feedback"]),
        # Workers on several hosts promote through one registry: the alias lock is an advisory lock on
        # the tracking server's PostgreSQL (password from PGPASSWORD), and a host-only lock is refused.
        ("registry", "lock_url", database_urls["mlflow"]),
        ("registry", "require_cross_host_lock", "true"),
    ]
    new = text
    for section, key, value in settings:
        new = set_param(new, section, key, value)
    if new != text:
        params.write_text(new, encoding="utf-8")
        _git(checkout, "commit", "-q", "-m", "cluster: MLflow server, feedback database, registry lock",
             "params.yaml")
    if (checkout / "dvc-bundled").is_dir() and not (checkout / "models" / "base").exists():
        # The demo's pre-trained base ships with the repo: the first run need not pre-train it.
        _dvc(checkout, env, "pull", "-q", "-r", "bundled", "build_base", check=False)
    return checkout


def worker_env(name: str, checkout: Path, env: dict[str, str]) -> dict[str, str]:
    """A worker's environment: the cluster's client settings, its checkout as the runs' workspace,
    this repo's flows/ and tasks/ importable (the deployments load their code from it)."""
    out = {
        **env,
        "TUNELINE_WORKSPACE": str(checkout),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    }
    out.setdefault("PREFECT_WORKER_QUERY_SECONDS", "5")
    out.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tuneline")
    # Artifacts go through the MLflow server (proxied): a worker needs no S3 endpoint for them.
    out.pop("MLFLOW_S3_ENDPOINT_URL", None)
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def start_worker(name: str, checkout: Path, env: dict[str, str], log: Path, pidfile: Path) -> int:
    """`prefect worker start` on the pool's `default` queue and its own (`name`), one run at a time."""
    from tuneline.cluster import procs

    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        POOL,
        "--type",
        "process",
        "--name",
        name,
        "--work-queue",
        "default",
        "--work-queue",
        name,
        "--limit",
        "1",
    ]
    return procs.spawn(name, cmd, worker_env(name, checkout, env), checkout, log, pidfile)


def online_workers(api: str) -> set[str]:
    """Names of the pool's workers the server sees as online."""
    request = urllib.request.Request(
        f"{api}/work_pools/{POOL}/workers/filter",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return {w["name"] for w in json.load(resp) if w.get("status") == "ONLINE"}
    except OSError:
        return set()


def wait_workers(info: dict[str, Any], names: list[str], folder: Path, pids: Path, timeout_s: float) -> None:
    """Until every worker has checked in with the server."""
    from tuneline.cluster import procs

    deadline = time.monotonic() + timeout_s
    while not set(names) <= online_workers(info["prefect_api"]):
        for name in names:
            pid = procs.read_pid(pids / f"worker-{name}.pid")
            if pid is None or not procs.alive(pid):
                raise procs.ServiceError(
                    f"worker {name} exited:\n{(folder / name / 'worker.log').read_text()[-3000:]}"
                )
        if time.monotonic() > deadline:
            raise procs.ServiceError(f"workers {names} not online within {timeout_s:g}s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    """(child process) The pool, one queue per worker, and the deployments on the pool."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--paused", action="store_true")
    args = parser.parse_args(argv)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from deploy.deployments import register_on_work_pool

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=POOL, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        except ObjectAlreadyExists:
            pass
        for i in range(1, args.workers + 1):
            try:
                client.create_work_queue(name=f"w{i}", work_pool_name=POOL)
            except ObjectAlreadyExists:
                pass
    ids = register_on_work_pool(POOL, None, active=not args.paused)
    print(f"registered {len(ids)} deployments on work pool {POOL!r}")


if __name__ == "__main__":
    main()
