"""Training: the demo base model, the pre-flight plan and (next) the train stage.

The plan (`make_plan` -> `Plan`, `render_plan`) resolves every `auto` of the train section from the
templates in `tuneline.train.templates` and the memory model in `tuneline.train.memory`, without
loading weights: see docs/training-plan.md.
"""

from tuneline.train.plan import Plan, PlanError, load_model_config, make_plan
from tuneline.train.render import render_plan

__all__ = ["Plan", "PlanError", "load_model_config", "make_plan", "render_plan"]
