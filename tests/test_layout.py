"""The package's shape: imports flow one way, and the library never reaches up into the CLI.

Reads every module's imports (all of them, at any depth except ``if TYPE_CHECKING:``
blocks, which never run) and checks the graph they make.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lqo

ROOT = Path(lqo.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """lqo modules that ``path`` imports (resolving ``from pkg import module`` too)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "lqo":
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    return {m: _imports(p, modules) - {m} for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = _graph()
    # Package __init__ files re-export lazily; an eager package import would show here too.
    assert _cycles(graph) == []


def test_library_never_imports_the_cli():
    graph = _graph()
    bad = {m: sorted(d for d in deps if d.startswith("lqo.cli")) for m, deps in graph.items()
           if not m.startswith("lqo.cli")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_plan_model_knows_no_model_kinds():
    graph = _graph()
    assert "lqo.learn.model_kinds" not in graph["lqo.learn.models"]
    assert not any(d.startswith(("lqo.sched.policies", "lqo.sched.gnn_policy")) for d in graph["lqo.sched.policy"])
    assert "lqo.sched.policies" not in graph["lqo.sched.gnn_policy"]


def test_public_api_importable_from_lqo():
    for name in lqo.__all__:
        assert getattr(lqo, name) is not None
