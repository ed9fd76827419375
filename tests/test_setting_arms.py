"""Settings arms: DuckDB operator settings (``late_materialization_max_rows``, ...) as
candidates, owned per statement like the optimizer rules, from the book to the
connection and across threads."""

from __future__ import annotations

import json
import threading
from collections import Counter

import duckdb
import pytest

import lqo
from lqo.book.book import Candidate, PlanBook, arm_id
from lqo.book.template import template_key
from lqo.engine.db import connect_read_only
from lqo.engine.harness import run_interleaved
from lqo.engine.settings import RuleModes, current_setting, disabled_optimizers, setting_pairs
from lqo.errors import LqoError
from lqo.optimized import Optimized
from lqo.optimizer import Optimizer
from lqo.sql.catalog import Catalog
from lqo.tune.arms import SETTING_ARMS, plan_signature, setting_arms
from lqo.tune.trials import recorded_plan, variant

LATE = (("late_materialization_max_rows", "0"),)
MERGE = (("merge_join_threshold", "0"), ("nested_loop_join_threshold", "0"))
SHOW = ("SELECT current_setting('disabled_optimizers') AS r, current_setting('late_materialization_max_rows') AS l, "
        "current_setting('merge_join_threshold') AS m, count(*) AS n FROM lineitem, orders "
        "WHERE l_orderkey = o_orderkey AND o_orderkey % {} = 0")


def _arm_book(path, con, sql: str, rules: tuple[str, ...], settings, *more) -> None:
    """A book-only model directory whose template ``sql`` serves an arm (and each of
    ``more``, (sql, rules, settings) triples, another)."""
    book = PlanBook(schema=Catalog.from_connection(con).fingerprint)
    for i, (text, r, s) in enumerate([(sql, rules, settings), *more]):
        e = book.entry(template_key(text).key, f"t{i}", text)
        cid = arm_id(r, s)
        e.candidates[cid] = Candidate(cid, "arm", r, origin=cid, settings=s)
        e.adopt(cid)
    book.save(path / "book.json")


@pytest.fixture(scope="module")
def con(tpch_db):
    c = connect_read_only(tpch_db)
    yield c
    c.close()


def _shown(c) -> tuple:
    """(rules disabled, as a sorted text; late_materialization_max_rows; merge_join_threshold)."""
    rules = ",".join(sorted(r for r in str(current_setting(c, "disabled_optimizers")).split(",") if r))
    return (rules, current_setting(c, "late_materialization_max_rows"), current_setting(c, "merge_join_threshold"))


def test_a_mode_sets_its_settings_and_restores_the_users_values():
    con = duckdb.connect()
    con.execute("SET GLOBAL merge_join_threshold = 77")
    con.execute("SET disabled_optimizers = 'late_materialization'")
    other = con.cursor()
    with disabled_optimizers(con, ("join_order",), dict(MERGE)):
        # instance-wide while the statement runs: every cursor of the instance sees it
        assert _shown(other) == ("join_order,late_materialization", 50, 0)
        assert current_setting(other, "nested_loop_join_threshold") == 0
    assert _shown(other) == ("late_materialization", 50, 77)
    assert current_setting(other, "nested_loop_join_threshold") == 5
    # on an error inside the statement too
    with pytest.raises(duckdb.Error):
        with disabled_optimizers(con, (), LATE):
            con.execute("SELECT * FROM no_such_table")
    assert current_setting(other, "late_materialization_max_rows") == 50


def test_setting_names_are_checked_and_values_kept_as_text():
    assert setting_pairs([("prefer_range_joins", True), ("merge_join_threshold", 0)]) == (
        ("merge_join_threshold", "0"), ("prefer_range_joins", "true"))
    for bad in ("disabled_optimizers", "threads", "x; DROP TABLE t", "memory limit"):
        with pytest.raises(LqoError):
            setting_pairs({bad: "1"})


def test_a_settings_arm_served_from_the_book_runs_under_its_setting_and_restores_it(tmp_path, con):
    sql = SHOW.format(3)
    _arm_book(tmp_path, con, sql, (), LATE)
    opt = Optimizer.load(tmp_path)
    res = opt.optimize(SHOW.format(7), con)
    assert res.source == "book" and res.settings == LATE and not res.forced and res.disabled == ()
    (r, late, merge, n), = res.execute(con)
    assert (r, late, merge) == ("", 0, 1000)
    assert n == con.execute(f"SELECT count(*) FROM lineitem, orders WHERE l_orderkey = o_orderkey "
                            f"AND o_orderkey % 7 = 0").fetchone()[0]
    assert _shown(con) == ("", 50, 1000)
    assert res.to_json()["settings"] == {"late_materialization_max_rows": "0"}


