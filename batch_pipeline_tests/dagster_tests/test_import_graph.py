"""batch_pipeline's modules import one another without a cycle, counting every import:
module-level, inside functions (lazy) and under TYPE_CHECKING."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import batch_pipeline

PACKAGE = Path(batch_pipeline.__file__).parent


def module_files() -> dict[str, Path]:
    """Each module of the package by its dotted name (a package by its own name)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (`from pkg import x` counts as pkg.x when
    x is a module, else as pkg)."""

    def known(target: str) -> str | None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found |= {known(f"{base}.{alias.name}") for alias in node.names}
    return {module for module in found if module and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def test_the_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "batch_pipeline.core.pipeline" in graph["batch_pipeline.cli"]
    assert "batch_pipeline.dagster.resources" in graph["batch_pipeline.dagster.assets"]


def test_no_import_cycle() -> None:
    try:
        order = list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert "batch_pipeline.demo" in order
