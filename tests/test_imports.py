"""Layering: the modules of bench/ and methods/ import each other without a cycle, and
the shared pieces import nothing above them.

The graph is read from the source with `ast`: every `import` and `from ... import`
statement, at module level or inside a function, is an edge to the module it names
(`from bench import dist` names bench.dist; `from methods import get_method` names the
package methods/__init__.py). The plugin packages load their modules with importlib
(methods/__init__.py, bench/datasets/__init__.py, bench/metrics/__init__.py); that is how a new file is found,
not a dependency of one module on another, and it is not an edge.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")
# Shared pieces: what they import (transitively) stays among them.
SHARED = {"bench.config", "bench.registry", "bench.dist", "bench.activations", "bench.surgery", "methods.base",
          "bench.datasets.base", "bench.targets", "bench.metrics.base", "bench.models.base", "bench.models.structure"}


def module_names() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that `name` (at `path`) imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        edges |= {t for t in targets if t in modules and t != name}
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a path [a, b, ..., a], or [] if it has none (depth-first search)."""
    state: dict[str, int] = {}        # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_import_graph_of_bench_and_methods_has_no_cycle():
    graph = import_graph()
    assert {"bench.config", "bench.configure", "methods.base", "bench.datasets.base"} <= set(graph)
    assert graph["bench.train"] >= {"methods", "bench.data"}          # the reader sees real edges
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_one_through_a_function_level_import(tmp_path):
    # The old layering: config imported methods (inside build_config), methods.base imported config.
    graph = {"bench.config": {"methods"}, "methods": {"methods.base"}, "methods.base": {"bench.config"}}
    assert find_cycle(graph) == ["bench.config", "methods", "methods.base", "bench.config"]
    source = tmp_path / "config.py"
    source.write_text("import yaml\n\ndef build_config(raw):\n    from methods import get_method\n")
    assert imports_of("bench.config", source, {"bench.config", "methods", "methods.base"}) == {"methods"}


def test_shared_pieces_import_nothing_above_them():
    graph = import_graph()
    for name in SHARED:
        above = reachable(graph, name) - SHARED
        assert not above, f"{name} imports {sorted(above)}"
    assert graph["bench.config"] == set()
