"""Joins that several blocks compute identically are rendered once (lqo.trees.shared):
forced plans keep the sharing DuckDB's common-subplan rule gives up without join
estimates, return the native result, and nothing is shared that is not identical."""

from __future__ import annotations

import duckdb
import pytest

from conftest import tpc_queries
from lqo.engine.db import connect_read_only
from lqo.engine.run_result import fingerprint_rows
from lqo.engine.settings import forced_settings
from lqo.sql.catalog import Catalog
from lqo.sql.join_graph import build_query_graph
from lqo.trees.native import explain_json, read_native_trees
from lqo.trees.plan import Join, Leaf, Plan
from lqo.trees.query import prepare
from lqo.trees.render import render
from lqo.trees.shared import SHARED_PREFIX, shared_joins

TABLES = {"f": {"k": "INT", "v": "INT", "id": "INT"}, "d": {"dk": "INT", "y": "INT", "dz": "INT", "id": "INT"},
          "t": {"tk": "INT", "h": "INT"}}


@pytest.fixture(scope="module")
def small():
    con = duckdb.connect()
    con.execute("CREATE TABLE f AS SELECT i % 50 AS k, i % 7 AS v, i AS id FROM range(3000) r(i)")
    con.execute("CREATE TABLE d AS SELECT i AS dk, i % 3 AS y, i % 11 AS dz, i AS id FROM range(50) r(i)")
    con.execute("CREATE TABLE t AS SELECT i AS tk, i % 24 AS h FROM range(11) r(i)")
    yield con, Catalog(TABLES)
    con.close()


def _two_blocks(first: str, second: str, select: str = "count(*) AS n, sum(d.dz) AS s") -> str:
    block = "SELECT {s} FROM f, d, t WHERE f.k = d.dk AND d.dz = t.tk AND {w}"
    return (f"SELECT a.n, a.s, b.n, b.s FROM ({block.format(s=select, w=first)}) a, "
            f"({block.format(s=select, w=second)}) b")


def _tree():
    return Join(Leaf("t"), Join(Leaf("f"), Leaf("d")))


def _forced(con, sql):
    with forced_settings(con):
        return fingerprint_rows(con.execute(sql).fetchall())


def test_identical_joins_are_computed_once_with_the_native_result(small):
    """The outer join predicate and the select list name d, not the shared join's alias
    f: they are read through the shared relation, and d's filter moves inside it."""
    con, cat = small
    sql = _two_blocks("d.y = 1 AND t.h = 3", "d.y = 1 AND t.h = 5")
    g = build_query_graph(sql, cat)
    plan = Plan.of({1: _tree(), 2: _tree()})
    (shared,) = shared_joins(g, plan)
    assert shared.blocks == (1, 2)
    out = render(g, plan)
    assert out.startswith(f"WITH {SHARED_PREFIX}1 AS MATERIALIZED (SELECT d.dz FROM f JOIN d ON f.k = d.dk WHERE d.y = 1)")
    assert out.count(f"JOIN {SHARED_PREFIX}1 AS f ON t.tk = f.dz") == 2 and "d.y" not in out.split(")", 1)[1]
    assert _forced(con, out) == fingerprint_rows(con.execute(sql).fetchall())
    with forced_settings(con):
        plan_text = con.execute("EXPLAIN " + out).fetchall()[0][1]
    assert plan_text.count("CTE_SCAN") == 2 and plan_text.count(f"{SHARED_PREFIX}1") >= 1


@pytest.mark.parametrize("second, why", [
    ("d.y = 2 AND t.h = 5", "a filter differs"),
    ("d.y = 1 AND t.h = 5 AND f.v > (SELECT min(tk) FROM t t2)", "a subquery restricts f"),
    ("d.y = 1 AND t.h = 5 AND f.v < (SELECT count(*) FROM t t2 WHERE t2.h = d.y)", "a subquery names d"),
])
def test_joins_that_differ_are_not_shared(small, second, why):
    con, cat = small
    sql = _two_blocks("d.y = 1 AND t.h = 3", second)
    g = build_query_graph(sql, cat)
    plan = Plan.of({1: _tree(), 2: _tree()})
    assert shared_joins(g, plan) == [], why
    assert _forced(con, render(g, plan)) == fingerprint_rows(con.execute(sql).fetchall())


def test_a_filter_written_with_or_without_its_alias_is_the_same_filter(small):
    """TPC-DS q70 writes ``d1.d_month_seq`` in one block and ``d_month_seq`` in the other."""
    con, cat = small
    sql = ("SELECT a.n, b.n FROM (SELECT count(*) AS n FROM f, d d1, t WHERE f.k = d1.dk AND d1.dz = t.tk "
           "AND d1.y = 1 AND t.h = 3) a, (SELECT count(*) AS n FROM f, d, t WHERE k = dk AND dz = tk AND y = 1 "
           "AND h = 5) b")
    g = build_query_graph(sql, cat)
    plan = Plan.of({1: Join(Leaf("t"), Join(Leaf("f"), Leaf("d1"))), 2: _tree()})
    assert [s.blocks for s in shared_joins(g, plan)] == [(1, 2)]
    assert _forced(con, render(g, plan)) == fingerprint_rows(con.execute(sql).fetchall())


