"""Keep the layers honest (DESIGN §1-2): one verb per stage everywhere, no prefect in the library."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import tuneline
from tuneline.cli import MODEL_STAGE_COMMANDS, app
from tuneline.config import Config
from tuneline.stages import DATA_STAGES, PIPELINE, STAGES, Stage

REPO = Path(__file__).resolve().parents[1]
NON_STAGE_COMMANDS = {"data", "rollback", "lineage", "plan", "report", "serve"}


def test_library_never_imports_prefect() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "src" / "tuneline").rglob("*.py")
        if re.search(r"^\s*(import prefect|from prefect)", p.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_every_module_imports() -> None:
    names = [m.name for m in pkgutil.walk_packages(tuneline.__path__, "tuneline.")]
    assert "tuneline.data.ingest" in names
    for name in names:
        importlib.import_module(name)


def _dvc_stages() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _covered(path: str, deps: list[str]) -> bool:
    """Whether `path` is a dep itself or lies under a directory dep."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _config_has(dotted: str) -> bool:
    model: Any = Config
    for part in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True


def test_dvc_yaml_has_the_stage_tables_stages_in_its_order() -> None:
    """The stage table is the one list: dvc.yaml names the same stages, in the same order."""
    assert tuple(_dvc_stages()) == PIPELINE
    assert DATA_STAGES == PIPELINE[: len(DATA_STAGES)]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.verb)
def test_dvc_stage_matches_its_table_row(stage: Stage) -> None:
    """Each dvc.yaml stage runs `tuneline <verb>`, depends on its params sections and entry module, and
    writes reports/<verb>.json as a metric; the entry module is named for the verb and has the entry."""
    spec = _dvc_stages()[stage.verb]
    assert spec["cmd"] == f"tuneline {stage.verb}"
    for section in stage.params:
        assert _config_has(section), f"{stage.verb}: params section {section} is not in Config"
        assert section in spec["params"], f"{stage.verb} does not depend on its params section {section}"
    assert (REPO / stage.path).is_file() and Path(stage.path).name == f"{stage.verb}.py"
    assert _covered(stage.path, spec["deps"]), f"{stage.verb}: {stage.path} is not in its deps"
    assert callable(stage.entry())
    metrics = [next(iter(m)) if isinstance(m, dict) else m for m in spec.get("metrics", [])]
    assert f"reports/{stage.verb}.json" in metrics
    assert stage.description and "\n" not in stage.description


def test_cli_commands_are_the_table_verbs() -> None:
    """One CLI command per stage, registered from the table; the rest are the commands that are no stage."""
    commands = [c.name for c in app.registered_commands]
    assert len(commands) == len(set(commands))
    assert set(commands) - NON_STAGE_COMMANDS == set(PIPELINE)
    assert set(MODEL_STAGE_COMMANDS) == {s.verb for s in STAGES if s.kind == "model"}


def test_no_data_module_imports_the_stage_table() -> None:
    """The table resolves tuneline.data.<verb> by name; a data module importing it back made a hidden loop
    (stages -> data -> stages, through finish_stage). finish_stage lives with the ledger now."""
    offenders = []
    for path in sorted((REPO / "src" / "tuneline" / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "tuneline":
                names = [f"tuneline.{a.name}" for a in node.names]
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if "tuneline.stages" in names:
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_dvc_dependencies_exist() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, spec in dvc.items():
        for dep in spec.get("deps", []):
            if dep.startswith("src/"):
                assert (REPO / dep).exists(), f"{stage} depends on missing {dep}"


def _data_imports(path: Path, seen: set[Path]) -> set[Path]:
    """Files of tuneline.data modules that `path` imports, transitively (lazy imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneline.data"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            target = REPO / "src" / (name.replace(".", "/") + ".py")
            if target.exists() and target not in seen:
                seen.add(target)
                _data_imports(target, seen)
    return seen


def _tuneline_imports(path: Path, seen: set[Path]) -> set[Path]:
    """Files of tuneline modules that `path` imports, transitively (config excepted: params are deps)."""
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tuneline."):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("tuneline.")]
        for name in names:
            if name.startswith("tuneline.config"):
                continue
            base = REPO / "src" / name.replace(".", "/")
            for target in (base.with_suffix(".py"), base / "__init__.py"):
                if target.exists() and target not in seen:
                    seen.add(target)
                    _tuneline_imports(target, seen)
    return seen


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.verb)
def test_dvc_deps_cover_the_code_each_stage_runs(stage: Stage) -> None:
    """Changing any module a stage runs must rerun that stage under `dvc repro` (a data stage's deps list
    the data modules it imports; a model stage's every tuneline module but config, whose params are deps)."""
    start = REPO / stage.path
    imports = _data_imports if stage.kind == "data" else _tuneline_imports
    needed = {str(p.relative_to(REPO)) for p in imports(start, {start})}
    deps = _dvc_stages()[stage.verb]["deps"]
    missing = sorted(n for n in needed if not _covered(n, deps))
    assert missing == [], f"dvc.yaml stage {stage.verb} lacks deps {missing}"
