"""The query scheduler: streams, simulator, policies, real executor, learned policy, CLI.

Real runs use sf 0.01 TPC-H / TPC-DS workloads in worker processes; only consistency is
asserted about their timings (never speed). The simulator is checked against schedules
computed by hand.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace
from fractions import Fraction as F
from pathlib import Path

import duckdb
import pytest

import lqo.cli as cli
from lqo.errors import LqoError
from lqo.engine.run_result import fingerprint_rows
from lqo.engine.settings import FORCE_DISABLED_OPTIMIZERS
from lqo.optimized import Optimized
from lqo.sched.workers import Workers
from lqo.sched.jobs import Job, PlanGraph, QueryFeatures, build_jobs
from lqo.sched.gnn_policy import LearnedPolicy
from lqo.sched.policies import get_policy
from lqo.sched.policy import Assignment, Policy, PolicyError
from lqo.sched.scheduler import Scheduler
from lqo.sched.simulator import SimConfig, simulate, speed
from lqo.sched.stream import StreamError, StreamQuery, make_stream, parse_arrivals
from lqo.sched.train_policy import RecipeError, SchedRecipe, train_policy
from lqo.workloads.workload import Workload, write_workload

from conftest import tpc_queries

SLOW_SQL = "SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3"  # minutes; only ever interrupted
TPCDS_IDS = ["q03", "q07", "q19", "q42", "q52", "q55", "q96"]


# --------------------------------------------------------------------------- helpers


def job(idx: int, arrival: float, lat: dict[int, float], key: str | None = None) -> Job:
    """A synthetic job: latencies in seconds per thread count, a tiny plan graph."""
    q = StreamQuery(idx, "syn", key or f"j{idx}", key or f"j{idx}", f"SELECT {idx}", "/nonexistent.duckdb", arrival)
    g = PlanGraph([1, 3, 2, 2], [1.0, 5.0, 4.0, 3.0], [(1, 0), (2, 1), (3, 1)])
    ms = {t: s * 1000 for t, s in lat.items()}
    return Job(q, QueryFeatures(q.key, est_cost=1.0, graph=g, lat_ms=ms, known_ms=ms[min(ms)], known_source="measured"))


def ends(result) -> dict[int, float]:
    return {r.idx: r.end_s for r in result.records}


def lqo(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(result, *words) -> None:
    code, out, err = result
    assert code == 2 and out == "", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lqo: error: "), err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


def tree(root: Path) -> dict[str, tuple]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workloads(tmp_path_factory, tpch_db, tpcds_db) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sched")
    h, ds = root / "tpch", root / "tpcds"
    h.mkdir()
    ds.mkdir()
    write_workload(h, "tpch", tpch_db, [(k, k, v) for k, v in tpc_queries("tpch").items()], kind="tpch")
    dsq = tpc_queries("tpcds")
    write_workload(ds, "tpcds", tpcds_db, [(k, k, dsq[k]) for k in TPCDS_IDS], kind="tpcds")
    return h, ds


def expected_fingerprints(stream) -> dict[str, str]:
    out = {}
    for q in stream:
        if q.key not in out:
            con = duckdb.connect(q.database, read_only=True)
            out[q.key] = fingerprint_rows(con.execute(q.sql).fetchall())
            con.close()
    return out


# --------------------------------------------------------------------------- streams


def test_arrivals_specs():
    assert parse_arrivals("batch").kind == "batch"
    assert parse_arrivals("poisson:2.5").rate == 2.5
    assert parse_arrivals("util:0.7").util == 0.7
    for bad in ["", "poisson", "poisson:-1", "poisson:x", "util:0", "fifo", "poisson:inf"]:
        with pytest.raises(StreamError):
            parse_arrivals(bad)


def test_streams_are_seeded_and_mix_databases(workloads):
    h, ds = (Workload.load(p) for p in workloads)
    a = make_stream([h, ds], n=40, arrivals="poisson:5", seed=3)
    b = make_stream([h, ds], n=40, arrivals="poisson:5", seed=3)
    c = make_stream([h, ds], n=40, arrivals="batch", seed=3)
    assert [(q.key, q.arrival_s) for q in a] == [(q.key, q.arrival_s) for q in b]
    assert [q.key for q in a] == [q.key for q in c]  # same sample whatever the arrivals
    assert a.queries[0].arrival_s == 0 and all(x.arrival_s <= y.arrival_s for x, y in zip(a.queries, a.queries[1:]))
    assert {q.arrival_s for q in c} == {0.0}
    assert {q.database for q in a} == {str(h.database), str(ds.database)}
    assert len({q.key for q in make_stream([h, ds], n=29, seed=1)}) == 29  # no repeats before the pool is used
    assert [q.key for q in make_stream([h, ds], n=40, seed=4)] != [q.key for q in a]


# --------------------------------------------------------------------------- simulator


def test_simulator_reproduces_hand_computed_fifo_schedule():
    # 2 workers x 1 thread on 2 cores: no sharing, each job runs at its measured speed.
    # t=0 A,B start; 0.5 C arrives, waits; 1 B ends, C starts; 3 C ends, D arrives and
    # starts; 4 A and D end together.
    jobs = [job(0, 0.0, {1: 4.0}), job(1, 0.0, {1: 1.0}), job(2, 0.5, {1: 2.0}), job(3, 3.0, {1: 1.0})]
    res = simulate(jobs, get_policy("fifo"), workers=2, config=SimConfig(cores=2))
    assert ends(res) == pytest.approx({0: 4.0, 1: 1.0, 2: 3.0, 3: 4.0}, abs=1e-12)
    assert {r.idx: r.start_s for r in res.records} == pytest.approx({0: 0.0, 1: 0.0, 2: 1.0, 3: 3.0})
    assert [r.worker for r in sorted(res.records, key=lambda r: r.idx)] == [0, 1, 1, 1]
    assert res.mean_s == pytest.approx((4 + 1 + 2.5 + 1) / 4) and res.makespan_s == pytest.approx(4.0)


def test_simulator_reproduces_hand_computed_processor_sharing():
    # "all": every job runs on arrival with 2 threads; parallelism p = L1/L2 in [1, 2];
    # speed = min(1, 2 / sum p). A: L2=2 (p=2), B: L2=1 (p=1), C arrives at 0.5: L2=1 (p=2).
    #   [0, .5): s=2/3 -> A 5/3 left, B 2/3 left; then s=2/5: B ends at .5 + 5/3 = 13/6,
    #   A 1 left, C 1/3 left; s=1/2: C ends at 13/6 + 2/3 = 17/6, A 2/3 left; alone: 7/2.
    jobs = [job(0, 0.0, {1: 4.0, 2: 2.0}), job(1, 0.0, {1: 1.0, 2: 1.0}), job(2, 0.5, {1: 2.0, 2: 1.0})]
    res = simulate(jobs, get_policy("all"), workers=2, config=SimConfig(cores=2))
    expect = {0: F(7, 2), 1: F(13, 6), 2: F(17, 6)}
    assert ends(res) == pytest.approx({k: float(v) for k, v in expect.items()}, abs=1e-12)
    assert all(r.threads == 2 and r.start_s == r.arrival_s for r in res.records)

    # Interference: two 1-thread jobs together run at 1 / (1 + 0.5); B ends at 2.25, A
    # then has 1.5 s of work left alone: ends at 3.75.
    res = simulate([job(0, 0.0, {1: 3.0}), job(1, 0.0, {1: 1.5})], get_policy("fifo"), 2, SimConfig(2, 0.5))
    assert ends(res) == pytest.approx({0: 3.75, 1: 2.25}, abs=1e-12)
    assert speed([1.0, 1.0], 2, 0.5) == pytest.approx(2 / 3)


def test_simulator_sjf_policies_and_thread_budget():
    # One worker on 2 cores: baselines give each query 2 threads (cores // workers).
    jobs = [job(0, 0.0, {1: 4.0, 2: 2.0}), job(1, 0.0, {1: 2.0, 2: 1.0}), job(2, 0.0, {1: 1.0, 2: 0.5})]
    fifo = simulate(jobs, get_policy("fifo"), workers=1, config=SimConfig(2))
    oracle = simulate(jobs, get_policy("oracle"), workers=1, config=SimConfig(2))
    assert ends(fifo) == pytest.approx({0: 2.0, 1: 3.0, 2: 3.5})
    assert ends(oracle) == pytest.approx({2: 0.5, 1: 1.5, 0: 3.5})
    assert {r.threads for r in oracle.records} == {2}
    for j, est in zip(jobs, [30.0, 10.0, 20.0]):
        j.f.est_cost = est
    assert ends(simulate(jobs, get_policy("sjf-est"), 1, SimConfig(2))) == pytest.approx({1: 1.0, 2: 1.5, 0: 3.5})


# --------------------------------------------------------------------------- learned policy


def skewed_pool() -> list[Job]:
    lats = [(0.05, 0.03), (0.1, 0.06), (0.2, 0.11), (1.0, 0.55), (3.0, 1.6), (6.0, 3.2)]
    return [job(i, 0.0, {1: a, 2: b}, key=f"q{i}") for i, (a, b) in enumerate(lats)]


class RandomOrder(Policy):
    """A seeded random waiting query, baseline threads: what "no idea" scores."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, waiting, load):
        return Assignment(self.rng.randrange(len(waiting)), load.default_threads)


