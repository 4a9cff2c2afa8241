"""`validate_raw` section: the Great Expectations contract on ingested records."""

from pydantic import Field

from tuneline.config.base import Section


class ValidateRawParams(Section):
    max_ingest_rejected_fraction: float = Field(
        0.05, ge=0, le=1, description="Stop when more than this share of raw rows was rejected at ingest."
    )
    min_rows: int = Field(1, ge=0, description="Stop when fewer records than this were ingested.")
    min_chars: int = Field(1, ge=0, description="Lower bound on a record's total characters.")
    max_chars: int = Field(32_000, ge=1, description="Upper bound on a record's total characters.")
    length_mostly: float = Field(
        0.95, ge=0, le=1, description="Share of records that must respect the length bounds."
    )
    allowed_categories: list[str] | None = Field(
        None, description="When set, every record's category must be one of these (or empty)."
    )
    schema_mostly: float = Field(
        0.9, ge=0, le=1, description="Share of assistant outputs that must validate against task.output_schema."
    )
    sample_size: int = Field(20, ge=0, description="Unexpected ids kept per expectation in the report.")
