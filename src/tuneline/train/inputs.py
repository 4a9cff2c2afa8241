"""Where the model stages find their inputs: the processed splits and the base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneline.config.loader import Config
from tuneline.errors import InputFileError
from tuneline.jsonio import read_jsonl
from tuneline.layout import Layout


def resolve_model_path(cfg: Config, layout: Layout) -> str:
    """`model.name_or_path` relative to the layout root when it exists there, else as given (hub id)."""
    given = Path(cfg.model.name_or_path).expanduser()
    local = given if given.is_absolute() else layout.root / given
    return str(local) if local.exists() else cfg.model.name_or_path


def read_split(layout: Layout, split: str) -> list[dict[str, Any]]:
    """Records of a processed split.

    Raises:
        InputFileError: the split is missing or empty.
    """
    path = layout.processed(split)
    if not path.is_file():
        raise InputFileError(f"{path}: {split} split not found; run the data stages first (`dvc repro`)")
    rows = list(read_jsonl(path))
    if not rows:
        raise InputFileError(f"{path}: {split} split is empty")
    return rows
