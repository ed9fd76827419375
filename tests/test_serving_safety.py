"""Served plans are always right: the plan book under real query shapes, bad input and threads.

Each counter-example found against the plan book is a test here: IN lists of other
lengths, ``--`` inside a quoted identifier, a book-only directory that skipped
validation or the first call's schema check, and DuckDB's instance-wide optimizer
rules changed from several threads at once. Books are written by hand from one
instance (a forced tree with its slot rendering, or a setting arm), exactly as
``lqo tune`` adopts them, and served through the public ``Optimizer`` path.
"""

from __future__ import annotations

import threading
from collections import Counter

import duckdb
import pytest

from lqo.book.book import Candidate, PlanBook
from lqo.book.slots import SlotRendering
from lqo.book.template import template_key
from lqo.cli import main
from lqo.engine.db import connect_read_only
from lqo.engine.settings import current_setting, disabled_optimizers, forced_settings
from lqo.errors import InvalidSQLError, NotSelectError
from lqo.optimized import Optimized
from lqo.optimizer import Optimizer
from lqo.sql.catalog import Catalog
from lqo.trees.query import prepare

IN_LISTS = ("SELECT count(*) FROM customer, orders WHERE c_custkey = o_custkey "
            "AND c_nationkey IN ({}) AND o_shippriority IN ({}) AND o_orderstatus IN ({})")


@pytest.fixture(scope="module")
def con(tpch_db):
    c = connect_read_only(tpch_db)
    yield c
    c.close()


def _tree_book(tmp_path, con, tuned: str, arm: tuple[str, ...] = ()) -> Optimizer:
    """A book-only model directory whose one template serves DuckDB's native tree of
    ``tuned``, forced (or the arm ``arm``), adopted from that one instance."""
    catalog = Catalog.from_connection(con)
    book = PlanBook(schema=catalog.fingerprint)
    e = book.entry(template_key(tuned).key, "t", tuned)
    if arm:
        cid = "arm:" + ",".join(arm)
        e.candidates[cid] = Candidate(cid, "arm", arm)
    else:
        plan = prepare(tuned, con, catalog).native_plan
        slots = SlotRendering.build(tuned, catalog, plan)
        cid = "tree:native"
        e.candidates[cid] = Candidate(cid, "tree", (), plan.to_json(), slots.to_json())
    e.adopt(cid)
    book.save(tmp_path / "book.json")
    return Optimizer.load(tmp_path)


def _served_rows(opt: Optimizer, sql: str, con) -> tuple[Optimized, list]:
    res = opt.optimize(sql, con)
    return res, res.execute(con)


def test_in_lists_of_other_lengths_are_served_their_own_literals(tmp_path, con):
    opt = _tree_book(tmp_path, con, IN_LISTS.format("1, 2", "0, 5, 9", "'F', 'O'"))
    for lists in [("1, 2, 0", "5, 9", "'F'"), ("3", "0", "'O', 'P', 'F'"), ("1, 2", "0, 5, 9", "'P', 'O'"),
                  (", ".join(str(i) for i in range(25)), "0", "'F', 'O', 'P'")]:
        sql = IN_LISTS.format(*lists)
        res, rows = _served_rows(opt, sql, con)
        assert res.source == "book" and res.forced, res.fallback
        assert rows == con.execute(sql).fetchall(), (sql, res.sql)


def test_a_list_of_another_literal_type_is_another_template(tmp_path, con):
    opt = _tree_book(tmp_path, con, IN_LISTS.format("1, 2", "0, 5", "'F', 'O'"))
    # a string list where the tuned instance had numbers: never filled into its slots
    sql = IN_LISTS.format("1, 2", "'0', '5'", "'F', 'O'")
    assert template_key(sql).key != template_key(IN_LISTS.format("1, 2", "0, 5", "'F', 'O'")).key
    res, rows = _served_rows(opt, sql, con)
    assert res.source != "book" and not res.forced
    assert rows == con.execute(sql).fetchall()


