"""`ingest`: read raw sources (alpaca, sharegpt, OpenAI messages, CSV, parquet) into canonical JSONL.

Each configured source is a file or a directory read recursively in sorted path order. Inside a directory,
hidden files/folders and files without a data extension (README.md, LICENSE, ATTRIBUTION.md, ...) are skipped
and listed in the report; a source given as a single file is always read (its format sniffed if needed).

Every raw row ends up either as a canonical record (`data/interim/ingest.jsonl`) or as a rejected row with
its file, line/index and a machine-readable reason (`data/rejected/ingest.jsonl`). A whole file that cannot
be read becomes one rejected row (source without line/index) or, with `ingest.on_bad_file: error`, an
`InputFileError` naming it.

Rejection reasons: bad_json, invalid_utf8 (also text holding a lone surrogate escape such as "\ud800",
which UTF-8 cannot encode), too_deep (JSON nested deeper than `readers.MAX_DEPTH`), not_an_object,
missing_field, null_field, wrong_type, unsupported_format, unsupported_content, unknown_role,
bad_role_order, no_final_assistant, empty_conversation, unknown_format, ragged_row, bad_csv, and for whole
files unreadable_file, bad_json_file, top_level_object, unknown_format.

Skipped files (listed in the report, not rows): hidden, not_data, not_a_regular_file (a FIFO, socket or
device: reading one could block forever), linked_dir (a symbolic link to a directory is not followed),
unreadable_dir, optional_missing. File names that are not valid UTF-8 are shown with backslash escapes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline import formats
from tuneline.config import Config
from tuneline.config.ingest import IngestParams, Source
from tuneline.data.readers import (
    DATA_EXTS,
    MAX_DEPTH,
    READERS,
    FileProblem,
    FileStats,
    container_of,
    display_path,
    is_empty,
    nesting_depth,
    printable,
)
from tuneline.errors import InputFileError
from tuneline.formats import RowError
from tuneline.jsonio import dumps_bytes
from tuneline.layout import Layout
from tuneline.ledger import Ledger, finish_stage
from tuneline.progress import track
from tuneline.records import make_record, reject

log = logging.getLogger(__name__)

STAGE = "ingest"
ROW_FORMATS = ("alpaca", "sharegpt", "messages")


@dataclass
class FileResult:
    """Records and rejected rows of one file, and its line in the report."""

    records: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    format: str | None = None
    container: str | None = None
    blank_lines: int = 0
    rows_in: int = 0  # counted as rows are read, independently of where they end up

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "container": self.container,
            "rows_in": self.rows_in,
            "rows_kept": len(self.records),
            "rows_rejected": len(self.rejected),
            "blank_lines": self.blank_lines,
        }


def discover(path: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The data files of a source (sorted) and the entries skipped with why (see the module docstring).

    Raises:
        InputFileError: the source path does not exist, or is neither a regular file nor a directory.
    """
    shown = display_path(path)
    if not path.exists() and not path.is_symlink():
        raise InputFileError(f"{shown}: ingest source not found (check ingest.sources[].path in params.yaml)")
    if path.is_file() or (path.is_symlink() and not path.exists()):
        return [path], []  # a dangling link is read, and rejected as an unreadable file
    if not path.is_dir():
        raise InputFileError(f"{shown}: ingest source is not a regular file or a directory (a FIFO, socket "
                             "or device); reading it could block forever")
    found: list[Path] = []
    skipped: list[dict[str, str]] = []

    def unreadable(exc: OSError) -> None:
        where = display_path(Path(exc.filename)) if exc.filename else shown
        skipped.append({"file": where + "/", "reason": "unreadable_dir"})

    for dirpath, dirnames, filenames in os.walk(path, onerror=unreadable):
        here = Path(dirpath)
        for name in list(dirnames):
            if name.startswith("."):  # .git, .ipynb_checkpoints, ...: never data
                skipped.append({"file": display_path(here / name) + "/", "reason": "hidden"})
                dirnames.remove(name)
            elif (here / name).is_symlink():  # os.walk does not follow it (loops); say so
                skipped.append({"file": display_path(here / name) + "/", "reason": "linked_dir"})
        for name in filenames:
            p = here / name
            if name.startswith("."):
                skipped.append({"file": display_path(p), "reason": "hidden"})
            elif p.suffix.lower() not in DATA_EXTS:
                skipped.append({"file": display_path(p), "reason": "not_data"})
            elif p.exists() and not p.is_file():
                skipped.append({"file": display_path(p), "reason": "not_a_regular_file"})
            else:
                found.append(p)
    found.sort(key=lambda p: p.relative_to(path).parts)
    skipped.sort(key=lambda s: s["file"])
    return found, skipped