def test_a_settings_arm_through_the_connection_execute_sql_and_parameters(tmp_path, con):
    late_only = SHOW.replace("count(*) AS n", "count(*) AS n2")  # another template: settings, no rule
    _arm_book(tmp_path, con, SHOW.format(3), ("join_filter_pushdown",), MERGE, (late_only.format(3), (), LATE))
    with lqo.wrap(con.cursor(), book=tmp_path) as c:
        for params in (None, [5]):  # as written, and with a bind parameter
            text = late_only.format(5) if params is None else late_only.replace("% {}", "% ?")
            (r, late, merge, _n), = c.execute(text, params).fetchall()
            assert c.last is not None and c.last.settings == LATE and c.last.disabled == ()
            assert (r, late, merge) == ("", 0, 1000) and _shown(c.duckdb) == ("", 50, 1000)
            assert c.sql(late_only.format(5)).fetchall()[0][:3] == ("", 0, 1000)
        (r, late, merge, _n), = c.execute(SHOW.format(5)).fetchall()
        assert c.last is not None and c.last.settings == MERGE
        assert (r, late, merge) == ("join_filter_pushdown", 50, 0)
        assert _shown(c.duckdb) == ("", 50, 1000)
        rel = c.sql(SHOW.format(5))  # a relation is planned and run when fetched: under the arm
        assert rel.fetchall()[0][:3] == ("join_filter_pushdown", 50, 0)
        assert _shown(c.duckdb) == ("", 50, 1000)
        bound = SHOW.replace("% {}", "% ?")
        (r, late, merge, _n), = c.execute(bound, [5]).fetchall()
        assert c.last is not None and c.last.settings == MERGE and (r, merge) == ("join_filter_pushdown", 0)
        assert _shown(c.duckdb) == ("", 50, 1000)
        # anything else runs under DuckDB's own settings
        assert c.execute("SELECT current_setting('merge_join_threshold')").fetchall() == [(1000,)]


def test_eight_threads_in_rule_and_settings_modes_never_see_each_others(tpch_db):
    con = connect_read_only(tpch_db)
    modes = {  # mode -> (rules, settings, the values its statement must see)
        "native": ((), (), ("", 50, 1000)),
        "rule": (("join_filter_pushdown",), (), ("join_filter_pushdown", 50, 1000)),
        "late": ((), LATE, ("", 0, 1000)),
        "merge": (("join_filter_pushdown",), MERGE, ("join_filter_pushdown", 50, 0)),
        "both": ((), LATE + MERGE[:1], ("", 0, 0)),
        "forced": (None, LATE, ("join_order,build_side_probe_side", 0, 1000)),
    }
    expected = {m: con.execute(f"SELECT count(*) FROM lineitem, orders WHERE l_orderkey = o_orderkey "
                               f"AND o_orderkey % {m} = 0").fetchone()[0] for m in (2, 3, 5, 7)}
    seen: Counter = Counter()
    wrong: list = []
    names = list(modes)

    def work(tid: int) -> None:
        cur = con.cursor()
        for i in range(24):
            kind = names[(tid + i) % len(names)]
            m = (2, 3, 5, 7)[(tid * 7 + i) % 4]
            sql = SHOW.format(m)
            rules, settings, want = modes[kind]
            res = (Optimized.from_book(sql, sql, None, 0.0, settings=tuple(sorted(settings))) if rules is None
                   else Optimized.as_written(sql, None, 0.0, disabled=rules, settings=tuple(sorted(settings))))
            (r, late, merge, n), = res.execute(cur)
            seen[kind] += 1
            got = (set(r.split(",")) - {""}, late, merge)
            if got != (set(want[0].split(",")) - {""}, want[1], want[2]) or n != expected[m]:
                wrong.append((kind, r, late, merge, n))
        cur.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not wrong, wrong[:5]
    assert sum(seen.values()) == 8 * 24 and min(seen.values()) >= 24
    assert _shown(con) == ("", 50, 1000)
    con.close()