@pytest.mark.parametrize("other", [
    'SELECT count(*) AS "orders--n" FROM orders, customer WHERE o_custkey = c_custkey AND o_totalprice < 100000',
    'SELECT count(*) AS "orders--n" FROM orders, customer, nation WHERE o_custkey = c_custkey '
    'AND c_nationkey = n_nationkey AND o_totalprice > 100000',
])
def test_comment_marks_inside_a_quoted_identifier_are_not_comments(tmp_path, con, other):
    tuned = ('SELECT count(*) AS "orders--n" FROM orders, customer WHERE o_custkey = c_custkey '
             'AND o_totalprice > 150000')
    assert template_key(tuned).key != template_key(other).key
    opt = _tree_book(tmp_path, con, tuned)
    res, rows = _served_rows(opt, other, con)
    assert res.source != "book"
    assert rows == con.execute(other).fetchall()
    # an instance of the tuned template is still served
    same = tuned.replace("150000", "1000")
    res, rows = _served_rows(opt, same, con)
    assert res.source == "book" and res.forced and rows == con.execute(same).fetchall()


def test_a_book_serves_from_the_first_call_on_a_connection(tmp_path, con):
    tuned = IN_LISTS.format("1, 2", "0", "'F'")
    _tree_book(tmp_path, con, tuned)
    opt = Optimizer.load(tmp_path)  # no connection: the first call checks the schema
    res = opt.optimize(IN_LISTS.format("3, 4", "0", "'O'"), con)
    assert res.source == "book" and res.forced
    res = opt.optimize(IN_LISTS.format("3, 4", "0", "'O'"), con.cursor())
    assert res.source == "book" and res.forced


@pytest.mark.parametrize("sql, error", [
    ("SELEC * FROM nation", InvalidSQLError),
    ("UPDATE nation SET n_comment = 'x' WHERE n_nationkey = 1", NotSelectError),
    ("SELECT 1; DELETE FROM nation", InvalidSQLError),
    ("SELECT nextval('s')", NotSelectError),
])
def test_a_book_only_directory_validates_like_a_model(tmp_path, tpch_db, sql, error):
    src = connect_read_only(tpch_db)
    _tree_book(tmp_path, src, IN_LISTS.format("1", "0", "'F'"))
    src.close()
    # the user's own read-write connection: lqo must never run the statement
    rw = duckdb.connect()
    rw.execute("CREATE TABLE nation AS SELECT 1 AS n_nationkey, 'a' AS n_comment")
    opt = Optimizer(None, None, "", book=PlanBook.load(tmp_path / "book.json"))
    with pytest.raises(error):
        opt.optimize(sql, rw).execute(rw)
    assert rw.execute("SELECT n_comment FROM nation").fetchall() == [("a",)]


