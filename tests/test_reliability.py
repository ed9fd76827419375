"""Reliability: run-time failures, syntax errors, one writer per directory, the user's
database untouched, the user's memory_limit kept.

On TPC-H sf 0.01 made by ``lqo workload create``. Queries that fail at run time bind
and plan fine, then fail while running: a date literal DuckDB cannot convert, a column
cast that fails on its values, a result Python cannot hold, out of memory under a
``memory_limit``, an interrupt. (DuckDB's division by zero gives NULL, not an error.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest

import lqo.cli as cli
from lqo.engine.db import connect_read_only
from lqo.engine.harness import Harness
from lqo.engine.run_result import fingerprint_rows
from lqo.engine.settings import current_setting
from lqo.errors import BusyError, InvalidSQLError, LqoError, NotSelectError, QueryRuntimeError
from lqo.optimized import Optimized
from lqo.store.experience import ExperienceStore
from test_cli import assert_error, lqo, lqo_json, tree  # the CLI test helpers

JOIN = "FROM nation n JOIN region r ON n.n_regionkey = r.r_regionkey"
# Bind and plan fine; fail while running.
GARBAGE_DATE = ("SELECT count(*) FROM lineitem l JOIN orders o ON l.l_orderkey = o.o_orderkey "
                "WHERE o.o_orderdate > 'garbage'")
BAD_CAST = f"SELECT count(*) {JOIN} WHERE CAST(n.n_name AS INTEGER) > 0"
HUGE_INTERVAL = f"SELECT '1 month 1000000000 days'::INTERVAL AS i, count(*) {JOIN}"  # beyond timedelta
# Needs far more than 4 MB and cannot spill (a list per group).
MEMORY_HOG = ("SELECT o.o_orderkey, list(l.l_comment) FROM orders o JOIN lineitem l "
              "ON l.l_orderkey = o.o_orderkey GROUP BY o.o_orderkey")
SLOW_SQL = "SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3"  # minutes; only ever interrupted
OK_SQL = f"SELECT count(*) {JOIN}"
SMALL_MEMORY = "4MB"


# --------------------------------------------------------------------------- helpers


def custom_workload(root: Path, database: Path, queries: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "workload.toml").write_text(f'name = "{root.name}"\ndatabase = "{database}"\n')
    for qid, sql in queries.items():
        (root / f"{qid}.sql").write_text(sql + "\n")
    return root


def store_rows(path: Path, sql: str) -> list[tuple]:
    store = ExperienceStore.open(path, read_only=True)
    try:
        return store.con.execute(sql).fetchall()
    finally:
        store.close()


def python_argv() -> list[str]:
    return [sys.executable, "-c"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tpch_wl(tmp_path_factory) -> Path:
    """A TPC-H sf 0.01 workload by ``lqo workload create`` (never written to by tests)."""
    out = tmp_path_factory.mktemp("rel") / "tpch"
    assert cli.main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def db(tpch_wl) -> Path:
    return tpch_wl / "tpch.duckdb"


@pytest.fixture
def failing_wl(db, tmp_path) -> Path:
    """One query that runs and two that fail at run time (they bind and plan fine)."""
    return custom_workload(tmp_path / "failing", db, {"ok": OK_SQL, "garbage": GARBAGE_DATE, "cast": BAD_CAST})


def small_memory(connect):
    """``connect`` whose connections run under a 4 MB memory_limit (as a user may set)."""
    def wrapped(*args, **kwargs):
        con = connect(*args, **kwargs)
        con.execute(f"SET memory_limit = '{SMALL_MEMORY}'")
        return con
    return wrapped


# --------------------------------------------------------------------------- 1. run-time failures: explain


@pytest.mark.parametrize("sql,words", [
    (GARBAGE_DATE, ["conversion error", "garbage"]),
    (BAD_CAST, ["conversion error", "ALGERIA"]),
    (HUGE_INTERVAL, ["cannot be converted to python", "OverflowError"]),
], ids=["date-literal", "column-cast", "result-overflow"])
def test_explain_runtime_failure_is_one_typed_line(capsys, db, sql, words):
    line = assert_error(lqo(capsys, "explain", sql, "--db", db), "failed while running", *words)
    assert sql[:30] in line  # names the query
    # --no-run plans without running: no run-time failure
    assert lqo(capsys, "explain", sql, "--db", db, "--no-run")[0] == 0


def test_explain_out_of_memory_under_memory_limit(capsys, db, monkeypatch):
    import lqo.cli.explain_cmd as explain_cmd

    monkeypatch.setattr(explain_cmd, "connect_read_only", small_memory(explain_cmd.connect_read_only))
    assert_error(lqo(capsys, "explain", MEMORY_HOG, "--db", db), "failed while running", "out of memory",
                 "memory_limit", MEMORY_HOG[:30])


# --------------------------------------------------------------------------- 1. run-time failures: the API


def _interrupt_soon(con, delay: float = 0.3) -> threading.Timer:
    t = threading.Timer(delay, con.interrupt)
    t.start()
    return t


@pytest.mark.parametrize("case", ["conversion", "overflow", "out-of-memory", "interrupt"])
@pytest.mark.parametrize("forced", [True, False], ids=["forced", "native"])
def test_optimized_execute_raises_query_runtime_error(db, case, forced):
    sql = {"conversion": GARBAGE_DATE, "overflow": HUGE_INTERVAL, "out-of-memory": MEMORY_HOG,
           "interrupt": SLOW_SQL}[case]
    cause = {"conversion": duckdb.ConversionException, "overflow": OverflowError,
             "out-of-memory": duckdb.OutOfMemoryException, "interrupt": duckdb.InterruptException}[case]
    con = connect_read_only(db)
    try:
        if case == "out-of-memory":
            con.execute(f"SET memory_limit = '{SMALL_MEMORY}'")
        limit = current_setting(con, "memory_limit")
        arm = ("join_filter_pushdown",)
        plan = (Optimized.from_book(sql, sql, None, 0.1, disabled=arm) if forced
                else Optimized.as_written(sql, "kept", 0.1, disabled=arm, source="model"))
        timer = _interrupt_soon(con) if case == "interrupt" else None
        with pytest.raises(QueryRuntimeError) as info:
            plan.execute(con)
        if timer is not None:
            timer.join()
        err = info.value
        assert isinstance(err, LqoError)
        assert isinstance(err.__cause__, cause)
        assert "\n" not in str(err)
        assert sql[:30] in str(err) and sql[:30] in err.query
        assert err.detail and err.detail in str(err)
        # settings restored, the user's own kept, the connection usable
        assert current_setting(con, "disabled_optimizers") == ""
        assert current_setting(con, "memory_limit") == limit
        assert con.execute("SELECT 42").fetchall() == [(42,)]
    finally:
        con.close()


def test_harness_records_a_result_python_cannot_hold(db):
    con = connect_read_only(db)
    try:
        r = Harness(con).run(HUGE_INTERVAL, forced=True)  # did raise OverflowError out of the harness
    finally:
        con.close()
    assert not r.ok and "OverflowError" in r.error and r.fingerprint is None


# --------------------------------------------------------------------------- 1. run-time failures: workload commands


def test_run_records_failed_queries_and_goes_on(capsys, failing_wl):
    rep = lqo_json(capsys, "run", failing_wl, "--repeat", "2")
    by_id = {q["id"]: q for q in rep["queries"]}
    assert by_id["ok"]["median_ms"] > 0 and by_id["ok"]["error"] is None
    for qid, word in [("garbage", "garbage"), ("cast", "ALGERIA")]:
        assert by_id[qid]["median_ms"] is None and by_id[qid]["errors"] == 2
        assert word in by_id[qid]["error"] and "\n" not in by_id[qid]["error"]
    assert rep["totals"]["failed"] == 2
    assert rep["totals"]["median_ms"] == by_id["ok"]["median_ms"]
    errors = store_rows(failing_wl / "experience.duckdb",
                        "SELECT q.query_id, count(*) FROM runs r JOIN queries q USING (query_key) "
                        "WHERE r.error IS NOT NULL GROUP BY ALL ORDER BY 1")
    assert errors == [("cast", 2), ("garbage", 2)]
    # the text report says so, in one row per query
    code, out, _ = lqo(capsys, "run", failing_wl, "--plan", "random")
    assert code == 0
    assert "FAILED: " in out and "2 failed" in out


def test_explore_records_failed_queries_and_goes_on(capsys, failing_wl):
    rep = lqo_json(capsys, "explore", failing_wl, "--plans", "1", "--confirm", "1")
    by_id = {q["id"]: q for q in rep["queries"]}
    assert by_id["ok"]["error"] is None and by_id["ok"]["native_ms"] > 0 and by_id["ok"]["plans_tried"] >= 1
    assert "garbage" in by_id["garbage"]["error"] and "ALGERIA" in by_id["cast"]["error"]
    assert rep["totals"]["failed"] == 2
    assert rep["totals"]["not_forceable"] == 0  # failed is not "kept native"
    assert rep["totals"]["geomean_ratio"] == round(by_id["ok"]["ratio"], 4)  # failed ones are no 1.0x
    n = store_rows(failing_wl / "experience.duckdb", "SELECT count(*) FROM runs WHERE error IS NOT NULL")[0][0]
    assert n >= 2


def test_tune_compare_optimize_with_failing_queries(capsys, failing_wl, tmp_path, db):
    out = tmp_path / "book"
    code, text, err = lqo(capsys, "tune", failing_wl, "--budget", "0.5", "--out", out)  # margin for a loaded machine: it ends when no candidate is left
    assert code == 0, err
    assert "garbage: native run of garbage failed" in text and "left native" in text
    book = json.loads((out / "book.json").read_text())
    notes = {e["template"]: e["note"] for e in book["templates"]}
    assert "invalid date" in notes["garbage"] and "\n" not in notes["garbage"]
    rep = lqo_json(capsys, "compare", failing_wl, "--model", out, "--repeat", "1")
    by_id = {q["id"]: q for q in rep["queries"]}
    assert sorted(rep["totals"]["failed"]) == ["cast", "garbage"]
    assert "native run failed" in by_id["garbage"]["error"]
    # a failing query is not a latency (it was 1 ms native vs 1 s lqo: a 1000x "regression")
    assert rep["totals"]["queries"] == 1 and rep["totals"]["regressions"] in ([], ["ok"])
    assert rep["totals"]["native_ms"] == pytest.approx(by_id["ok"]["native_ms"], abs=1e-3)
    opt = lqo_json(capsys, "optimize", GARBAGE_DATE, "--db", db, "--model", out)
    assert "left native" in opt["fallback"] and "verified" not in opt["fallback"]


def test_compare_a_query_lqo_cannot_plan_is_failed_not_fatal(capsys, failing_wl, tmp_path):
    out = tmp_path / "book"
    assert lqo(capsys, "tune", failing_wl, "--budget", "0.05", "--out", out)[0] == 0
    (failing_wl / "nosuch.sql").write_text("SELECT count(*) FROM nation n, region r WHERE n.n_nosuch = r.r_regionkey\n")
    rep = lqo_json(capsys, "compare", failing_wl, "--model", out, "--repeat", "1")
    by_id = {q["id"]: q for q in rep["queries"]}
    # the book knows no such template; planning it for the forced-native variant fails
    assert "not planned" in by_id["nosuch"]["error"] and "n_nosuch" in by_id["nosuch"]["error"]
    assert by_id["ok"]["error"] is None and rep["totals"]["queries"] == 1


TINY_RECIPE = """
iterations = 1
time_budget_min = 2
[split]
by = "query"
[model]
epochs = 2
ensemble = 1
hidden = 8
[exploration]
bootstrap_plans = 2
"""


def test_train_leaves_failing_queries_out(capsys, failing_wl, tmp_path, db):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    code, text, err = lqo(capsys, "train", recipe, "--workload", failing_wl, "--out", tmp_path / "m")
    assert code == 0, err
    assert "query garbage: native run failed, left out of training" in text
    line = json.loads((tmp_path / "m" / "history.jsonl").read_text().splitlines()[-1])
    assert line["failed_queries"] == ["cast", "garbage"]
    # nothing runs at all: a one-line error, not a traceback from the model's fit
    allbad = custom_workload(tmp_path / "allbad", db, {"garbage": GARBAGE_DATE, "cast": BAD_CAST})
    code, text, err = lqo(capsys, "train", recipe, "--workload", allbad, "--out", tmp_path / "m2")
    assert code == 2 and err.strip().splitlines() == [err.strip()]
    assert "nothing to learn from" in err and "cast, garbage" in err


def test_run_records_out_of_memory_and_goes_on(capsys, db, tmp_path, monkeypatch):
    from lqo.workloads.workload import Workload

    monkeypatch.setattr(Workload, "connect", small_memory(Workload.connect))
    w = custom_workload(tmp_path / "w", db, {"hog": MEMORY_HOG, "ok": OK_SQL})
    rep = lqo_json(capsys, "run", w, "--plan", "random")
    by_id = {q["id"]: q for q in rep["queries"]}
    assert "Out of Memory" in by_id["hog"]["error"] and by_id["hog"]["median_ms"] is None
    assert by_id["ok"]["median_ms"] > 0 and rep["totals"]["failed"] == 1


def test_workload_prepare_error_names_the_query(capsys, db, tmp_path):
    w = custom_workload(tmp_path / "w", db, {"ok": OK_SQL, "badcol": f"SELECT n.n_nosuch {JOIN}"})
    assert_error(lqo(capsys, "run", w), "query badcol", "badcol.sql", "n_nosuch")


# --------------------------------------------------------------------------- 2. syntax errors


@pytest.mark.parametrize("sql,words", [
    ("SELEC x", ['syntax error at or near "SELEC"', "line 1, column 1"]),
    ("SELEC 1", ['syntax error at or near "SELEC"', "line 1, column 1"]),
    ("SELECT FROM WHERE", ['syntax error at or near "WHERE"', "line 1, column 13"]),
    ("x", ['syntax error at or near "x"']),
    ("SELECT n_name\nFROM nation\nWHER n_nationkey = 1", ['near "n_nationkey"', "line 3, column 6"]),
    ("SELECT * FROM nation WHERE (", ["syntax error at end of input"]),
    ("SELECT 'abc", ["unterminated quoted string", "line 1, column 8"]),
], ids=["selec-x", "selec-1", "from-where", "bare-name", "third-line", "end-of-input", "unterminated"])
def test_syntax_errors_say_so(capsys, db, sql, words):
    line = assert_error(lqo(capsys, "explain", sql, "--db", db), "invalid sql", *words)
    assert "not a select" not in line.lower() and "alias" not in line.lower()
    with pytest.raises(InvalidSQLError, match="syntax error|unterminated"):
        from lqo.sql.join_graph import parse_select

        parse_select(sql)


def test_workload_file_syntax_error_says_where(capsys, db, tmp_path):
    w = custom_workload(tmp_path / "w", db, {"a": "SELECT count(*)\nFROM nation\nWHER n_nationkey = 1"})
    assert_error(lqo(capsys, "run", w), "a.sql", 'syntax error at or near "n_nationkey"', "line 3, column 6")


@pytest.mark.parametrize("sql,kind", [("DELETE FROM nation", "DELETE"), ("EXPLAIN SELECT 1", "EXPLAIN"),
                                      ("SET threads = 1", "SET")])
def test_real_statements_are_not_selects(capsys, db, sql, kind):
    assert_error(lqo(capsys, "explain", sql, "--db", db), "not a select", f"{kind} statement")


def test_explain_statement_is_one_line_from_the_process(db):
    # sqlglot warns on stderr when it falls back to a bare command: the process prints one line
    script = Path(sys.executable).parent / "lqo"
    argv = [str(script)] if script.is_file() else [sys.executable, "-c", "import sys, lqo.cli; sys.exit(lqo.cli.main())"]
    p = subprocess.run([*argv, "explain", "EXPLAIN SELECT 1", "--db", str(db)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["lqo: error: not a SELECT query: EXPLAIN statement"]


def test_sqlglot_only_failure_is_not_called_a_syntax_error(monkeypatch):
    import sqlglot
    from sqlglot.errors import ParseError

    from lqo.sql import join_graph

    def fail(*args, **kwargs):
        raise ParseError("Invalid expression / Unexpected token. Line 1, Col: 9.")

    monkeypatch.setattr(sqlglot, "parse", fail)
    with pytest.raises(InvalidSQLError) as info:
        join_graph.parse_select("SELECT 1")  # DuckDB parses it: not a syntax error
    assert "syntax error" not in str(info.value) and "sqlglot" in str(info.value)
    monkeypatch.undo()
    with pytest.raises(NotSelectError):
        join_graph.parse_select("DELETE FROM t")


# --------------------------------------------------------------------------- 3. one writer per directory


HOLD = """
import sys, time
from lqo.lock import acquire
from lqo.store.experience import ExperienceStore
kind, path = sys.argv[1], sys.argv[2]
if kind == "dir":
    acquire(path, "model directory " + path)
