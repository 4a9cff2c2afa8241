"""Progress bars for long loops: rich on a terminal, silent when piped or in CI."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    if os.environ.get("TUNELINE_PROGRESS") == "1":
        return True
    if os.environ.get("CI") or os.environ.get("TUNELINE_PROGRESS") == "0":
        return False
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield from `items`, drawing a progress bar on stderr when a person is watching."""
    if not enabled():
        yield from items
        return
    from rich.progress import (  # lazy: rich.progress ~0.5 s; quiet runs (no TTY, CI) draw no bar
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
