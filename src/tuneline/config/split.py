"""`split` section: stratified, leak-free train/val/test split."""

from pathlib import Path

from pydantic import Field, model_validator

from tuneline.config.base import Section


class SplitParams(Section):
    test: float = Field(0.1, ge=0, lt=1, description="Share of rows held out for the final test.")
    val: float = Field(0.1, ge=0, lt=1, description="Share of rows for validation / early stopping.")
    stratify_field: str = Field("category", description="Record field whose values are the strata.")
    min_stratum_rows: int = Field(
        3, ge=1, description="Strata smaller than this go to train only (reported as tiny)."
    )
    group_near_duplicates: bool = Field(
        True,
        description="Keep near-duplicate clusters (TF-IDF cosine >= dedup.threshold among the rows split "
        "receives) within one split; also after near-dedup, whose IDF weights came from more rows.",
    )
    eval_dir: Path | None = Field(
        Path("data/eval"), description="Fixed eval sets; rows duplicating them are removed (decontamination)."
    )

    @model_validator(mode="after")
    def _fractions(self) -> "SplitParams":
        if self.test + self.val >= 1:
            raise ValueError(f"split.test + split.val must be < 1 (got {self.test} + {self.val})")
        return self