def briefly_trained(pool: list[Job], imitation: int, reinforce: int, seed: int = 0, sjf_prior: bool = False):
    recipe = SchedRecipe(workloads=["x"], seed=seed, time_budget_min=1.0)
    recipe.stream.queries, recipe.stream.arrivals = 12, ["batch"]
    recipe.imitation.episodes, recipe.reinforce.episodes, recipe.reinforce.rollouts = imitation, reinforce, 2
    recipe.eval.streams, recipe.eval.every = 2, 20
    recipe.model.sjf_prior = sjf_prior
    return train_policy(pool, recipe, SimConfig(2))


def test_briefly_trained_learned_policy_reaches_the_oracle_in_simulator(tmp_path):
    pool = skewed_pool()
    # Skewed batch, longest first: FIFO runs the long ones first.
    batch = [Job(replace(j.q, idx=i, arrival_s=0.0), j.f)
             for i, j in enumerate(sorted(pool * 2, key=lambda j: -j.f.lat_ms[1]))]

    def mean_s(policy) -> float:
        return simulate(batch, policy, 2, SimConfig(2)).mean_s

    oracle = mean_s(get_policy("oracle"))
    bar = 1.1 * oracle
    # The bar means something: ordering alone does not get there by luck.
    rand = [mean_s(RandomOrder(s)) for s in range(5)]
    assert min(rand) > bar, [r / oracle for r in rand]

    policy, history = briefly_trained(pool, imitation=40, reinforce=6)
    untrained, _ = briefly_trained(pool, imitation=0, reinforce=0)  # same seed: the same initial network
    # train_policy returns the best state its evaluations saw.
    assert policy.meta["best_vs_oracle"] == min(r["vs_oracle"] for r in history), history
    learned = simulate(batch, policy, 2, SimConfig(2))
    ratios = {"trained": learned.mean_s / oracle, "untrained": mean_s(untrained) / oracle,
              "random": sum(rand) / len(rand) / oracle}
    assert learned.mean_s <= bar, ratios
    assert learned.mean_s < 0.8 * mean_s(untrained), ratios  # training, not the initialisation, got it there
    # With the SJF prior (the default) the untrained policy already orders shortest first.
    prior, _ = briefly_trained(pool, imitation=0, reinforce=0, sjf_prior=True)
    assert mean_s(prior) <= bar, mean_s(prior) / oracle

    # Checkpoint: weights + JSON metadata, same decisions after a round trip.
    path = policy.save(tmp_path / "s.lqo")
    again = LearnedPolicy.load(path)
    assert again.thread_options == policy.thread_options
    assert ends(simulate(batch, again, 2, SimConfig(2))) == ends(learned)
    with pytest.raises(LqoError, match="not a learned scheduler|not an lqo model"):
        (tmp_path / "junk.lqo").write_bytes(b"junk" * 10)
        LearnedPolicy.load(tmp_path / "junk.lqo")


