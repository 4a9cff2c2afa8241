"""The cluster's credentials: from the environment, else generated once into a private file.

Each credential has an environment variable; one that is unset is read from `<state>/credentials.env`
(mode 0600), and generated there (random) the first time. They are handed to the servers and workers
through their environment only: never written to params.yaml, a command line or a log.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# variable -> what it is; the values never leave the environment and the credentials file.
CREDENTIALS: dict[str, str] = {
    "TUNELINE_PG_PASSWORD": "password of the PostgreSQL role that owns the cluster's databases",
    "TUNELINE_S3_ACCESS_KEY": "access key of the object store (S3 API)",
    "TUNELINE_S3_SECRET_KEY": "secret key of the object store (S3 API)",
}
FILE = "credentials.env"


def load_credentials(state: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every credential: the environment's value, else the credentials file's, else a new random one
    (then saved to the file, 0600, so the next start and `make cluster-down` agree)."""
    env = os.environ if environ is None else environ
    path = state / FILE
    saved = _read(path)
    values: dict[str, str] = {}
    for name in CREDENTIALS:
        values[name] = env.get(name) or saved.get(name) or _new(name)
    missing = {k: v for k, v in values.items() if saved.get(k) != v and not env.get(k)}
    if missing:
        _write(path, {**saved, **missing})
    return values


def _new(name: str) -> str:
    # Access keys: letters and digits (some S3 clients are strict); secrets: URL-safe, no quoting needed.
    return secrets.token_hex(10).upper() if name.endswith("ACCESS_KEY") else secrets.token_urlsafe(24)


def _read(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip("'")
    return out


def _write(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Created 0600 from the start: the secret is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(
            "# tuneline cluster credentials (generated; keep private). `set -a; . THIS_FILE` exports them.\n"
        )
        for key, value in values.items():
            out.write(f"{key}='{value}'\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the start (a config file that holds a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)