def test_a_statement_waits_while_another_settings_mode_runs():
    modes = RuleModes()
    con = duckdb.connect()
    a, b = con.cursor(), con.cursor()
    entered, done = threading.Event(), threading.Event()
    seen = []

    def other():
        with modes.hold(b, (), {"merge_join_threshold": "5"}):
            entered.set()
            seen.append(current_setting(b, "late_materialization_max_rows"))
        done.set()

    with modes.hold(a, (), LATE):
        t = threading.Thread(target=other)
        t.start()
        assert not entered.wait(0.2)  # another mode waits its turn
        assert current_setting(a, "merge_join_threshold") == 1000
    assert done.wait(10)
    t.join()
    assert seen == [50] and _shown(con) == ("", 50, 1000)


def test_old_books_read_and_settings_arms_round_trip(tmp_path):
    c = Candidate(arm_id((), LATE), "arm", (), origin="x", settings=LATE)
    d = c.to_json()
    assert d["settings"] == [["late_materialization_max_rows", "0"]]
    assert Candidate.from_json(d) == c
    old = Candidate("arm:join_order", "arm", ("join_order",)).to_json()
    assert "settings" not in old and Candidate.from_json(old).settings == ()
    # a book that recorded a settings arm only by its id (as arms once were) rebuilds it
    book = PlanBook(schema="s")
    e = book.entry("k", "t", "SELECT 1")
    e.candidates[c.id] = c
    e.adopt(c.id)
    data = book.to_json()
    data["templates"][0]["candidates"] = []
    path = tmp_path / "book.json"
    path.write_text(json.dumps(data))
    assert PlanBook.load(path).entries["k"].chosen.settings == LATE


def test_settings_arms_proposed_where_they_change_the_plan_and_run_as_candidates(con):
    top = "SELECT l_orderkey, l_comment FROM lineitem ORDER BY l_extendedprice DESC LIMIT 10"
    arms = {c.id: c for c in setting_arms(con, top)}
    assert "arm:late_materialization_max_rows=0" in arms  # a top-N DuckDB materializes late
    assert "arm:dynamic_or_filter_threshold=0" in arms  # run-time settings are always tried
    assert "arm:nested_loop_join_threshold=0" not in arms  # no join: the same plan
    assert all(c.settings and c.origin == c.id for c in arms.values())
    c = arms["arm:late_materialization_max_rows=0"]
    assert plan_signature(con, top) != plan_signature(con, top, settings=c.settings)
    sql, forced, rules, settings = variant(c, top, Catalog.from_connection(con))
    assert (sql, forced, rules, settings) == (top, False, (), LATE)
    assert recorded_plan(c) == {"arm": [], "settings": {"late_materialization_max_rows": "0"}}
    native, arm = run_interleaved(con, [(top, False), (sql, forced, rules, settings)], repeats=1, warmup=0)
    assert native[0].ok and arm[0].ok and native[0].fingerprint == arm[0].fingerprint
    assert _shown(con) == ("", 50, 1000)


def test_every_settings_arm_gives_the_native_result(con):
    """Each setting of SETTING_ARMS on joins, range joins, top-N and aggregates: DuckDB's result."""
    queries = [
        "SELECT n_name, count(*), sum(c_acctbal) FROM customer, nation WHERE c_nationkey = n_nationkey GROUP BY n_name",
        "SELECT count(*) FROM nation a, nation b WHERE a.n_nationkey < b.n_nationkey AND a.n_regionkey = b.n_regionkey",
        "SELECT count(*) FROM region a, nation b WHERE a.r_regionkey <= b.n_regionkey",
        "SELECT o_orderkey, o_comment FROM orders ORDER BY o_totalprice DESC, o_orderkey LIMIT 7",
        "SELECT l_returnflag, count(*) FROM lineitem, orders WHERE l_orderkey = o_orderkey "
        "AND (o_orderkey % 7 = 0 OR o_custkey IN (1, 2, 3)) GROUP BY ALL ORDER BY 1",
    ]
    for q in queries:
        want = sorted(con.execute(q).fetchall())
        for pair in SETTING_ARMS:
            with disabled_optimizers(con, (), (pair,)):
                assert sorted(con.execute(q).fetchall()) == want, (q, pair)
    assert _shown(con) == ("", 50, 1000)
