"""Statistics and cardinality estimates: round trips, fingerprints, accuracy on TPC-H."""

from __future__ import annotations

import json
import random
import statistics

import duckdb
import pytest
import sqlglot

from conftest import tpc_queries
from lqo.estimates.cardinality import DEFAULT_EQ, Estimator, selectivity
from lqo.sql.catalog import Catalog
from lqo.engine.db import connect_read_only, connect_writable
from lqo.trees.enumerate import random_tree
from lqo.sql.join_graph import Relation, build_query_graph, from_items, select_nodes
from lqo.trees.plan import joins
from lqo.estimates.stats import DatabaseStats


@pytest.fixture(scope="module")
def tpch(tpch_db):
    con = connect_read_only(tpch_db)
    cat = Catalog.from_connection(con)
    # Fewer sample rows than lineitem/orders hold, so sampling is exercised too.
    stats = DatabaseStats.build(con, cat, sample_rows=10_000)
    yield con, cat, stats
    con.close()


def qerror(est: float, true: float) -> float:
    a, b = max(est, 1.0), max(true, 1.0)
    return max(a / b, b / a)


def test_build_save_load_round_trip(tpch, tmp_path):
    con, cat, stats = tpch
    assert set(stats.tables) == set(cat.tables)
    for t, ts in stats.tables.items():
        assert ts.rows == con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        assert set(ts.columns) == set(cat.columns(t))
        for cs in ts.columns.values():
            assert 0.0 <= cs.null_frac <= 1.0 and cs.ndv >= 0
            assert len(cs.mcv) == len(cs.mcv_freq) and sum(cs.mcv_freq) <= 1.0 + 1e-9
            assert cs.hist == sorted(cs.hist)
    assert stats.tables["lineitem"].sampled == 10_000 and stats.tables["nation"].sampled == 25
    assert stats.column("orders", "o_orderdate").kind == "date"
    assert stats.column("part", "p_type").kind == "str"
    assert stats.column("lineitem", "l_quantity").kind == "num"
    path = tmp_path / "stats.json"
    stats.save(path)
    json.loads(path.read_text())  # plain JSON
    loaded = DatabaseStats.load(path)
    assert loaded.fingerprint == stats.fingerprint and loaded.sample_rows == stats.sample_rows
    assert {t: s.to_json() for t, s in loaded.tables.items()} == {t: s.to_json() for t, s in stats.tables.items()}
    col = loaded.column("lineitem", "l_shipmode")
    assert col.eq_frac("MAIL") == stats.column("lineitem", "l_shipmode").eq_frac("MAIL")


def test_load_or_build_rebuilds_when_data_changes(tmp_path, monkeypatch):
    db = tmp_path / "small.duckdb"
    cache = tmp_path / "cache" / "stats.json"
    con = connect_writable(db)
    con.execute("CREATE TABLE t AS SELECT range AS a, range % 7 AS b, 'x' || (range % 3) AS s, "
                "DATE '2000-01-01' + CAST(range AS INTEGER) AS d FROM range(1000)")
    con.close()

    con = connect_read_only(db)
    cat = Catalog.from_connection(con)
    first = DatabaseStats.load_or_build(con, cat, cache)
    assert cache.is_file() and first.rows("t") == 1000
    assert first.column("t", "b").ndv == 7 and first.column("t", "s").eq_frac("x1") == pytest.approx(1 / 3, abs=0.01)
    builds = []
    real_build = DatabaseStats.build.__func__

    def counting_build(cls, *a, **kw):
        builds.append(1)
        return real_build(cls, *a, **kw)

    monkeypatch.setattr(DatabaseStats, "build", classmethod(counting_build))
    again = DatabaseStats.load_or_build(con, cat, cache)
    assert builds == [] and again.fingerprint == first.fingerprint
    con.close()

    con = connect_writable(db)
    con.execute("INSERT INTO t SELECT range, 100, 'new', DATE '2020-01-01' FROM range(500)")
    con.close()
    con = connect_read_only(db)
    fresh = DatabaseStats.load_or_build(con, cat, cache)
    con.close()
    assert builds == [1] and fresh.fingerprint != first.fingerprint and fresh.rows("t") == 1500
    assert DatabaseStats.load(cache).rows("t") == 1500
    assert fresh.column("t", "s").eq_frac("new") == pytest.approx(1 / 3, abs=0.01)

    cache.write_text("{not json")  # a corrupt cache is rebuilt, not trusted
    with pytest.raises(ValueError):
        DatabaseStats.load(cache)
    con = connect_read_only(db)
    assert DatabaseStats.load_or_build(con, cat, cache).rows("t") == 1500
    con.close()


