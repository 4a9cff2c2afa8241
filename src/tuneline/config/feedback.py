"""`feedback` section: how rated exchanges become raw training data, and when they trigger a retrain."""

from pathlib import Path

from pydantic import Field

from tuneline.config.base import Section


class FeedbackParams(Section):
    export_dir: Path = Field(
        Path("data/raw/feedback"),
        description="Where exported SFT rows land (an ingest source; DVC-tracked).",
    )
    negatives_dir: Path = Field(
        Path("data/feedback/negative"),
        description="Thumbs-down answers with no correction: recorded here, never used as SFT targets.",
    )
    category: str = Field("feedback", description="Category (stratum) of exported rows.")
    dvc_add: bool = Field(True, description="`dvc add` the export directories after writing.")
    retrain_threshold: int = Field(
        50, ge=1, description="New exported rows that trigger a retrain before the nightly schedule."
    )
