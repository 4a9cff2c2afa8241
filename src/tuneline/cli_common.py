"""What every `tuneline` command shares: the --params / --set options, config loading, logging, errors.

Every command's body runs under `@command` (logging set up, a typed error turned into one red line and
its exit code) and works on `WORKSPACE`, the current directory.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.logging import RichHandler

from tuneline.config import Config, load_config
from tuneline.errors import TunelineError
from tuneline.layout import Layout
from tuneline.redact import install_log_redaction, redact

P = ParamSpec("P")
R = TypeVar("R")

WORKSPACE = Layout(Path("."))
"""The workspace every command reads and writes: the current directory (./params.yaml, ./data, ./reports)."""

ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", "-p", help="params YAML (default: ./params.yaml if present, else defaults)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting, e.g. --set dedup.threshold=0.9 (repeatable)."),
]


def setup_logging() -> None:
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


def command(*, logs: bool = True) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Wrap a CLI command: set up logging (unless `logs` is False: a command whose stdout is data, like
    `config show`), run the body, and turn a `TunelineError` into one line on stderr and its exit code.

    Put it under `@app.command(...)`; typer reads the options from the wrapped function's signature.
    """

    def wrap(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            if logs:
                setup_logging()
            try:
                return func(*args, **kwargs)
            except TunelineError as exc:
                raise fail(exc) from None

        return run

    return wrap
