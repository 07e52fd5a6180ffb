"""The house's layering, read from the imports (ast): the library (pipeline/ without pipeline/app/)
imports none of export/, runtime/, the app or benchmarks/; export/ imports none of runtime/, the app
or benchmarks/; runtime/ imports neither the app nor benchmarks/; nothing in the product imports
benchmarks/; no file-level cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "export", "runtime", "benchmarks")
APP = "pipeline.app"  # cli, recipe, run, report


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every project module -> the project modules it imports (anywhere in the file)."""
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "build" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] + [f"{node.module}.{a.name}" for a in node.names] \
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            found |= {t for t in targets if t in modules}
        graph[name] = found - {name}
    return graph


def _layer(module: str) -> str:
    if module == APP or module.startswith(APP + "."):
        return "app"
    return "library" if module.startswith("pipeline") else module.split(".")[0]


FORBIDDEN = {  # layer -> layers it must not import
    "library": {"export", "runtime", "app", "benchmarks"},
    "export": {"runtime", "app", "benchmarks"},
    "runtime": {"app", "benchmarks"},
    "app": {"benchmarks"},
}


def test_no_forbidden_edge():
    bad = [f"{src} -> {dst}" for src, targets in _imports().items() for dst in targets
           if _layer(dst) in FORBIDDEN.get(_layer(src), set())]
    assert not bad, bad


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, each as the path that closes it (depth-first, back edges)."""
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, set())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return cycles


def test_no_file_level_cycle():
    assert not find_cycles(_imports())


def test_the_walker_sees_imports():
    """The checks above mean something only if the walker finds the edges that exist."""
    graph = _imports()
    assert "export.artifact" in graph["runtime.bench"]
    assert "runtime.bench" in graph["pipeline.app.recipe"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