def row_category(row: dict[str, Any], key: str, default: str | None) -> str | None:
    """The row's own category (field `key`), else `default`; a non-string category is wrong_type."""
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field `{key}` (category) must be a string, got {type(value).__name__}")
    return value.strip() or default


def convert_row(
    row: dict[str, Any],
    fmt: str,
    columns: dict[str, str],
    source: dict[str, Any],
    category_field: str = "category",
    default_category: str | None = None,
    *,
    depth_checked: bool = False,
) -> dict[str, Any]:
    """One parsed raw row -> canonical record, checked for role order, depth and encodable text.

    Args:
        row: the raw object (JSON object, CSV row by header, parquet row).
        fmt: alpaca, sharegpt, messages or table.
        columns: canonical name -> column, for `table` rows (resolved, not empty).
        source: {"file", "line"} or {"file", "index"}.
        category_field: the raw field holding a row's own category.
        default_category: the source's category for rows without one.
        depth_checked: the reader already proved the row no deeper than `MAX_DEPTH` (JSON and CSV rows).

    Raises:
        RowError: the reason the row cannot be a record.
    """
    if not depth_checked and nesting_depth(row) > MAX_DEPTH:
        raise RowError("too_deep", f"row nested deeper than {MAX_DEPTH} levels")
    formats.check_supported(row)
    cat_key = columns.get("category", category_field) if fmt == "table" else category_field
    try:
        messages, meta = formats.converter(fmt, columns, cat_key)(row)
    except RecursionError:  # a JSON string inside the row (tools, a messages column) nested too deep
        raise RowError("too_deep", f"a JSON value in the row is nested deeper than {MAX_DEPTH} levels") \
            from None
    formats.check_media(messages)
    category = row_category(row, cat_key, default_category)
    formats.check_roles(messages, meta.get(formats.TOOL_CALL_KEY, []))
    _check_writable({"messages": messages, "category": category, "meta": meta})
    return make_record(messages, source, category=category, meta=meta)


def _check_depth(content: dict[str, Any]) -> None:
    if nesting_depth(content) > MAX_DEPTH:
        raise RowError("too_deep", f"a JSON value in the row is nested deeper than {MAX_DEPTH} levels")


def _check_writable(content: dict[str, Any]) -> None:
    """The id hash and every later stage encode the record as UTF-8 JSON; refuse now what they could not.

    Too deep is said first (as when the depth was measured before encoding); the encoding comes first
    because its brackets bound the depth, so most rows are never walked.
    """
    try:
        encoded = dumps_bytes(content)
    except UnicodeEncodeError as exc:
        _check_depth(content)
        bad = exc.object[exc.start : exc.end].encode("utf-8", "backslashreplace").decode("ascii")
        raise RowError(
            "invalid_utf8",
            f"text holds a lone surrogate escape ({bad}), which is not a character: UTF-8 cannot encode it",
        ) from None
    except Exception:
        _check_depth(content)
        raise
    if encoded.count(b"[") + encoded.count(b"{") > MAX_DEPTH:
        _check_depth(content)


def _raw_text(raw: str | None, row: dict[str, Any] | None) -> str | None:
    if raw is not None:
        return printable(raw)
    if row is None:
        return None
    try:
        return printable(json.dumps(formats.jsonable(row), ensure_ascii=False))
    except RecursionError:
        return None


def _reject(reason: str, source: dict[str, Any], detail: str, raw: str | None = None) -> dict[str, Any]:
    # Details quote raw keys and values, which may hold lone surrogates: keep the rejected row writable.
    return reject(STAGE, reason, source, printable(detail), raw=raw)


