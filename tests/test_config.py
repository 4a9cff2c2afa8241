"""The typed config: params.yaml validates, unknown keys and bad types fail at once, overrides work."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from tuneline.cli import app
from tuneline.config import Config, dump_config, load_config, parse_overrides
from tuneline.config.loader import RENAMED_KEYS, DeprecatedKeyWarning
from tuneline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_params_validate() -> None:
    cfg = load_config(REPO / "params.yaml")
    assert cfg.dedup.threshold == 0.95
    assert cfg.split.test == 0.1


def test_params_yaml_sets_every_section() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Config.model_fields)


def _walk(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk(ann, f"{prefix}{name}.")


def test_every_field_is_described() -> None:
    missing = [name for name, field in _walk(Config) if not field.description]
    assert missing == []


def test_unknown_keys_and_bad_types_are_all_listed(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("dedup:\n  threshhold: 0.9\n  exact: maybe\nsplit:\n  test: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg
    assert "dedup.threshhold: unknown key" in msg
    assert "dedup.exact" in msg
    assert "split.test" in msg
    assert "3 invalid setting(s)" in msg


def test_cross_field_rule_lives_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"split.test \+ split.val must be < 1"):
        load_config(None, ["split.test=0.6", "split.val=0.5"])


def test_overrides_are_parsed_as_yaml_and_nested() -> None:
    overrides = ["dedup.threshold=0.9", "clean.urls=remove", "dedup.ngram_range=[2, 4]", "seed=7"]
    cfg = load_config(None, overrides)
    assert cfg.dedup.threshold == 0.9
    assert cfg.clean.urls == "remove"
    assert cfg.dedup.ngram_range == (2, 4)
    assert cfg.seed == 7
    assert parse_overrides(["a.b.c=1", "a.b.d=x"]) == {"a": {"b": {"c": 1, "d": "x"}}}


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1", "dedup.threshold=[unclosed"])
def test_malformed_override_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        parse_overrides([bad])


def test_override_of_unknown_key_fails() -> None:
    with pytest.raises(ConfigError, match="dedup.nope: unknown key"):
        load_config(None, ["dedup.nope=1"])


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text("seed: 1\ndedup:\n  threshold: [0.9\n")
    with pytest.raises(ConfigError, match=r"params.yaml line \d+: not valid YAML"):
        load_config(p)


def test_missing_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_dump_round_trips() -> None:
    cfg = load_config(REPO / "params.yaml", ["dedup.threshold=0.91"])
    again = Config.model_validate(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


def test_params_yaml_spells_out_every_knob() -> None:
    """params.yaml is the one place to read every setting: each leaf of Config appears in it."""
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    missing = []

    def walk(defaults: dict, given: dict, prefix: str) -> None:
        for key, value in defaults.items():
            if key not in given:
                missing.append(prefix + key)
            elif isinstance(value, dict) and value and isinstance(given[key], dict):
                walk(value, given[key], f"{prefix}{key}.")

    walk(Config().model_dump(mode="json"), shipped, "")
    assert missing == []


def test_effective_batch_must_divide_and_accumulation_is_derived() -> None:
    cfg = load_config(None, ["train.effective_batch=32", "train.per_device_batch=4", "train.num_processes=2"])
    assert cfg.train.world_size == 2 and cfg.train.grad_accum == 4
    with pytest.raises(ConfigError, match=r"effective_batch \(30\) must be a multiple of per_device_batch"):
        load_config(None, ["train.effective_batch=30", "train.per_device_batch=4"])


@pytest.mark.parametrize("lr", ["-0.1", "0", "1e9", ".nan"])
def test_nonsense_learning_rate_is_refused_with_a_sensible_range(lr: str) -> None:
    """A negative, zero, huge or NaN train.lr used to load (the plan only warned): now refused at load."""
    with pytest.raises(ConfigError, match=r"train\.lr: .*\(0, 1\].*1e-4\.\.1e-3 for LoRA"):
        load_config(None, [f"train.lr={lr}"])


def test_learning_rate_auto_and_in_range_load() -> None:
    assert load_config(None, ["train.lr=auto"]).train.lr == "auto"
    assert load_config(None, ["train.lr=2e-4"]).train.lr == 2e-4
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize("setting", ["train.eval_every=0", "train.eval_every=-2", "train.max_length=0",
                                     "train.max_length=-512", "train.device_memory_gib=-1",
                                     "train.device_memory_gib=0", "train.warmup=-0.1"])
def test_nonsense_train_knobs_are_refused(setting: str) -> None:
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}\b"):
        load_config(None, [setting])


def test_output_schema_is_a_file_or_a_category_mapping() -> None:
    """task.output_schema: one file (every row), or {category: file} (only those rows), settable per
    category from the command line; an empty mapping or a blank category is refused at load time."""
    assert load_config(None, ["task.output_schema=s.json"]).task.output_schema == Path("s.json")
    cfg = load_config(None, ["task.output_schema.extract=e.json", "task.output_schema.tool_call=t.json"])
    assert cfg.task.output_schema == {"extract": Path("e.json"), "tool_call": Path("t.json")}
    assert load_config(None, ["task.output_schema=null"]).task.output_schema is None
    with pytest.raises(ConfigError, match="task.output_schema: .*empty mapping"):
        load_config(None, ["task.output_schema={}"])
    with pytest.raises(ConfigError, match="task.output_schema: .*category name .* is empty"):
        load_config(None, ["task.output_schema={'': e.json}"])


# Renamed keys (issue 16: one name per concept). Each old name still loads, warned, as its new name.
OLD_KEYS = {
    "promote.canary": ("promote.keep_challenger_as_canary", True),
    "promote.min_schema_valid_rate": ("promote.min_json_valid_rate", 0.5),
    "model.demo.pretrain_steps": ("build_base.pretrain_steps", 7),
}


def _get(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


@pytest.mark.parametrize("old", list(OLD_KEYS))
def test_a_renamed_key_still_loads_with_a_warning_naming_old_and_new(tmp_path: Path, old: str) -> None:
    """A params.yaml written before the rename (`promote.canary`, `promote.min_schema_valid_rate`,
    `model.demo`) loads into the new key, with a deprecation warning naming both, from the file and from
    `--set` alike."""
    new, value = OLD_KEYS[old]
    section, *rest = old.split(".")
    nested: dict = {rest[-1]: value}
    for part in reversed(rest[:-1]):
        nested = {part: nested}
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({section: nested}))
    old_section = old.rsplit(".", 1)[0] if old.startswith("model.demo") else old
    new_section = new.rsplit(".", 1)[0] if old.startswith("model.demo") else new
    with pytest.warns(DeprecatedKeyWarning, match=rf"`{old_section}` is deprecated, renamed `{new_section}`"):
        cfg = load_config(p)
    assert _get(cfg, new) == value
    with pytest.warns(DeprecatedKeyWarning, match=r"--set: params key"):
        cfg = load_config(None, [f"{old}={value}"])
    assert _get(cfg, new) == value


def test_a_key_set_under_its_old_and_new_name_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"promote": {"canary": True, "keep_challenger_as_canary": False}}))
    with pytest.raises(ConfigError, match=r"`promote.canary` and `promote.keep_challenger_as_canary` are"):
        load_config(p)


def test_an_old_key_in_an_override_wins_over_the_new_key_in_the_file(tmp_path: Path) -> None:
    """Renames apply to the file and the overrides apart: `--set model.demo.lr=...` on a params.yaml that
    already has `build_base` is an override, not a clash."""
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"build_base": {"lr": 0.01}}))
    with pytest.warns(DeprecatedKeyWarning):
        cfg = load_config(p, ["model.demo.lr=0.02"])
    assert cfg.build_base.lr == 0.02


def test_shipped_files_use_no_deprecated_key() -> None:
    """params.yaml uses the new names (a deprecated key there would warn on every command)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecatedKeyWarning)
        load_config(REPO / "params.yaml")


def test_every_renamed_key_names_a_setting_that_exists() -> None:
    """A rename whose new key is no setting would turn a working old key into an 'unknown key' error."""
    settings = {name for name, _ in _walk(Config)}
    assert all(key.new in settings and key.old not in settings for key in RENAMED_KEYS)


@pytest.mark.parametrize(("flag", "new"),
                         [("--no-canary", "--champion-only"), ("--canary", "--with-challenger")])
def test_the_old_serve_canary_flag_still_works_with_a_warning(tmp_path: Path, flag: str, new: str) -> None:
    """`tuneline serve --canary/--no-canary` was renamed (`canary` also named promote's setting and
    serve.canary_share): the old flag is still read, and says its new name."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    result = CliRunner().invoke(app, ["serve", flag, "--print-vllm", "--params", str(params)])
    assert f"{flag} is deprecated, renamed {new}" in result.output
