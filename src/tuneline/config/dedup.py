"""`dedup` section: exact and near-duplicate removal."""

from pydantic import Field, field_validator

from tuneline.config.base import Section


class DedupParams(Section):
    exact: bool = Field(True, description="Drop rows whose normalized content equals an earlier row's.")
    near: bool = Field(True, description="Drop near duplicates (TF-IDF cosine >= threshold).")
    threshold: float = Field(0.95, gt=0, le=1, description="TF-IDF cosine from which rows are near-dups.")
    ngram_range: tuple[int, int] = Field(
        (3, 3), description="Character n-gram sizes of the TF-IDF (works for Chinese: no word splitting)."
    )

    threads: int = Field(
        0,
        ge=0,
        description="Threads of the near-duplicate search (0: OMP_NUM_THREADS, else every core). The pairs, "
        "their scores and order are the same for any value; only the time changes.",
    )

    @field_validator("ngram_range")
    @classmethod
    def _ordered(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1]:
            raise ValueError("ngram_range must be [min, max] with 1 <= min <= max")
        return v
