"""`promote` section: the criteria of the promotion gate and the release approval."""

from typing import Literal

from pydantic import Field

from tuneline.config.base import Section

Metric = Literal["rouge_l", "exact_match", "loss", "json_field_accuracy", "json_valid_rate"]


class PromoteParams(Section):
    primary_metric: Metric = Field(
        "rouge_l", description="The metric the comparisons use (loss: lower is better; the rest: higher)."
    )
    min_gain: float = Field(
        0.0, description="Candidate must beat the base model on the primary metric by at least this much."
    )
    champion_rule: Literal["tolerance", "margin"] = Field(
        "tolerance",
        description="tolerance: not worse than the champion by more than `tolerance`; margin: better by "
        "at least `margin`.",
    )
    tolerance: float = Field(0.01, ge=0, description="Allowed loss against the champion (champion_rule).")
    margin: float = Field(0.0, ge=0, description="Required gain over the champion (champion_rule).")
    min_json_valid_rate: float = Field(
        0.98, ge=0, le=1,
        description="Floor on the candidate's json_valid_rate, over the rows task.output_schema covers (only "
        "when it is set; a rate reported as None, no structured row evaluated, fails). "
        "(Was `min_schema_valid_rate`.)",
    )
    max_never_stop_rate: float = Field(
        0.01, ge=0, le=1,
        description="Ceiling on replies that hit evaluate.max_new_tokens without stopping, among the rows "
        "whose reference (end of turn included) fits that budget.",
    )
    parity_probe_rows: int = Field(
        8, ge=0, description="Prompts whose greedy outputs must match between in-process and registry model."
    )
    require_approval: bool = Field(
        False, description="Move the champion alias only after a person approves (CLI or Prefect UI)."
    )
    keep_challenger_as_canary: bool = Field(
        False,
        description="A candidate that passes the gate while a champion exists stays challenger and is "
        "served to serve.canary_share of users; `tuneline ab decide` promotes it on live feedback. Off: a "
        "passing candidate is promoted at once. (Was `promote.canary`.)",
    )
