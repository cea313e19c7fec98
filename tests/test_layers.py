"""The package's layers, read from its source: no import circle, and each layer imports only the
layers beneath it (the faces, ``cli`` and ``testing``, are imported by nobody in the core)."""

from __future__ import annotations

import ast
from pathlib import Path

import agent_runtime

ROOT = Path(agent_runtime.__file__).parent

# What each layer may import (besides itself). "base" is errors.py and models.py; "face" is the
# package's __init__ (the public API).
ALLOWED = {
    "base": {"base"},
    "transports": {"base"},
    "local": {"base", "transports"},
    "runtime": {"base", "transports", "local"},
    "render": {"base"},
    "face": {"base", "transports", "local", "runtime", "render"},
    "cli": {"face", "base", "local", "runtime", "render"},
    "testing": {"base", "transports", "local"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "face"
    return parts[1] if parts[1] in ALLOWED else "base"


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every agent_runtime module ``path`` imports, at module level or inside functions (lazy imports
    count: they run too), but not under ``if TYPE_CHECKING:`` (never executed)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.split(".")[0] == "agent_runtime")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                if target.split(".")[0] != "agent_runtime":
                    continue
                for alias in child.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            visit(child)

    visit(ast.parse(path.read_text()))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) & modules for p in paths}


def test_the_graph_is_read() -> None:
    """The reader sees known edges (so the tests below can fail)."""
    edges = graph()
    assert "agent_runtime.runtime.agent" in edges["agent_runtime"]
    assert "agent_runtime.runtime._locks" in edges["agent_runtime.runtime.agent"]
    assert "agent_runtime.transports.postgres" in edges["agent_runtime.local.migrations"]
    assert "agent_runtime.render.tables" in edges["agent_runtime.render.topology"]  # (a lazy import)
    assert "agent_runtime.runtime.agent" not in edges["agent_runtime.runtime._locks"]  # (TYPE_CHECKING only)


def test_no_import_circle() -> None:
    edges = graph()
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(node):], node]))
        if node in done:
            return
        for nxt in sorted(edges[node]):
            walk(nxt, [*path, node])
        done.add(node)

    for module in sorted(edges):
        walk(module, [])


def test_each_layer_imports_only_the_layers_beneath_it() -> None:
    wrong = sorted(f"{module} -> {target}"
                   for module, targets in graph().items() for target in targets
                   if layer(target) != layer(module) and layer(target) not in ALLOWED[layer(module)])
    assert wrong == []
