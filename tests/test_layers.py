"""The package's layers, read from its source: no import circle, and each layer imports only the
layers beneath it (the faces, ``cli`` and ``testing``, are imported by nobody in the core). The
runtime's parts are given a context, never the runtime: only the facade and the faces import
``AgentRuntime``, and no module assigns to another object's private attributes."""

from __future__ import annotations

import ast
from pathlib import Path

import agent_runtime

ROOT = Path(agent_runtime.__file__).parent
EXAMPLES = ROOT.parent / "examples"

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
    assert "agent_runtime.runtime.agent" not in edges["agent_runtime.runtime._locks"]


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


# Who may import AgentRuntime (or the module defining it): the facade itself, the public face, and
# the faces built on the public API.
MAY_IMPORT_THE_RUNTIME = ("agent_runtime/runtime/agent.py", "agent_runtime/__init__.py", "agent_runtime/cli/",
                          "examples/")


def imports_the_runtime(source: str, module: str) -> bool:
    """Whether ``source`` (the module ``module``) imports ``AgentRuntime`` or the module that
    defines it, anywhere, ``if TYPE_CHECKING:`` included (a type-only import is still a circle of
    knowledge: the part would know the whole runtime)."""
    package = module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            if any(alias.name == "agent_runtime.runtime.agent" for alias in node.names):
                return True
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = {alias.name for alias in node.names}
            if "AgentRuntime" in names or target == "agent_runtime.runtime.agent" or (
                    target == "agent_runtime.runtime" and "agent" in names):
                return True
    return False


def _sources() -> list[tuple[str, Path]]:
    """(path relative to the repository, file) of every package and example module."""
    repo = ROOT.parent
    return [(p.relative_to(repo).as_posix(), p) for p in sorted([*ROOT.rglob("*.py"), *EXAMPLES.rglob("*.py")])]


def test_the_runtime_import_check_can_fail() -> None:
    """The check sees the forms a part could use (so the test below can fail)."""
    part = "agent_runtime.runtime._locks"
    for source in ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .agent import AgentRuntime\n",
                   "from agent_runtime import AgentRuntime\n", "from .. import AgentRuntime\n",
                   "import agent_runtime.runtime.agent\n", "from . import agent\n",
                   "from agent_runtime.runtime.agent import MAX_PAYLOAD_BYTES\n"):
        assert imports_the_runtime(source, part), source
    assert not imports_the_runtime("from ._context import RuntimeContext\nfrom . import _db\n", part)
    assert imports_the_runtime((ROOT / "__init__.py").read_text(), "agent_runtime")


def test_only_the_facade_and_the_faces_import_the_runtime() -> None:
    importers = {path for path, file in _sources()
                 if imports_the_runtime(file.read_text(), module_name(file) if file.is_relative_to(ROOT)
                                        else f"examples.{file.stem}")}
    assert "agent_runtime/__init__.py" in importers  # (the check sees them)
    assert sorted(p for p in importers if not p.startswith(MAY_IMPORT_THE_RUNTIME)) == []


def private_assignments(source: str) -> list[str]:
    """Assignments (``=``, ``+=``, annotated, ``del``) to a ``_private`` attribute of anything but
    the method's own object (its first parameter, in the method and the functions nested in it).
    Dunder names (``__dict__``...) are not private."""
    found: list[str] = []

    def targets(node: ast.expr) -> list[ast.expr]:
        if isinstance(node, ast.Tuple | ast.List):
            return [t for element in node.elts for t in targets(element)]
        return targets(node.value) if isinstance(node, ast.Starred) else [node]

    def visit(node: ast.AST, own: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = own
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and isinstance(node, ast.ClassDef):
                args = [*child.args.posonlyargs, *child.args.args]
                is_static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in child.decorator_list)
                inner = args[0].arg if args and not is_static else None
            if isinstance(child, ast.Assign | ast.Delete):
                written = child.targets
            elif isinstance(child, ast.AugAssign | ast.AnnAssign):
                written = [child.target]
            else:
                written = []
            found.extend(f"line {child.lineno}: {ast.unparse(target)}"
                         for target in (t for w in written for t in targets(w))
                         if isinstance(target, ast.Attribute) and target.attr.startswith("_")
                         and not target.attr.endswith("__")
                         and not (isinstance(target.value, ast.Name) and target.value.id == own))
            visit(child, inner)

    visit(ast.parse(source), None)
    return found


def test_the_private_assignment_check_can_fail() -> None:
    wrong = """
class Runtime:
    def open(self, sub):
        sub._frontier = 3
        self.sub._start = "latest"
        a, (b, sub._x) = 1, (2, 3)
        sub._n += 1
        del sub._y

def renew(lease):
    lease._deadline = 1.0
"""
    assert len(private_assignments(wrong)) == 6
    right = """
class Lease:
    _deadline: float = 0.0

    def renewed(me, started):
        me._deadline = started
        def later():
            me._count = 1
        me.__dict__ = {}

    @staticmethod
    def make():
        return 1
"""
    assert private_assignments(right) == []


def test_no_module_assigns_to_another_objects_private_attributes() -> None:
    found = [f"{path} {where}" for path, file in _sources() for where in private_assignments(file.read_text())]
    assert found == []
