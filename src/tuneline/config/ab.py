"""`ab` section: when live traffic decides between champion and challenger."""

from typing import Literal

from pydantic import Field

from tuneline.config.base import Section


class AbParams(Section):
    min_feedback: int = Field(
        100, ge=1, description="Rated exchanges each variant needs before any decision (never less)."
    )
    alpha: float = Field(
        0.05, gt=0, lt=1, description="Significance level of the two-proportion test (two-sided)."
    )
    min_rating: int = Field(
        4, ge=1, le=5, description="A 1-5 rating without thumbs counts as positive from this value up."
    )
    bucket: Literal["hour", "day"] = Field("day", description="Time bucket of the feedback-over-time chart.")
