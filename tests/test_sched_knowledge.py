"""The scheduler judged on queries it never trained on: splits, what lqo knows of a
query's latency before it runs (and that a deployable policy reads nothing else), and
admission control (the learned policy's hold option)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

import lqo.cli as cli
from lqo.book.template import template_key
from lqo.errors import LqoError
from lqo.sched.gnn_policy import LearnedPolicy, SchedNet
from lqo.sched.jobs import Job, PlanGraph, QueryFeatures, build_jobs, build_knowledge

from lqo.sched.policies import get_policy
from lqo.sched.policy import Load
from lqo.sched.thread_profile import ThreadProfile
from lqo.sched.simulator import SimConfig, simulate
from lqo.sched.split import check_holdout, split_workload
from lqo.sched.stream import StreamQuery, make_stream
from lqo.workloads.workload import Workload, write_workload

from conftest import tpc_queries


@pytest.fixture(scope="module")
def varied(tmp_path_factory, tpch_db) -> Workload:
    """TPC-H sf 0.01, 4 instances per template."""
    root = tmp_path_factory.mktemp("sknow")
    (root / "w").mkdir()
    write_workload(root / "w", "tpch", tpch_db, [(k, k, v) for k, v in tpc_queries("tpch").items()], kind="tpch")
    assert cli.main(["workload", "vary", str(root / "w"), "--per-template", "4", "--seed", "3",
                     "--out", str(root / "v")]) == 0
    return Workload.load(root / "v")


def templates(w: Workload | None) -> set[str]:
    return {template_key(q.sql).key for q in w} if w is not None else set()


def synthetic_profile(w: Workload) -> ThreadProfile:
    """Made-up one/two-thread latencies: distinct per template (10 ms x its rank), a
    little apart per instance, so a template median is checkable."""
    ranks = {t: i + 1 for i, t in enumerate(sorted(templates(w)))}
    lat = {}
    for q in w:
        k = make_stream(w.subset([q.id]), None).queries[0].query_key
        ms = 10.0 * ranks[template_key(q.sql).key] + int(q.id.rsplit("_v", 1)[1])
        lat[k] = {1: ms, 2: ms * 0.6}
    return ThreadProfile(lat)


def test_splits_hold_out_instances_or_whole_templates(varied):
    train, test = split_workload(varied, "instances", 3)
    assert {q.id for q in train}.isdisjoint(q.id for q in test)
    assert len(train) + len(test) == len(varied)
    assert templates(test) <= templates(train)  # new constants of known templates
    assert all(int(q.id.rsplit("_v", 1)[1]) == 4 for q in test)  # instances sorted by id: the 4th is held out

    a_train, a_test = split_workload(varied, "templates:0", 3)
    b_train, b_test = split_workload(varied, "templates:1", 3)
    assert templates(a_test).isdisjoint(templates(a_train))  # whole templates held out
    assert templates(a_test) == templates(b_train) and templates(b_test) == templates(a_train)
    assert templates(a_test) | templates(a_train) == templates(varied)
    assert split_workload(varied, "none") == (varied, None)
    with pytest.raises(LqoError, match="bad holdout"):
        check_holdout("templates:2")


def test_knowledge_of_held_out_queries_comes_from_what_was_run(varied):
    profile = synthetic_profile(varied)
    train, test = split_workload(varied, "instances", 3)
    know = build_knowledge(make_stream(train), profile)
    jobs = build_jobs(make_stream(test), {"known", "lat"}, profile, knowledge=know)
    for j in jobs:
        tid_instances = [q for q in train if template_key(q.sql).key == template_key(j.q.sql).key]
        distinct = {q.sql: q for q in tid_instances}.values()
        if j.q.sql in {q.sql for q in tid_instances}:  # a template without constants: the same text ran
            assert j.f.known_source == "measured"
            continue
        assert j.f.known_source == "template", j.q.key
        expected = statistics.median(profile.get(make_stream(train.subset([q.id])).queries[0].query_key)[1]
                                     for q in distinct)
        assert j.f.known_ms == pytest.approx(expected)
        assert j.f.known_ms != j.f.latency_s(1) * 1000  # not the held-out query's own (true) latency

    # Whole templates held out: only DuckDB's estimate through the fitted line is left.
    train, test = split_workload(varied, "templates:0", 3)
    jobs = build_jobs(make_stream(test), {"known"}, profile, knowledge=build_knowledge(make_stream(train), profile))
    assert {j.f.known_source for j in jobs} == {"estimate"}
    assert all(j.f.known_ms > 0 for j in jobs)


def _jobs_with_truth(scale: float) -> list[Job]:
    """Three waiting queries whose known latencies say 1 < 2 < 3 and whose true ones
    (scaled by ``scale``, reversed) say otherwise."""
    out = []
    for i, known in enumerate([10.0, 20.0, 30.0]):
        truth = {1: (3 - i) * 100.0 * scale, 2: (3 - i) * 55.0 * scale ** 2}
        q = StreamQuery(i, "syn", f"j{i}", f"j{i}", f"SELECT {i}", "/nonexistent.duckdb", 0.0)
        g = PlanGraph([1, 2], [2.0, 3.0], [(1, 0)])
        out.append(Job(q, QueryFeatures(q.key, est_cost=1.0, graph=g, lat_ms=truth, known_ms=known,
                                        known_source="template", known_speedup=1.5)))
    return out


def _first_picks(source: str, scale: float) -> list[tuple[int, int]]:
    picks = []
    for seed in range(8):
        torch.manual_seed(seed)
        pol = LearnedPolicy(SchedNet(n_threads=3), [0, 1, 2], source)
        jobs = _jobs_with_truth(scale)
        pol.begin(jobs)
        d = pol.pick(jobs, Load(0.0, [], 2, 2, 2, 2, 2))
        picks.append((d.index, d.threads))
    return picks


def test_deployable_policies_read_known_latencies_never_the_truth():
    jobs = _jobs_with_truth(1.0)
    res = simulate(jobs, get_policy("sjf-known"), workers=1, config=SimConfig(1))
    assert [r.idx for r in sorted(res.records, key=lambda r: r.start_s)] == [0, 1, 2]  # known order, not true
    res = simulate(jobs, get_policy("oracle"), workers=1, config=SimConfig(1))
    assert [r.idx for r in sorted(res.records, key=lambda r: r.start_s)] == [2, 1, 0]
    # The learned policy on known latencies decides the same whatever the truth is ...
    assert _first_picks("known", 1.0) == _first_picks("known", 7.0)
    # ... while one that reads the profile (the old protocol) does not: the check can fail.
    assert _first_picks("measured", 1.0) != _first_picks("measured", 7.0)


def _biased(option: int) -> LearnedPolicy:
    torch.manual_seed(0)
    net = SchedNet(n_threads=3)
    with torch.no_grad():
        net.thr[-1].weight.zero_()
        net.thr[-1].bias.copy_(torch.tensor([-5.0, -5.0, -5.0]))
        net.thr[-1].bias[option] = 5.0
    return LearnedPolicy(net, [0, 1, 2], "known")


def _max_concurrency(res) -> int:
    events = sorted([(r.start_s, 1) for r in res.records] + [(r.end_s, -1) for r in res.records],
                    key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, d in events:
        now += d
        peak = max(peak, now)
    return peak


def test_hold_admits_fewer_queries_but_never_idles_the_machine():
    jobs = _jobs_with_truth(1.0) + [Job(StreamQuery(3 + i, "syn", f"k{i}", f"k{i}", f"SELECT {i}", "/x", 0.05 * i), j.f)
                                    for i, j in enumerate(_jobs_with_truth(2.0))]
    held = simulate(jobs, _biased(0), workers=2, config=SimConfig(2))  # prefers hold whenever allowed
    assert len(held.records) == len(jobs)  # nothing starved: hold is masked on an idle machine
    assert _max_concurrency(held) == 1 and all(r.threads == 1 for r in held.records)
    free = simulate(jobs, _biased(1), workers=2, config=SimConfig(2))  # prefers one thread, never holds
    assert _max_concurrency(free) == 2


def test_train_scheduler_holds_out_queries_and_records_what_it_trained_on(capsys, varied, tmp_path):
    prof = tmp_path / "prof.duckdb"
    assert cli.main(["profile-threads", str(varied.root), "--repeat", "1", "--warmup", "0", "--store", str(prof)]) == 0
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'workloads = ["{varied.root}"]\nprofiles = ["{prof}"]\nout = "m"\ntime_budget_min = 0.5\n'
                      "[stream]\nqueries = 10\n[split]\nholdout = \"templates:0\"\n[imitation]\nepisodes = 6\n"
                      "[reinforce]\nepisodes = 2\nrollouts = 2\n[eval]\nstreams = 1\nevery = 5\n")
    capsys.readouterr()
    assert cli.main(["train-scheduler", str(recipe), "--holdout", "instances", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["judged_on"].startswith("held-out queries (instances)")
    assert set(out["sim_mean_s"]) >= {"fifo", "sjf-known", "oracle", "learned"}
    pol = LearnedPolicy.load(Path(out["checkpoint"]))
    assert pol.meta["holdout"] == "instances" and pol.latency_source == "known" and pol.thread_options[0] == 0
    _, test = split_workload(varied, "instances", 3)
    held = {q.query_key for q in make_stream(test)}
    trained = set(pol.meta["train_query_keys"])
    texts = {q.sql for q in test}
    # Disjoint, except instances of templates without constants (the same text).
    overlap = {q.query_key for q in make_stream(test) if q.query_key in trained}
    assert trained and held and all(q.sql in texts for q in make_stream(test) if q.query_key in overlap)
    assert len(overlap) < len(held) / 4
    capsys.readouterr()
    assert cli.main(["train-scheduler", str(recipe), "--holdout", "bogus"]) == 2
    assert "bad holdout" in capsys.readouterr().err


def test_calibration_recovers_the_simulator_that_made_the_runs():
    from lqo.sched.simulator import calibrate

    jobs = _jobs_with_truth(1.0) + [Job(StreamQuery(3 + i, "syn", f"k{i}", f"k{i}", f"SELECT {i}", "/x", 0.02 * i), j.f)
                                    for i, j in enumerate(_jobs_with_truth(3.0))]
    truth = SimConfig(2, interference=0.3, scale=0.9)
    runs = [(jobs, get_policy(p), 2, simulate(jobs, get_policy(p), 2, truth)) for p in ("fifo", "all")]
    config, err = calibrate(runs, cores=2)
    assert (config.interference, config.scale) == pytest.approx((0.3, 0.9)) and err == pytest.approx(0.0, abs=1e-9)
    # A profile that is right about speed but not interference is found out too.
    runs = [(jobs, get_policy("fifo"), 2, simulate(jobs, get_policy("fifo"), 2, SimConfig(2, 0.4, 1.0)))]
    assert calibrate(runs, cores=2)[0].interference == pytest.approx(0.4)
    # Oversubscription: 2-thread queries sharing 2 cores lose more than processor sharing,
    # 1-thread ones side by side nothing (told apart by running both policies).
    truth = SimConfig(2, oversubscription=1.2)
    runs = [(jobs, get_policy(p), 2, simulate(jobs, get_policy(p), 2, truth)) for p in ("fifo", "all")]
    config = calibrate(runs, cores=2)[0]
    assert (config.oversubscription, config.interference) == pytest.approx((1.2, 0.0))


def test_a_tuned_plan_book_informs_templates_the_profile_never_saw(varied, tmp_path):
    from lqo.book.book import PlanBook

    profile = synthetic_profile(varied)
    train, test = split_workload(varied, "templates:0", 3)
    q = next(iter(test))
    book = PlanBook()
    entry = book.entry(template_key(q.sql).key, q.template, q.sql)
    entry.native_ms = {"a": 30.0, "b": 50.0, "c": 40.0}
    book.meta["workload"] = str(varied.root)
    book.save(tmp_path / "book.json")
    know = build_knowledge(make_stream(train), profile, str(tmp_path / "book.json"))
    jobs = {j.q.query_id: j for j in build_jobs(make_stream(test), {"known"}, profile, knowledge=know)}
    # The book measured at DuckDB's default threads: scaled by the profile's speed-up (1 / 0.6).
    assert jobs[q.id].f.known_source == "book" and jobs[q.id].f.known_ms == pytest.approx(40.0 / 0.6)
    assert {j.f.known_source for k, j in jobs.items() if template_key(j.q.sql).key != entry.key} == {"estimate"}


def _known_as(source: str) -> list[Job]:
    """Three waiting queries known as 10 < 20 < 30 ms from ``source``."""
    out = []
    for i, known in enumerate([10.0, 20.0, 30.0]):
        q = StreamQuery(i, "syn", f"e{i}", f"e{i}", f"SELECT {i}", "/nonexistent.duckdb", 0.0)
        g = PlanGraph([1, 2], [2.0, 3.0], [(1, 0)])
        out.append(Job(q, QueryFeatures(q.key, est_cost=1.0, graph=g, known_ms=known, known_source=source)))
    return out


def _first(net: SchedNet, jobs: list[Job]) -> int:
    pol = LearnedPolicy(net, [1, 2], "known")
    pol.begin(jobs)
    return pol.pick(jobs, Load(0.0, [], 2, 2, 2, 2, 2)).index


@pytest.mark.parametrize("source,kept_sjf", [("estimate", True), ("predicted", True), ("template", False)])
def test_corrections_apply_only_to_latencies_lqo_measured(source, kept_sjf):
    net = SchedNet(n_threads=2, sjf_prior=True, correct_known_only=True)
    with torch.no_grad():  # a correction head that wants the longest query first
        for layer in (net.prio[0], net.prio[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        net.prio[0].weight[0, net.hidden] = 1.0  # input column: log1p(latency) / 10
        net.prio[-1].weight[0, 0] = 1000.0
    jobs = _known_as(source)
    # Known by estimate or prediction only: plain SJF (0 first) whatever the head says;
    # measured on the template: the head's correction applies and overturns SJF.
    assert (_first(net, jobs) == 0) is kept_sjf
    ungated = SchedNet(n_threads=2, sjf_prior=True)
    ungated.load_state_dict(net.state_dict())
    assert _first(ungated, jobs) == 2  # without the gate the same head wins everywhere
