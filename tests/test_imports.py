"""The project's import graph: no cycles among its own modules, and the contracts of [tool.importlinter] kept.

The graph is grimp's (what import-linter checks): every `import` counts, those under `if TYPE_CHECKING:` and
those inside functions included, since a cycle hidden from the interpreter is still one for a reader. A
package's `__init__` is a module like the others: a package that imports its submodule, and a submodule that
imports the package (`from pkg import name` for a name the `__init__` defines), make a cycle;
`from pkg import sibling` is an import of the sibling module only.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES: list[str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]


def cycles(imports: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(imports):
        if start in index:
            continue
        work = [(start, iter(sorted(imports.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(imports.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One cycle: its modules, then each import between two of them with its line."""
    members = set(component)
    lines = [" <-> ".join(component)]
    for importer in component:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            for detail in graph.get_import_details(importer=importer, imported=imported):
                lines.append(f"    {importer}:{detail['line_number']} -> {imported}: {detail['line_contents']}")
    return "\n".join(lines)


def test_the_cycle_finder_finds_cycles_through_a_package_init() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c", "other"):
        graph.add_module(module)
    graph.add_import(importer="pkg", imported="pkg.a")  # the __init__ re-exports from a
    graph.add_import(importer="pkg.a", imported="pkg")  # a takes a name the __init__ defines: a cycle
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="other")
    graph.add_import(importer="other", imported="pkg.b")  # b -> c -> other -> b
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert cycles(imports) == [["other", "pkg.b", "pkg.c"], ["pkg", "pkg.a"]]


def test_type_checking_and_function_local_imports_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = tmp_path / "tolk_import_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "a.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                "    from tolk_import_probe.b import f\n")
    (probe / "b.py").write_text("def f() -> None:\n    from tolk_import_probe import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("tolk_import_probe", include_external_packages=False,
                              exclude_type_checking_imports=False, cache_dir=None)
    imports = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert cycles(imports) == [["tolk_import_probe.a", "tolk_import_probe.b"]]
    # ... and lint-imports builds its graph the same way.
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert options.get("exclude_type_checking_imports", False) is False


def test_no_import_cycles_among_the_projects_modules() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=False,
                              cache_dir=None)
    assert len(graph.modules) > 50, sorted(graph.modules)  # the packages were found, not an empty graph
    found = cycles({m: graph.find_modules_directly_imported_by(m) for m in graph.modules})
    report = "\n".join(describe(graph, component) for component in found)
    if report:
        print(f"{len(found)} import cycle(s):\n{report}")
    assert not found, f"{len(found)} import cycle(s):\n{report}"


def test_lint_imports_keeps_every_contract() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
