"""`augment` section: small-data augmentation (never LLM-generated)."""

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneline.config.base import Section


class SynonymParams(Section):
    enabled: bool = Field(True, description="Synonym replacement on user turns.")
    dictionary: Path | None = Field(
        None, description="Synonym file (JSON: word -> [synonyms]); None = the bundled English+Chinese one."
    )
    replace_fraction: float = Field(
        0.15, gt=0, le=1, description="Share of replaceable words swapped per copy."
    )


class BackTranslationParams(Section):
    model_path: Path | None = Field(
        None, description="Local seq2seq translation model (forward); None = back-translation skipped."
    )
    reverse_model_path: Path | None = Field(
        None, description="Local model translating back to the source language."
    )
    forward_prefix: str = Field(
        "", description="Text put before each input of the forward model (T5 style: 'translate ...: ')."
    )
    reverse_prefix: str = Field("", description="Text put before each input of the reverse model.")
    batch_size: int = Field(16, ge=1, description="Texts translated per generate() call.")
    max_length: int = Field(
        256, ge=8, description="Input tokens kept per text, and most new tokens generated per text."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the models run; auto = cuda when available."
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> "BackTranslationParams":
        # A round trip needs both directions; one alone is a half-done setting, not "skip".
        if (self.model_path is None) != (self.reverse_model_path is None):
            raise ValueError(
                "set both model_path and reverse_model_path (or neither, to skip back-translation)"
            )
        return self


class AugmentParams(Section):
    min_train_rows: int = Field(1000, ge=0, description="Augment only when train has fewer rows than this.")
    copies_per_row: int = Field(1, ge=0, le=10, description="Augmented variants made per eligible train row.")
    roles: list[str] = Field(
        default_factory=lambda: ["user"],
        description="Roles that are rewritten; assistant outputs never by default.",
    )
    synonyms: SynonymParams = Field(default_factory=SynonymParams, description="Synonym replacement.")
    back_translation: BackTranslationParams = Field(
        default_factory=BackTranslationParams, description="Back-translation through local models."
    )
