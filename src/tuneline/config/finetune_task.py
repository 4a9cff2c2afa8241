"""`task` section: what the model is being tuned to do."""

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tuneline.config.base import Section


class TaskParams(Section):
    type: Literal["dialogue", "instruction", "classification", "ner", "long_document", "tool_use"] = Field(
        "dialogue", description="Task family; later stages pick max length and metrics from it."
    )
    output_schema: Path | dict[str, Path] | None = Field(
        None,
        description="Structured outputs. A JSON Schema file: every assistant output must parse and validate "
        "against it. A mapping {category: file}: only rows of those categories are structured (each against "
        "its file); rows of other categories, or without one, are free text. clean validates (never "
        "rewrites) structured outputs, both data contracts measure their schema validity, evaluate reports "
        "the JSON metrics over them, and the gate holds them to promote.min_json_valid_rate. "
        "None = free text everywhere.",
    )

    @field_validator("output_schema")
    @classmethod
    def _categories_named(cls, value: Path | dict[str, Path] | None) -> Path | dict[str, Path] | None:
        if isinstance(value, dict):
            if not value:
                raise ValueError("an empty mapping structures no category; use null for free text")
            blank = [c for c in value if not str(c).strip()]
            if blank:
                raise ValueError("a category name in the mapping is empty")
        return value
