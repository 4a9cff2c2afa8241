"""Evaluation: base, champion and candidate measured on the same held-out rows in the same run.

`tuneline.evaluate.metrics` (pure: exact match, ROUGE-L, JSON schema metrics, per-category
aggregation, comparisons) and `tuneline.evaluate.review` (the side-by-side HTML page) are imported
here; `tuneline.evaluate.generate` (loading variants, greedy generation, teacher-forced loss) needs
torch and is imported from its module.
"""

from tuneline.evaluate.metrics import DIRECTIONS, compare, exact_match, rouge_l, score_row, score_rows
from tuneline.evaluate.review import review_html, write_review

__all__ = [
    "DIRECTIONS",
    "compare",
    "exact_match",
    "review_html",
    "rouge_l",
    "score_row",
    "score_rows",
    "write_review",
]
