"""`validate_raw` section: the Great Expectations contract on ingested records."""

import re

from pydantic import Field, field_validator

from tuneline.config.base import Section

# Optional system turn, then user/assistant exchanges; after an assistant turn, tool results may follow
# but must be answered by the assistant again, so every conversation ends on an assistant turn.
# Groups are non-capturing: pandas warns about capturing groups in a match-only regex.
_EXCHANGE = r"user,assistant(?:,tool(?:,tool)*,assistant)*"
DEFAULT_ROLE_PATTERN = rf"^(?:system,)?{_EXCHANGE}(?:,{_EXCHANGE})*$"


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
        0.9, ge=0, le=1,
        description="Share of the records task.output_schema covers whose assistant outputs validate against "
        "their schema.",
    )
    sample_size: int = Field(20, ge=0, description="Unexpected ids kept per expectation in the report.")
    role_pattern: str = Field(
        DEFAULT_ROLE_PATTERN,
        description="Regex every record's comma-joined role sequence must match (validate_splits uses it "
        "too): optional system, alternating user/assistant, tool turns answered by the assistant.",
    )

    @field_validator("role_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"role_pattern is not a valid regular expression: {exc}") from None
        return v
