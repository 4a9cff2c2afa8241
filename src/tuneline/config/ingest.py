"""`ingest` section: which raw files to read and how to map them to canonical records."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneline.config.base import Section

Format = Literal["auto", "alpaca", "sharegpt", "messages", "csv", "parquet"]


class Source(Section):
    path: Path = Field(description="A file or a directory (read recursively, sorted) of raw data.")
    format: Format = Field("auto", description="Record format; `auto` detects it per file.")
    category: str | None = Field(
        None, description="Category (stratum) given to rows of this source that carry none of their own."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="CSV/parquet column mapping, canonical name -> column: instruction, input, output, "
        "system, category, messages (a JSON column).",
    )
    required: bool = Field(
        True,
        description="False: a missing path reads as no rows (data/raw/feedback before the first export).",
    )


class IngestParams(Section):
    sources: list[Source] = Field(
        default_factory=lambda: [Source(path=Path("data/raw"))],
        description="Raw data sources, read in order.",
    )
    category_field: str = Field(
        "category", description="Field of a raw row that holds its category, when the row has one."
    )
    on_bad_file: Literal["reject", "error"] = Field(
        "reject",
        description="A whole file that cannot be read (binary, truncated, not an array, no known format): "
        "`reject` records it as one rejected row and goes on (validate_raw's gate then judges the share); "
        "`error` stops with an error naming the file.",
    )
