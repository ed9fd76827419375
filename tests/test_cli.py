"""End-to-end tests of the ``lqo`` command line on TPC-H sf 0.01.

In-process through ``lqo.cli.main`` (fast, output via ``capsys``) except where a real
process is needed: Ctrl-C. One TPC-H workload is created per module; tests that write
an experience store work on their own copy of it, so test order does not matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lqo.cli as cli
from lqo.store.experience import ExperienceStore

STORE = "experience.duckdb"
SLOW_SQL = "SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3"  # minutes; only ever interrupted


# --------------------------------------------------------------------------- helpers


def lqo(capsys, *argv) -> tuple[int, str, str]:
    """Run ``lqo ARGV`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything earlier
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def lqo_json(capsys, *argv):
    code, out, err = lqo(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def assert_error(result: tuple[int, str, str], *words: str) -> str:
    """Exit code 2, nothing on stdout, one stderr line ``lqo: error: ...`` naming ``words``."""
    code, out, err = result
    assert code == 2, (code, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lqo: error: "), err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    return lines[0]


def file_state(path: Path) -> tuple:
    """Size, mtime and sha256 of a file: equal before and after means untouched."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, tuple]:
    """Every file under ``root`` with its state (to prove nothing was written)."""
    return {str(p.relative_to(root)): file_state(p) for p in sorted(root.rglob("*")) if p.is_file()}


def store_rows(path: Path, sql: str, params=()) -> list[tuple]:
    store = ExperienceStore.open(path, read_only=True)
    try:
        return store.con.execute(sql, list(params)).fetchall()
    finally:
        store.close()


def count_runs(path: Path) -> int:
    return store_rows(path, "SELECT count(*) FROM runs")[0][0]


def lqo_argv() -> list[str]:
    """The installed ``lqo`` script next to this interpreter, else the same via -c."""
    script = Path(sys.executable).parent / "lqo"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys, lqo.cli; sys.exit(lqo.cli.main())"]


def write_custom_workload(root: Path, database: Path, queries: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "workload.toml").write_text(f'name = "{root.name}"\ndatabase = "{database}"\n')
    for qid, sql in queries.items():
        (root / f"{qid}.sql").write_text(sql + "\n")
    return root


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tpch_wl(tmp_path_factory) -> Path:
    """A TPC-H sf 0.01 workload made by ``lqo workload create`` (never written to by tests)."""
    out = tmp_path_factory.mktemp("cli") / "tpch"
    assert cli.main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(out)]) == 0
    return out


@pytest.fixture
def wl(tpch_wl, tmp_path) -> Path:
    """A private copy of the workload (its manifest names the database relatively)."""
    dst = tmp_path / "tpch"
    shutil.copytree(tpch_wl, dst)
    return dst


@pytest.fixture(scope="module")
def q05(tpch_wl) -> str:
    return (tpch_wl / "q05.sql").read_text()


# --------------------------------------------------------------------------- --help

HELP = [
    ([], ["workload", "explain", "run", "explore"]),
    (["workload"], ["create", "vary", "info"]),
    (["workload", "create"], ["KIND", "--sf", "--out", "--force", "--json"]),
    (["workload", "vary"], ["WORKLOAD", "--per-template", "--seed", "--out", "--force", "--json"]),
    (["workload", "info"], ["WORKLOAD", "--json"]),
    (["explain"], ["sql", "--db", "--no-run", "--json"]),
    (["run"], ["workload", "--plan", "--repeat", "--timeout", "--seed", "--store", "--json"]),
    (["explore"], ["workload", "--plans", "--timeout-factor", "--confirm", "--seed", "--store", "--queries", "--json"]),
]


@pytest.mark.parametrize("argv,words", HELP, ids=[" ".join(a) or "lqo" for a, _ in HELP])
def test_help(capsys, argv, words):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lqo"), out
    for word in words:
        assert word in out, (word, out)


# --------------------------------------------------------------------------- explain


def test_explain_json(capsys, tpch_wl, q05):
    db = tpch_wl / "tpch.duckdb"
    before = tree(tpch_wl)
    payload = lqo_json(capsys, "explain", q05, "--db", db)
    assert payload["forceable"] is True and payload["reason"] is None
    assert payload["sql"].strip() == q05.strip()
    (block,) = payload["blocks"]
    aliases = {r["alias"] for r in block["relations"]}
    assert aliases == {"customer", "orders", "lineitem", "supplier", "nation", "region"}
    assert block["native_tree"] and all(a in block["native_tree"] for a in aliases)
    assert len(block["joins"]) == 5  # six relations
    for j in block["joins"]:
        assert isinstance(j["estimated"], (int, float)) and j["estimated"] > 0, j
        assert isinstance(j["actual"], int) and j["actual"] >= 0, j
        assert j["q_error"] is not None and j["q_error"] >= 1, j
    # the root join produces the rows the aggregate groups: Q5 at sf 0.01 is not empty
    assert any(j["actual"] > 0 for j in block["joins"])
    assert block["placed_inside"] == [] and payload["shared_subplan"] is False
    assert tree(tpch_wl) == before  # explain never writes to the database
    # q18: `o_orderkey IN (SELECT .. HAVING ..)` restricts orders alone: placed inside it
    q18 = (tpch_wl / "q18.sql").read_text()
    (block,) = lqo_json(capsys, "explain", q18, "--db", db, "--no-run")["blocks"]
    assert block["placed_inside"] == ["orders"]


def test_explain_text_and_no_run(capsys, tpch_wl, q05):
    db = tpch_wl / "tpch.duckdb"
    code, out, err = lqo(capsys, "explain", q05, "--db", db)
    assert code == 0, err
    assert "native tree" in out and "forceable: yes" in out and "estimated" in out
    payload = lqo_json(capsys, "explain", q05, "--db", db, "--no-run")
    joins = payload["blocks"][0]["joins"]
    assert joins and all(j["actual"] is None and j["estimated"] for j in joins)


# --------------------------------------------------------------------------- run


def test_run_native_and_random_record_runs(capsys, wl):
    db_before = file_state(wl / "tpch.duckdb")
    native = lqo_json(capsys, "run", wl, "--plan", "native", "--repeat", "2")
    ids = [f"q{i:02d}" for i in range(1, 23)]
    assert [q["id"] for q in native["queries"]] == ids
    assert all(q["plan"] == "native" and q["errors"] == 0 and q["median_ms"] > 0 for q in native["queries"])
    assert native["totals"]["queries"] == 22 and native["totals"]["interrupted"] is False
    store = wl / STORE
    assert count_runs(store) == 22 * 2

    rand = lqo_json(capsys, "run", wl, "--plan", "random", "--seed", "1")
    assert [q["id"] for q in rand["queries"]] == ids
    assert all(q["errors"] == 0 and q["timeouts"] == 0 for q in rand["queries"])
    kinds = {q["plan"] for q in rand["queries"]}
    assert kinds == {"random", "native"}  # queries with nothing to reorder stay native
    assert all(q["note"] for q in rand["queries"] if q["plan"] == "random")
    assert count_runs(store) == 22 * 2 + 22
    assert store_rows(store, "SELECT count(*) FROM queries")[0][0] == 22
    n_random = sum(q["plan"] == "random" for q in rand["queries"])
    assert store_rows(store, "SELECT count(*) FROM plans WHERE kind = 'random'")[0][0] == n_random
    assert store_rows(store, "SELECT count(*) FROM runs WHERE error IS NOT NULL")[0][0] == 0
    assert file_state(wl / "tpch.duckdb") == db_before

    # --store puts the runs elsewhere; text output has a total line
    other = wl.parent / "elsewhere.duckdb"
    code, out, err = lqo(capsys, "run", wl, "--store", other)
    assert code == 0, err
    assert "TOTAL 22 queries" in out
    assert count_runs(other) == 22 and count_runs(store) == 22 * 3


# --------------------------------------------------------------------------- explore

EXPLORED = ["q03", "q05", "q10"]


def test_explore_reports_and_records(capsys, wl):
    db_before = file_state(wl / "tpch.duckdb")
    # One of q05's three random trees runs about 100 ms against native's 4 ms, and slower on
    # a loaded machine: with the default factor (3 x native, floor 0.2 s) it can time out
    # honestly. A factor of 200 puts every limit near 1 s, so a timeout here is the timer.
    argv = ["explore", wl, "--plans", "3", "--confirm", "1", "--timeout-factor", "200",
            "--queries", ",".join(EXPLORED)]
    report = lqo_json(capsys, *argv)
    assert [q["id"] for q in report["queries"]] == EXPLORED
    for q in report["queries"]:
        assert q["native_ms"] > 0 and 0 < q["best_ms"] <= q["native_ms"], q
        assert q["ratio"] <= 1 and q["wrong"] == 0 and q["reason"] is None, q
        assert 1 <= q["plans_tried"] <= 4  # forced native + up to 3 random
    t = report["totals"]
    assert t["queries"] == 3 and t["wrong_results"] == 0 and t["interrupted"] is False
    assert t["best_ms"] <= t["native_ms"]
    # nothing times out, in the report or in the store
    assert [q["timeouts"] for q in report["queries"]] == [0, 0, 0] and t["timeouts"] == 0
    assert t["native_ms"] == pytest.approx(sum(q["native_ms"] for q in report["queries"]), abs=0.01)

    store = wl / STORE
    kinds = store_rows(
        store,
        "SELECT q.query_id, list(DISTINCT p.kind ORDER BY p.kind) FROM plans p JOIN queries q USING (query_key)"
        " GROUP BY ALL ORDER BY 1",
    )
    assert [k[0] for k in kinds] == EXPLORED  # only the queries asked for
    for qid, ks in kinds:
        assert ks == ["forced_native", "native", "random"], (qid, ks)
    # every plan tried has a run; native: warm-up excluded, 3 + confirm runs
    per_query = dict(store_rows(
        store, "SELECT q.query_id, count(*) FROM runs r JOIN queries q USING (query_key) GROUP BY ALL"))
    for q in report["queries"]:
        assert per_query[q["id"]] >= 3 + q["plans_tried"], (q, per_query)
    assert store_rows(store, "SELECT count(*) FROM runs WHERE timed_out")[0][0] == 0
    # the factor reached the harness: each forced run's limit is 200 x the native median of
    # the first runs (the reported native adds the confirm rounds, so only near it)
    for qid, limit in store_rows(
        store, "SELECT q.query_id, min(r.timeout_ms) FROM runs r JOIN plans p USING (plan_key)"
        " JOIN queries q ON q.query_key = p.query_key WHERE p.kind <> 'native' GROUP BY ALL"):
        native = next(q["native_ms"] for q in report["queries"] if q["id"] == qid)
        assert 100 * native < limit < 400 * native, (qid, limit, native)
    runs_1 = count_runs(store)

    # again: appends to the same store, does not fail; text output this time
    code, out, err = lqo(capsys, *argv)
    assert code == 0, err
    assert out.splitlines()[0].split()[:3] == ["query", "native", "ms"]
    assert "TOTAL 3 queries" in out and "wrong results: 0" in out
    assert count_runs(store) > runs_1
    assert store_rows(store, "SELECT count(*) FROM queries")[0][0] == 3
    assert file_state(wl / "tpch.duckdb") == db_before


# --------------------------------------------------------------------------- Ctrl-C


def _wait_for(pred, timeout: float, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def _default_sigint() -> None:
    # A test run started in the background inherits SIGINT ignored (the shell's doing);
    # the command under test must see Ctrl-C as a terminal user's process would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen, timeout: float = 15.0) -> tuple[int | None, str, str]:
    """SIGINT ``proc``; return (exit code or None if it did not exit in time, stdout, stderr)."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err


def test_explore_ctrl_c_keeps_partial_report_and_runs(wl):
    store = wl / STORE
    db_before = file_state(wl / "tpch.duckdb")
    proc = subprocess.Popen(
        [*lqo_argv(), "explore", str(wl), "--plans", "20", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
    )
    try:
        # The store cannot be opened while explore holds it: watch the file instead.
        _wait_for(store.exists, 10)
        _wait_for(lambda: proc.poll() is not None, 1.5)  # let a few queries finish
        assert proc.poll() is None, "explore finished before it could be interrupted"
        code, out, err = _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    # Whatever the exit path, the runs committed before the interrupt are kept.
    assert store.exists()
    runs = count_runs(store)
    assert runs > 0
    assert file_state(wl / "tpch.duckdb") == db_before
    assert code == 130, (code, err)
    report = json.loads(out)  # the partial report
    assert report["totals"]["interrupted"] is True
    assert 0 < report["totals"]["queries"] < 22
    done = [q["id"] for q in report["queries"]]
    assert done == [f"q{i:02d}" for i in range(1, len(done) + 1)]
    recorded = {r[0] for r in store_rows(
        store, "SELECT DISTINCT q.query_id FROM runs JOIN queries q USING (query_key)")}
    assert set(done) <= recorded
    assert runs >= 3 * len(done)  # at least the native runs of every reported query
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["explore", "run", "explain"])
def test_ctrl_c_during_a_query(tpch_wl, tmp_path, command):
    db = tpch_wl / "tpch.duckdb"
    slow = write_custom_workload(tmp_path / "slow", db, {"a": SLOW_SQL})
    argv = {
        "explore": ["explore", str(slow), "--plans", "2", "--json"],
        "run": ["run", str(slow), "--json"],
        "explain": ["explain", SLOW_SQL, "--db", str(db), "--json"],
    }[command]
    proc = subprocess.Popen([*lqo_argv(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    try:
        if command == "explain":  # no store to watch: wait for DuckDB's worker threads
            _wait_for(lambda: len(os.listdir(f"/proc/{proc.pid}/task")) > 1 if os.path.isdir("/proc") else False, 10)
        else:
            _wait_for((slow / STORE).exists, 10)
        time.sleep(1.0)  # now inside the (endless) query
        assert proc.poll() is None
        code, out, err = _interrupt(proc, timeout=4)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code is not None, "did not exit within 4 s of Ctrl-C"
    assert code == 130, (code, err[-2000:])
    assert "Traceback" not in err
    if command != "explain":
        report = json.loads(out)
        assert report["totals"]["interrupted"] is True
        assert count_runs(slow / STORE) == 0  # the interrupted run is not recorded


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_workloads(tpch_wl, tmp_path_factory) -> dict[str, Path]:
    """Workloads that must be refused, by what is wrong with them."""
    root = tmp_path_factory.mktemp("bad")
    db = tpch_wl / "tpch.duckdb"
    out = {"missing": root / "nosuch"}
    mal = root / "malformed"
    mal.mkdir()
    (mal / "workload.toml").write_text('name = "unterminated\ndatabase = "x.duckdb"\n')
    (mal / "a.sql").write_text("SELECT 1\n")
    out["malformed"] = mal
    nodb = write_custom_workload(root / "nodb", root / "gone.duckdb", {"a": "SELECT 1"})
    out["nodb"] = nodb
    out["invalid_sql"] = write_custom_workload(root / "invalid_sql", db, {"a": "SELEC 1"})
    out["delete"] = write_custom_workload(root / "delete", db, {"a": "DELETE FROM nation"})
    out["create"] = write_custom_workload(root / "create", db, {"a": "CREATE TABLE x(a int)"})
    return out


BAD_WORKLOAD_WORDS = {
    "missing": ["workload directory not found", "nosuch"],
    "malformed": ["malformed manifest", "workload.toml"],
    "nodb": ["database file not found", "gone.duckdb"],
    "invalid_sql": ["a.sql", "not valid sql"],
    "delete": ["a.sql", "not a select", "delete"],
    "create": ["a.sql", "not a select", "create"],
}

WORKLOAD_COMMANDS = {
    "run": lambda w, tmp: ["run", w],
    "run-random": lambda w, tmp: ["run", w, "--plan", "random"],
    "explore": lambda w, tmp: ["explore", w, "--plans", "1", "--confirm", "1"],
    "info": lambda w, tmp: ["workload", "info", w],
    "vary": lambda w, tmp: ["workload", "vary", w, "--per-template", "2", "--out", tmp / "varied"],
}


@pytest.mark.parametrize("bad", list(BAD_WORKLOAD_WORDS))
@pytest.mark.parametrize("command", list(WORKLOAD_COMMANDS))
def test_bad_workload(capsys, bad_workloads, tmp_path, bad, command):
    w = bad_workloads[bad]
    before = tree(w) if w.exists() else None
    assert_error(lqo(capsys, *WORKLOAD_COMMANDS[command](w, tmp_path)), *BAD_WORKLOAD_WORDS[bad])
    assert (tree(w) if w.exists() else None) == before  # no experience.duckdb, nothing else
    assert list(tmp_path.iterdir()) == []  # vary's --out not created


BAD_OPTIONS = [
    (["run", "{w}", "--repeat", "0"], ["--repeat"]),
    (["run", "{w}", "--timeout", "0"], ["--timeout"]),
    (["explore", "{w}", "--timeout-factor", "0.5"], ["--timeout-factor"]),
    (["explore", "{w}", "--plans", "-1"], ["--plans"]),
    (["explore", "{w}", "--confirm", "0"], ["--confirm"]),
    (["explore", "{w}", "--queries", "nosuchquery"], ["nosuchquery"]),
    (["explore", "{w}", "--queries", "q01,nosuchquery"], ["nosuchquery"]),
    (["workload", "vary", "{w}", "--per-template", "0", "--out", "{tmp}/v"], ["--per-template"]),
]


@pytest.mark.parametrize("argv,words", BAD_OPTIONS,
                         ids=[" ".join(a for a in argv if a not in ("{w}", "{tmp}/v", "--out")) for argv, _ in BAD_OPTIONS])
def test_bad_options(capsys, tpch_wl, tmp_path, argv, words):
    before = tree(tpch_wl)
    args = [a.format(w=tpch_wl, tmp=tmp_path) for a in argv]
    assert_error(lqo(capsys, *args), *words)
    assert tree(tpch_wl) == before  # in particular no experience.duckdb
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv,words", [
    (["tpcx", "--sf", "0.01"], ["unknown workload kind", "tpcx"]),
    (["tpch", "--sf", "0"], ["scale factor"]),
    (["tpch", "--sf", "-1"], ["scale factor"]),
], ids=["unknown-kind", "sf-0", "sf-negative"])
def test_bad_workload_create(capsys, tmp_path, argv, words):
    out = tmp_path / "sub" / "out"
    assert_error(lqo(capsys, "workload", "create", *argv, "--out", out), *words)
    assert list(tmp_path.iterdir()) == []  # no out dir, no parent, no staging dir


@pytest.mark.parametrize("sql,words", [
    ("SELEC 1", ["invalid sql"]),
    ("SELECT count(*) FROM nosuchtable", ["nosuchtable"]),
    ("SELECT count(*) FROM nation n, nosuchtable t WHERE n.n_nationkey = t.k", ["nosuchtable"]),
    ("SELECT nosuchcol FROM nation", ["nosuchcol"]),
    ("SELECT count(*) FROM nation, region WHERE n_nosuch = r_regionkey", ["n_nosuch"]),
    ("DELETE FROM nation", ["not a select", "delete"]),
    ("CREATE TABLE x(a int)", ["not a select", "create"]),
    ("SELECT 1; SELECT 2", ["one sql statement"]),
    ("", ["one sql statement"]),
], ids=["invalid", "unknown-table", "unknown-table-join", "unknown-column", "unknown-column-join",
        "delete", "create", "two-statements", "empty"])
@pytest.mark.parametrize("no_run", [False, True], ids=["run", "no-run"])
def test_explain_bad_sql(capsys, tpch_wl, sql, words, no_run):
    db = tpch_wl / "tpch.duckdb"
    before = tree(tpch_wl)
    assert_error(lqo(capsys, "explain", sql, "--db", db, *(["--no-run"] if no_run else [])), *words)
    assert tree(tpch_wl) == before
    if sql.startswith(("DELETE", "CREATE")):
        # and the statement surely did not run
        assert lqo_json(capsys, "explain", "SELECT count(*) FROM nation n, region r WHERE n.n_regionkey = r.r_regionkey",
                        "--db", db)["blocks"][0]["joins"][0]["actual"] == 25


def test_explain_missing_db(capsys, tmp_path):
    missing = tmp_path / "nosuch.duckdb"
    assert_error(lqo(capsys, "explain", "SELECT 1", "--db", missing), "database file not found", "nosuch.duckdb")
    assert list(tmp_path.iterdir()) == []  # not created by opening it


@pytest.mark.parametrize("what,sql", [
    ("unknown table", "SELECT count(*) FROM nation n, nosuchtable t WHERE n.n_nationkey = t.k"),
    ("unknown column", "SELECT count(*) FROM nation, region WHERE n_nosuch = r_regionkey"),
], ids=["unknown-table", "unknown-column"])
@pytest.mark.parametrize("command", ["run", "run-random", "explore"])
def test_workload_query_unknown_name(capsys, tpch_wl, tmp_path, what, sql, command):
    w = write_custom_workload(tmp_path / "w", tpch_wl / "tpch.duckdb", {"a": sql})
    before = tree(w)
    assert_error(lqo(capsys, *WORKLOAD_COMMANDS[command](w, tmp_path)), "nosuch")
    assert tree(w) == before


def test_version_names_lqo_and_duckdb(capsys):
    import duckdb

    import lqo
    from lqo.cli import main as cli_main

    with pytest.raises(SystemExit) as stop:
        cli_main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"lqo {lqo.__version__} (duckdb {duckdb.__version__})"
