"""lqo's drop-in connection: DuckDB's API, the book's verified plans, DuckDB's errors, threads."""

from __future__ import annotations

import subprocess
import sys
import threading

import duckdb
import pytest

import lqo
from lqo.book.book import Candidate, PlanBook
from lqo.book.slots import SlotRendering
from lqo.book.template import template_key
from lqo.engine.settings import current_setting
from lqo.sql.catalog import Catalog
from lqo.trees.query import prepare

TREE = ("SELECT n_name, count(*) AS n FROM customer, orders, nation WHERE c_custkey = o_custkey "
        "AND c_nationkey = n_nationkey AND o_orderstatus IN ({}) AND c_acctbal > {} GROUP BY n_name ORDER BY n_name")
ARM = ("SELECT current_setting('disabled_optimizers') AS s, count(*) AS n FROM lineitem, orders "
       "WHERE l_orderkey = o_orderkey AND o_orderkey % {} = 0")


def _book(path, con, arm: str = ARM) -> None:
    """A book-only model directory: TREE forced with DuckDB's own tree, ``arm`` under an arm."""
    catalog = Catalog.from_connection(con)
    book = PlanBook(schema=catalog.fingerprint)
    tuned = TREE.format("'F', 'O'", 100)
    e = book.entry(template_key(tuned).key, "tree_t", tuned)
    plan = prepare(tuned, con, catalog).native_plan
    e.candidates["tree:n"] = Candidate("tree:n", "tree", (), plan.to_json(),
                                       SlotRendering.build(tuned, catalog, plan).to_json())
    e.adopt("tree:n")
    tuned = arm.format(3)
    e = book.entry(template_key(tuned).key, "arm_t", tuned)
    e.candidates["arm:join_filter_pushdown"] = Candidate("arm:join_filter_pushdown", "arm", ("join_filter_pushdown",))
    e.adopt("arm:join_filter_pushdown")
    book.save(path / "book.json")


@pytest.fixture(scope="module")
def book_dir(tpch_db, tmp_path_factory):
    path = tmp_path_factory.mktemp("book")
    con = duckdb.connect(str(tpch_db), read_only=True)
    _book(path, con)
    con.close()
    return path


def test_a_known_template_runs_its_verified_plan_and_reads_like_duckdb(tpch_db, book_dir):
    native = duckdb.connect(str(tpch_db), read_only=True)
    with lqo.connect(tpch_db, book=book_dir) as con:
        for lists, bal in [("'F'", 500), ("'F', 'O', 'P'", -100)]:
            sql = TREE.format(lists, bal)
            rows = con.execute(sql).fetchall()
            assert con.last is not None and con.last.source == "book" and con.last.forced
            assert rows == native.execute(sql).fetchall()
            assert [d[0] for d in con.description] == ["n_name", "n"]
            assert con.sql(sql).fetchone() == native.execute(sql).fetchone()
        (s, n), = con.execute(ARM.format(7)).fetchall()
        assert con.last.disabled == ("join_filter_pushdown",) and s == "join_filter_pushdown"
        assert n == native.execute(ARM.format(7)).fetchone()[1]
        # unknown texts and parameters go to DuckDB unchanged, under DuckDB's own rules
        assert con.execute("SELECT count(*) FROM nation WHERE n_regionkey = ?", [1]).fetchall() == [(5,)]
        assert con.last is None
        assert con.sql("SELECT current_setting('disabled_optimizers')").fetchall() == [("",)]
        assert current_setting(con.duckdb, "disabled_optimizers") == ""
    native.close()


def test_duckdb_errors_reach_the_caller_as_duckdb_errors(tpch_db, book_dir):
    with lqo.connect(tpch_db, book=book_dir) as con:
        with pytest.raises(duckdb.CatalogException):
            con.execute("SELECT * FROM no_such_table")
        with pytest.raises(duckdb.ParserException):
            con.execute("SELEC 1")
        with pytest.raises(duckdb.Error):  # a write on a read-only database: DuckDB says no
            con.execute("CREATE TABLE t (x INT)")


