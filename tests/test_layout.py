"""The package's shape: imports flow one way, and the library never reaches up into the CLI.

Reads every module's imports (all of them, at any depth, ``if TYPE_CHECKING:`` blocks
included: a type-only import still ties two modules together, and must obey the same
layering) and checks the graph they make, per module and per package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import lqo

ROOT = Path(lqo.__file__).parent

# Packages (a folder under lqo/, or a top-level module) from the bottom up: a package may
# import only packages of lower layers, never one of its own layer or above. A new
# package must be placed here.
LAYERS: list[set[str]] = [
    {"errors"},
    {"config", "lock", "sql", "engine", "decision", "triage"},
    {"trees", "estimates", "workloads", "distributed", "store"},
    {"learn", "search", "plots", "optimized", "model_dir"},
    {"book"},  # serving: the plan book, template keys, slot renderings
    {"optimizer"},  # serving: the learned optimizer (a tuned book first)
    {"connection"},  # serving: the drop-in connection (book and optimizer behind DuckDB's API)
    {"tune", "train", "sched"},  # offline: tuning the book, training the model; scheduling
    {"evaluate"},
    {"cli"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, modules: set[str]) -> set[str]:
    """lqo modules that ``source`` imports (resolving ``from pkg import module`` too),
    wherever the import stands: inside functions and ``if TYPE_CHECKING:`` blocks too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not read by this test: write them absolute"
            if not node.module:
                continue
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
    return {m: _imports(p.read_text(), modules) - {m} for m, p in files.items()}


def _package(module: str) -> str:
    return module.split(".")[1]


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if m == "lqo":  # the public face re-exports lazily, by name
            continue
        out.setdefault(_package(m), set()).update(_package(d) for d in deps if _package(d) != _package(m))
    return out


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


def test_type_checking_imports_are_read():
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lqo.a import B\n"
    assert _imports(source, {"lqo.a", "lqo.b"}) == {"lqo.a"}


def test_no_import_cycles():
    graph = _graph()
    # Package __init__ files re-export lazily; an eager package import would show here too.
    assert _cycles(graph) == []


def test_no_package_cycles():
    assert _cycles(_package_graph(_graph())) == []


def test_packages_import_only_lower_layers():
    layer = {p: i for i, ps in enumerate(LAYERS) for p in ps}
    packages = _package_graph(_graph())
    assert set(packages) <= set(layer), "place every package in LAYERS"
    bad = {p: sorted(d for d in deps if layer[d] >= layer[p]) for p, deps in packages.items()}
    assert {p: d for p, d in bad.items() if d} == {}


def test_tuning_serving_and_training_are_apart():
    """The offline stages reach the serving path, never the other way round; the store is
    its own stage, which nothing below tuning and training needs."""
    packages = _package_graph(_graph())
    assert {"book", "optimizer", "store"} <= packages["tune"]
    assert {"optimizer", "store"} <= packages["train"] and "tune" not in packages["train"]
    assert "book" in packages["optimizer"]
    for serving in ("book", "optimizer", "optimized", "connection"):
        assert not packages.get(serving, set()) & {"tune", "train", "store", "evaluate", "sched"}, serving


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


REWRITE_FAMILIES = {"lqo.sql.rewrites.cte", "lqo.sql.rewrites.decorrelate", "lqo.sql.rewrites.eager_agg"}


def test_rewrite_families_import_only_their_contract():
    """One contract per family: the families read the contract (and the scope reading
    beside it), never the registry above them nor each other; the contract knows no family."""
    graph = _graph()
    assert REWRITE_FAMILIES <= set(graph) and REWRITE_FAMILIES <= graph["lqo.sql.rewrites"]
    for family in REWRITE_FAMILIES:
        inside = {d for d in graph[family] if d.startswith("lqo.sql.rewrites")}
        assert "lqo.sql.rewrites.contract" in inside, family
        assert inside <= {"lqo.sql.rewrites.contract", "lqo.sql.rewrites.scopes"}, (family, inside)
    for shared in ("lqo.sql.rewrites.contract", "lqo.sql.rewrites.scopes"):
        assert not graph[shared] & (REWRITE_FAMILIES | {"lqo.sql.rewrites"}), shared


def test_book_serving_never_imports_the_rewrite_generator():
    """The book serves a rewrite's stored text and reads the generator's generation from a
    module without sqlglot; the generator (sqlglot) is the tuner's."""
    graph = _graph()
    bad = {m: sorted(d for d in deps if d.startswith("lqo.sql.rewrites")) for m, deps in graph.items()
           if m.startswith(("lqo.book", "lqo.optimized", "lqo.connection"))}
    assert {m: d for m, d in bad.items() if d} == {}
    assert graph["lqo.sql.rewrite_generation"] == set()
    assert "lqo.sql.rewrite_generation" in graph["lqo.book.serve"]


def test_public_api_importable_from_lqo():
    for name in lqo.__all__:
        assert getattr(lqo, name) is not None


def _public_definitions() -> dict[str, list[str]]:
    """Public top-level class and function names (outside the CLI) -> modules defining them."""
    out: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        if module.startswith("lqo.cli"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
                out.setdefault(node.name, []).append(module)
    return out


def test_one_meaning_per_name():
    """No two modules share a file name, and no two define the same public class or function."""
    names: dict[str, list[str]] = {}
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py":
            names.setdefault(path.name, []).append(_module_name(path))
    assert {n: ms for n, ms in names.items() if len(ms) > 1} == {}
    assert {n: ms for n, ms in _public_definitions().items() if len(ms) > 1} == {}


def test_public_definitions_have_docstrings():
    """Every public class, function and method outside the CLI says what it is for."""
    missing = []
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        if module.startswith("lqo.cli"):
            continue
        tree = ast.parse(path.read_text())
        if ast.get_docstring(tree) is None:
            missing.append(module)
        stack = [(tree.body, module)]
        while stack:
            body, prefix = stack.pop()
            for node in body:
                if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                    if ast.get_docstring(node) is None:
                        missing.append(f"{prefix}.{node.name}")
                    if isinstance(node, ast.ClassDef):
                        stack.append((node.body, f"{prefix}.{node.name}"))
    assert sorted(missing) == []


def test_no_private_names_cross_modules():
    """A module imports only public names from another lqo module (a private helper two
    modules need is public, with a docstring, in the module that owns it)."""
    bad = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lqo"):
                bad += [f"{_module_name(path)}: {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
                if any(part.startswith("_") for part in node.module.split(".")):
                    bad.append(f"{_module_name(path)}: {node.module}")
    assert bad == []