def read_source_file(path: Path, label: str, src: Source, params: IngestParams) -> FileResult:
    """Read one file of a source into records and rejected rows (a whole-file problem per `on_bad_file`)."""
    res = FileResult()
    stats = FileStats()
    try:
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise FileProblem("unreadable_file", f"cannot read: {exc.strerror or exc}") from None
        if not stat.S_ISREG(mode):
            raise FileProblem("unreadable_file", "not a regular file (a FIFO, socket or device)")
        if is_empty(path):
            return res
        res.container = container_of(path, src.format)
        if res.container is None:
            raise FileProblem(
                "unknown_format",
                "cannot detect the format (not JSON, JSONL, CSV or parquet); "
                "declare `format` for this source",
            )
        fmt: str | None = src.format if src.format in ROW_FORMATS else None
        if res.container in ("csv", "parquet") or src.format in ("csv", "parquet"):
            fmt = "table"
        convert: Callable[[dict[str, Any], dict[str, Any], bool], dict[str, Any]] | None = None
        for raw in READERS[res.container](path, label, stats):
            res.rows_in += 1
            try:
                if raw.row is None:
                    raise RowError(raw.reason or "bad_json", raw.detail)
                if convert is None:
                    formats.check_supported(raw.row)  # say "preference pairs", not "unknown format"
                    fmt = fmt or formats.detect(raw.row)
                    if fmt is None:
                        keys = ", ".join(list(raw.row)[:8])
                        raise RowError("unknown_format", f"no known format fits this row's fields ({keys})")
                    convert = _make_converter(fmt, raw.row, src, params)
                # JSON rows were measured by the reader (`raw` kept); CSV rows are flat; parquet rows are not.
                res.records.append(convert(raw.row, raw.source, raw.raw is not None))
            except RowError as exc:
                res.rejected.append(_reject(exc.reason, raw.source, exc.detail, _raw_text(raw.raw, raw.row)))
        res.format = fmt
    except FileProblem as exc:
        if params.on_bad_file == "error":
            raise InputFileError(f"{label}: {exc.detail}") from None
        log.warning("%s: %s (whole file rejected: %s)", label, exc.detail, exc.reason)
        res.rows_in += 1
        res.rejected.append(_reject(exc.reason, {"file": label}, exc.detail))
    res.blank_lines = stats.blank_lines
    return res


def _make_converter(
    fmt: str, first_row: dict[str, Any], src: Source, params: IngestParams
) -> Callable[[dict[str, Any], dict[str, Any], bool], dict[str, Any]]:
    # Columns are resolved once per file (from the first row's keys = the header), not per row.
    columns = formats.resolve_columns(list(first_row), src.columns) if fmt == "table" else {}
    category_field = params.category_field

    def convert(row: dict[str, Any], source: dict[str, Any], checked: bool = False) -> dict[str, Any]:
        return convert_row(row, fmt, columns, source, category_field, src.category, depth_checked=checked)

    return convert


def ingest_sources(
    params: IngestParams,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, dict[str, Any]]:
    """Read every source; returns (records, rejected rows, rows read, report extra: files/skipped/empty).

    Raises:
        InputFileError: a source path is missing, or a file is unusable and `on_bad_file` is `error`.
    """
    plan: list[tuple[Path, Source]] = []
    skipped: list[dict[str, str]] = []
    for src in params.sources:  # check every path before reading anything: fail fast, naming the path
        if not src.required and not Path(src.path).exists():
            # e.g. data/raw/feedback before the first `tuneline feedback export`: said, not an error
            log.info("ingest: optional source %s does not exist yet; nothing to read", src.path)
            skipped.append({"file": display_path(Path(src.path)), "reason": "optional_missing"})
            continue
        found, skip = discover(Path(src.path))
        plan.extend((p, src) for p in found)
        skipped.extend(skip)
    for s in skipped:
        log.info("ingest: skipped %s (%s)", s["file"], s["reason"])
    records: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    rows_in = 0
    files: dict[str, dict[str, Any]] = {}
    empty: list[str] = []
    for path, src in track(plan, "ingest files"):
        label = display_path(path)
        res = read_source_file(path, label, src, params)
        records.extend(res.records)
        rejected.extend(res.rejected)
        rows_in += res.rows_in
        files[label] = res.summary()
        if res.rows_in == 0:
            empty.append(label)
            log.warning("ingest: %s holds no rows", label)
        log.info(
            "ingest: %s: %s, %d kept, %d rejected", label, res.format, len(res.records), len(res.rejected)
        )
    extra = {"files": files, "skipped_files": skipped, "empty_files": empty}
    return records, rejected, rows_in, extra


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """Ingest cfg.ingest.sources into layout.interim("ingest"); returns the report."""
    records, rejected, rows_in, extra = ingest_sources(cfg.ingest)
    ledger = Ledger(STAGE)
    ledger.rows_in = rows_in
    ledger.rows_kept = len(records)
    for row in rejected:
        ledger.rejected_by_reason[row["reason"]] += 1
    ledger.extra.update(extra)
    return finish_stage(layout, ledger, rejected, {layout.interim(STAGE): records})
