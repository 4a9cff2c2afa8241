"""A test run leaves the repository as it found it: tests write only into temporary folders.

`conftest.py` snapshots `git status --porcelain --ignored` (every untracked and ignored file, one by one)
when the session starts and fails the session at its end if a new path appeared: a test that wrote
`mlruns/`, `mlflow.db`, `reports/...` or `.tuneline/` into the checkout. Changes to tracked files are
not judged (someone editing the code while the tests run is no fault of the tests).
What any Python run of the checkout produces anyway (the virtual environment, byte code, tool caches,
the package's egg-info) is allowed. Outside a git checkout (an unpacked archive) there is nothing to
compare, and the check is skipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

# Pathspecs git leaves out of the listing (also keeps it fast: .venv alone holds thousands of files).
ALLOWED = (
    ":(exclude).venv",
    ":(exclude).pytest_cache",
    ":(exclude).ruff_cache",
    ":(exclude,glob)**/__pycache__/**",
    ":(exclude,glob)**/*.egg-info/**",
)
ALLOWED_PARTS = (".venv", ".pytest_cache", ".ruff_cache", "__pycache__")


def repo_root(project: Path) -> Path | None:
    """`project` when it is the top of a git checkout (and git runs here), else None."""
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=project, capture_output=True,
                              text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    top = Path(done.stdout.strip())
    return project if top.resolve() == project.resolve() else None  # tests inside someone else's repo


def snapshot(root: Path) -> set[str]:
    """`XY path` of every untracked (`??`) and ignored (`!!`) file under `root`, allowed paths left out."""
    done = subprocess.run(
        ["git", "status", "--porcelain=v1", "-z", "--ignored", "--untracked-files=all", "--", ".", *ALLOWED],
        cwd=root, capture_output=True, text=True, timeout=120, check=True,
    )
    entries, fields = set(), iter(done.stdout.split("\0"))
    for field in fields:
        if not field:
            continue
        status, path = field[:2], field[3:]
        if status[0] in "RC":
            next(fields, None)  # a rename's second field is the old path
        if status in ("??", "!!"):
            entries.add(f"{status} {path}")
    return entries


def _allowed(entry: str) -> bool:
    parts = Path(entry[3:]).parts
    return any(p in ALLOWED_PARTS or p.endswith(".egg-info") for p in parts)


def new_entries(before: set[str], after: set[str]) -> list[str]:
    """Entries of `after` that `before` lacks and that no allowed path explains, sorted."""
    return sorted(e for e in after - before if not _allowed(e))
