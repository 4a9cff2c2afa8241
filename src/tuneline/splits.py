"""The processed splits that the model stages (train, evaluate, promote) read."""

from __future__ import annotations

from typing import Any

from tuneline.errors import InputFileError
from tuneline.jsonio import read_jsonl
from tuneline.layout import Layout


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
