"""`clean` section: noise removal, standardization and heuristic quality filters."""

from pathlib import Path
from typing import Literal

from pydantic import Field

from tuneline.config.base import Section


class QualityParams(Section):
    min_chars: int = Field(2, ge=0, description="Drop records whose assistant text is shorter than this.")
    max_chars: int = Field(20_000, ge=1, description="Drop records longer than this in total characters.")
    max_symbol_ratio: float = Field(
        0.1, ge=0, description="Gopher: drop when (#, ..., …) symbols per word exceed this."
    )
    max_non_alnum_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Drop when more than this share of non-space characters is neither letter nor digit.",
    )
    max_duplicate_line_fraction: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Gopher: drop when this share of a turn's content lines (3+ words; short labels such as "
        "'Options:' and fenced code are not counted) repeat earlier lines.",
    )
    max_top_ngram_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Gopher: drop when the most frequent repeated word 2-gram covers this share of the "
        "text (CJK text: character 2-grams).",
    )

    repetition_min_words: int = Field(
        50,
        ge=0,
        description="duplicate_lines and repeated_ngrams judge each turn on its own, and only turns of at "
        "least this many words (tokens holding a letter, outside fenced code; CJK: characters); Gopher's "
        "50 — short texts repeat by chance.",
    )


class ClassifierParams(Section):
    path: Path | None = Field(
        None, description="A saved text classifier (joblib sklearn pipeline with predict_proba); None = off."
    )
    threshold: float = Field(0.5, ge=0, le=1, description="Drop records whose quality score is below this.")


class CleanParams(Section):
    html: bool = Field(True, description="Strip HTML tags and unescape entities.")
    urls: Literal["remove", "placeholder", "keep"] = Field("placeholder", description="What to do with URLs.")
    url_placeholder: str = Field("<URL>", description="Text that replaces a URL.")
    emails: Literal["remove", "placeholder", "keep"] = Field(
        "placeholder", description="What to do with e-mail addresses."
    )
    email_placeholder: str = Field("<EMAIL>", description="Text that replaces an e-mail address.")
    nfkc: bool = Field(True, description="Unicode NFKC normalization (full-width digits, ligatures).")
    numbers: bool = Field(
        True, description="Drop thousands separators in plain numbers (1,234,567 -> 1234567)."
    )
    dates: bool = Field(False, description="Rewrite unambiguous dates to ISO 8601 (2024-03-05).")
    protect_code: bool = Field(
        True,
        description="Leave Markdown code (``` fences, `inline` spans) out of HTML, number and date "
        "rewriting; e-mails and URLs are replaced everywhere.",
    )
    roles: list[str] = Field(
        default_factory=lambda: ["system", "user", "assistant"],
        description="Roles whose content is cleaned; tool turns (structured payloads) are left alone.",
    )
    quality: QualityParams = Field(default_factory=QualityParams, description="Heuristic quality filters.")
    classifier: ClassifierParams = Field(
        default_factory=ClassifierParams, description="Optional classifier hook."
    )
