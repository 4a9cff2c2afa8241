"""Load params.yaml into `Config`, apply dotted `--set key=value` overrides, report every error at once.

Renamed keys. A key that was renamed keeps loading under its old name: `RENAMED_KEYS` maps it to the new
one, with a `DeprecatedKeyWarning` naming both (in params.yaml and in `--set` overrides alike). Setting
both names is an error: which one was meant cannot be guessed.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from tuneline.config.ab import AbParams
from tuneline.config.augment import AugmentParams
from tuneline.config.base import Section
from tuneline.config.build_base import BuildBaseParams
from tuneline.config.clean import CleanParams
from tuneline.config.dedup import DedupParams
from tuneline.config.evaluate import EvaluateParams
from tuneline.config.feedback import FeedbackParams
from tuneline.config.finetune_task import TaskParams
from tuneline.config.ingest import IngestParams
from tuneline.config.model import ModelParams
from tuneline.config.promote import PromoteParams
from tuneline.config.registry import RegistryParams
from tuneline.config.serve import ServeParams
from tuneline.config.split import SplitParams
from tuneline.config.tracking import TrackingParams
from tuneline.config.train import TrainParams
from tuneline.config.validate_raw import ValidateRawParams
from tuneline.config.validate_splits import ValidateSplitsParams
from tuneline.errors import ConfigError
from tuneline.redact import redact

DEFAULT_PARAMS = Path("params.yaml")


class DeprecatedKeyWarning(FutureWarning):
    """A params key was set under its old name (shown by default: users, not only developers, fix it)."""


@dataclass(frozen=True)
class RenamedKey:
    """A params key that moved: `old` (dotted) still loads as `new`, with a deprecation warning."""

    old: str
    new: str
    why: str


RENAMED_KEYS = (
    RenamedKey("promote.canary", "promote.keep_challenger_as_canary",
               "`canary` alone also named the serve flag and serve.canary_share"),
    RenamedKey("promote.min_schema_valid_rate", "promote.min_json_valid_rate",
               "one name per metric: the evaluate stage reports json_valid_rate"),
    RenamedKey("model.demo", "build_base", "one stage, one params section: the build_base stage's own"),
)


class Config(Section):
    seed: int = Field(42, description="Seed of every random choice (split, augmentation).")
    allow_outside_workspace: bool = Field(
        False,
        description="Let build_base.output_dir and train.output_dir point outside the workspace root "
        "(`../x`, an absolute path elsewhere). Off: such a path is refused, so a typo cannot replace "
        "another folder. Either way a non-empty folder tuneline did not write is never replaced.",
    )
    task: TaskParams = Field(default_factory=TaskParams, description="What the model is tuned to do.")
    ingest: IngestParams = Field(default_factory=IngestParams, description="Raw sources -> canonical JSONL.")
    validate_raw: ValidateRawParams = Field(
        default_factory=ValidateRawParams, description="Contract on ingested records."
    )
    clean: CleanParams = Field(default_factory=CleanParams, description="Noise removal and quality filters.")
    dedup: DedupParams = Field(default_factory=DedupParams, description="Exact and near-duplicate removal.")
    split: SplitParams = Field(default_factory=SplitParams, description="Stratified train/val/test split.")
    augment: AugmentParams = Field(default_factory=AugmentParams, description="Small-data augmentation.")
    validate_splits: ValidateSplitsParams = Field(
        default_factory=ValidateSplitsParams, description="Contract checked before training."
    )
    build_base: BuildBaseParams = Field(
        default_factory=BuildBaseParams, description="The built-in demo base model (`tuneline build_base`)."
    )
    model: ModelParams = Field(default_factory=ModelParams, description="The base model to fine-tune.")
    train: TrainParams = Field(default_factory=TrainParams, description="Training method and settings.")
    tracking: TrackingParams = Field(default_factory=TrackingParams, description="MLflow tracking.")
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams, description="Held-out evaluation.")
    registry: RegistryParams = Field(default_factory=RegistryParams, description="MLflow model registry.")
    promote: PromoteParams = Field(default_factory=PromoteParams, description="The promotion gate.")
    serve: ServeParams = Field(default_factory=ServeParams, description="Serving with an A/B canary.")
    ab: AbParams = Field(default_factory=AbParams, description="The A/B decision on live feedback.")
    feedback: FeedbackParams = Field(
        default_factory=FeedbackParams, description="Feedback -> raw data for the next training run."
    )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ["clean.urls=remove", "split.test=0.2"] into a nested dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            problems.append(f"--set {pair!r}: expected dotted.key=value")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {pair!r}: value is not valid YAML ({exc.__class__.__name__})")
            continue
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {pair!r}: {part} was already set to a plain value")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError("invalid overrides:\n  " + "\n  ".join(problems))
    return out


def _pop(tree: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """Remove `dotted` from the nested mapping `tree`: (True, its value), or (False, None) when absent."""
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return False, None
    return True, node.pop(leaf)


def has_key(tree: dict[str, Any], dotted: str) -> bool:
    """Whether the nested mapping `tree` holds the dotted key (`train.lr`: tree["train"]["lr"])."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def rename_keys(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """`raw` with every old key of `RENAMED_KEYS` moved to its new name, warning once per key.

    Raises:
        ConfigError: a key is set under both its old and its new name.
    """
    out = copy.deepcopy(raw)  # the caller's mapping stays as read
    for key in RENAMED_KEYS:
        found, value = _pop(out, key.old)
        if not found:
            continue
        if has_key(out, key.new):
            raise ConfigError(f"{where}: `{key.old}` and `{key.new}` are both set; `{key.old}` is the old "
                              f"name of `{key.new}`: keep only `{key.new}`")
        warnings.warn(f"{where}: params key `{key.old}` is deprecated, renamed `{key.new}` ({key.why}); "
                      f"it still loads for now: rename it", DeprecatedKeyWarning, stacklevel=3)
        _put(out, key.new, value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | str | None = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Config:
    """Read `path` (missing file = all defaults only when path is None), apply overrides, validate.

    Raises:
        ConfigError: naming the file and listing every invalid or unknown key at once.
    """
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise ConfigError(f"{path}: params file not found (pass --params FILE)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = loaded
    raw = _merge(rename_keys(raw, where), rename_keys(parse_overrides(overrides or []), "--set"))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key (not a tuneline setting)" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{loc}: {msg}")
        raise ConfigError(f"{where}: {len(lines)} invalid setting(s):\n  " + "\n  ".join(lines)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what `tuneline config show` prints), credentials masked."""
    return yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True)
