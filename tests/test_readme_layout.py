"""The README's layout section matches the tree: every module, SQL file and document of the
package, every example and every test folder is named there, and every file it names exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Named by the layout as what the wheel ships (made at build time), not files of the tree.
_BUILT = ("_migrations/", "_sql/bootstrap.sql")


def _named() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    return set(re.findall(r"`([^`\s]+)`", readme[start:readme.index("\n## ", start + 1)]))


def _tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _parts() -> set[str]:
    """What the layout must name: package modules, SQL and documents; examples; test folders."""
    parts = set()
    for path in _tracked():
        p = Path(path)
        if p.parts[0] == "agent_runtime" and p.suffix in (".py", ".sql", ".md") \
                and p.name not in ("__init__.py", "__main__.py"):
            parts.add(path)
        elif p.parts[0] == "examples" and p.suffix == ".py":
            parts.add(path)
        elif p.parts[0] == "tests" and len(p.parts) > 2:
            parts.add(f"tests/{p.parts[1]}/")
    return parts


def _unnamed(parts: set[str], named: set[str]) -> list[str]:
    def is_named(path: str) -> bool:
        name = Path(path).name + ("/" if path.endswith("/") else "")
        return bool({path, name} & named)
    return sorted(p for p in parts if not is_named(p))


def _absent(named: set[str], tracked: list[str]) -> list[str]:
    files = set(tracked) | {f"{d}/" for t in tracked for d in map(str, Path(t).parents) if d != "."}
    basenames = {Path(f.rstrip("/")).name + ("/" if f.endswith("/") else "") for f in files}
    return sorted(n for n in named if re.fullmatch(r"[\w./-]+\.(?:py|sql|md)|[\w./-]+/", n)
                  and n not in _BUILT and n not in files and n not in basenames)


def test_every_part_of_the_tree_is_named_in_the_layout() -> None:
    assert _unnamed(_parts(), _named()) == []


def test_every_file_the_layout_names_exists() -> None:
    assert _absent(_named(), _tracked()) == []


def test_the_checks_see_what_is_missing() -> None:
    """(Both checks can fail: a part the layout leaves out, a name the tree does not have.)"""
    named = _named()
    assert _unnamed(_parts() | {"agent_runtime/runtime/_new_part.py"}, named) == [
        "agent_runtime/runtime/_new_part.py"]
    assert _unnamed(_parts(), named - {"_context.py"}) == ["agent_runtime/runtime/_context.py"]
    assert _absent(named | {"_gone.py"}, _tracked()) == ["_gone.py"]