else:
    store = ExperienceStore.open(path)  # the writer every command uses
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start another process that holds a model directory or store as a writer would."""
    procs = []

    def start(kind: str, path: Path) -> subprocess.Popen:
        p = subprocess.Popen([*python_argv(), HOLD, kind, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held", p.stderr.read()
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


def test_second_writer_of_a_model_directory_stops(capsys, holder, failing_wl, tmp_path, db):
    out = tmp_path / "book"
    assert lqo(capsys, "tune", failing_wl, "--budget", "0.05", "--out", out)[0] == 0
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    def contents() -> dict:  # what the writers own; the lock file holds the holder's note
        return {k: v for k, v in tree(out).items() if not k.endswith(".lock")}

    before = contents()
    proc = holder("dir", out)
    for argv in (["tune", failing_wl, "--budget", "0.05", "--out", out],
                 ["train", recipe, "--workload", failing_wl, "--out", out]):
        assert_error(lqo(capsys, *argv), "model directory", str(out), "in use by another lqo process",
                     f"pid {proc.pid}")
    assert contents() == before  # nothing written
    # readers keep working while the writer holds the directory
    assert lqo(capsys, "book", "show", out)[0] == 0
    assert lqo(capsys, "optimize", OK_SQL, "--db", db, "--model", out)[0] == 0
    assert lqo_json(capsys, "compare", failing_wl, "--model", out, "--repeat", "1")["totals"]["queries"] == 1
    # the kernel drops the lock when the holder dies, however it dies
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lqo(capsys, "tune", failing_wl, "--budget", "0.05", "--out", out)[0] == 0


@pytest.mark.parametrize("command", ["run", "explore"])
def test_second_writer_of_an_experience_store_stops(capsys, holder, failing_wl, command):
    store = failing_wl / "experience.duckdb"
    assert lqo(capsys, "run", failing_wl)[0] == 0
    runs = store_rows(store, "SELECT count(*) FROM runs")[0][0]
    proc = holder("store", store)
    argv = {"run": ["run", failing_wl], "explore": ["explore", failing_wl, "--plans", "1", "--confirm", "1"]}[command]
    assert_error(lqo(capsys, *argv), "experience store", str(store), "in use by another lqo process", f"pid {proc.pid}")
    proc.kill()
    proc.wait()
    assert store_rows(store, "SELECT count(*) FROM runs")[0][0] == runs  # nothing lost, nothing added


def test_writer_lock_is_reentrant_and_released(tmp_path):
    from lqo import lock

    path = tmp_path / "s.duckdb"
    a = ExperienceStore.open(path)
    b = ExperienceStore.open(path)  # the same process may share its store
    a.close()
    assert os.path.realpath(str(path) + ".lock") in lock._held
    b.close()
    b.close()  # twice is fine
    assert not lock._held
    # and another process may now take it
    p = subprocess.run([*python_argv(), "from lqo.lock import acquire; acquire(r'%s', 'x')" % path],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_busy_error_is_typed(tmp_path, holder):
    from lqo.lock import acquire

    proc = holder("dir", tmp_path)
    with pytest.raises(BusyError, match=f"pid {proc.pid}"):
        acquire(tmp_path, f"model directory {tmp_path}")


# --------------------------------------------------------------------------- 4. the user's database stays byte-identical


def test_user_database_is_byte_identical_through_every_command(capsys, tpch_wl, db, tmp_path):
    before = tree(tpch_wl)  # the database and everything next to it (no .wal, no .tmp appears)
    q05 = (tpch_wl / "q05.sql").read_text()
    book, store = tmp_path / "book", tmp_path / "experience.duckdb"
    commands = [
        ["explain", q05, "--db", db],
        ["explain", q05, "--db", db, "--no-run"],
        ["run", tpch_wl, "--store", store],
        ["run", tpch_wl, "--plan", "random", "--store", store],
        ["explore", tpch_wl, "--queries", "q03,q05,q10", "--plans", "2", "--confirm", "1", "--store", store],
        ["tune", tpch_wl, "--budget", "0.05", "--out", book],
        ["optimize", q05, "--db", db, "--model", book],
        ["compare", tpch_wl, "--model", book, "--repeat", "1"],
        ["book", "show", book],
    ]
    for argv in commands:
        code, _, err = lqo(capsys, *argv)
        assert code == 0, (argv, err)
        assert tree(tpch_wl) == before, argv


# --------------------------------------------------------------------------- 5. forced plans keep the user's memory_limit


def test_forced_plans_run_under_the_users_memory_limit(db):
    con = connect_read_only(db)
    try:
        con.execute(f"SET memory_limit = '{SMALL_MEMORY}'")
        limit = current_setting(con, "memory_limit")
        probe = f"SELECT current_setting('memory_limit') AS m, count(*) {JOIN}"
        harness = Harness(con)
        # during: the forced statement itself sees the limit ...
        for kwargs in ({"forced": True}, {"forced": True, "profile": False},
                       {"forced": False, "disabled": ("join_filter_pushdown",)}):
            r = harness.run(probe, **kwargs)
            assert r.ok and r.fingerprint == fingerprint_rows([(limit, 25)]), kwargs
        assert Optimized.planned(probe, None, None, 0.1, forced_sql=probe).execute(con) == [(limit, 25)]
        # ... and is held to it: a forced plan that needs more fails, out of memory
        r = harness.run(MEMORY_HOG, forced=True)
        assert r.error is not None and "Out of Memory" in r.error
        with pytest.raises(QueryRuntimeError, match="memory_limit"):
            Optimized.planned(MEMORY_HOG, None, None, 0.1, forced_sql=MEMORY_HOG).execute(con)
        # after: still the user's limit
        assert current_setting(con, "memory_limit") == limit
        assert current_setting(con, "disabled_optimizers") == ""
    finally:
        con.close()
    # the same forced plan runs without the limit: it was the limit that stopped it
    con = connect_read_only(db)
    try:
        assert Harness(con).run(MEMORY_HOG, forced=True).ok
    finally:
        con.close()
