"""``Optimized`` is built by name: as written, served from the book, or planned now."""

from __future__ import annotations

import ast
from pathlib import Path

import duckdb

import lqo
from lqo.engine.settings import FORCE_DISABLED_OPTIMIZERS
from lqo.optimized import Optimized

ROOT = Path(lqo.__file__).parent


def test_named_constructors():
    w = Optimized.as_written("SELECT 1", "kept", 0.5, disabled=("cte_inlining",), source="book")
    assert (w.sql, w.forced, w.fallback, w.source, w.rules) == ("SELECT 1", False, "kept", "book", ("cte_inlining",))
    b = Optimized.from_book("SELECT 1", "SELECT 1 AS x", None, 0.1, disabled=("join_filter_pushdown",))
    assert (b.sql, b.forced, b.source, b.fallback) == ("SELECT 1 AS x", True, "book", None)
    assert b.rules == FORCE_DISABLED_OPTIMIZERS + ("join_filter_pushdown",)
    kept = Optimized.planned("SELECT 1", None, None, 0.2, fallback="no joins")
    assert (kept.sql, kept.forced, kept.source, kept.fallback, kept.rules) == ("SELECT 1", False, "model", "no joins", ())
    forced = Optimized.planned("SELECT 1", None, None, 0.2, forced_sql="SELECT 2", predicted_ms=1.0,
                               predicted_native_ms=2.0, candidates=3)
    assert (forced.sql, forced.forced, forced.candidates, forced.predicted_ms) == ("SELECT 2", True, 3, 1.0)
    assert forced.execute(duckdb.connect()) == [(2,)]


def test_nothing_in_lqo_builds_optimized_positionally():
    calls = []
    for path in ROOT.rglob("*.py"):
        if path.name == "optimized.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Optimized":
                calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls == []
