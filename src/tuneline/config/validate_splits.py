"""`validate_splits` section: the contract checked before training."""

from pydantic import Field

from tuneline.config.base import Section


class ValidateSplitsParams(Section):
    ratio_tolerance: float = Field(
        0.05, ge=0, le=1,
        description="Allowed absolute gap between a split's share and split.test / split.val "
        "(augmented rows not counted).",
    )
    cross_split_near_dup: bool = Field(
        True, description="Check that no near duplicate (dedup.threshold) crosses train/val/test."
    )
    schema_mostly: float = Field(
        1.0, ge=0, le=1,
        description="Share of the records task.output_schema covers whose outputs must match their schema."
    )
    sample_size: int = Field(20, ge=0, description="Unexpected ids kept per expectation in the report.")
