"""The import graph of the library has no cycles, and the library never imports the CLI.

Every import counts, those inside functions too: a deferred import still ties two modules
together, it only hides the knot from the interpreter.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from tests.conftest import REPO


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from a import b` counts `a.b` when it is one)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found.update(n for n in names if n in known)
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known


def import_graph(root: Path = REPO, packages: tuple[str, ...] = ("connecto", "cli")) -> dict:
    files = [f for package in packages for f in sorted((root / package).rglob("*.py"))]
    known = {_module_name(f, root) for f in files}
    graph = {}
    for file in files:
        name = _module_name(file, root)
        # a package's __init__ is imported with its modules: not an edge worth a cycle
        graph[name] = {m for m in _imports(file, known) if not name.startswith(f"{m}.")}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as error:
        return list(error.args[1])
    return None


def test_the_library_has_no_import_cycles() -> None:
    found = cycle(import_graph())
    assert found is None, f"import cycle: {' -> '.join(found or [])}"


def test_the_library_never_imports_the_cli() -> None:
    graph = import_graph()
    offenders = {
        module: sorted(m for m in imported if m == "cli" or m.startswith("cli."))
        for module, imported in graph.items()
        if module.startswith("connecto")
    }
    assert not {m: i for m, i in offenders.items() if i}, offenders


def test_a_deferred_import_cycle_is_found(tmp_path: Path) -> None:
    """The check itself: an import inside a function still makes a cycle."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from pkg import a\n")
    found = cycle(import_graph(tmp_path, ("pkg",)))
    assert found is not None and {"pkg.a", "pkg.b"} <= set(found)
