"""`evaluate` section: held-out evaluation of base, champion and candidate, like for like."""

from pydantic import Field

from tuneline.config.base import Section


class EvaluateParams(Section):
    max_rows: int = Field(
        200, ge=0, description="Test rows to generate for (seeded sample; 0 = all). Loss uses every row."
    )
    max_new_tokens: int = Field(
        128, ge=1,
        description="Greedy generation budget; a reply that reaches it never stopped. Rows whose reference "
        "(end of turn included) is longer are left out of never_stop_rate (counted in never_stop_excluded).",
    )
    batch_size: int = Field(8, ge=1, description="Rows per generation / loss batch.")
    review_samples: int = Field(
        20, ge=0, description="Prompts shown side by side (base / champion / candidate) in review.html."
    )
    include_eval_sets: bool = Field(
        True, description="Also evaluate the fixed sets under split.eval_dir (each reported on its own)."
    )
