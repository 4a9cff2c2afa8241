"""`augment` section: small-data augmentation (never LLM-generated)."""

from pathlib import Path

from pydantic import Field

from tuneline.config.base import Section


class SynonymParams(Section):
    enabled: bool = Field(True, description="Synonym replacement on user turns.")
    dictionary: Path | None = Field(
        None, description="Synonym file (JSON: word -> [synonyms]); None = the bundled English+Chinese one."
    )
    replace_fraction: float = Field(0.15, gt=0, le=1, description="Share of replaceable words swapped per copy.")


class BackTranslationParams(Section):
    model_path: Path | None = Field(
        None, description="Local seq2seq translation model (forward); None = back-translation skipped."
    )
    reverse_model_path: Path | None = Field(None, description="Local model translating back to the source language.")


class AugmentParams(Section):
    min_train_rows: int = Field(1000, ge=0, description="Augment only when train has fewer rows than this.")
    copies_per_row: int = Field(1, ge=0, le=10, description="Augmented variants made per eligible train row.")
    roles: list[str] = Field(
        default_factory=lambda: ["user"], description="Roles that are rewritten; assistant outputs never by default."
    )
    synonyms: SynonymParams = Field(default_factory=SynonymParams, description="Synonym replacement.")
    back_translation: BackTranslationParams = Field(
        default_factory=BackTranslationParams, description="Back-translation through local models."
    )