def test_book_only_cli_gives_one_line_and_exit_2(tmp_path, tpch_db, capsys):
    src = connect_read_only(tpch_db)
    _tree_book(tmp_path, src, IN_LISTS.format("1", "0", "'F'"))
    src.close()
    for sql, words in [("SELEC * FROM nation", "invalid SQL"), ("UPDATE nation SET n_comment = 'x'", "not a SELECT")]:
        assert main(["optimize", sql, "--db", str(tpch_db), "--model", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_an_arm_served_from_the_book_runs_under_its_rule(tmp_path, con):
    tuned = "SELECT current_setting('disabled_optimizers') AS s, count(*) FROM nation WHERE n_nationkey > 3"
    opt = _tree_book(tmp_path, con, tuned, arm=("join_filter_pushdown",))
    res, rows = _served_rows(opt, tuned.replace("> 3", "> 7"), con)
    assert res.source == "book" and res.disabled == ("join_filter_pushdown",)
    assert rows[0][0] == "join_filter_pushdown"
    assert current_setting(con, "disabled_optimizers") == ""


# ---------------------------------------------------------------------------- threads

SETTING = "SELECT current_setting('disabled_optimizers') AS s, count(*) AS n FROM lineitem, orders " \
          "WHERE l_orderkey = o_orderkey AND o_orderkey % {} = 0"


def test_rules_changed_on_two_cursors_in_turn_are_restored():
    con = duckdb.connect()
    a, b = con.cursor(), con.cursor()
    with forced_settings(a):
        with forced_settings(b):
            pass
    assert current_setting(con, "disabled_optimizers") == ""
    entered, done = threading.Event(), threading.Event()

    def other():
        with disabled_optimizers(b, ["join_filter_pushdown"]):
            entered.set()
        done.set()

    with forced_settings(a):
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.2)  # another mode waits its turn
        assert current_setting(a, "disabled_optimizers") == "join_order,build_side_probe_side"
    assert done.wait(10)
    t.join()
    assert current_setting(con, "disabled_optimizers") == ""


def test_eight_threads_with_forced_arm_and_native_statements_run_each_under_its_own_rules(tpch_db):
    con = connect_read_only(tpch_db)
    con.execute("SET disabled_optimizers = 'late_materialization'")  # the user's own setting stays
    kinds = {
        "native": ((), "late_materialization"),
        "arm": (("join_filter_pushdown",), "late_materialization,join_filter_pushdown"),
        "forced": (None, "late_materialization,join_order,build_side_probe_side"),
    }
    expected = {m: con.execute(f"SELECT count(*) FROM lineitem, orders WHERE l_orderkey = o_orderkey "
                               f"AND o_orderkey % {m} = 0").fetchone()[0] for m in (2, 3, 5, 7)}
    seen: Counter = Counter()
    wrong: list = []

    def work(tid: int) -> None:
        cur = con.cursor()
        for i in range(30):
            kind = ("native", "arm", "forced")[(tid + i) % 3]
            m = (2, 3, 5, 7)[(tid * 7 + i) % 4]
            sql = SETTING.format(m)
            rules, want = kinds[kind]
            res = (Optimized.planned(sql, None, None, 0.0, forced_sql=sql) if rules is None
                   else Optimized.as_written(sql, None, 0.0, disabled=rules))
            (s, n), = res.execute(cur)
            seen[kind] += 1
            if set(s.split(",")) != set(want.split(",")) or n != expected[m]:
                wrong.append((kind, s, n, expected[m]))
        cur.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not wrong, wrong[:5]
    assert sum(seen.values()) == 240 and min(seen.values()) >= 70
    assert current_setting(con, "disabled_optimizers") == "late_materialization"
    con.close()


def test_the_last_statement_of_a_mode_restores_the_rules_even_if_the_first_cursor_closed():
    from lqo.engine.settings import RuleModes

    modes = RuleModes()
    con = duckdb.connect()
    a, b = con.cursor(), con.cursor()
    inside, go = threading.Event(), threading.Event()

    def joiner():
        with modes.hold(b, ("join_order",)):
            inside.set()
            go.wait(10)

    with modes.hold(a, ("join_order",)):
        t = threading.Thread(target=joiner)
        t.start()
        assert inside.wait(10)
    # the first statement left at once: it does not wait for the joiner
    a.close()  # a per-request cursor, closed after its statement
    go.set()
    t.join(10)
    assert current_setting(con, "disabled_optimizers") == ""


@pytest.mark.parametrize("a, b", [
    ("SELECT count(*) FROM region WHERE r_name = 'AS'\n'IA'", "SELECT count(*) FROM region WHERE r_name = 'AS'"),
    ("SELECT count(*) FROM region WHERE r_name = 'AS' -- c\n'IA'", "SELECT count(*) FROM region WHERE r_name = 'AS'"),
    ("SELECT r_name AS Name FROM region", "SELECT r_name AS name FROM region"),
    ("SELECT {Name: r_name} FROM region", "SELECT {name: r_name} FROM region"),
    ("SELECT -2 ^ 2 FROM t", "SELECT 2 ^ 2 FROM t"),
])
def test_texts_that_mean_other_things_have_other_keys(a, b):
    assert template_key(a).key != template_key(b).key


def test_a_negative_literal_after_an_operator_stays_a_literal(tmp_path, con):
    sql = ("SELECT n_name, count(*) AS n FROM customer, nation WHERE c_nationkey = n_nationkey "
           "AND n_nationkey > ~ {} GROUP BY n_name ORDER BY n_name")
    opt = _tree_book(tmp_path, con, sql.format(20))
    res, rows = _served_rows(opt, sql.format(-5), con)
    assert res.source == "book" and res.forced and res.fallback is None, res.sql
    assert rows == con.execute(sql.format(-5)).fetchall()


def test_the_folded_keywords_are_duckdbs_own():
    from lqo.book.template import _FOLDED_KEYWORDS

    rows = duckdb.execute("SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'").fetchall()
    assert _FOLDED_KEYWORDS == {r[0].lower() for r in rows}
