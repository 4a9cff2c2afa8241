"""`task` section: what the model is being tuned to do."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneline.config.base import Section


class TaskParams(Section):
    type: Literal["dialogue", "instruction", "classification", "ner", "long_document", "tool_use"] = Field(
        "dialogue", description="Task family; later stages pick max length and metrics from it."
    )
    output_schema: Path | None = Field(
        None,
        description="JSON Schema file that every assistant output must parse and validate against "
        "(structured-output tasks). None = free text.",
    )
