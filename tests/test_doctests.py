"""The runnable examples in every module's docstrings stay true.

Every module under ``lqo/`` is discovered (``pkgutil.walk_packages``), so a new module's
examples run without being listed here. Examples marked ``# doctest: +SKIP`` stay
skipped: they need a trained model or a database file.
"""

import doctest
import importlib
import io
import pkgutil
from pathlib import Path

import pytest

import lqo

MODULES = sorted(["lqo"] + [m.name for m in pkgutil.walk_packages(lqo.__path__, "lqo.")])

# Modules whose examples run (not all skipped): a module here whose examples all
# turned into +SKIP would no longer check anything.
MUST_RUN = [
    "lqo.config", "lqo.decision", "lqo.sql.catalog", "lqo.sql.join_graph", "lqo.sql.relations", "lqo.sql.syntax",
    "lqo.lock", "lqo.engine.failures", "lqo.engine.run_result", "lqo.model_dir",
    "lqo.trees.plan", "lqo.trees.enumerate", "lqo.trees.render", "lqo.train.recipe",
    "lqo.learn.checkpoint", "lqo.learn.graph_conv", "lqo.learn.greedy_lr", "lqo.learn.losses",
    "lqo.learn.model_kinds", "lqo.learn.models", "lqo.learn.tree_conv",
    "lqo.sql.rewrites", "lqo.sql.rewrites.contract", "lqo.sql.rewrites.scopes", "lqo.sql.rewrites.cte",
    "lqo.sql.rewrites.decorrelate", "lqo.sql.rewrites.eager_agg", "lqo.sql.rewrite_generation",
]


def test_every_module_is_discovered():
    """walk_packages sees every .py file under lqo/ (a folder without __init__.py would hide its modules)."""
    root = Path(lqo.__file__).parent
    on_disk = set()
    for path in root.rglob("*.py"):
        parts = ("lqo", *path.relative_to(root).with_suffix("").parts)
        on_disk.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert on_disk == set(MODULES)
    assert set(MUST_RUN) <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(verbose=False)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()
    if name in MUST_RUN:
        assert result.attempted > 0, f"{name}: every example is skipped"
