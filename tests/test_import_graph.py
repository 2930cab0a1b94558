"""The import graph of ``metarl`` (with ``envs/`` as ``metarl.envs``) has no cycle.

A static check over the source: every ``import`` and ``from ... import`` statement counts,
inside functions too (a lazy import that closes a cycle is still a cycle: the order the modules
happen to be imported in decides whether it fails), except those under ``if TYPE_CHECKING:``,
which never run. ``from package import name`` is an edge to the submodule ``package.name`` when
there is one, else to ``package``. Importing a submodule runs its parent package first, but that
is no edge here: a package's ``__init__`` may import its submodules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"metarl": ROOT / "metarl", "metarl.envs": ROOT / "envs"}
LOADED_BY_PATH = {"metarl": {"metarl.envs"}}
"""Imports the statements do not show: metarl/__init__.py loads metarl.envs by its path."""


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Every module's dotted name and file."""
    found: dict[str, Path] = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([name, *parts])] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child.test):
            for other in child.orelse:
                yield from _statements(other)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _statements(child)


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for stmt in _statements(ast.parse(path.read_text(), str(path))):
        if isinstance(stmt, ast.Import):
            out.update(alias.name for alias in stmt.names)
            continue
        base = stmt.module or ""
        if stmt.level:
            anchor = package.rsplit(".", stmt.level - 1)[0] if stmt.level > 1 else package
            base = f"{anchor}.{base}" if base else anchor
        for alias in stmt.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in modules else base)
    return out & modules


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    files = module_files(packages)
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    for name, extra in LOADED_BY_PATH.items():
        if name in graph:
            graph[name] |= extra & set(graph)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_metarl_has_no_import_cycle() -> None:
    graph = import_graph(PACKAGES)
    assert {"metarl.rl.learners", "metarl.rl.sampling.ray", "metarl.envs.navigation"} <= set(graph)
    assert "metarl.rl.sampling.local" in graph["metarl.rl.sampling"]
    assert "metarl.tasks" in graph["metarl.envs.tasks"]  # a relative import's target
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_check_finds_lazy_cycles_and_skips_type_checking_imports(tmp_path: Path) -> None:
    """What it must catch: two modules importing each other, one of them inside a function
    (the old sampler and ray_sampler); what it must not: an import for type checking only."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import B\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\nB = 1\n"
    )
    (pkg / "c.py").write_text("from pkg import a\n")
    assert find_cycle(import_graph({"pkg": pkg})) is None
    (pkg / "b.py").write_text("B = 1\ndef f():\n    from . import c\n")
    assert find_cycle(import_graph({"pkg": pkg})) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
