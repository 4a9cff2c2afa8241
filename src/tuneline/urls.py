"""URLs that params.yaml gives relative to the workspace (the tracking store, the feedback store)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

SQLITE = "sqlite:///"


def anchored_url(url: str, root: Path) -> str:
    """`url` with a workspace-relative location made absolute under `root`, for a process that does not
    run in the workspace (a Prefect worker): `sqlite:///mlflow.db`, or a bare relative path (an MLflow file
    store). Absolute sqlite paths, `sqlite:///:memory:` and server URLs are returned unchanged."""
    if url.startswith(SQLITE) and not url.startswith(SQLITE + "/") and url != SQLITE + ":memory:":
        return SQLITE + str((root / url.removeprefix(SQLITE)).resolve())
    if urlparse(url).scheme == "" and not Path(url).is_absolute():
        return str((root / url).resolve())
    return url