def test_not_shared_where_names_would_clash_or_duckdb_shares_more():
    cat = Catalog(TABLES)
    # f.id and d.id would be one relation's two columns of one name
    clash = _two_blocks("d.y = 1 AND t.h = 3", "d.y = 1 AND t.h = 5", select="count(*) AS n, max(f.id) AS s")
    assert shared_joins(build_query_graph(clash, cat), Plan.of({1: _tree(), 2: _tree()})) == []
    # the whole blocks are the same SELECT: DuckDB shares them, aggregate included
    whole = ("SELECT * FROM (SELECT d.y, count(*) AS n FROM f, d WHERE f.k = d.dk GROUP BY d.y) a, "
             "(SELECT d.y, count(*) AS n FROM f, d WHERE f.k = d.dk GROUP BY d.y) b WHERE a.y = b.y")
    tree = lambda: Join(Leaf("f"), Leaf("d"))  # noqa: E731
    assert shared_joins(build_query_graph(whole, cat), Plan.of({1: tree(), 2: tree()})) == []
    # ... unless they differ
    other = whole.replace("count(*) AS n FROM f, d WHERE f.k = d.dk GROUP BY d.y) b",
                          "sum(f.v) AS n FROM f, d WHERE f.k = d.dk GROUP BY d.y) b")
    assert len(shared_joins(build_query_graph(other, cat), Plan.of({1: tree(), 2: tree()}))) == 1


def test_tpcds_shared_joins_force_to_the_native_result_read_as_whole_trees(tpcds_db):
    """TPC-DS q61 (at SF1 also q90, q88; q90 has no forceable tree at sf 0.01): DuckDB's
    own trees, forced, share the join the blocks have in common (DuckDB alone would not);
    the result is native and EXPLAIN, read through the CTE, shows the rendered trees."""
    con = connect_read_only(tpcds_db)
    cat = Catalog.from_connection(con)
    queries = tpc_queries("tpcds")
    for qid in ("q61",):
        pq = prepare(queries[qid], con, cat)
        assert shared_joins(pq.graph, pq.native_plan), qid
        sql = pq.render(pq.native_plan)
        assert f"{SHARED_PREFIX}1 AS MATERIALIZED" in sql, qid
        assert _forced(con, sql) == fingerprint_rows(con.execute(pq.sql).fetchall()), qid
        with forced_settings(con):
            executed = read_native_trees(pq.graph, explain_json(con, sql))
        assert executed.shared_subplan and executed.plan == pq.native_plan, qid
    con.close()


def _with_literals(sql: str, changes: dict[int, str]) -> str:
    """``sql`` with its literal number k (in token order) replaced by ``changes[k]``."""
    from lqo.book.template import tokens

    out, pos = [], 0
    for k, (start, end, _, _) in enumerate(t for t in tokens(sql) if t[3]):
        if k in changes:
            out += [sql[pos:start], changes[k]]
            pos = end
    return "".join(out) + sql[pos:]


def test_book_slots_share_only_where_an_instance_keeps_the_filters_identical(tpcds_db):
    """A plan book serves a template's plan by filling literal slots. With a shared join
    the fill must share exactly when the full rendering of that instance would: not when
    one block's literal changes (its filters then differ), again when both change."""
    from lqo.book.slots import SlotRendering
    from lqo.book.template import template_key

    con = connect_read_only(tpcds_db)
    cat = Catalog.from_connection(con)
    pq = prepare(tpc_queries("tpcds")["q61"], con, cat)
    plan = pq.native_plan
    slots = SlotRendering.build(pq.sql, cat, plan)
    assert slots.twins and slots.plain is not None
    assert SlotRendering.from_json(slots.to_json()) == slots
    literals = template_key(pq.sql).literals
    later, first = next((a, b) for a, b in slots.twins if literals[a].isdigit())  # a year or month
    new = str(int(literals[later]) + 1)
    for changes, shares in (({}, True), ({later: new}, False), ({later: new, first: new}, True)):
        sql = _with_literals(pq.sql, changes)
        filled = slots.fill(template_key(sql).literals)
        assert filled == render(build_query_graph(sql, cat), plan), changes
        assert (f"{SHARED_PREFIX}1" in filled) == shares, changes
        assert _forced(con, filled) == fingerprint_rows(con.execute(sql).fetchall()), changes
    con.close()
