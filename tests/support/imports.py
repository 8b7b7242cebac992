"""The project modules a module needs: every import it makes, at the top or inside a function, followed through."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("components", "tasks", "flows")


def module_file(module: str) -> Path | None:
    """The file of a project module (a package's ``__init__.py``), or None for anything else."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _runtime_nodes(tree: ast.AST):
    """Every node of the tree except the bodies of ``if TYPE_CHECKING:`` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += list(ast.iter_child_nodes(node))


def imported_modules(path: Path) -> set[str]:
    """Project modules named by the imports of one file run at import or call time, wherever in the file."""
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from package import submodule` imports the submodule too
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if module_file(n) is not None}


def closure(start: str) -> set[Path]:
    """Every project file that importing ``start`` can load (parent packages' ``__init__`` files included)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file(module)
        if path is None:
            continue
        todo += _parents(module)
        todo += sorted(imported_modules(path))
    return {f for m in seen if (f := module_file(m)) is not None}
