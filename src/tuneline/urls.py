"""URLs in params.yaml: workspace-relative stores (tracking, feedback), PostgreSQL lock database URLs."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from tuneline.redact import MASK, redact_text

SQLITE = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def anchored_url(url: str, root: Path) -> str:
    """`url` with a workspace-relative location made absolute under `root`, for a process that does not
    run in the workspace (a Prefect worker): `sqlite:///mlflow.db`, or a bare relative path (an MLflow file
    store). Absolute sqlite paths, `sqlite:///:memory:` and server URLs are returned unchanged."""
    if url.startswith(SQLITE) and not url.startswith(SQLITE + "/") and url != SQLITE + ":memory:":
        return SQLITE + str((root / url.removeprefix(SQLITE)).resolve())
    if urlparse(url).scheme == "" and not Path(url).is_absolute():
        return str((root / url).resolve())
    return url


def is_postgres(url: str) -> bool:
    """Whether `url` names a PostgreSQL database (any SQLAlchemy driver suffix: postgresql+psycopg://)."""
    return urlparse(url).scheme.split("+", 1)[0] in POSTGRES_SCHEMES


def has_password(url: str) -> bool:
    """Whether `url` carries a password (in its userinfo or as a `password=` / `sslpassword=` item)."""
    return safe_url(url) != url


def safe_url(url: str) -> str:
    """`url` with its password masked (what messages show).

    Besides the patterns `redact_text` knows, the userinfo password as `urlparse` reads it is masked: one
    that libpq would reject (an unencoded space) still must not reach the message that says so.
    """
    text = redact_text(url, environ={})
    try:
        password = urlparse(url).password
    except ValueError:  # a malformed netloc: the patterns above are all there is to go on
        return text
    return text.replace(f":{password}@", f":{MASK}@") if password else text


def libpq_url(url: str) -> str:
    """A SQLAlchemy-style PostgreSQL URL as libpq reads it: the `+driver` suffix dropped."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and is_postgres(url) else url
