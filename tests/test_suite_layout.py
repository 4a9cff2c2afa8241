"""The test suite's own layout (docs/testing.md): shared builders come from `helpers` and the harness
modules, never from another test module (tests used to import `build_tiny_base` and friends from
`test_demo_base`, `test_registry`, `test_train`, ... in two import styles); the session's shared base is
guarded against a test that writes into it."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import _digest

TESTS = Path(__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_test_module_imports_another() -> None:
    offending = {
        path.name: sorted(m for m in imported_modules(path) if m.split(".")[-1].startswith("test_")
                          or m.startswith("tests."))
        for path in sorted(TESTS.glob("*.py"))
    }
    assert {name: mods for name, mods in offending.items() if mods} == {}


def test_shared_base_guard_sees_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x00" * 8)
    before = _digest(tmp_path)
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x01" + b"\x00" * 7)
    assert _digest(tmp_path) != before
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x00" * 8)
    assert _digest(tmp_path) == before
    (tmp_path / "new.txt").write_text("")
    assert _digest(tmp_path) != before
