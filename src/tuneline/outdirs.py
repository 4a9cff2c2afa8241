"""Output directories tuneline owns: where they may be, how they are claimed, replaced and cleared.

DESIGN §10: never delete or overwrite what tuneline did not create; outputs stay inside the workspace
unless a setting says otherwise; replace by writing beside and renaming. Every place that replaces or
removes an output directory goes through this module:

- `MARKER` is a small file tuneline writes into each directory it creates. It is the proof of ownership:
  a directory that holds it may be replaced or cleared; an existing non-empty directory without it is
  someone else's and is never touched (an empty directory holds nothing to lose, so it may be claimed).
- `inside_workspace` resolves a configured output path and refuses one outside the workspace root
  (`../victim`, an absolute path elsewhere) unless `allow_outside_workspace` is set.
- `replace_dir` publishes a finished temporary directory over an owned (or absent) one by renames.
- `claim_dir` / `fresh_dir` prepare a directory to write into (`tuneline data --output DIR` and its
  private work dir).
- `check_disjoint` refuses an output directory that holds an input, or lies inside one.

The marker's content is fixed, so a rebuild from the same inputs still gives a byte-identical directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tuneline.errors import OutputPathError

MARKER = ".tuneline-output"
_MARKER_TEXT = "Written by tuneline, which may replace this directory. Do not keep your own files here.\n"


def owned(path: Path) -> bool:
    """True when `path` is a real directory (not a link) holding tuneline's marker."""
    return path.is_dir() and not path.is_symlink() and (path / MARKER).is_file()


def mark(path: Path) -> None:
    """Write the ownership marker into a directory tuneline created."""
    (path / MARKER).write_text(_MARKER_TEXT, encoding="utf-8")


def _is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as entries:
        return next(entries, None) is None


def check_replaceable(path: Path, what: str) -> None:
    """Refuse to replace `path` unless it is absent, an empty directory, or a directory tuneline wrote.

    Args:
        path: the output directory about to be replaced.
        what: the setting or option that named it (for the message), e.g. "train.output_dir".

    Raises:
        OutputPathError: `path` is a file, a symbolic link, or a non-empty directory without the marker.
    """
    if path.is_symlink():
        raise OutputPathError(
            f"{what}: {path} is a symbolic link; tuneline replaces only directories it wrote itself"
        )
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputPathError(f"{what}: {path} is a file, not a directory; choose another path")
    if owned(path) or _is_empty_dir(path):
        return
    raise OutputPathError(
        f"{what}: {path} is not empty and was not written by tuneline (no {MARKER} file in it), so it "
        "is left alone; move its content away or choose another path"
    )


def inside_workspace(root: Path, path: Path, what: str, allow_outside: bool = False) -> Path:
    """The output directory `path` (relative to `root` unless absolute), checked to stay in the workspace.

    Args:
        root: the workspace root.
        path: the configured output directory.
        what: the setting that names it, for the message.
        allow_outside: the `allow_outside_workspace` setting.

    Raises:
        OutputPathError: the path resolves to the workspace root itself, or outside it while not allowed.
    """
    full = path if path.is_absolute() else root / path
    resolved, base = full.resolve(), root.resolve()
    if resolved == base:
        raise OutputPathError(f"{what}: {path} is the workspace root itself; name a directory inside it")
    if not allow_outside and not resolved.is_relative_to(base):
        raise OutputPathError(
            f"{what}: {path} resolves to {resolved}, outside the workspace {base}; outputs stay inside "
            "the workspace unless `allow_outside_workspace: true` is set (params.yaml or --set)"
        )
    return full


def replace_dir(tmp: Path, out: Path, what: str) -> None:
    """Publish the finished directory `tmp` as `out` by renames (a crash never leaves half an output).

    The previous `out` (if any) must be tuneline's (see `check_replaceable`); it is moved aside into a
    fresh temporary directory beside it and removed only once the new one is in place.

    Raises:
        OutputPathError: `out` exists and is not tuneline's to replace.
    """
    check_replaceable(out, what)
    mark(tmp)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def claim_dir(path: Path, what: str) -> None:
    """Make `path` a directory tuneline may write into: created (and marked) when absent; an existing one
    must be empty or tuneline's own.

    Raises:
        OutputPathError: `path` is a file, a link, a directory holding someone else's files, or cannot be
            created.
    """
    check_replaceable(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
        mark(path)
    except OSError as exc:
        raise OutputPathError(f"{what}: cannot create {path}: {exc.strerror or exc}") from None


def fresh_dir(path: Path, what: str) -> None:
    """An empty, marked directory at `path`: a previous one is removed only when tuneline wrote it.

    Raises:
        OutputPathError: as `claim_dir`.
    """
    check_replaceable(path, what)
    if path.exists():
        shutil.rmtree(path)
    claim_dir(path, what)


def check_disjoint(inputs: Iterable[Path], output: Path, what: str = "--output") -> None:
    """Refuse an output directory that holds an input (it would be cleared or overwritten) or lies inside
    an input directory (a later run would read its own outputs as raw data).

    Raises:
        OutputPathError: naming both paths.
    """
    out = output.resolve()
    for given in inputs:
        src = Path(given).resolve()
        if src == out or src.is_relative_to(out):
            raise OutputPathError(
                f"input {given} is inside the output directory {output} ({what}); tuneline rewrites its "
                "output directory, so it must not hold inputs: choose an output directory elsewhere"
            )
        if out.is_relative_to(src):
            raise OutputPathError(
                f"output directory {output} ({what}) is inside the input {given}; a later run would read "
                "its own outputs as raw data: choose an output directory outside the inputs"
            )
