"""``lqo explore/tune --ray``: the same runs as the sequential path, faults, bad clusters.

A local Ray cluster (2 CPUs, no dashboard) for the module; 2 executors on its one node.
Skipped, with the reason, only when the Ray extra is not installed.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

ray = pytest.importorskip("ray", reason="the Ray extra is not installed: pip install -e '.[ray]'")

from conftest import tpc_queries  # noqa: E402
from lqo.book.book import PlanBook  # noqa: E402
from lqo.tune.inputs import TuneConfig  # noqa: E402
from lqo.tune.trials import COMBINED  # noqa: E402
from lqo.tune.tuner import Tuner  # noqa: E402
from lqo.cli import main  # noqa: E402
from lqo.distributed.executor import database_fingerprint  # noqa: E402
from lqo.distributed.pool import ExecutorPool  # noqa: E402
from lqo.engine.db import connect_read_only  # noqa: E402
from lqo.errors import ClusterError  # noqa: E402
from lqo.evaluate.explore import ExploreConfig, explore_workload  # noqa: E402
from lqo.workloads.workload import Workload  # noqa: E402

LQO = [sys.executable, "-c", "import sys, lqo.cli; sys.exit(lqo.cli.main())"]
QUERIES = ["q03", "q05", "q07", "q10"]
# A random tree may run tens of times native at sf 0.01 (one of q05's runs 100 ms against
# 4 ms): a timeout factor of 200 keeps a loaded machine from timing out one side only.
CONFIG = ExploreConfig(plans=3, confirm=2, seed=1, timeout_factor=200.0)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def wl(tpch_db, tmp_path_factory) -> Workload:
    """Four TPC-H joins on the session's sf 0.01 database."""
    root = tmp_path_factory.mktemp("ray") / "w"
    root.mkdir()
    (root / "workload.toml").write_text(f'name = "w"\ndatabase = "{tpch_db}"\n')
    texts = tpc_queries("tpch")
    for q in QUERIES:
        (root / f"{q}.sql").write_text(texts[q])
    return Workload.load(root)


