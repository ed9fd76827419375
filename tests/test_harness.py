"""Execution harness: forced settings, profiling, timeouts, fingerprints, interleaving."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tpc_queries
from lqo.engine.db import connect_read_only
from lqo.engine.harness import Harness, run_interleaved
from lqo.engine.run_result import RunResult, fingerprint_rows, median_latency
from lqo.engine.settings import FORCE_SETTINGS, forced_settings

SLOW_SQL = "SELECT sum(a.range * b.range) FROM range(1000000000) a, range(1000) b"
FORCED = FORCE_SETTINGS["disabled_optimizers"]


@pytest.fixture(scope="module")
def con(tpch_db):
    c = connect_read_only(tpch_db)
    yield c
    c.close()


def setting(con, name):
    return con.execute(f"SELECT current_setting('{name}')").fetchone()[0]


def test_native_and_forced_tpch_same_rows_and_operator_cards(con):
    h = Harness(con, timeout_s=30)
    for qid, sql in tpc_queries("tpch").items():
        native = h.run(sql)
        forced = h.run(sql, forced=True)
        for r in (native, forced):
            assert r.ok, (qid, r.error)
            assert r.rows > 0 and r.fingerprint
            assert r.latency_ms > 0 and r.profile_latency_ms is not None
            assert r.operators and r.operators[0]["parent"] == -1 and r.operators[0]["depth"] == 0
            for i, op in enumerate(r.operators):
                assert isinstance(op["type"], str) and isinstance(op["rows"], int)
                assert op["parent"] < i and op["ms"] >= 0
                if op["parent"] >= 0:
                    assert op["depth"] == r.operators[op["parent"]]["depth"] + 1
        # Forcing the written order never changes the answer, whatever the float noise.
        assert native.fingerprint == forced.fingerprint, qid
        assert native.rows == forced.rows, qid
    q5 = h.run(tpc_queries("tpch")["q05"])
    joins = [op for op in q5.operators if op["type"] == "HASH_JOIN"]
    assert len(joins) >= 5 and all("Conditions" in op["info"] for op in joins)
    assert all(op["est"] is not None for op in joins)
    scans = {op["info"]["Table"].split(".")[-1] for op in q5.operators if op["type"] == "TABLE_SCAN"}
    assert {"lineitem", "orders", "customer", "supplier", "nation", "region"} <= scans


def test_profile_empty_when_duckdb_answers_from_statistics(con):
    # count(*)/min() without a filter is answered from table statistics: DuckDB then
    # reports {"result": "error"} instead of an operator tree. Not a failure of the run.
    r = Harness(con).run("SELECT count(*), min(n_nationkey) FROM nation")
    assert r.ok and r.rows == 1 and r.operators == []


def test_profile_false_collects_no_operators(con):
    r = Harness(con).run("SELECT count(*) FROM lineitem", profile=False)
    assert r.ok and r.rows == 1 and r.operators == [] and r.profile_latency_ms is None
    assert setting(con, "enable_profiling") is None


def test_forced_settings_applied_during_and_restored(con):
    h = Harness(con)
    before = setting(con, "disabled_optimizers")
    during = h.run("SELECT current_setting('disabled_optimizers'), current_setting('enable_profiling')", forced=True)
    assert during.fingerprint == fingerprint_rows([(FORCED, "no_output")])
    assert setting(con, "disabled_optimizers") == before
    assert setting(con, "enable_profiling") is None
    native = h.run("SELECT current_setting('disabled_optimizers')", forced=False)
    assert native.fingerprint == fingerprint_rows([(before,)])


def test_forced_settings_keep_already_disabled_and_restore_after_exception(con):
    con.execute("SET disabled_optimizers = 'join_filter_pushdown'")
    try:
        with pytest.raises(ValueError):
            with forced_settings(con):
                # DuckDB lists them in its own order: compare as sets.
                assert set(setting(con, "disabled_optimizers").split(",")) == {"join_filter_pushdown", *FORCED.split(",")}
                raise ValueError("boom")
        assert setting(con, "disabled_optimizers") == "join_filter_pushdown"
    finally:
        con.execute("SET disabled_optimizers = ''")


def test_sql_error_is_reported_and_settings_restored(con):
    r = Harness(con).run("SELECT no_such_column FROM lineitem", forced=True)
    assert not r.ok and not r.timed_out and "no_such_column" in r.error
    assert r.fingerprint is None and r.rows == 0
    assert setting(con, "disabled_optimizers") == ""
    assert setting(con, "enable_profiling") is None


def test_timeout_interrupts_and_connection_survives(con):
    h = Harness(con)
    t0 = time.perf_counter()
    r = h.run(SLOW_SQL, forced=True, timeout_s=0.2)
    elapsed = time.perf_counter() - t0
    assert r.timed_out and r.error is None and r.fingerprint is None and not r.ok
    assert r.timeout_ms == 200.0 and r.latency_ms >= 200.0
    assert elapsed < 5.0
    assert setting(con, "disabled_optimizers") == ""
    assert setting(con, "enable_profiling") is None
    after = h.run("SELECT count(*) FROM nation WHERE n_regionkey > 0", timeout_s=5)
    assert after.ok and after.rows == 1 and after.operators


def test_foreign_interrupt_is_reraised_and_settings_restored(con):
    # An interrupt that is not our timer (e.g. Ctrl-C) must not be swallowed as a timeout.
    timer = threading.Timer(0.2, con.interrupt)
    timer.start()
    with pytest.raises(duckdb.InterruptException):
        Harness(con).run(SLOW_SQL, forced=True, timeout_s=None)
    timer.join()
    assert setting(con, "disabled_optimizers") == ""
    assert setting(con, "enable_profiling") is None


def test_fingerprint_same_rerun_order_insensitive_and_discriminating(con):
    h = Harness(con)
    sql = "SELECT l_returnflag, l_linestatus, sum(l_extendedprice * (1 - l_discount)), avg(l_quantity) FROM lineitem GROUP BY ALL"
    a, b = h.run(sql + " ORDER BY 1, 2"), h.run(sql + " ORDER BY 1 DESC, 2 DESC")
    assert a.fingerprint == b.fingerprint == h.run(sql + " ORDER BY 1, 2").fingerprint
    other = h.run(sql.replace("FROM lineitem", "FROM lineitem WHERE l_quantity > 10"))
    assert other.fingerprint != a.fingerprint

    rows = con.execute("SELECT n_nationkey, n_name, n_regionkey FROM nation").fetchall()
    assert fingerprint_rows(rows) == fingerprint_rows(list(reversed(rows)))
    assert fingerprint_rows(rows) != fingerprint_rows(rows[:-1])
    assert fingerprint_rows([(1,), (1,)]) != fingerprint_rows([(1,)])  # a multiset, not a set
    assert fingerprint_rows([(1, 2)]) != fingerprint_rows([(2, 1)])
    assert fingerprint_rows([(0.1 + 0.2,)]) == fingerprint_rows([(0.3,)])
    assert fingerprint_rows([(1e-17,)]) == fingerprint_rows([(-2e-17,)])
    assert fingerprint_rows([(1.0,)]) != fingerprint_rows([(1.01,)])


_value = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.floats(allow_nan=False), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_value, _value), max_size=20), st.randoms())
def test_fingerprint_permutation_invariant(rows, rnd):
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert fingerprint_rows(rows) == fingerprint_rows(shuffled)


def test_run_interleaved_is_round_robin_and_drops_timed_out_variant(con):
    order = []
    variants = [("SELECT count(*) FROM nation", False), (SLOW_SQL, True), ("SELECT count(*) FROM region", True)]
    results = run_interleaved(con, variants, repeats=3, warmup=1, timeout_s=0.2,
                              on_run=lambda i, rnd, r: order.append((i, rnd)))
    # The slow variant times out in warm-up and is never run again.
    assert order == [(0, -1), (1, -1), (2, -1), (0, 0), (2, 0), (0, 1), (2, 1), (0, 2), (2, 2)]
    assert [len(r) for r in results] == [3, 1, 3]
    assert results[1][0].timed_out
    assert all(r.ok and r.rows == 1 for i in (0, 2) for r in results[i])
    assert results[2][0].forced and not results[0][0].forced
    assert setting(con, "disabled_optimizers") == ""


def test_run_interleaved_plain_round_robin(con):
    order = []
    variants = [(f"SELECT {i}", i % 2 == 1) for i in range(3)]
    results = run_interleaved(con, variants, repeats=4, warmup=2, on_run=lambda i, rnd, r: order.append((i, rnd)))
    assert order == [(i, rnd) for rnd in range(-2, 4) for i in range(3)]
    assert all(len(r) == 4 for r in results)


def test_median_latency_censors_timeouts():
    done = [RunResult(10.0), RunResult(30.0), RunResult(20.0)]
    assert median_latency(done) == 20.0
    timed = RunResult(5.0, timed_out=True, timeout_ms=50.0)
    assert median_latency(done + [timed, timed]) == 30.0
    assert median_latency([RunResult(10.0), timed, timed]) == 50.0  # a lower bound
    # A timeout ranks above a completed run even with a smaller timeout value.
    assert median_latency([RunResult(80.0), RunResult(90.0), timed]) == 90.0
    assert median_latency([RunResult(1.0, error="x")]) is None
    assert median_latency([RunResult(1.0, error="x"), RunResult(4.0)]) == 4.0
