"""Great Expectations plumbing shared by the `validate_raw` and `validate_splits` gates.

A gate turns records into small pandas frames of per-record features, declares `Check`s (one GX
expectation each, critical or a warning), runs them with `run_checks`, and hands the results to
`finish_contract`, which writes `reports/<stage>.json` and a readable `reports/<stage>.html` — also when
the gate fails — and then raises `DataValidationError` naming every failed critical expectation.

Great Expectations takes seconds to import, so it is imported lazily and its context is built once per
process (`gx_batch_definition`), never at module import.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneline.data.output_schema import OutputSchemas, record_output_error
from tuneline.errors import DataValidationError
from tuneline.html import Markup, badge, esc, page
from tuneline.jsonio import write_json, write_text
from tuneline.layout import Layout

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REF = "ref"  # every frame carries this column: the record id (or where a record came from) shown in reports
_MAX_VALUE_CHARS = 120


@dataclass(frozen=True)
class Check:
    """One expectation of a gate.

    Attributes:
        name: stable snake_case name used in reports and error messages (e.g. `role_pattern`).
        expectation: Great Expectations class name, e.g. `ExpectColumnValuesToBeNull`.
        kwargs: the expectation's arguments (`column`, `mostly`, `min_value`, ...).
        description: one sentence a person understands without knowing GX.
        critical: a failed critical check stops the pipeline; otherwise it is a warning in the report.
        frame: which of the frames passed to `run_checks` it runs on.
    """

    name: str
    expectation: str
    kwargs: dict[str, Any]
    description: str
    critical: bool = True
    frame: str = "records"


def _import_gx() -> Any:
    gx_logger = logging.getLogger("great_expectations")
    if gx_logger.level == logging.NOTSET:
        # GX logs its own internals at INFO (hundreds of lines per import); keep tuneline's log readable.
        gx_logger.setLevel(logging.WARNING)
    import great_expectations  # lazy: ~8 s to import (measured); only a validate stage's run needs it

    return great_expectations


@lru_cache(maxsize=1)
def gx_batch_definition() -> Any:
    """The one in-memory GX context of this process, reduced to a whole-dataframe batch definition.

    Cached because building the context (and importing GX) costs seconds; each validation only swaps the
    dataframe passed as a batch parameter. Analytics and progress bars are off: tuneline runs offline and
    logs its own progress.
    """
    gx = _import_gx()
    from great_expectations.data_context.types.base import (  # lazy: part of great_expectations, see above
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    asset = context.data_sources.add_pandas("tuneline").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def run_checks(
    frames: dict[str, pd.DataFrame], checks: list[Check], sample_size: int
) -> list[dict[str, Any]]:
    """Validate each check on its frame with Great Expectations; returns one report row per check.

    Args:
        frames: named frames; each must have a `ref` column (the id shown for unexpected rows).
        checks: the expectations to run, in report order.
        sample_size: unexpected ids (and values) kept per expectation.

    Returns:
        Rows {name, expectation, column, description, critical, success, observed, unexpected_count,
        unexpected_percent, unexpected_ids}.
    """
    batch_definition = gx_batch_definition()
    gx = _import_gx()
    result_format = {
        "result_format": "SUMMARY",
        "unexpected_index_column_names": [REF],
        "partial_unexpected_count": sample_size,
    }
    rows = []
    for check in checks:
        frame = frames[check.frame]
        if REF not in frame.columns:
            raise KeyError(f"frame {check.frame!r} has no {REF!r} column")
        # GX hashes the whole dataframe for every validation: hand it only what the check reads (the ids
        # and its column), which gives the same result at a fraction of the cost on wide feature frames.
        column = check.kwargs.get("column")
        if column in frame.columns and column != REF:
            frame = frame[[REF, column]]
        elif column is None:
            frame = frame[[REF]]
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        expectation = getattr(gx.expectations, check.expectation)(**check.kwargs)
        with warnings.catch_warnings():
            # pandas warns when a user's role regex has capturing groups; matching is still correct.
            warnings.filterwarnings("ignore", message="This pattern is interpreted as a regular expression")
            result = batch.validate(expectation, result_format=result_format).to_json_dict()
        rows.append(_report_row(check, result, sample_size))
    return rows


def _report_row(check: Check, result: dict[str, Any], sample_size: int) -> dict[str, Any]:
    res = result.get("result") or {}
    exception = result.get("exception_info") or {}
    column = check.kwargs.get("column")
    ids = [entry.get(REF) for entry in res.get("partial_unexpected_index_list") or []]
    if "observed_value" in res:
        observed: Any = _short(res["observed_value"])
    else:
        # Distinct sample values say *what* was wrong (the bad role order, the URL left in the text).
        seen = list(dict.fromkeys(_short(v) for v in res.get("partial_unexpected_list") or []))
        observed = seen[:5]
    if exception.get("raised_exception"):
        observed = f"error: {exception.get('exception_message')}"
    percent = res.get("unexpected_percent")
    return {
        "name": check.name,
        "expectation": result.get("expectation_config", {}).get("type", check.expectation),
        "column": column,
        "description": check.description,
        "critical": check.critical,
        "success": bool(result.get("success")),
        "observed": observed,
        "unexpected_count": res.get("unexpected_count"),
        "unexpected_percent": round(percent, 3) if isinstance(percent, float) else percent,
        "unexpected_ids": [str(i) for i in ids[:sample_size]],
        "kwargs": {k: _short(v) for k, v in check.kwargs.items() if k != "column"},
    }


def _short(value: Any) -> Any:
    """JSON-safe, short values for reports (numpy scalars as Python, long texts cut, NaN as null)."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 20:
        return [_short(v) for v in value]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def build_report(
    stage: str, rows: int, results: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """The gate's report: success, counts of passed / failed checks, every check's row, stage numbers."""
    failed_critical = [r["name"] for r in results if not r["success"] and r["critical"]]
    failed_warning = [r["name"] for r in results if not r["success"] and not r["critical"]]
    return {
        "stage": stage,
        "success": not failed_critical,
        "rows": rows,
        # A gate drops nothing: the ledger of rows stays balanced through it.
        "rows_in": rows,
        "rows_kept": rows,
        "rows_rejected": 0,
        "expectations_evaluated": len(results),
        "expectations_passed": sum(r["success"] for r in results),
        "failed_critical": failed_critical,
        "failed_warning": failed_warning,
        **extra,
        "expectations": results,
    }


def finish_contract(
    layout: Layout, stage: str, rows: int, results: list[dict[str, Any]], extra: dict[str, Any]
) -> dict[str, Any]:
    """Write reports/<stage>.json and .html, log warnings, then raise if a critical check failed.

    Raises:
        DataValidationError: listing every failed critical expectation, after both reports are written.
    """
    report = build_report(stage, rows, results, extra)
    json_path, html_path = layout.report(stage), layout.report(stage, "html")
    write_json(json_path, report)
    write_text(html_path, render_html(report))
    for row in results:
        if not row["success"] and not row["critical"]:
            log.warning("%s: warning: %s", stage, _failure_line(row))
    log.info(
        "%s: %d/%d expectations passed on %d rows (report: %s)",
        stage, report["expectations_passed"], report["expectations_evaluated"], rows, html_path,
    )
    if not report["success"]:
        raise DataValidationError(failure_message(report, html_path))
    return report


def failure_message(report: dict[str, Any], html_path: Path | str) -> str:
    """One screen: which critical expectations failed, how badly, sample ids, and where the report is."""
    failed = [r for r in report["expectations"] if not r["success"] and r["critical"]]
    lines = [
        f"{report['stage']}: {len(failed)} critical expectation(s) failed on {report['rows']} rows "
        f"(full report: {html_path}):"
    ]
    lines += [f"  - {_failure_line(row)}" for row in failed]
    lines.append(f"Fix the data (or the thresholds in params.yaml, section `{report['stage']}`) and rerun.")
    return "\n".join(lines)


def _failure_line(row: dict[str, Any]) -> str:
    where = f" [{row['column']}]" if row.get("column") else ""
    parts = [f"{row['name']}{where}: {row['description']}"]
    if row.get("unexpected_count"):
        pct = row.get("unexpected_percent")
        parts.append(f"{row['unexpected_count']} unexpected" + (f" ({pct:.2f}%)" if pct is not None else ""))
    if row.get("observed") not in (None, []):
        parts.append(f"observed {_short(row['observed'])}")
    if row.get("unexpected_ids"):
        parts.append("e.g. ids " + ", ".join(row["unexpected_ids"][:5]))
    return "; ".join(parts)


# --- per-record features shared by both gates -------------------------------------------------------


def roles_string(record: dict[str, Any]) -> str | None:
    """'system,user,assistant' — the role sequence a regex checks; None when `messages` is not a list."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    return ",".join(str(m.get("role")) if isinstance(m, dict) else "?" for m in messages)


def message_contents(record: dict[str, Any]) -> list[str]:
    """Every message's content as text (missing or non-text content counts as empty)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return []
    return [
        m["content"] if isinstance(m, dict) and isinstance(m.get("content"), str) else "" for m in messages
    ]


def message_features(record: dict[str, Any]) -> tuple[str | None, list[str]]:
    """`roles_string(record)` and `message_contents(record)` in one pass over the messages: what both
    gates read of every record, computed once per record."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        return None, []
    roles: list[str] = []
    contents: list[str] = []
    for m in messages:
        if isinstance(m, dict):
            roles.append(str(m.get("role")))
            content = m.get("content")
            contents.append(content if isinstance(content, str) else "")
        else:
            roles.append("?")
            contents.append("")
    return (",".join(roles) if roles else None), contents


# --- the output-schema part of both gates: two feature columns, the frame they select, one check ----------


def schema_features(record: dict[str, Any], schemas: Any | None) -> tuple[Any | None, dict[str, Any]]:
    """The validator `record`'s outputs must follow, and its two schema feature columns.

    `schemas` is one validator for every record, an `OutputSchemas` that picks one by category, or None.
    `structured` says whether a schema covers the record; `schema_error` is why its outputs miss it.
    """
    validator = schemas.for_record(record) if isinstance(schemas, OutputSchemas) else schemas
    error = record_output_error(record, validator) if validator is not None else None
    return validator, {"structured": validator is not None, "schema_error": error}


def structured_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` a schema covers: the frame `schema_check` runs on."""
    return frame[frame["structured"].astype(bool)].reset_index(drop=True)


def schema_check(schemas: OutputSchemas, mostly: float) -> Check:
    """The check that at least `mostly` of the records a schema covers follow it (free text is not judged)."""
    return Check(
        "output_schema", "ExpectColumnValuesToBeNull",
        {"column": "schema_error", "mostly": mostly},
        f"{schemas.describe()}, for at least {mostly:.0%} of those records",
        frame="structured",
    )


# The contract pages' own styles, on top of `tuneline.html.BASE_CSS`: one coloured row per check.
CONTRACT_CSS = """
tr.pass td{background:#e8f5e9}tr.fail td{background:#ffebee}tr.warn td{background:#fff8e1}
td.ids{font-family:monospace;font-size:.85em;max-width:28em;word-break:break-all}
"""


def _cell(value: Any) -> str:
    """A report value as escaped text: lists and dicts as JSON, None as nothing."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    return esc("" if value is None else value)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (the shared shell): a summary table and one coloured row per check."""
    passed = report["success"]
    verdict = "PASSED" if passed else "FAILED"
    summary = {k: v for k, v in report.items() if k not in ("expectations", "stage")}
    summary_rows = "".join(f"<tr><th>{esc(k)}</th><td>{_cell(v)}</td></tr>" for k, v in summary.items())
    body_rows = []
    for row in report["expectations"]:
        kind = "pass" if row["success"] else ("fail" if row["critical"] else "warn")
        result = "pass" if row["success"] else ("FAIL" if row["critical"] else "warning")
        pct = row.get("unexpected_percent")
        unexpected = "" if row.get("unexpected_count") is None else f"{row['unexpected_count']}"
        if pct is not None and row.get("unexpected_count") is not None:
            unexpected += f" ({pct:.2f}%)"
        body_rows.append(
            f'<tr class="{kind}"><td>{result}</td><td><b>{_cell(row["name"])}</b><br>'
            f'<small>{_cell(row["expectation"])}</small></td><td>{_cell(row["column"])}</td>'
            f'<td>{_cell(row["description"])}<br><small>{_cell(row.get("kwargs"))}</small></td>'
            f'<td>{"critical" if row["critical"] else "warning"}</td><td>{_cell(row["observed"])}</td>'
            f'<td>{_cell(unexpected)}</td><td class="ids">{_cell(", ".join(row["unexpected_ids"]))}</td></tr>'
        )
    title = f"tuneline {report['stage']}"
    heading = Markup(f"{esc(title)}: {badge(verdict, 'ok' if passed else 'bad')}")
    body = (
        f"<table>{summary_rows}</table>\n"
        "<table><tr><th>result</th><th>expectation</th><th>column</th><th>description</th><th>severity</th>"
        "<th>observed</th><th>unexpected</th><th>sample ids</th></tr>\n"
        f"{''.join(body_rows)}\n</table>"
    )
    return page(f"{title}: {verdict}", body, css=CONTRACT_CSS, heading=heading)