# --------------------------------------------------------------------------- real executor


class FakeModel:
    """Stands in for the optimizer: predicted latency = length of the SQL text; the
    "optimized" plan is DuckDB's native tree, forced (a real forced run, same result)."""

    def predict_latency_ms(self, sql: str) -> float:
        return float(len(sql))

    def optimize(self, sql, con):
        from lqo.trees.query import prepare

        pq = prepare(sql, con)
        if not pq.forceable or not pq.free_blocks:
            return Optimized.planned(sql, None, None, 0.0, fallback="not forceable")
        return Optimized.planned(sql, None, None, 0.0, forced_sql=pq.render(pq.native_plan))


@pytest.mark.parametrize("policy,arrivals,workers,plan", [
    ("fifo", "poisson:40", 2, "native"), ("all", "batch", 2, "native"), ("sjf-model", "batch", 3, "native"),
    ("sjf-est", "batch", 2, "optimized"), ("all", "batch", 2, "optimized"),
])
def test_real_executor_runs_every_query_consistently(workloads, policy, arrivals, workers, plan):
    h, ds = (Workload.load(p) for p in workloads)
    sched = Scheduler(policy, workers=workers, cores=2, model=FakeModel(), plan=plan, timeout_s=60)
    stream = sched.make_stream([h, ds], n=14, arrivals=arrivals, seed=7)
    res = sched.run(stream)
    if plan == "optimized":
        assert any(r.forced for r in res.records) and not all(r.forced for r in res.records)
    assert res.mode == "real" and res.policy == policy and len(res.records) == len(stream)
    assert sorted(r.idx for r in res.records) == list(range(len(stream)))
    want = expected_fingerprints(stream)
    by_idx = {q.idx: q for q in stream}
    for r in res.records:
        q = by_idx[r.idx]
        assert r.ok, r.error
        assert r.arrival_s == q.arrival_s and r.database == q.database
        assert r.end_s >= r.start_s >= r.dispatch_s >= r.arrival_s, r
        assert r.fingerprint == want[q.key] and r.rows is not None
        assert r.threads == (2 if policy == "all" else 1)
    if policy != "all":
        assert {r.worker for r in res.records} <= set(range(workers))
        # a worker runs one query at a time
        for w in range(workers):
            spans = sorted((r.start_s, r.end_s) for r in res.records if r.worker == w)
            assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:]))
    assert res.makespan_s >= max(r.latency_s for r in res.records)
    assert res.p50_s <= res.p95_s <= max(r.completion_s for r in res.records)


