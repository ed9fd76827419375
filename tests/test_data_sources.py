"""Data where users keep it: views, Parquet and CSV files, table functions (docs/data-sources.md).

Real execution on TPC-H sf 0.01: its tables exported to Parquet (nation also to CSV) and
a database holding four base tables (nation, region, supplier, customer) and four views
over ``read_parquet`` (orders, lineitem, part, partsupp). Queries read views, file paths
(``FROM 'x.parquet'``, a glob), ``read_parquet`` / ``read_csv`` and mixes of them with
base tables. Checked:

- what lqo plans for each source: join trees only for blocks of relations it can find
  in DuckDB's plan, every other block left as written, and a file path in FROM is a
  source DuckDB reads, not an unknown table (it was: ``UnknownTableError``, so
  ``lqo.prepare`` / ``lqo.optimize`` refused a query DuckDB runs, and ``lqo tune`` tried
  no trees for it);
- every forced tree of such a query returns DuckDB's rows;
- ``lqo tune`` on the mix, then every instance served through ``lqo.connect``,
  ``lqo.wrap`` and ``Optimizer`` returns DuckDB's rows;
- a verified tree served to an instance of its template that reads another file reads
  that file (a file path is a literal: both share a template key).
"""

from __future__ import annotations

import json
import random

import duckdb
import pytest

import lqo
from lqo.cli import main
from lqo.errors import LqoError, UnknownTableError

PARQUET = ("orders", "lineitem", "part", "partsupp")  # views over read_parquet
BASE = ("nation", "region", "supplier", "customer")  # base tables

# {P}: the directory of the Parquet / CSV files.
QUERIES = {
    "views": "SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate "
             "FROM customer, orders, lineitem WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey "
             "AND l_orderkey = o_orderkey AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15' "
             "GROUP BY l_orderkey, o_orderdate ORDER BY revenue DESC, o_orderdate, l_orderkey LIMIT 10",
    "base": "SELECT n_name, count(*) AS n, sum(s_acctbal) AS bal FROM supplier, nation, region, customer "
            "WHERE s_nationkey = n_nationkey AND n_regionkey = r_regionkey AND c_nationkey = n_nationkey "
            "AND r_name = 'EUROPE' AND c_acctbal > 100 GROUP BY n_name ORDER BY n_name",
    "path": "SELECT c_mktsegment, count(*) AS n FROM '{P}/orders.parquet' o JOIN customer c ON o.o_custkey = c.c_custkey "
            "WHERE o.o_totalprice > 100000 GROUP BY c_mktsegment ORDER BY c_mktsegment",
    "glob": "SELECT count(*) AS n FROM '{P}/n*.parquet' n, region r, supplier s WHERE n.n_regionkey = r.r_regionkey "
            "AND s.s_nationkey = n.n_nationkey AND r.r_name <> 'ASIA'",
    "read_parquet": "SELECT o_orderpriority, count(*) AS n FROM read_parquet('{P}/lineitem.parquet') l, orders o "
                    "WHERE l.l_orderkey = o.o_orderkey AND l.l_commitdate < l.l_receiptdate "
                    "AND o.o_orderdate >= DATE '1994-01-01' GROUP BY o_orderpriority ORDER BY o_orderpriority",
    "read_csv": "SELECT r_name, count(*) AS n FROM read_csv('{P}/nation.csv') n, region r, supplier s "
                "WHERE n.n_regionkey = r.r_regionkey AND s.s_nationkey = n.n_nationkey AND s.s_acctbal > 0 "
                "GROUP BY r_name ORDER BY r_name",
    # a view in a block with base tables: the whole query stays unforced
    "view_block": "SELECT p_brand, count(*) AS n FROM part WHERE p_size > 10 AND p_partkey IN "
                  "(SELECT ps_partkey FROM partsupp, supplier, nation WHERE ps_suppkey = s_suppkey "
                  "AND s_nationkey = n_nationkey AND n_name = 'GERMANY') GROUP BY p_brand ORDER BY p_brand",
    # a file alone in its SELECT, base tables joined in a subquery: that block may get a tree
    "path_alone": "SELECT o_orderpriority, count(*) AS n FROM '{P}/orders.parquet' o WHERE o_totalprice > 50000 "
                  "AND o_custkey IN (SELECT c_custkey FROM customer, nation, region WHERE c_nationkey = n_nationkey "
                  "AND n_regionkey = r_regionkey AND r_name = 'ASIA') GROUP BY ALL ORDER BY 1",
    "view_alone": "SELECT l_returnflag, count(*) AS n FROM lineitem WHERE l_quantity > 20 AND l_suppkey IN "
                  "(SELECT s_suppkey FROM supplier, nation WHERE s_nationkey = n_nationkey AND n_name = 'CHINA') "
                  "GROUP BY l_returnflag ORDER BY l_returnflag",
    # a file or table function inside a derived table or CTE: one relation of the block
    "derived_path": "SELECT n_name, sum(x.cnt) AS n FROM (SELECT o_custkey, count(*) AS cnt FROM '{P}/orders.parquet' "
                    "GROUP BY o_custkey) x, customer, nation WHERE x.o_custkey = c_custkey AND c_nationkey = n_nationkey "
                    "AND c_acctbal > 0 GROUP BY n_name ORDER BY n_name",
    "cte_parquet": "WITH o AS (SELECT * FROM read_parquet('{P}/orders.parquet')) SELECT n_name, count(*) AS n "
                   "FROM o, customer, nation WHERE o.o_custkey = c_custkey AND c_nationkey = n_nationkey "
                   "AND o.o_orderstatus = 'F' GROUP BY n_name ORDER BY n_name",
}
# What lqo.prepare says per query: None (trees for these blocks) or words of the reason.
EXPECTED = {
    "views": "no join tree in DuckDB's plan",
    "base": None,
    "path": "file",
    "glob": "file",
    "read_parquet": "read_parquet(...): a table function",
    "read_csv": "read_csv(...): a table function",
    "view_block": "no join tree in DuckDB's plan",
    "path_alone": None,
    "view_alone": None,
    "derived_path": None,
    "cte_parquet": None,
}
FREE_BLOCKS = {"base": [0], "path_alone": [1], "view_alone": [1], "derived_path": [0], "cte_parquet": [0]}