SELECTIVITY_CASES = [
    ("orders", "o_orderdate < DATE '1995-03-15'"),
    ("orders", "o_orderdate >= CAST('1994-01-01' AS DATE) AND o_orderdate < CAST('1994-01-01' AS DATE) + INTERVAL 3 MONTH"),
    ("orders", "o_orderdate BETWEEN CAST('1995-01-01' AS DATE) AND CAST('1995-12-31' AS DATE)"),
    ("orders", "o.o_totalprice > 300000"),  # qualified by the relation's alias
    ("orders", "o_orderstatus = 'F' OR o_orderpriority = '1-URGENT'"),
    ("orders", "o_comment NOT LIKE '%special%requests%'"),
    ("lineitem", "l_shipdate <= DATE '1998-12-01' - INTERVAL '90' DAY"),
    ("lineitem", "l_shipdate > '1998-01-01'"),  # string compared with a date column
    ("lineitem", "l_shipmode IN ('MAIL', 'SHIP')"),
    ("lineitem", "l_discount BETWEEN 0.05 AND 0.07"),
    ("lineitem", "l_quantity < 24"),
    ("lineitem", "24 > l_quantity"),
    ("lineitem", "NOT l_returnflag = 'R'"),
    ("lineitem", "l_shipinstruct <> 'DELIVER IN PERSON'"),
    ("part", "p_type LIKE 'PROMO%'"),
    ("part", "p_type LIKE '%BRASS'"),
    ("part", "p_name LIKE '%green%'"),
    ("part", "p_size = 15"),
    ("part", "p_size BETWEEN 1 AND 5"),
    ("part", "p_size IN (49, 14, 23, 45, 19, 3, 36, 9)"),
    ("part", "p_container IN ('SM CASE', 'SM BOX', 'SM PACK', 'SM PKG')"),
    ("part", "p_brand <> 'Brand#45'"),
    ("customer", "c_mktsegment = 'BUILDING'"),
    ("customer", "c_acctbal > 0.00"),
    ("customer", "c_acctbal IS NULL OR c_acctbal < -500"),
    ("region", "r_name = 'EUROPE'"),
]


@pytest.mark.parametrize("table,cond", SELECTIVITY_CASES)
def test_selectivity_close_to_truth(tpch, table, cond):
    con, cat, stats = tpch
    alias = "o" if cond.startswith("o.") else table
    rel = Relation(alias, "table", table, cat.columns(table), (table,))
    est = selectivity(stats, rel, [sqlglot.parse_one(cond, read="duckdb")])
    n = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    true = con.execute(f"SELECT count(*) FROM {table} AS {alias} WHERE {cond}").fetchone()[0] / n
    assert 0.0 <= est <= 1.0
    assert qerror(est * n, true * n) <= 2.5, (est, true)


def test_null_fraction_and_defaults(tpcds_db):
    con = connect_read_only(tpcds_db)
    try:
        cat = Catalog.from_connection(con)
        stats = DatabaseStats.build(con, cat, sample_rows=5_000)
        rel = Relation("store_sales", "table", "store_sales", cat.columns("store_sales"), ("store_sales",))
        for cond in ("ss_customer_sk IS NULL", "ss_customer_sk IS NOT NULL"):
            est = selectivity(stats, rel, [sqlglot.parse_one(cond, read="duckdb")])
            true = con.execute(f"SELECT avg(CASE WHEN {cond} THEN 1 ELSE 0 END) FROM store_sales").fetchone()[0]
            assert qerror(est * 1e4, true * 1e4) <= 2.0, (cond, est, true)
    finally:
        con.close()
    # What the stats cannot see into gets a default; no filters select everything.
    cust = Relation("customer", "table", "customer", cat.columns("customer"), ("customer",))
    assert selectivity(stats, cust, [sqlglot.parse_one("substring(c_phone, 1, 2) = '13'")]) == DEFAULT_EQ
    assert selectivity(stats, cust, []) == 1.0
    cte = Relation("x", "cte", "x", None, ("customer",))
    assert 0.0 < selectivity(stats, cte, [sqlglot.parse_one("x.a = 1")]) < 1.0