def _from_book(sql: str, forced: bool, disabled: tuple[str, ...]) -> Optimized:
    """A book's decision for ``sql`` run as its own text: forced or not, with ``disabled`` rules."""
    return (Optimized.from_book(sql, sql, None, 0.0, disabled=disabled) if forced
            else Optimized.as_written(sql, None, 0.0, disabled=disabled, source="book"))


class DecisionModel:
    """Stands in for a tuned model: plans each query (by its text) to the decision given,
    (forced, disabled rules), as a plan book serves it: the text as written."""

    def __init__(self, decisions: dict[str, tuple[bool, tuple[str, ...]]]) -> None:
        self.decisions = decisions

    def optimize(self, sql, con):
        forced, disabled = self.decisions[sql.strip()]  # a workload file ends its text with a newline
        return _from_book(sql, forced, disabled)


SEEN_RULES = "SELECT current_setting('disabled_optimizers') AS s, count(*) AS n FROM {}"


@pytest.mark.parametrize("policy", ["fifo", "all"])
def test_real_executor_runs_each_decision_under_its_rules(tmp_path, tpch_db, tpcds_db, policy):
    """Regression: a setting arm (a rule disabled, no tree forced) ran as plain native,
    since the stream kept only a forced flag. Each query reports the rules it ran with,
    on a dedicated worker (fifo) and on the shared worker of its plan mode (all), on
    both databases of the stream (a worker holds one DuckDB instance per database)."""
    arm = ("join_filter_pushdown",)
    tables = {tpch_db: {"nation": (False, arm),         # a setting arm
                        "region": (True, arm),          # a forced tree plus an arm
                        "supplier": (True, ()),         # a forced tree
                        "customer": (False, ())},       # native
              tpcds_db: {"date_dim": (False, arm), "store": (True, arm), "item": (True, ())}}
    decisions = {SEEN_RULES.format(t): d for by_table in tables.values() for t, d in by_table.items()}
    wls = []
    for db, by_table in tables.items():
        wl = tmp_path / Path(db).stem
        wl.mkdir()
        write_workload(wl, wl.name, db, [(t, t, SEEN_RULES.format(t)) for t in by_table])
        wls.append(Workload.load(wl))
    sched = Scheduler(policy, workers=2, cores=2, model=DecisionModel(decisions), plan="optimized",
                      timeout_s=60, warmup=False)
    stream = sched.make_stream(wls, n=14, seed=1)
    res = sched.run(stream)
    counts = {}
    for db, by_table in tables.items():
        con = duckdb.connect(str(db), read_only=True)
        try:
            counts.update({SEEN_RULES.format(t): con.execute(SEEN_RULES.format(t)).fetchone()[1] for t in by_table})
        finally:
            con.close()
    by_idx = {q.idx: q for q in stream}
    assert len(res.records) == 14 and {r.database for r in res.records} == {str(tpch_db), str(tpcds_db)}
    want = {}
    for r in res.records:
        sql = by_idx[r.idx].sql.strip()
        forced, disabled = decisions[sql]
        want[r.idx] = _from_book(sql, forced, disabled).rules
        assert r.ok, r.error
        assert r.fingerprint == fingerprint_rows([(",".join(want[r.idx]), counts[sql])]), (sql, want[r.idx])
    for r in res.records:  # what the record says it ran with
        assert r.rules == want[r.idx] and r.forced == decisions[by_idx[r.idx].sql.strip()][0], r
    assert {r.rules for r in res.records} == {arm, FORCE_DISABLED_OPTIMIZERS + arm, FORCE_DISABLED_OPTIMIZERS, ()}
    if policy == "all":  # one shared worker per plan mode, and each mode's queries on its own
        assert len({r.worker for r in res.records}) == 4
        assert len({(r.worker, r.rules) for r in res.records}) == 4


