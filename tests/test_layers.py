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


MAX_FUNCTION_LINES = 80  # from the `def` line to the last line, docstring included
REASON = "Long because"


def _long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:function (n lines)` of each function under `root` (nested ones too) longer than `limit` lines
    whose docstring does not say why it is not split (a sentence starting with "Long because")."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > limit and REASON not in (ast.get_docstring(node) or ""):
                found.append(f"{path.relative_to(root)}:{node.name} ({lines} lines)")
    return found


def test_no_long_library_function_without_a_reason() -> None:
    """Issue 16: a library function reads as one step, or its docstring says why not ("Long because ...").

    Failed before the split on serve/app.py:create_app (203 lines, its `chat` closure 106), train/plan.py:
    make_plan (117), train/train.py:_run (102), train/distributed.py:launch_command (96),
    data/neardup_kernel.py:search_rows (93), train/build_base.py:build_demo_base (85), and more.
    """
    offenders = _long_functions(REPO / "src" / "tuneline")
    assert offenders == [], (
        f"functions over {MAX_FUNCTION_LINES} lines: split them into named steps, or say in the docstring "
        f"why not ({REASON} ...):\n  " + "\n  ".join(offenders)
    )


def _source_of(name: str, indent: int, lines: int, doc: str = "") -> str:
    pad = " " * indent
    head = f"{pad}def {name}():\n" + (f'{pad}    """{doc}"""\n' if doc else "")
    return head + "".join(f"{pad}    x{i} = {i}\n" for i in range(lines))


def test_long_function_check_finds_long_ones_and_accepts_a_reason(tmp_path: Path) -> None:
    n = MAX_FUNCTION_LINES
    (tmp_path / "m.py").write_text(
        _source_of("short", 0, 3) + _source_of("long", 0, n) + _source_of("excused", 0, n, f"{REASON} x.")
        + "class C:\n    def method(self):\n" + _source_of("inner", 8, n)
    )
    assert _long_functions(tmp_path) == [
        f"m.py:long ({n + 1} lines)", f"m.py:method ({n + 2} lines)", f"m.py:inner ({n + 1} lines)",
    ]


# --- Package layering (issue 16): no import loops between packages, floors below features, lazy imports
# only with a measured reason. A package is a first-level subpackage of tuneline (`data`, `train`, ...) or a
# root module (`layout`, `tracking`, ...). Every import counts, at module top or inside a function.

LIBRARY = REPO / "src" / "tuneline"
FEATURES = {"data", "train", "evaluate", "promote", "registry", "serve", "ab", "feedback", "lm", "cluster"}
FLOORS = {"errors", "jsonio", "layout", "ledger", "config", "urls", "tracking", "html", "redact", "progress",
          "records", "filelock", "outdirs", "splits", "formats", "summaries"}


def _package_of(path: Path) -> str:
    rel = path.relative_to(LIBRARY)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted tuneline module) of every import in `path`, relative ones resolved."""
    import ast

    package = ["tuneline", *path.relative_to(LIBRARY).with_suffix("").parts][:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] if base == "tuneline" else [base]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, name) for line, name in found if name.startswith("tuneline.")]


def package_graph() -> dict[str, dict[str, str]]:
    """{package: {imported package: "file:line" of one such import}} over the whole library."""
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == LIBRARY:
            continue
        source = _package_of(path)
        for line, name in _imported_modules(path):
            target = name.split(".")[1]
            if target != source:
                graph.setdefault(source, {}).setdefault(target, f"{path.relative_to(REPO)}:{line}")
    return graph


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle (as a closed path of packages) per strongly connected component of more than one package."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:
        # a closed walk inside the component: breadth-first from its first package back to itself
        start, members = component[0], set(component)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(graph.get(v, {})):
                if w == start:
                    queue = []
                    cycles.append([*paths[v], start])
                    break
                if w in members and w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
    return cycles


def test_cycle_finder_names_a_loop() -> None:
    graph = {"config": {"promote": "a:1"}, "promote": {"train": "b:2"}, "train": {"config": "c:3"}, "x": {}}
    assert _cycles(graph) == [["config", "promote", "train", "config"]]
    assert _cycles({"a": {"b": "f:1"}, "b": {}}) == []


def test_no_package_import_loops() -> None:
    """Covers the loops config -> promote (locks' URL helpers) -> train (tracking, inputs) -> config, and
    evaluate/promote borrowing from train: a loop here is a shared floor left inside a feature package."""
    graph = package_graph()
    described = []
    for cycle in _cycles(graph):
        edges = ", ".join(graph[a][b] for a, b in zip(cycle, cycle[1:], strict=False))
        described.append(f"{' -> '.join(cycle)}  ({edges})")
    assert described == [], "package import loops:\n" + "\n".join(described)


def test_floors_never_import_feature_packages() -> None:
    graph = package_graph()
    offenders = [f"{floor} -> {feature} ({where})" for floor in sorted(FLOORS & set(graph))
                 for feature, where in sorted(graph[floor].items()) if feature in FEATURES]
    assert offenders == []




def bare_function_imports() -> dict[str, list[str]]:
    """{library file: ["line: statement"]} for imports inside a function without a `# lazy: <reason>` comment
    on their first line. `if TYPE_CHECKING:` blocks sit at module level and are not counted."""
    import ast

    found: dict[str, list[str]] = {}
    for path in sorted(LIBRARY.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()

        def visit(node: ast.AST, in_function: bool, path: Path = path, lines: list[str] = lines) -> None:
            for child in ast.iter_child_nodes(node):
                nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                    line = lines[child.lineno - 1]
                    reason = line.partition("# lazy:")[2].strip()
                    if not reason or re.search(r"\b(loop|cycle|circular)", reason):
                        rel = str(path.relative_to(LIBRARY))
                        found.setdefault(rel, []).append(f"{child.lineno}: {line.strip()}")
                visit(child, nested)

        visit(ast.parse("\n".join(lines)), False)
    return found


def test_function_level_imports_carry_a_measured_reason() -> None:
    """An import inside a function is kept only for a measured start-up cost (or an optional dependency),
    said in a trailing `# lazy: <reason>`; "breaks a loop" is not a reason: the loop is fixed instead."""
    bare = bare_function_imports()
    assert bare == {}, "hoist to module top or add `# lazy: <measured reason>`:\n" + "\n".join(
        f"  {f}:{line}" for f, lines in bare.items() for line in lines)


HEAVY = ("torch", "transformers", "mlflow", "sklearn", "scipy", "numba", "pandas", "fastapi",
         "great_expectations")


@pytest.mark.parametrize("module", ["tuneline.cli", "tuneline.serve.server", "tuneline.evaluate.evaluate",
                                    "tuneline.promote.promote", "tuneline.run_report", "tuneline.train",
                                    "tuneline.data_half", "tuneline.summaries"])
def test_cli_modules_import_light(module: str) -> None:
    """What `# lazy:` buys: the CLI (`tuneline --help`) and the modules it dispatches to import none of the
    seconds-long libraries; only running a command that needs one loads it."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [], f"importing {module} loads {out.split()}"
