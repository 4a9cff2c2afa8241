"""The stage table: one row per stage, in pipeline order. Everything else that lists stages derives from it.

One verb names the stage everywhere: the `dvc.yaml` stage (`cmd: tuneline <verb>`), the CLI command, the
Prefect task, the entry module (`tuneline/data/<verb>.py`, `train/train.py`, ...) and the report
(`reports/<verb>.json`). `tests/test_layers.py` checks `dvc.yaml` and the CLI against this table.

The table names entry points by dotted path and imports one only when its stage runs, so reading the
table (the CLI, `tuneline --help`, the Prefect task list) never loads torch.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

from tuneline.config import Config
from tuneline.layout import Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline.

    Attributes:
        verb: the stage's one name (params section, DVC stage, CLI command, Prefect task, report).
        module: dotted path of the entry module, named for the verb.
        function: the entry function in `module`; data stages: `run(cfg, layout) -> report`.
        params: the params.yaml sections the stage is configured by (dotted for a nested one).
        description: one line for `tuneline --help` and the docs.
        kind: "data" (rows in -> rows kept + rejected, ledger-checked) or "model".
    """

    verb: str
    module: str
    function: str
    params: tuple[str, ...]
    description: str
    kind: Literal["data", "model"]

    @property
    def path(self) -> str:
        """The entry module's file, relative to the repository root (what `dvc.yaml` lists in deps)."""
        return "src/" + self.module.replace(".", "/") + ".py"

    def entry_module(self) -> ModuleType:
        """The entry module, imported now."""
        # lazy: the train and build_base entry modules import torch + transformers (~2-4 s measured with
        # `python -X importtime`); `tuneline --help` and every data stage must not pay it.
        return importlib.import_module(self.module)

    def entry(self) -> Callable[..., dict[str, Any]]:
        """The entry function, imported now."""
        return getattr(self.entry_module(), self.function)


def _data(verb: str, description: str, *params: str) -> Stage:
    return Stage(verb, f"tuneline.data.{verb}", "run", (verb, *params), description, "data")


def _model(verb: str, module: str, function: str, params: tuple[str, ...], description: str) -> Stage:
    return Stage(verb, module, function, params, description, "model")


STAGES: tuple[Stage, ...] = (
    _data("ingest",
          "Read raw sources (alpaca, sharegpt, OpenAI messages, CSV, parquet) into canonical JSONL."),
    _data("validate_raw", "Great Expectations contract on the ingested records; stops on critical failures.",
          "task"),
    _data("clean", "Strip HTML/URL/e-mail noise, normalize text, drop low-quality rows.", "task"),
    _data("dedup", "Drop exact and near duplicates (TF-IDF cosine >= dedup.threshold)."),
    _data("split", "Stratified, seeded train/val/test split with no leaks across splits."),
    _data("augment", "Synonym / back-translation augmentation when train is small (never LLM-generated)."),
    _data("validate_splits", "Great Expectations contract on train/val/test: the gate before training.",
          "task"),
    _model("build_base", "tuneline.train.build_base", "build_base", ("build_base",),
           "Build the demo base model (BPE tokenizer + tiny Llama, briefly pre-trained) from the train "
           "split."),
    _model("train", "tuneline.train.train", "run", ("train",),
           "Fine-tune the base model (LoRA by default) on data/processed/train.jsonl, validating on "
           "val.jsonl."),
    _model("evaluate", "tuneline.evaluate.evaluate", "run", ("evaluate",),
           "Evaluate base, champion (from the registry, if any) and candidate on the held-out test split."),
    _model("promote", "tuneline.promote.promote", "run", ("promote", "registry"),
           "Register the candidate, check train/serve parity, run the promotion gate, move the champion "
           "alias."),
)
"""Every stage in pipeline order (the order of `dvc.yaml` and of the retrain flow)."""

STAGE: dict[str, Stage] = {s.verb: s for s in STAGES}
PIPELINE: tuple[str, ...] = tuple(s.verb for s in STAGES)
DATA_STAGES: tuple[str, ...] = tuple(s.verb for s in STAGES if s.kind == "data")


def run_stage(name: str, cfg: Config, layout: Layout) -> dict[str, Any]:
    """Run one data stage on the workspace `layout`; returns its report (also written to reports/)."""
    if name not in DATA_STAGES:
        raise KeyError(f"unknown data stage {name!r}; data stages: {', '.join(DATA_STAGES)}")
    log.info("stage %s: start", name)
    report: dict[str, Any] = STAGE[name].entry()(cfg, layout)
    log.info("stage %s: %s", name, _summary(report))
    return report


def _summary(report: dict[str, Any]) -> str:
    keys = ("rows_in", "rows_kept", "rows_rejected", "rows_added")
    return ", ".join(f"{k}={report[k]}" for k in keys if k in report)
