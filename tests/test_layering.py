"""The core never imports the miniature: ShapesWorld (`pairuni.shapes`) builds on the core,
and the core's registries name the miniature's parts by "module:attribute" path instead."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pairuni"
COMPOSITION_ROOTS = {"cli.py"}
"""Modules allowed to import any room: the command line wires the rooms together."""


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def core_files() -> list[Path]:
    return [
        path
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "shapes" and path.name not in COMPOSITION_ROOTS
    ]


def test_there_are_core_files_to_check() -> None:
    names = {path.relative_to(SRC).as_posix() for path in core_files()}
    assert {"rewards/base.py", "pairing/annotators.py", "eval/scoring.py"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_core_module_does_not_import_the_miniature(path: Path) -> None:
    shapes = sorted(m for m in imported_modules(path) if m.split(".")[:2] == ["pairuni", "shapes"])
    assert not shapes, f"{path.relative_to(SRC)} imports {shapes}: name it by module path"


def test_the_checker_sees_a_function_level_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pairuni.shapes.oracle import OracleAnnotator\n")
    assert "pairuni.shapes.oracle" in imported_modules(module)


def test_demo_and_report_do_not_import_each_other() -> None:
    demo = imported_modules(SRC / "shapes" / "demo.py")
    report = imported_modules(SRC / "shapes" / "report.py")
    assert "pairuni.shapes.report" in demo  # the demo writes the report
    assert not any(m.startswith("pairuni.shapes.demo") for m in report)


def test_registries_name_the_miniature_parts_that_exist() -> None:
    from pairuni.eval.scoring import DETECTORS
    from pairuni.importing import import_object
    from pairuni.pairing.annotators import ANNOTATORS
    from pairuni.rewards.base import BUILTIN_REWARD_MODULES, registered_rewards

    assert callable(import_object(DETECTORS["shapes"]))
    assert callable(import_object(ANNOTATORS["oracle"]))
    assert "pairuni.shapes.rewards" in BUILTIN_REWARD_MODULES
    assert {"shapes_geneval", "shapes_geneval_partial"} <= set(registered_rewards())


def test_import_object_names_a_bad_path() -> None:
    from pairuni.importing import import_object

    with pytest.raises(ValueError, match="module:attribute"):
        import_object("pairuni.shapes.oracle")