@pytest.fixture(scope="module")
def lake(tpch_db, tmp_path_factory):
    """(Parquet/CSV directory, database path): TPC-H sf 0.01 as files, base tables and views."""
    root = tmp_path_factory.mktemp("lake")
    files = root / "files"
    files.mkdir()
    db = root / "lake.duckdb"
    con = duckdb.connect(str(db))
    con.execute(f"ATTACH '{tpch_db}' AS src (READ_ONLY)")
    for t in BASE + PARQUET:
        con.execute(f"COPY src.{t} TO '{files}/{t}.parquet' (FORMAT parquet)")
    con.execute(f"COPY src.nation TO '{files}/nation.csv' (HEADER)")
    # another orders file, half the rows: a second instance of a template reads it
    con.execute(f"COPY (SELECT * FROM src.orders WHERE o_orderkey % 2 = 0) TO '{files}/orders_half.parquet' (FORMAT parquet)")
    for t in BASE:
        con.execute(f"CREATE TABLE {t} AS SELECT * FROM src.{t}")
    for t in PARQUET:
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{files}/{t}.parquet')")
    con.execute("DETACH src")
    con.close()
    return files, db


def sql_of(name: str, files) -> str:
    return QUERIES[name].replace("{P}", str(files))


@pytest.mark.parametrize("name", list(QUERIES))
def test_what_lqo_plans_for_each_source_and_forced_trees_return_duckdbs_rows(lake, name):
    files, db = lake
    sql = sql_of(name, files)
    con = lqo.connect_read_only(db)
    try:
        expected = con.execute(sql).fetchall()
        assert expected, "a query that returns no rows proves little"
        pq = lqo.prepare(sql, con)
        if EXPECTED[name] is not None:
            assert not pq.forceable and EXPECTED[name] in pq.reason, pq.reason
            return
        assert pq.forceable, pq.reason
        assert [b.index for b in pq.free_blocks] == FREE_BLOCKS[name]
        plans = [pq.native_plan] + [p for p in pq.random_plans(4, random.Random(1)) if p != pq.native_plan]
        for plan in plans:
            forced = pq.render(plan)
            # the file or table function is read as written (sqlglot may only requote it)
            assert (str(files) in sql) == (str(files) in forced), forced
            assert ("read_parquet" in sql) == ("READ_PARQUET" in forced.upper()), forced
            with lqo.forced_settings(con):
                assert con.execute(forced).fetchall() == expected, (str(plan), forced)
    finally:
        con.close()


