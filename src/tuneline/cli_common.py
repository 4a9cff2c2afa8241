"""What every `tuneline` command shares: the --params / --set options, config loading, logging, errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from tuneline.config import Config, load_config
from tuneline.errors import TunelineError
from tuneline.redact import install_log_redaction, redact

ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="params YAML (default: ./params.yaml if present, else defaults)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting, e.g. --set dedup.threshold=0.9 (repeatable)."),
]


def setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, console=None, markup=False)],
    )
    install_log_redaction()  # every line, whoever logs it (uvicorn, mlflow, sqlalchemy): no credentials


def load(params: Path | None, overrides: list[str] | None) -> Config:
    """The config from `params` (default ./params.yaml when present, else built-in defaults) + overrides."""
    if params is None:
        params = Path("params.yaml") if Path("params.yaml").exists() else None
    return load_config(params, overrides or [])


def fail(exc: TunelineError) -> typer.Exit:
    """Print a typed error in one line and return the Exit to raise (its exit code)."""
    typer.secho(f"error: {redact(str(exc))}", fg=typer.colors.RED, err=True)
    return typer.Exit(exc.exit_code)