def rows(store: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def explored(store: Path) -> dict:
    """Per query: the plans (kind, key) it ran, its run count, its completed results' fingerprints."""
    out = {}
    for qid, plans, n, fps in rows(store, """
            SELECT q.query_id, list(DISTINCT p.kind || ':' || p.plan_key ORDER BY p.kind || ':' || p.plan_key),
                   count(*), list(DISTINCT r.fingerprint ORDER BY r.fingerprint) FILTER (WHERE r.fingerprint IS NOT NULL)
            FROM runs r JOIN plans p USING (plan_key) JOIN queries q ON q.query_key = r.query_key
            GROUP BY ALL"""):
        out[qid] = (plans, n, fps)
    return out


def assert_whole(store: Path, n_tasks: int) -> None:
    """One task row per task, every run placed once, each task's runs all there."""
    tasks = rows(store, "SELECT task_id, n_runs FROM tasks")
    assert len(tasks) == n_tasks == len({t for t, _ in tasks})
    placed = dict(rows(store, "SELECT task_id, count(*) FROM run_nodes GROUP BY ALL"))
    assert placed == {t: n for t, n in tasks if n}
    assert rows(store, "SELECT count(*), count(DISTINCT run_id) FROM runs")[0] == (sum(n for _, n in tasks),) * 2
    assert rows(store, "SELECT count(*) FROM runs WHERE run_id NOT IN (SELECT run_id FROM run_nodes)")[0][0] == 0


def test_explore_on_ray_runs_what_the_sequential_path_runs(cluster, wl, tmp_path):
    seq = explore_workload(wl, CONFIG, store_path=tmp_path / "seq.duckdb")
    with ExecutorPool(wl.database, slots=2) as pool:
        par = explore_workload(wl, CONFIG, store_path=tmp_path / "ray.duckdb", pool=pool)
    assert [q.id for q in par.queries] == QUERIES  # workload order, whatever order tasks finished in
    for a, b in zip(seq.queries, par.queries):
        assert (a.plans_tried, a.wrong, a.timeouts, a.reason, a.error) == (b.plans_tried, b.wrong, b.timeouts, b.reason, b.error)
        assert b.plans_tried == 4 and b.best_ms <= b.native_ms
    s, r = explored(tmp_path / "seq.duckdb"), explored(tmp_path / "ray.duckdb")
    assert s == r  # same plans, same number of runs, same results
    assert all(len(fps) == 1 for _, _, fps in r.values())  # every completed run returned native's result
    assert_whole(tmp_path / "ray.duckdb", len(QUERIES))
    [node] = par.nodes
    assert node["executors"] == 2 and node["tasks"] == len(QUERIES) and node["retries"] == 0
    assert node["runs"] == sum(n for _, n, _ in r.values())
    # the driver recorded which node (and executor) ran each query
    assert rows(tmp_path / "ray.duckdb", "SELECT DISTINCT node FROM tasks") == [(node["node"],)]


def test_executor_killed_mid_task_is_restarted_and_its_task_recorded_once(cluster, wl, tmp_path):
    fault = tmp_path / "crash-once"
    logs: list[str] = []
    with ExecutorPool(wl.database, slots=2, log=logs.append, executor_options={"fault_file": str(fault)}) as pool:
        report = explore_workload(wl, CONFIG, store_path=tmp_path / "x.duckdb", pool=pool)
    assert fault.exists()  # an executor did die
    # Once: the restarted executor starts slowly (FAULT_RESTART_S), and nothing may be sent
    # to it before it answers again, or that task fails too ("the actor is restarting")
    # and counts as a second death.
    assert sum(n["retries"] for n in report.nodes) == 1 and any("sent again" in line for line in logs), logs
    assert sum("died during" in line for line in logs) == 1 and not any("twice" in line for line in logs), logs
    assert [q.id for q in report.queries] == QUERIES and all(q.error is None for q in report.queries)
    assert all(q.plans_tried == 4 for q in report.queries)
    assert_whole(tmp_path / "x.duckdb", len(QUERIES))
    assert rows(tmp_path / "x.duckdb", "SELECT max(attempts) FROM tasks")[0][0] == 2
    # the complete work: each query as many runs as a sequential exploration makes
    per_query = dict(rows(tmp_path / "x.duckdb", "SELECT q.query_id, count(*) FROM runs r JOIN queries q USING (query_key) GROUP BY ALL"))
    assert per_query == {q: 3 + 4 + 2 * CONFIG.confirm for q in QUERIES}


def test_a_task_is_written_whole_and_once(cluster, wl, tmp_path):
    from lqo.evaluate.explore import explore_task
    from lqo.store.experience import ExperienceStore
    from lqo.store.journal import replay
    from lqo.sql.catalog import Catalog

    con = connect_read_only(wl.database)
    try:
        result, journal = explore_task(con, Catalog.from_connection(con), wl, wl.query("q03"), CONFIG, set())
    finally:
        con.close()
    with ExperienceStore.open(tmp_path / "s.duckdb") as store:
        # a task that fails half-way through its replay leaves nothing behind
        broken = type(journal)(ops=journal.ops + [("drop", ())])
        with pytest.raises(ValueError, match="unknown journal operation"):
            replay(store, broken, "t0", "n1")
        assert store.con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        assert not store.task_recorded("t0")
        first = replay(store, journal, "t1", "n1")
        assert first and replay(store, journal, "t1", "n1") is None
    assert rows(tmp_path / "s.duckdb", "SELECT count(*) FROM runs")[0][0] == len(first) == journal.n_runs
    assert rows(tmp_path / "s.duckdb", "SELECT count(*) FROM queries")[0][0] == 1


def test_tune_on_ray(cluster, wl, tmp_path):
    assert main(["workload", "vary", str(wl.root), "--per-template", "3", "--seed", "3", "--out", str(tmp_path / "v"), "--json"]) == 0
    varied = Workload.load(tmp_path / "v")
    varied = varied.subset(q.id for q in varied if q.template in ("q03", "q10"))
    # A budget that does not run out: every candidate is tried in both runs, however slow the
    # machine (2 minutes did not cover a loaded one: the two runs screened different sets).
    config = dict(budget_min=120, tune_instances=2, random_trees=1, moves=2)
    seq = Tuner(varied, tmp_path / "seq", TuneConfig(**config), log=lambda _: None).run()
    with ExecutorPool(varied.database, slots=2) as pool:
        par = Tuner(varied, tmp_path / "ray", TuneConfig(**config), log=lambda _: None, pool=pool).run()
    assert not par.interrupted and par.templates == seq.templates == 2
    a, b = PlanBook.load(tmp_path / "seq"), PlanBook.load(tmp_path / "ray")
    # every candidate tried in both, the same ones (combinations aside: which are proposed
    # depends on the timings); native baselines the same results
    def planned(book):
        return {k: sorted(c for c in e.screened if e.candidates[c].origin not in COMBINED) for k, e in book.entries.items()}

    assert planned(a) == planned(b)
    assert {k: e.fingerprints for k, e in a.entries.items()} == {k: e.fingerprints for k, e in b.entries.items()}
    [node] = par.nodes
    for e in b.entries.values():
        assert all(v.node == node["node"] for v in e.verdicts.values())  # paired rounds: one node each
    store = tmp_path / "ray" / "experience.duckdb"
    tasks = 2 + par.screened + par.retested  # a baseline per template, a task per candidate and put-off test
    assert_whole(store, tasks)
    assert node["tasks"] == tasks and node["runs"] == rows(store, "SELECT count(*) FROM runs")[0][0]


def test_cli_json_has_per_node_counts(cluster, wl, tmp_path, capsys):
    capsys.readouterr()
    argv = ["explore", str(wl.root), "--plans", "1", "--confirm", "1", "--store", str(tmp_path / "s.duckdb"), "--json"]
    assert main(argv + ["--ray", "--ray-slots", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    [node] = out["nodes"]
    assert node["executors"] == 2 and node["tasks"] == len(QUERIES) and node["runs"] > 0
    assert [q["id"] for q in out["queries"]] == QUERIES
    assert main(argv[:-1] + ["--ray"]) == 0  # text: one line per node after the totals
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"node {node['node']}")


def test_node_with_another_database_is_refused(cluster, tpch_db, tmp_path):
    with connect_read_only(tpch_db) as con:
        reference = database_fingerprint(con)
    for change, words in [("DELETE FROM nation WHERE n_nationkey = 0", r"table nation has 24 rows, the driver 25"),
                          ("CREATE TABLE extra(a INTEGER)", r"schema \w+ is not the driver.s \w+ \(extra tables: extra\)")]:
        other = tmp_path / f"other{len(words)}.duckdb"  # what another node would have at that path
        shutil.copy(tpch_db, other)
        con = duckdb.connect(str(other))
        con.execute(change)
        con.close()
        with pytest.raises(ClusterError, match=r"refused: its database .* differs from the driver's: " + words):
            ExecutorPool(other, slots=1, reference=reference)
    with pytest.raises(ClusterError, match="cannot open the database"):
        ExecutorPool(tmp_path / "missing.duckdb", slots=1, reference=reference)


@pytest.mark.parametrize("address,words", [
    ("10.255.255.1:1", "Ray cluster at 10.255.255.1:1"),  # nothing there (or something that is not Ray)
    ("127.0.0.1:1", "cannot reach the Ray cluster at 127.0.0.1:1"),  # refused
    ("no-port", "bad Ray address 'no-port'"),
])
def test_bad_address_is_one_line_and_exit_2(wl, tmp_path, address, words):
    t0 = time.monotonic()
    proc = subprocess.run(LQO + ["explore", str(wl.root), "--store", str(tmp_path / "s.duckdb"), "--ray", address],
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 25
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lqo: error: ") and words in lines[0], proc.stderr
    assert not (tmp_path / "s.duckdb").exists()


def test_without_ray_flag_ray_is_not_imported(wl, tmp_path):
    code = ("import sys, lqo.cli; rc = lqo.cli.main(sys.argv[1:]); "
            "print(rc, 'ray' in sys.modules, 'lqo.distributed.pool' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, "explore", str(wl.root), "--plans", "1", "--confirm", "1",
                           "--queries", "q03", "--store", str(tmp_path / "s.duckdb"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "0 False False", proc.stderr
    assert Counter(r[0] for r in rows(tmp_path / "s.duckdb", "SELECT table_name FROM duckdb_tables()"))["tasks"] == 0


def test_ctrl_c_stops_the_executors_and_keeps_what_was_recorded(tpch_db, tmp_path):
    import fcntl
    import os
    import pty
    import re
    import signal
    import struct
    import termios
    import threading

    root = tmp_path / "all"
    root.mkdir()
    (root / "workload.toml").write_text(f'name = "all"\ndatabase = "{tpch_db}"\n')
    for q, sql in tpc_queries("tpch").items():
        (root / f"{q}.sql").write_text(sql)
    store = tmp_path / "s.duckdb"
    # stderr on a terminal: the progress bar counts each query once the driver has recorded
    # it, so the signal goes out right after the first (not after a sleep: on a loaded
    # machine the first query may take many seconds, and 21 more cannot finish meanwhile).
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    proc = subprocess.Popen(LQO + ["explore", str(root), "--plans", "20", "--store", str(store), "--json",
                                   "--ray", "--ray-slots", "2"],
                            stdout=subprocess.PIPE, stderr=slave, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    chunks: list[bytes] = []

    def read_terminal() -> None:  # until the child is gone; a full terminal would block it
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: no process has the terminal open any more
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        end = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < end:
            if re.search(rb"\b[1-9][0-9]*/22\b", b"".join(chunks)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "explore finished before it could be interrupted: " + b"".join(chunks).decode()
        assert time.monotonic() < end, "no query recorded in 300 s"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        reader.join(timeout=10)
        os.close(master)
    err = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["totals"]["interrupted"] is True and 0 < report["totals"]["queries"] < 22
    assert_whole(store, report["totals"]["queries"])  # every finished query recorded whole, nothing else
    assert "Traceback" not in err