def true_count(con, graph, block, rels) -> int:
    """COUNT(*) of joining ``rels`` of ``block`` with every predicate they cover."""
    items = {i.alias_or_name.lower(): i for i in from_items(select_nodes(graph.ast)[block.index])}
    frm = ", ".join(items[a].sql(dialect="duckdb") for a in block.aliases if a in rels)
    conds = [f"({f.sql(dialect='duckdb')})" for a in block.aliases if a in rels for f in block.filters.get(a, [])]
    for cls in block.classes:
        members = [c for c in cls if c.rel in rels]
        conds += [f"{x} = {y}" for x, y in zip(members, members[1:])]
    conds += [f"({r.expr.sql(dialect='duckdb')})" for r in block.residuals if r.rels <= rels]
    where = " WHERE " + " AND ".join(conds) if conds else ""
    with_ = graph.ast.args.get("with_")
    prefix = with_.sql(dialect="duckdb") + " " if with_ is not None else ""
    return con.execute(f"{prefix}SELECT count(*) FROM {frm}{where}").fetchone()[0]


def test_join_rows_orders_customer(tpch):
    con, cat, stats = tpch
    for sql in ("SELECT * FROM orders, customer WHERE o_custkey = c_custkey",
                "SELECT * FROM orders o JOIN customer c ON o.o_custkey = c.c_custkey WHERE c.c_mktsegment = 'BUILDING'",
                "SELECT * FROM lineitem, orders WHERE l_orderkey = o_orderkey AND o_orderdate < DATE '1995-03-15'"):
        graph = build_query_graph(sql, cat)
        block = graph.blocks[0]
        est = Estimator(stats, graph)
        rels = frozenset(block.aliases)
        assert qerror(est.join_rows(block, rels), true_count(con, graph, block, rels)) <= 3.0, sql
        assert est.join_rows(block, rels) is est.join_rows(block, rels)  # memoized
        for a in block.aliases:
            assert est.join_rows(block, frozenset((a,))) == est.relation_rows(block, a)


def test_estimator_q_error_on_tpch_joins(tpch):
    con, cat, stats = tpch
    errors: list[float] = []
    for qid, sql in tpc_queries("tpch").items():
        graph = build_query_graph(sql, cat)
        if graph.unsafe_reason:
            continue
        est = Estimator(stats, graph)
        seen = set()
        for block in graph.reorderable:
            for seed in range(3):
                for j in joins(random_tree(block, random.Random(seed))):
                    if (block.index, j.rels) in seen:
                        continue
                    seen.add((block.index, j.rels))
                    try:
                        true = true_count(con, graph, block, j.rels)
                    except duckdb.BinderException:
                        continue  # a filter that refers to an enclosing query
                    errors.append(qerror(est.join_rows(block, j.rels), true))
    errors.sort()
    median, p90 = statistics.median(errors), errors[int(0.9 * len(errors))]
    print(f"TPC-H sf0.01 join q-error over {len(errors)} join nodes: median {median:.2f}, p90 {p90:.2f}, max {errors[-1]:.1f}")
    assert len(errors) > 50
    assert median < 2.0 and p90 < 20.0


def test_cte_and_derived_relations_are_estimated(tpcds_db):
    con = connect_read_only(tpcds_db)
    try:
        cat = Catalog.from_connection(con)
        stats = DatabaseStats.build(con, cat, sample_rows=5_000)
    finally:
        con.close()
    kinds = set()
    for qid, sql in tpc_queries("tpcds").items():
        graph = build_query_graph(sql, cat)
        est = Estimator(stats, graph)
        for block in graph.reorderable:
            for r in block.relations:
                base, sel, rows = est.scan(block, r.alias)
                assert base >= 1.0 and 0.0 <= sel <= 1.0 and rows >= 1.0, (qid, r.alias)
                kinds.add(r.kind)
            assert est.block_rows(block) >= 1.0
    assert kinds == {"table", "cte", "derived"}
