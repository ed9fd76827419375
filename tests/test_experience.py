"""Experience store: round trips, idempotent keys, wrong plans, crash safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from lqo.errors import LqoError, PlanError
from lqo.store.experience import ExperienceStore
from lqo.store.schema import SCHEMA_VERSION
from lqo.engine.harness import Harness
from lqo.engine.run_result import RunResult

SQL = "SELECT n_name, count(*) FROM nation JOIN customer ON c_nationkey = n_nationkey GROUP BY 1"
OPS = [{"type": "HASH_JOIN", "rows": 1500, "est": 1442, "ms": 0.4, "depth": 0, "parent": -1}]


def ok(ms: float, fp: str = "fp") -> RunResult:
    return RunResult(latency_ms=ms, rows=25, fingerprint=fp, operators=OPS, timeout_ms=1000.0, threads=2)


def timeout(ms: float = 1000.0) -> RunResult:
    return RunResult(latency_ms=ms + 3, timed_out=True, timeout_ms=ms, threads=2)


@pytest.fixture
def store(tmp_path):
    with ExperienceStore.open(tmp_path / "exp.duckdb", session="s1") as s:
        yield s


def test_round_trip_with_real_runs(tmp_path, tpch_db):
    from lqo.engine.db import connect_read_only

    con = connect_read_only(tpch_db)
    try:
        h = Harness(con, timeout_s=10)
        native, forced = h.run(SQL), h.run(SQL, forced=True)
    finally:
        con.close()
    path = tmp_path / "exp.duckdb"
    with ExperienceStore.open(path, session="sess") as s:
        qk = s.add_query(SQL, database=str(tpch_db), workload="tpch", query_id="x1", template="t1")
        pk_n = s.add_plan(qk, "native", None, None)
        pk_f = s.add_plan(qk, "forced_native", {"tree": ["nation", "customer"]}, SQL)
        rid1 = s.record_run(pk_n, native)
        rid2 = s.record_run(pk_f, forced, timeout_ms=10_000.0, threads=1, session="other")
        assert rid2 > rid1
    with ExperienceStore.open(path, read_only=True) as s:
        q = s.get_query(qk)
        assert q["sql"] == SQL and q["workload"] == "tpch" and q["query_id"] == "x1" and q["template"] == "t1"
        runs = s.runs_for_query(qk)
        assert [r["run_id"] for r in runs] == [rid1, rid2]
        a, b = runs
        assert a["kind"] == "native" and b["kind"] == "forced_native"
        assert a["fingerprint"] == native.fingerprint == b["fingerprint"]
        assert a["rows"] == 25 and a["latency_ms"] == pytest.approx(native.latency_ms)
        assert a["operators"] == native.operators and a["session"] == "sess" and a["threads"] == native.threads
        assert a["timeout_ms"] == 10_000.0 and a["started_at"] == native.started_at
        assert b["timeout_ms"] == 10_000.0 and b["threads"] == 1 and b["session"] == "other"
        assert s.get_plan(pk_f)["plan_json"] == '{"tree":["nation","customer"]}'
        assert s.get_plan(pk_n)["sql"] is None and not s.get_plan(pk_n)["wrong"]
        assert s.native_latency(qk) == pytest.approx(native.latency_ms)


def test_keys_are_idempotent_and_stable(store):
    qk = store.add_query(SQL, database="db1")
    assert store.add_query(SQL + "\n", database="db1") == qk
    assert store.add_query(SQL, database="db2") != qk
    pk = store.add_plan(qk, "random", {"a": 1, "b": [1, 2]}, "SELECT 1")
    assert store.add_plan(qk, "explored", '{"b": [1, 2],  "a": 1}', "SELECT 1") == pk
    assert store.get_plan(pk)["kind"] == "random"  # the first kind is kept
    assert store.add_plan(qk, "random", {"a": 2}, "SELECT 1") != pk
    # The same tree run natively and forced are different plans.
    assert store.add_plan(qk, "native", {"a": 1, "b": [1, 2]}, None) != pk
    assert len(store.plans_for_query(qk)) == 3
    n = store.con.execute("SELECT count(*) FROM queries").fetchone()[0]
    assert n == 2


def test_unknown_keys_raise(store):
    with pytest.raises(PlanError):
        store.add_plan("nope", "random", {}, "SELECT 1")
    with pytest.raises(PlanError):
        store.record_run("nope", ok(1.0))
    qk = store.add_query(SQL)
    pk = store.add_plan(qk, "native")
    # record_runs is all-or-none: one bad key rolls back the good ones too.
    with pytest.raises(PlanError):
        store.record_runs([(pk, ok(1.0)), ("nope", ok(2.0))])
    assert store.runs_for_query(qk) == []
    ids = store.record_runs([(pk, ok(1.0)), (pk, ok(2.0))])
    assert ids[0] < ids[1]
    assert len(store.runs_for_query(qk)) == 2


def test_best_plan_native_latency_and_wrong_marking(store):
    qk = store.add_query(SQL, database="db")
    native = store.add_plan(qk, "native")
    fast = store.add_plan(qk, "random", {"t": "fast"}, "SELECT 'fast'")
    mid = store.add_plan(qk, "random", {"t": "mid"}, "SELECT 'mid'")
    flaky = store.add_plan(qk, "random", {"t": "flaky"}, "SELECT 'flaky'")
    broken = store.add_plan(qk, "random", {"t": "broken"}, "SELECT 'broken'")
    for ms in (100.0, 120.0, 110.0):
        store.record_run(native, ok(ms))
    for ms in (40.0, 60.0, 50.0):
        store.record_run(fast, ok(ms, fp="other"))
    for ms in (80.0, 70.0, 90.0):
        store.record_run(mid, ok(ms))
    # One lucky run, then timeouts: ranks by its censored median (1000 ms), not by 5 ms.
    store.record_runs([(flaky, ok(5.0)), (flaky, timeout()), (flaky, timeout())])
    store.record_run(broken, RunResult(latency_ms=1.0, error="Binder Error"))

    assert store.native_latency(qk) == 110.0
    best = store.best_plan(qk)
    assert best["plan_key"] == fast and best["median_ms"] == 50.0 and best["n_runs"] == 3
    assert best["plan_json"] == '{"t":"fast"}' and best["sql"] == "SELECT 'fast'"

    assert not store.is_wrong(fast)
    store.mark_wrong(fast, reason="fingerprint other != fp")
    store.mark_wrong(fast)
    assert store.is_wrong(fast) and not store.is_wrong(mid)
    assert store.best_plan(qk)["plan_key"] == mid
    assert store.get_plan(fast)["wrong"] and store.get_plan(fast)["wrong_reason"]
    assert len(store.plans_for_query(qk)) == 5  # a marked plan keeps its row (append-only)
    flaky_row = store.con.execute(
        "SELECT n_timeouts, median_ms FROM (" + _plan_medians_sql() + ") WHERE plan_key = ?", [qk, flaky]
    ).fetchone()
    assert flaky_row == (2, 1003.0)  # greatest(latency, timeout)

    other = store.add_query("SELECT 1")
    assert store.best_plan(other) is None and store.native_latency(other) is None


def _plan_medians_sql() -> str:
    from lqo.store.experience import _PLAN_MEDIANS

    return _PLAN_MEDIANS


def test_open_refuses_foreign_files_and_other_versions(tmp_path):
    foreign = tmp_path / "user.duckdb"
    c = duckdb.connect(str(foreign))
    c.execute("CREATE TABLE lineitem(x INT)")
    c.close()
    with pytest.raises(LqoError, match="not an lqo experience store"):
        ExperienceStore.open(foreign)

    path = tmp_path / "exp.duckdb"
    ExperienceStore.open(path).close()
    c = duckdb.connect(str(path))
    c.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    c.close()
    with pytest.raises(LqoError, match="schema version 999"):
        ExperienceStore.open(path)
    with pytest.raises(LqoError):
        ExperienceStore.open(tmp_path / "missing.duckdb", read_only=True)
    assert SCHEMA_VERSION == "1"


# ----------------------------------------------------------------------------- crash safety

CHILD = r"""
import sys
from lqo.store.experience import ExperienceStore
from lqo.engine.run_result import RunResult

