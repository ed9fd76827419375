"""Join graphs: parsing, block extraction, safety marking, round trips.

Parse + graph latency per query: ``python benchmarks/planning_latency.py WORKLOAD``
(stage ``parse_graph``); no timing here.
"""

from __future__ import annotations

import pytest
import sqlglot

from conftest import tpc_queries
from lqo.sql.catalog import Catalog
from lqo.engine.db import connect_read_only
from lqo.errors import InvalidSQLError, NotSelectError, UnknownTableError
from lqo.sql.join_graph import Column, build_query_graph

CAT = Catalog({
    "a": {"x": "INTEGER", "y": "INTEGER", "s": "VARCHAR"},
    "b": {"x": "INTEGER", "z": "INTEGER"},
    "c": {"z": "INTEGER", "w": "INTEGER", "t": "VARCHAR"},
    "d": {"w": "INTEGER"},
})


@pytest.fixture(scope="module")
def catalogs(tpch_db, tpcds_db):
    out = {}
    for kind, path in (("tpch", tpch_db), ("tpcds", tpcds_db)):
        con = connect_read_only(path)
        out[kind] = Catalog.from_connection(con)
        con.close()
    return out


def test_relations_classes_filters_residuals():
    g = build_query_graph(
        "SELECT * FROM a, b, c WHERE a.x = b.x AND b.z = c.z AND a.y > 3 AND (a.y < c.w OR c.t = 'q') AND a.s LIKE 'p%'",
        CAT,
    )
    (block,) = g.blocks
    assert block.aliases == ["a", "b", "c"]
    assert {frozenset(cls) for cls in block.classes} == {
        frozenset({Column("a", "x"), Column("b", "x")}),
        frozenset({Column("b", "z"), Column("c", "z")}),
    }
    assert sorted(f.sql() for f in block.filters["a"]) == ["a.s LIKE 'p%'", "a.y > 3"]
    assert [r.rels for r in block.residuals] == [frozenset({"a", "c"})]
    assert block.unsafe is None and g.unsafe_reason is None


def test_transitive_keys_make_one_class():
    g = build_query_graph("SELECT 1 FROM a, b, c WHERE a.x = b.x AND b.x = c.z", CAT)
    (cls,) = g.blocks[0].classes
    assert {c.rel for c in cls} == {"a", "b", "c"}
    # a and c share no written predicate, yet the class connects them
    assert g.blocks[0].connects(frozenset({"a"}), frozenset({"c"}))


def test_unqualified_columns_resolve_by_catalog():
    g = build_query_graph("SELECT 1 FROM a, c, d WHERE y = 1 AND c.w = d.w AND t = 'x'", CAT)
    b = g.blocks[0]
    assert set(b.filters) == {"a", "c"}
    assert b.classes == [(Column("c", "w"), Column("d", "w"))]


def test_ambiguous_or_subquery_predicates_stay_in_where():
    g = build_query_graph(
        "SELECT 1 FROM a, b WHERE a.x = b.x AND x > 1 AND a.y IN (SELECT w FROM d WHERE d.w = a.y)", CAT
    )
    b = g.blocks[0]
    assert len(b.kept) == 1  # ambiguous `x`
    # the subquery predicate restricts `a` alone: rendered inside `a` by a forced tree
    assert b.placed == {"a": [2]}


@pytest.mark.parametrize(
    "sql, reason",
    [
        ("SELECT 1 FROM a LEFT JOIN b ON a.x = b.x", "LEFT"),
        ("SELECT 1 FROM a FULL OUTER JOIN b ON a.x = b.x", "FULL"),
        ("SELECT 1 FROM a SEMI JOIN b ON a.x = b.x", "SEMI"),
        ("SELECT 1 FROM a ANTI JOIN b ON a.x = b.x", "ANTI"),
        ("SELECT 1 FROM a JOIN b USING (x)", "USING"),
        ("SELECT 1 FROM a, LATERAL (SELECT * FROM b WHERE b.x = a.x) l", "Lateral"),
        ("SELECT 1 FROM a, range(10) r", "FROM item"),
        ("SELECT 1 FROM a, (a JOIN b ON a.x = b.x)", "parenthesized"),
    ],
)
def test_unsafe_blocks_are_marked_with_reason(sql, reason):
    g = build_query_graph(sql, CAT)
    assert g.unsafe_reason and reason.lower() in g.unsafe_reason.lower()


def test_bad_input_raises_typed_errors():
    with pytest.raises(InvalidSQLError):
        build_query_graph("SELEC 1 FROM a", CAT)
    # sqlglot reads this as an aliased column; it is a syntax error, said as one
    with pytest.raises(InvalidSQLError, match=r'syntax error at or near "SELEC" \(line 1, column 1\)'):
        build_query_graph("SELEC x", CAT)
    with pytest.raises(InvalidSQLError):
        build_query_graph("SELECT 1; SELECT 2", CAT)
    with pytest.raises(NotSelectError):
        build_query_graph("DELETE FROM a", CAT)
    with pytest.raises(NotSelectError):
        build_query_graph("CREATE TABLE q (i INT)", CAT)
    with pytest.raises(UnknownTableError):
        build_query_graph("SELECT 1 FROM a, nosuch WHERE a.x = nosuch.x", CAT)


def test_ctes_and_derived_tables_are_relations():
    g = build_query_graph(
        "WITH q AS (SELECT x, count(*) AS n FROM b GROUP BY x) "
        "SELECT 1 FROM a, q, (SELECT z AS zz FROM c) dt WHERE a.x = q.x AND q.n = dt.zz",
        CAT,
    )
    outer = [b for b in g.blocks if len(b.relations) == 3][0]
    kinds = {r.alias: (r.kind, r.tables) for r in outer.relations}
    assert kinds == {"a": ("table", ("a",)), "q": ("cte", ("b",)), "dt": ("derived", ("c",))}
    # q.x is b.x (INTEGER, like a.x): a key class. q.n is count(*), of no type lqo is
    # sure of: its equality stays pairwise (a residual), never transitive.
    assert outer.classes == [(Column("a", "x"), Column("q", "x"))]
    assert [r.rels for r in outer.residuals] == [frozenset({"q", "dt"})]


@pytest.mark.parametrize("kind", ["tpch", "tpcds"])
def test_all_tpc_queries_parse_and_round_trip(kind, catalogs):
    queries = tpc_queries(kind)
    assert len(queries) == (22 if kind == "tpch" else 99)
    for qid, sql in queries.items():
        g = build_query_graph(sql, catalogs[kind])
        again = sqlglot.parse_one(g.ast.sql(dialect="duckdb"), read="duckdb")
        assert again == g.ast, qid  # generated SQL parses back to the same tree
        for b in g.blocks:
            assert b.unsafe or len(b.relations) >= 2, qid