def test_a_file_that_is_not_there_and_an_unknown_table_are_still_errors(lake, capsys):
    files, db = lake
    con = lqo.connect_read_only(db)
    try:
        with pytest.raises(UnknownTableError, match="nosuch"):
            lqo.prepare('SELECT count(*) FROM nation n, "nosuch" t WHERE n.n_nationkey = t.k', con)
        with pytest.raises(LqoError, match="No files found"):
            lqo.prepare(f"SELECT count(*) FROM nation n, '{files}/nosuch.parquet' t WHERE n.n_nationkey = t.k", con)
    finally:
        con.close()
    # lqo explain reads a query with a file in FROM (it said "unknown table" and exited 2)
    assert main(["explain", sql_of("path_alone", files), "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forceable"]


def test_tune_then_serve_every_instance_with_duckdbs_rows(lake, tmp_path, capsys):
    files, db = lake
    wl = tmp_path / "mine"
    wl.mkdir()
    (wl / "workload.toml").write_text(f'name = "lake"\ndatabase = "{db}"\n')
    for name in QUERIES:
        (wl / f"{name}.sql").write_text(sql_of(name, files) + "\n")
    varied, book = tmp_path / "varied", tmp_path / "book"
    assert main(["workload", "vary", str(wl), "--per-template", "3", "--seed", "1", "--out", str(varied)]) == 0
    capsys.readouterr()
    assert main(["tune", str(varied), "--budget", "0.4", "--tune-instances", "2",
                 "--out", str(book), "--json"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["wrong"] == 0 and tuned["templates"] == len(QUERIES), tuned
    from lqo.book.book import PlanBook

    entries = {e.template: e for e in PlanBook.load(book).entries.values()}
    for name, reason in EXPECTED.items():
        trees = [c for c in entries[name].candidates if c.startswith("tree:")]
        if reason is None:  # the blocks lqo may reorder got tree candidates
            assert trees, (name, entries[name].note)
        else:  # setting arms only, the reason noted
            assert not trees and reason in entries[name].note, entries[name].note

    instances = sorted(p for p in varied.glob("*.sql"))
    assert len(instances) == 3 * len(QUERIES)
    native = duckdb.connect(str(db), read_only=True)
    app = lqo.connect(db, book=book)  # read-only: the configuration of `native`
    wrapped = lqo.wrap(native.cursor(), book=book)
    opt = lqo.Optimizer.load(book, native)
    served = {}
    for path in instances:
        sql = path.read_text()
        expected = native.execute(sql).fetchall()
        assert app.execute(sql).fetchall() == expected, path.name
        assert app.sql(sql).fetchall() == expected, path.name
        assert wrapped.execute(sql).fetchall() == expected, path.name
        res = opt.optimize(sql, native)
        assert res.execute(native) == expected, path.name
        served[path.stem] = res.source
    assert set(served.values()) == {"book"}, served  # every template is in the book
    app.close()
    native.close()


def test_a_served_tree_reads_the_file_its_instance_names(lake, tmp_path):
    """A path in FROM is part of the template (another file, another template: it runs as
    written until tuned); a path inside read_parquet(...) is a literal: the verified tree,
    served to an instance naming another file, must read that file."""
    from lqo.book.book import Candidate, PlanBook
    from lqo.book.slots import SlotRendering
    from lqo.book.template import template_key
    from lqo.sql.catalog import Catalog

    files, db = lake
    con = duckdb.connect(str(db), read_only=True)
    catalog = Catalog.from_connection(con)
    book = PlanBook(schema=catalog.fingerprint)
    for name in ("path_alone", "derived_path", "cte_parquet"):
        sql = sql_of(name, files)
        pq = lqo.prepare(sql, con, catalog)
        plan = next(p for p in pq.random_plans(6, random.Random(2)) if p != pq.native_plan)
        try:
            slots = SlotRendering.build(sql, catalog, plan).to_json()
        except LqoError:
            slots = None  # served by rendering the instance's own text
        entry = book.entry(template_key(sql).key, name, sql)
        entry.candidates["tree:t"] = Candidate("tree:t", "tree", (), plan.to_json(), slots)
        entry.adopt("tree:t")
    book.save(tmp_path / "book.json")
    app = lqo.wrap(con.cursor(), book=tmp_path)
    opt = lqo.Optimizer.load(tmp_path, con)
    for name in ("path_alone", "derived_path", "cte_parquet"):
        full = sql_of(name, files)
        half = full.replace("orders.parquet", "orders_half.parquet")
        same_template = "read_parquet" in full
        assert (template_key(full).key == template_key(half).key) == same_template
        want_full, want_half = con.execute(full).fetchall(), con.execute(half).fetchall()
        assert want_full != want_half
        for sql, want in ((full, want_full), (half, want_half), (full, want_full)):
            assert app.execute(sql).fetchall() == want, name
            served = sql == full or same_template
            assert (app.last is not None and app.last.forced and app.last.source == "book") == served, app.last
            res = opt.optimize(sql, con)
            assert res.forced == served and res.execute(con) == want, name
    con.close()
