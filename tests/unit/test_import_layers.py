"""The import graph of relay/: no cycle between packages; config phase 1 imports no other package."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

RELAY = Path(__file__).resolve().parents[2] / "relay"
# Leaf modules (they import nothing from relay) that phase 1 may use.
CONFIG_MAY_IMPORT = {"relay.config", "relay.errors", "relay.secret"}
# Known cycles: none left (explain/explain_table, metrics/metrics_export, providers/tokens and
# admin/alerts were removed); any cycle now fails.
KNOWN_CYCLES: list[list[str]] = []
# Module-level cycles inside a package: none left (relay.tokens.resources and .refresher type the
# TokenManager they work for with a protocol instead of importing it); any cycle now fails.
KNOWN_MODULE_CYCLES: list[list[str]] = []


def _module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every relay module ``path`` imports, anywhere in the file (also inside functions)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
    return {name for name in found if name == "relay" or name.startswith("relay.")}


def _unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: relay.smtp.handler -> relay.smtp."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """Edges between units of relay/ (a subpackage, or a module directly in relay/)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in RELAY.rglob("*.py"):
        module = _module_name(path)
        for target in _imports(path, module):
            if _unit(target) != _unit(module) and target != "relay":
                graph[_unit(module)].add(_unit(target))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_packages() -> None:
    """No two packages/top-level modules of relay/ import each other, directly or around a loop."""
    assert sorted(cycles(package_graph())) == sorted(KNOWN_CYCLES)  # the order is the DFS's


def module_graph() -> dict[str, set[str]]:
    """Edges between the modules of relay/ (a package's ``__init__`` is the package's name)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in RELAY.rglob("*.py"):
        module = _module_name(path)
        graph[module].update(target for target in _imports(path, module) if target != module)
    return graph


def test_no_import_cycle_between_modules() -> None:
    """Inside a package too, no two modules import each other (also lazily or for typing only)."""
    assert cycles(module_graph()) == KNOWN_MODULE_CYCLES


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check itself works: a loop of three units is reported."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_config_phase_one_imports_no_other_package() -> None:
    """relay/config/* (model, structure, parsers) imports only itself and leaf modules."""
    outside = {(_module_name(path), target)
               for path in (RELAY / "config").rglob("*.py")
               for target in _imports(path, _module_name(path))
               if _unit(target) not in CONFIG_MAY_IMPORT}
    assert outside == set()
    for leaf in ("errors", "secret"):
        assert _imports(RELAY / f"{leaf}.py", f"relay.{leaf}") == set()


def test_phase_one_runs_without_any_other_relay_package() -> None:
    """Reading a document's structure loads only relay.config and the leaf modules."""
    code = ("import sys, pathlib\n"
            "from relay.config.structure import read_structure\n"
            "s = read_structure({'accounts': {'a': {'username': 'u', 'mailbox': 'a@b.cd', "
            "'credentials': 'c', 'smtp': {'port': 'x'}}}}, {}, pathlib.Path('.'))\n"
            "assert s.config is not None and s.reader.problems\n"
            "print(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('relay.')}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=RELAY.parent)
    assert result.stdout.strip() == str(sorted(CONFIG_MAY_IMPORT))