class AlternatingThreads(Policy):
    """FIFO, alternately with 2 and 1 threads."""

    name = "alternating"

    def pick(self, waiting, load):
        return Assignment(0, 2 if waiting[0].idx % 2 == 0 else 1)


def test_real_executor_applies_each_querys_thread_budget(tmp_path, tpch_db):
    wl = tmp_path / "thr"
    wl.mkdir()
    sql = "SELECT current_setting('threads') AS t"
    write_workload(wl, "thr", tpch_db, [("t", "t", sql)])
    stream = make_stream(Workload.load(wl), n=6, seed=0)
    with Workers(stream.databases, workers=1, cores=2) as ex:
        res = ex.run(build_jobs(stream), AlternatingThreads())
    for r in res.records:
        assert r.threads == (2 if r.idx % 2 == 0 else 1)
        assert r.fingerprint == fingerprint_rows([(r.threads,)])  # the query saw its own budget
    assert res.meta["thread_changes"] >= 5 and res.meta["set_threads_ms_max"] < 1000


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find worker processes")
def test_ctrl_c_stops_cleanly_and_reaps_workers(tmp_path, tpch_db):
    wl = tmp_path / "slow"
    wl.mkdir()
    write_workload(wl, "slow", tpch_db, [("s1", "s1", SLOW_SQL), ("s2", "s2", SLOW_SQL), ("s3", "s3", SLOW_SQL)])
    script = Path(sys.executable).parent / "lqo"
    argv = [str(script)] if script.is_file() else [sys.executable, "-c", "import sys, lqo.cli; sys.exit(lqo.cli.main())"]
    proc = subprocess.Popen([*argv, "schedule", str(wl), "--workers", "2", "--policy", "fifo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # a test run started in the background inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = [p for p in _children(proc.pid) if "lqo-sched" in Path(f"/proc/{p}/cmdline").read_text()
                       or "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) >= 2, "workers did not start"
        time.sleep(1.0)  # let the slow queries get going
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (proc.returncode, err)
    assert "interrupted" in err and "Traceback" not in err, err
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "orphaned worker processes"


# --------------------------------------------------------------------------- CLI


def test_cli_bad_input_fails_clearly_and_writes_nothing(capsys, workloads, tmp_path):
    h, _ = workloads
    before = tree(h)
    assert_error(lqo(capsys, "schedule", h, "--policy", "lifo"), "unknown policy", "lifo")
    assert_error(lqo(capsys, "schedule", h, "--arrivals", "poisson:fast"), "arrivals")
    assert_error(lqo(capsys, "schedule", h, "--policy", "sjf-model"), "--model")
    assert_error(lqo(capsys, "schedule", h, "--policy", "learned"), "--scheduler-model")
    assert_error(lqo(capsys, "schedule", h, "--policy", "oracle"), "profile")
    assert_error(lqo(capsys, "schedule", tmp_path / "nope"), "not found")
    assert_error(lqo(capsys, "schedule", h, "--policy", "sjf-model", "--model", tmp_path / "nomodel"), "not found")
    assert_error(lqo(capsys, "schedule", h, "--policy", "learned", "--scheduler-model", tmp_path / "x.lqo"), "x.lqo")
    assert_error(lqo(capsys, "profile-threads", h, "--threads", "0,two"), "thread")
    assert_error(lqo(capsys, "train-scheduler", tmp_path / "missing.toml"), "recipe not found")
    bad = tmp_path / "bad.toml"
    bad.write_text('workloads = ["x"]\n[stream]\nqueries = 10\nwokers = 2\n')
    assert_error(lqo(capsys, "train-scheduler", bad), "unknown key stream.wokers")
    bad.write_text('workloads = ["x"]\n[stream]\nqueries = "ten"\n')
    assert_error(lqo(capsys, "train-scheduler", bad), "stream.queries")
    bad.write_text(f'workloads = ["{h}"]\nout = "{tmp_path / "o"}"\n')
    assert_error(lqo(capsys, "train-scheduler", bad), "profile")
    assert tree(h) == before and not (tmp_path / "o").exists()
    with pytest.raises(PolicyError, match="--model"):
        Scheduler("sjf-model")
    with pytest.raises(RecipeError):
        SchedRecipe(workloads=[]).validate()


def test_cli_profile_train_and_schedule_learned(capsys, workloads, tmp_path):
    h, _ = workloads
    prof = tmp_path / "prof.duckdb"
    code, out, err = lqo(capsys, "profile-threads", h, "--repeat", "1", "--warmup", "0", "--store", prof, "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert len(payload["queries"]) == 22 and all(set(q["ms"]) == {"1", "2"} for q in payload["queries"])

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'workloads = ["{h}"]\nprofiles = ["{prof}"]\nout = "model"\ntime_budget_min = 0.5\n'
                      "[stream]\nqueries = 10\n[imitation]\nepisodes = 10\n[reinforce]\nepisodes = 2\nrollouts = 2\n"
                      "[eval]\nstreams = 1\nevery = 5\n")
    code, out, err = lqo(capsys, "train-scheduler", recipe, "--json")
    assert code == 0, err
    ckpt = Path(json.loads(out)["checkpoint"])
    assert ckpt == tmp_path / "model" / "scheduler.lqo" and ckpt.is_file()

    code, out, err = lqo(capsys, "schedule", h, "--policy", "learned", "--scheduler-model", ckpt, "--profile", prof,
                         "--queries", "8", "--arrivals", "util:0.5", "--seed", "2", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["policy"] == "learned" and len(res["queries"]) == 8
    for key in ("mean_s", "p50_s", "p95_s", "makespan_s"):
        assert res[key] > 0
    assert {"per_query_mape", "per_query_median", "per_query_p90", "mean_err"} <= set(res["sim"]["error"])
    assert {q["known_source"] for q in res["queries"]} == {"measured"}  # every query was profiled
    assert all(q["end_s"] >= q["start_s"] >= q["arrival_s"] and q["ok"] for q in res["queries"])

    code, out, err = lqo(capsys, "schedule", h, "--policy", "oracle", "--profile", prof, "--queries", "5", "--simulate")
    assert code == 0, err
    assert "policy oracle (sim)" in out and "mean" in out


class SettingsModel:
    """Plans each query to a setting arm given by its text: (rules disabled, settings)."""

    def __init__(self, decisions: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]]) -> None:
        self.decisions = decisions

    def optimize(self, sql, con):
        disabled, settings = self.decisions[sql.strip()]
        return Optimized.as_written(sql, None, 0.0, disabled=disabled, settings=settings, source="book")


SEEN_MODE = ("SELECT current_setting('disabled_optimizers') AS r, "
             "current_setting('perfect_ht_threshold')::VARCHAR AS p, count(*) AS n FROM {}")


@pytest.mark.parametrize("policy", ["fifo", "all"])
def test_real_executor_runs_each_decision_under_its_settings(tmp_path, tpch_db, policy):
    """Regression: a setting arm's operator settings (``Optimized.settings``) were dropped
    by the stream, so the scheduler ran it under DuckDB's defaults. Each query reports the
    rules and settings it ran with, and each record names them."""
    pht = (("perfect_ht_threshold", "20"),)
    tables = {"nation": ((), pht),                              # settings only
              "region": (("join_filter_pushdown",), pht),      # rules and settings
              "customer": ((), ())}                             # native
    decisions = {SEEN_MODE.format(t): d for t, d in tables.items()}
    wl = tmp_path / "w"
    wl.mkdir()
    write_workload(wl, "w", tpch_db, [(t, t, SEEN_MODE.format(t)) for t in tables])
    sched = Scheduler(policy, workers=2, cores=2, model=SettingsModel(decisions), plan="optimized",
                      timeout_s=60, warmup=False)
    stream = sched.make_stream([Workload.load(wl)], n=9, seed=2)
    res = sched.run(stream)
    con = duckdb.connect(str(tpch_db), read_only=True)
    try:
        default_pht = con.execute("SELECT current_setting('perfect_ht_threshold')::VARCHAR").fetchone()[0]
        counts = {SEEN_MODE.format(t): con.execute(SEEN_MODE.format(t)).fetchone()[2] for t in tables}
    finally:
        con.close()
    by_idx = {q.idx: q for q in stream}
    assert len(res.records) == 9
    for r in res.records:
        sql = by_idx[r.idx].sql.strip()
        rules, settings = decisions[sql]
        assert r.ok, r.error
        seen = (",".join(rules), dict(settings).get("perfect_ht_threshold", default_pht), counts[sql])
        assert r.fingerprint == fingerprint_rows([seen]), (sql, seen)
        assert (r.rules, r.settings) == (rules, settings)
    assert {r.settings for r in res.records} == {pht, ()}
