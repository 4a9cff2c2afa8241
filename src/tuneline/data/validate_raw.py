"""`validate_raw`: the Great Expectations contract on ingested records, before any cleaning.

Reads data/interim/ingest.jsonl and reports/ingest.json, drops nothing, writes reports/validate_raw.json
and .html, and stops the pipeline (DataValidationError) when a critical expectation fails: broken
conversations, absurd lengths, unknown categories, invalid structured outputs, too few rows, or an
ingest that rejected too much of its input. Empty turns are only a warning: `clean` drops them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tuneline.config import Config
from tuneline.data.contracts import (
    REF,
    Check,
    finish_contract,
    message_features,
    run_checks,
    schema_check,
    schema_features,
    structured_frame,
)
from tuneline.data.output_schema import OutputSchemas, load_output_schemas
from tuneline.errors import InputFileError
from tuneline.jsonio import read_json, read_jsonl
from tuneline.layout import Layout
from tuneline.records import source_label

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

STAGE = "validate_raw"
RECORD_COLUMNS = (REF, "id", "messages", "category", "roles", "min_turn_chars", "total_chars", "structured",
                  "schema_error")


def record_features(
    records: list[dict[str, Any]], schema_validator: Any | None = None
) -> pd.DataFrame:
    """One row per record: what the expectations look at (ids, role sequence, lengths, schema errors).

    `messages` holds the number of messages, or None when the field is missing or not a non-empty list.
    `structured` says whether the record's outputs follow a schema (`schema_validator` is one validator
    for every record, or an `OutputSchemas` that picks by category); `schema_error` is why they miss it.
    """
    import pandas as pd  # lazy: pandas ~2.3 s; `import tuneline.data.validate_raw` stays light (CLI)

    rows = []
    for i, rec in enumerate(records):
        roles, contents = message_features(rec)
        category = rec.get("category")
        source = rec.get("source")
        ref = rec.get("id") or (source_label(source) if isinstance(source, dict) else f"row {i + 1}")
        _, schema_columns = schema_features(rec, schema_validator)
        rows.append(
            {
                REF: str(ref),
                "id": rec.get("id"),
                "messages": len(rec["messages"]) if roles is not None else None,
                "category": str(category) if category not in (None, "") else None,
                "roles": roles,
                "min_turn_chars": min((len(c.strip()) for c in contents), default=None),
                "total_chars": sum(len(c) for c in contents) if contents else None,
                **schema_columns,
            }
        )
    return pd.DataFrame(rows, columns=list(RECORD_COLUMNS))


def ingest_summary(ingest_report: dict[str, Any], where: str) -> pd.DataFrame:
    """A one-row frame with the ingest's rejected fraction, so that check lives in the same GX report."""
    import pandas as pd  # lazy: pandas ~2.3 s; see above

    rows_in = int(ingest_report.get("rows_in", 0))
    rejected = int(ingest_report.get("rows_rejected", 0))
    fraction = rejected / rows_in if rows_in else 0.0
    return pd.DataFrame(
        [{REF: where, "rows_in": rows_in, "rows_rejected": rejected, "rejected_fraction": fraction}]
    )


def build_checks(cfg: Config, schemas: OutputSchemas | None = None) -> list[Check]:
    """The raw contract, from the `validate_raw` and `task` config sections.

    The schema check runs on the `structured` frame: only the records `task.output_schema` covers, so
    free-text records neither pass nor fail it (`schemas` names them in the description).
    """
    p = cfg.validate_raw
    checks = [
        Check("id_present", "ExpectColumnValuesToNotBeNull", {"column": "id"}, "every record has an id"),
        Check(
            "messages_present", "ExpectColumnValuesToNotBeNull", {"column": "messages"},
            "every record has a non-empty list of messages",
        ),
        Check(
            "role_pattern", "ExpectColumnValuesToMatchRegex", {"column": "roles", "regex": p.role_pattern},
            "roles follow: optional system, alternating user/assistant, tool turns answered by the "
            "assistant, ending on assistant",
        ),
        Check(
            "non_empty_turns", "ExpectColumnValuesToBeBetween", {"column": "min_turn_chars", "min_value": 1},
            "no turn is empty or whitespace only (clean drops these rows)", critical=False,
        ),
        Check(
            "length_bounds", "ExpectColumnValuesToBeBetween",
            {"column": "total_chars", "min_value": p.min_chars, "max_value": p.max_chars,
             "mostly": p.length_mostly},
            f"total characters within [{p.min_chars}, {p.max_chars}] for at least {p.length_mostly:.0%} "
            "of records",
        ),
    ]
    if p.allowed_categories is not None:
        checks.append(
            Check(
                "allowed_categories", "ExpectColumnValuesToBeInSet",
                {"column": "category", "value_set": list(p.allowed_categories)},
                "every category is one of validate_raw.allowed_categories (or empty)",
            )
        )
    if schemas is not None:
        checks.append(schema_check(schemas, p.schema_mostly))
    checks += [
        Check(
            "min_rows", "ExpectTableRowCountToBeBetween", {"min_value": p.min_rows},
            f"at least {p.min_rows} records were ingested",
        ),
        Check(
            # A row-wise check on the one-row summary, so a failure names reports/ingest.json as its "id".
            "ingest_rejected_fraction", "ExpectColumnValuesToBeBetween",
            {"column": "rejected_fraction", "max_value": p.max_ingest_rejected_fraction},
            f"ingest rejected at most {p.max_ingest_rejected_fraction:.1%} of raw rows", frame="ingest",
        ),
    ]
    return checks


def run(cfg: Config, layout: Layout) -> dict[str, Any]:
    """Validate the ingested records; write the reports; raise DataValidationError on a critical failure.

    Raises:
        InputFileError: ingest's output or report is missing (run `tuneline ingest` first).
        DataValidationError: a critical expectation failed (reports are written first).
    """
    data_path, report_path = layout.interim("ingest"), layout.report("ingest")
    for path in (data_path, report_path):
        if not path.exists():
            raise InputFileError(f"{path}: not found; run `tuneline ingest` first")
    records = list(read_jsonl(data_path))
    schemas = load_output_schemas(cfg.task.output_schema)
    frame = record_features(records, schemas)
    summary = ingest_summary(read_json(report_path), str(report_path))
    structured = structured_frame(frame)
    frames = {"records": frame, "ingest": summary, "structured": structured}
    results = run_checks(frames, build_checks(cfg, schemas), cfg.validate_raw.sample_size)
    extra = {
        "ingest_rows_in": int(summary.at[0, "rows_in"]),
        "ingest_rows_rejected": int(summary.at[0, "rows_rejected"]),
        "ingest_rejected_fraction": round(float(summary.at[0, "rejected_fraction"]), 6),
        "records_with_empty_turns": int((frame["min_turn_chars"].dropna() < 1).sum()),
        "records_structured": len(structured),
        "records_schema_invalid": int(frame["schema_error"].notna().sum()),
    }
    return finish_contract(layout, STAGE, len(records), results, extra)
