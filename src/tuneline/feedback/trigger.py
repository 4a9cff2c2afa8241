"""Which exported feedback rows have not yet counted towards a retrain trigger.

An hourly export may bring 10 rows at a time; the trigger compares the rows waiting since the last
trigger with `feedback.retrain_threshold`, not one export's rows. The bookkeeping is a small JSON file
in the workspace (`.tuneline/feedback_trigger.json`): the export files already counted. Files are
immutable (one per export), so a file's rows are counted exactly once; rows recovered after a crash
live in their original file and count with it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneline.config import Config
from tuneline.feedback.export import SFT_PREFIX
from tuneline.jsonio import write_json

STATE = Path(".tuneline") / "feedback_trigger.json"


def _state(root: Path) -> dict[str, Any]:
    path = root / STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"counted": [], "triggers": []}


def waiting_rows(cfg: Config, root: Path) -> dict[str, Any]:
    """{"rows": SFT rows in export files not counted yet, "files": those files' names (sorted)}."""
    export_dir = root / cfg.feedback.export_dir  # an absolute export_dir stays absolute
    counted = set(_state(root)["counted"])
    found = sorted(export_dir.glob(f"{SFT_PREFIX}*.jsonl")) if export_dir.is_dir() else []
    files = [p for p in found if p.name not in counted]
    rows = sum(sum(1 for line in p.read_text(encoding="utf-8").splitlines() if line.strip()) for p in files)
    return {"rows": rows, "files": [p.name for p in files]}


def record_trigger(root: Path, files: list[str], flow_run: str | None = None) -> None:
    """Mark these export files as counted by a retrain trigger (atomic write)."""
    state = _state(root)
    state["counted"] = sorted(set(state["counted"]) | set(files))
    state["triggers"].append({"at": datetime.now(UTC).isoformat(timespec="seconds"), "files": sorted(files),
                              "flow_run": flow_run})
    write_json(root / STATE, state)