path, small_checkpoints = sys.argv[1], sys.argv[2] == "1"
store = ExperienceStore.open(path, session="child")
if small_checkpoints:
    # Checkpoint almost every commit, so some kills land inside a checkpoint.
    store.con.execute("SET checkpoint_threshold = '4KB'")
qk = store.add_query("SELECT 'crash'", database="crash")
ops = [{"type": "HASH_JOIN", "rows": i, "est": i * 3, "ms": 0.1, "depth": i, "parent": i - 1} for i in range(30)]
i = 0
while True:
    pk = store.add_plan(qk, "random", {"i": i}, f"SELECT {i}")
    r = RunResult(latency_ms=float(i), rows=i, fingerprint=f"fp{i}", operators=ops, timeout_ms=1e4, threads=2)
    store.record_runs([(pk, r), (pk, r)])  # one transaction, two rows
    i += 1
    print(i, flush=True)
"""


def _crash_once(path, delay: float, small_checkpoints: bool) -> tuple[int, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), "1" if small_checkpoints else "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        first = child.stdout.readline()
        assert first.strip(), f"child died before its first commit: {child.stderr.read()}"
        # While the child writes, DuckDB's file lock keeps everyone else out.
        with pytest.raises(LqoError, match="one process"):
            ExperienceStore.open(path, read_only=True)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    lines = [first] + rest.splitlines()
    reported = int(lines[-1]) if lines[-1].strip() else int(lines[-2])
    return reported, len(lines)


@pytest.mark.parametrize("small_checkpoints", [False, True])
def test_sigkill_loses_no_committed_run_and_leaves_no_partial_rows(tmp_path, small_checkpoints):
    rng = random.Random()
    path = tmp_path / "crash.duckdb"
    total_reported = 0
    for attempt in range(3):
        delay = rng.uniform(0.05, 0.8)
        reported, _ = _crash_once(path, delay, small_checkpoints)
        total_reported = max(total_reported, reported)
        msg = f"attempt {attempt}, kill after {delay:.3f}s, child reported {reported} commits"
        with ExperienceStore.open(path) as s:
            con = s.con
            qk = con.execute("SELECT query_key FROM queries WHERE sql = 'SELECT ''crash'''").fetchone()[0]
            # Only the child's plans (kind 'random'): each check below adds a native run.
            n_runs, n_ids, n_plans_with_runs = con.execute(
                "SELECT count(*), count(DISTINCT run_id), count(DISTINCT plan_key) FROM runs"
                " JOIN plans USING (plan_key) WHERE kind = 'random'"
            ).fetchone()
            n_plans = con.execute("SELECT count(*) FROM plans WHERE kind = 'random'").fetchone()[0]
            # Each child iteration commits its plan, then its two runs in one transaction.
            # Every restart of the child re-uses plans 0.. (idempotent) and adds runs again.
            assert n_runs == n_ids, msg
            per_plan = con.execute(
                "SELECT plan_key, count(*) FROM runs JOIN plans USING (plan_key) WHERE kind = 'random' GROUP BY ALL"
            ).fetchall()
            assert all(c % 2 == 0 for _, c in per_plan), msg  # never one run of a pair
            assert n_plans_with_runs <= n_plans <= n_plans_with_runs + 1, msg
            assert n_plans >= reported, msg
            # The last reported iteration must be there: plan i-1 has runs from this child.
            last = con.execute(
                "SELECT count(*) FROM runs r JOIN plans p USING (plan_key) WHERE p.plan_json = ?",
                [f'{{"i":{reported - 1}}}'],
            ).fetchone()[0]
            assert last >= 2, msg
            nulls = con.execute(
                "SELECT count(*) FROM runs WHERE run_id IS NULL OR plan_key IS NULL OR query_key IS NULL"
                " OR started_at IS NULL OR latency_ms IS NULL OR timed_out IS NULL OR session IS NULL"
                " OR rows IS NULL OR fingerprint IS NULL OR operators_json IS NULL"
            ).fetchone()[0]
            assert nulls == 0, msg
            orphans = con.execute("SELECT count(*) FROM runs WHERE plan_key NOT IN (SELECT plan_key FROM plans)").fetchone()[0]
            assert orphans == 0, msg
            # Writable again, and run ids keep increasing after recovery.
            max_id = con.execute("SELECT max(run_id) FROM runs").fetchone()[0]
            pk = s.add_plan(qk, "native")
            assert s.record_run(pk, ok(1.0)) > max_id, msg
    assert total_reported > 0


def test_runs_counted_exactly_after_one_crash(tmp_path):
    # On a fresh file the counts must match the child's report exactly (+1 if the kill
    # came between a commit and its print).
    path = tmp_path / "exact.duckdb"
    reported, _ = _crash_once(path, random.uniform(0.1, 0.5), False)
    with ExperienceStore.open(path) as s:
        n_runs = s.con.execute("SELECT count(*) FROM runs").fetchone()[0]
        assert n_runs in (2 * reported, 2 * reported + 2)
        ids = [r[0] for r in s.con.execute("SELECT run_id FROM runs").fetchall()]
        assert len(set(ids)) == len(ids)


def test_native_plan_run_as_written_and_forced_are_separate_samples(tmp_path, tpch_db):
    """Keeping native runs the text as written: a forced run of DuckDB's own tree (which
    pays for the forcing settings) is another sample, not mixed into the native one."""
    from lqo.engine.db import connect_read_only
    from lqo.trees.query import prepare
    from lqo.train.samples import collect_samples

    sql = "SELECT count(*) FROM orders, customer, nation WHERE o_custkey = c_custkey AND c_nationkey = n_nationkey"
    con = connect_read_only(tpch_db)
    try:
        pq = prepare(sql, con)
    finally:
        con.close()
    other = pq.random_plans(1, random.Random(0))[0]
    with ExperienceStore.open(tmp_path / "exp.duckdb") as s:
        qk = s.add_query(sql, database=str(tpch_db), query_id="x1")
        pk_n = s.add_plan(qk, "native", None, None)
        pk_f = s.add_plan(qk, "forced_native", pq.native_plan.to_json(), pq.render(pq.native_plan))
        pk_o = s.add_plan(qk, "random", other.to_json(), pq.render(other))
        for ms in (10.0, 12.0, 11.0):
            s.record_run(pk_n, ok(ms))
            s.record_run(pk_f, ok(ms * 10))
            s.record_run(pk_o, ok(ms * 2))
        samples = {(x.plan, x.forced): x.latency_ms for x in collect_samples([s], {"x1": pq})}
    assert samples == {(pq.native_plan, False): 11.0, (pq.native_plan, True): 110.0, (other, True): 22.0}
