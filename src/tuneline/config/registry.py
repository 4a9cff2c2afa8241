"""`registry` section: the MLflow registered model that holds every candidate and the aliases."""

from urllib.parse import urlparse

from pydantic import Field, field_validator

from tuneline.config.base import Section
from tuneline.urls import has_password, is_postgres


class RegistryParams(Section):
    model_name: str = Field("tuneline-demo", description="Registered model name in the MLflow registry.")
    champion_alias: str = Field("champion", description="Alias of the model in service.")
    challenger_alias: str = Field("challenger", description="Alias of the newest evaluated candidate.")
    previous_alias: str = Field(
        "previous_champion", description="Alias kept on the champion a promotion replaced (for rollback)."
    )
    copy_base: bool = Field(
        False,
        description="Copy the base model's files into every registered version, for air-gapped serving. "
        "Off: a version records a reference to its base (local path + content hash, or hub id + "
        "revision), checked when the version is loaded, instead of storing GBs per version. A base inside "
        "the workspace (the demo base, a pipeline output the next experiment replaces) is always copied.",
    )
    lock_url: str | None = Field(
        None,
        description="PostgreSQL database the alias lock is taken on (an advisory lock), for an http(s) "
        "tracking.uri: the MLflow server's backend database, e.g. postgresql://tuneline@db:5432/mlflow. "
        "No password here (params.yaml is committed): libpq reads PGPASSWORD or ~/.pgpass, or set the "
        "whole URL in TUNELINE_LOCK_DATABASE_URL (which wins). null: a postgresql:// tracking.uri locks "
        "on itself, a sqlite/file store uses a lock file beside it, an http(s) server a lock file that "
        "covers this host only (see require_cross_host_lock).",
    )
    require_cross_host_lock: bool = Field(
        False,
        description="Refuse to move aliases when the lock would cover this host only (an http(s) "
        "tracking.uri with no lock_url). Off: a warning says so once and promoters must run on one host. "
        "Turn it on wherever promoters run on several hosts.",
    )

    @field_validator("lock_url")
    @classmethod
    def _lock_url_is_postgres_without_password(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            urlparse(value).port  # noqa: B018 -- reads host and port; `user:password/db` fails here
        except ValueError:
            # The parser's text quotes the bad port, which may be the password: not repeated.
            raise ValueError("its host or port cannot be read: use postgresql://user@host:port/database"
                             ) from None
        if not is_postgres(value):
            raise ValueError("must be a PostgreSQL URL (postgresql://user@host:port/database)")
        if has_password(value):
            # The message must not repeat the value: it holds the secret.
            raise ValueError("must not contain a password (params.yaml is committed): use PGPASSWORD, "
                             "~/.pgpass, or the whole URL in TUNELINE_LOCK_DATABASE_URL")
        return value