def test_writes_pass_through_unchanged_on_a_writable_connection(tpch_db, tmp_path):
    raw = duckdb.connect()
    raw.execute(f"ATTACH '{tpch_db}' AS src (READ_ONLY)")
    for t in ("customer", "orders", "nation", "lineitem"):
        raw.execute(f"CREATE TABLE {t} AS FROM src.{t}")
    raw.execute("DETACH src")
    _book(tmp_path, raw)
    con = lqo.wrap(raw, book=tmp_path)
    con.execute("CREATE TABLE audit (x INT)")
    con.execute("INSERT INTO audit VALUES (?), (?)", [1, 2])
    assert con.execute("SELECT sum(x) FROM audit").fetchall() == [(3,)]
    assert con.execute(TREE.format("'F'", 0)).fetchall() == raw.execute(TREE.format("'F'", 0)).fetchall()
    assert con.last.forced
    con.close()


def test_a_book_for_another_schema_is_refused(book_dir):
    with pytest.raises(lqo.SchemaMismatchError):
        lqo.connect(":memory:", book=book_dir)


def test_eight_threads_of_cursors_get_the_right_rows_under_the_right_rules(tpch_db, book_dir):
    con = lqo.connect(tpch_db, book=book_dir)
    native = duckdb.connect(str(tpch_db), read_only=True)
    texts = [TREE.format("'F'", 0), TREE.format("'O', 'P'", 1000), ARM.format(2), ARM.format(5),
             "SELECT current_setting('disabled_optimizers') AS s, count(*) FROM orders WHERE o_orderkey % 3 = 0"]
    expected = {}
    for t in texts:
        rows = native.execute(t).fetchall()
        expected[t] = rows if "current_setting" not in t else rows[0][1]
    bad: list = []

    def work(k: int) -> None:
        cur = con.cursor()
        for i in range(25):
            t = texts[(k + i) % len(texts)]
            rows = cur.execute(t).fetchall()
            if "current_setting" in t:
                s, n = rows[0]
                # the arm's rules where it was served (alone); as written (demoted) beside others
                want = "join_filter_pushdown" if cur.last is not None and cur.last.disabled else ""
                if s != want or n != expected[t]:
                    bad.append((t, s, n))
            elif rows != expected[t]:
                bad.append((t, len(rows)))
        cur.close()

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not bad, bad[:3]
    assert current_setting(con.duckdb, "disabled_optimizers") == ""
    con.close()
    native.close()


def test_book_only_use_imports_neither_torch_nor_sqlglot(tpch_db, book_dir):
    code = ("import sys, lqo; con = lqo.connect(sys.argv[1], book=sys.argv[2]); "
            "con.execute(sys.argv[3]).fetchall(); print('torch' in sys.modules, 'sqlglot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tpch_db), str(book_dir), TREE.format("'F', 'O'", 7)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_text_the_book_does_not_know_never_hides_a_template_it_knows(tpch_db, book_dir):
    with lqo.connect(tpch_db, book=book_dir) as con:
        # the same text but for a literal's type: another template, and the same literal-free text
        other = TREE.format("'F', 'O'", "'100'")
        con.execute(other).fetchall()
        assert con.last is None
        con.execute(TREE.format("'O', 'P'", 250)).fetchall()
        assert con.last is not None and con.last.source == "book"


def test_sql_of_a_known_template_is_a_relation_and_leaves_a_pending_result_alone(tpch_db, book_dir):
    native = duckdb.connect(str(tpch_db), read_only=True)
    with lqo.connect(tpch_db, book=book_dir) as con:
        con.execute("SELECT 'first query'")
        sql = TREE.format("'F'", 10)
        rel = con.sql(sql)
        assert con.last.source == "book"
        assert con.fetchall() == [("first query",)]  # as DuckDB: sql() does not run on the connection
        assert rel.columns == ["n_name", "n"]
        assert rel.limit(2).fetchall() == native.execute(sql).fetchall()[:2]
        assert rel.fetchall() == native.execute(sql).fetchall()
    native.close()


def test_python_variables_are_tables_through_the_wrapper():
    con = lqo.wrap(duckdb.connect(), book=None)
    rel = con.sql("SELECT 42 AS x")  # noqa: F841 - DuckDB finds it by name
    assert con.execute("SELECT * FROM rel").fetchall() == [(42,)]
    cur = con.cursor()
    mine = cur.sql("SELECT 43 AS y")  # noqa: F841 - a cursor's own relation, as DuckDB requires
    assert cur.execute("SELECT * FROM mine").fetchall() == [(43,)]
