"""What every benchmark script ends with: its results as JSON on stdout and, with `--json PATH`, in a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_results(results: dict[str, Any], path: Path | None) -> None:
    """Write `results` as indented JSON to `path` (its folder made), or nothing when `path` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def report_results(results: dict[str, Any], path: Path | None) -> None:
    """Print `results` as indented JSON, then save them to `path` (see `save_results`)."""
    print(json.dumps(results, indent=2))
    save_results(results, path)
