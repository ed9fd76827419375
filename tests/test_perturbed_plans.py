"""Perturbed-cardinality trees (``lqo tune --perturbed N``): lqo's DP over its own estimates
with join estimates scaled by 10^k; valid trees, the native result, and only when asked."""

from __future__ import annotations

import random
from functools import partial

import pytest
from conftest import tpc_queries

from lqo.engine.db import connect_read_only
from lqo.engine.harness import run_interleaved
from lqo.estimates.cardinality import Estimator
from lqo.estimates.stats import DatabaseStats
from lqo.sql.catalog import Catalog
from lqo.trees.dp import dp_plan, perturbation_plans, perturbed_plans
from lqo.trees.enumerate import is_valid_tree
from lqo.trees.plan import leaves
from lqo.trees.query import prepare


@pytest.fixture(scope="module")
def setup(tpcds_db):
    con = connect_read_only(tpcds_db)
    cat = Catalog.from_connection(con)
    yield con, cat, DatabaseStats.build(con, cat, sample_rows=5_000)
    con.close()


def _cards(est, block):
    return partial(est.join_rows, block)


def _found(pq, est, seed=0, draws=8):
    return perturbation_plans(pq.native_plan, pq.free_blocks, partial(_cards, est), draws, random.Random(seed))


def test_perturbed_trees_are_valid_new_and_give_the_native_result(setup):
    con, cat, stats = setup
    new = 0
    for qid in ("q07", "q19", "q27", "q91"):
        sql = tpc_queries("tpcds")[qid]
        pq = prepare(sql, con, cat)
        est = Estimator(stats, pq.graph)
        found = _found(pq, est)
        assert found == _found(pq, est)  # the same seed, the same trees
        dp = dp_plan(pq.native_plan, pq.free_blocks, partial(_cards, est))
        plans = perturbed_plans(found, [pq.native_plan, dp], limit=4)
        assert len(plans) == len(set(plans)) <= 4 and pq.native_plan not in plans and dp not in plans
        for p in plans:
            for b in pq.free_blocks:
                assert is_valid_tree(b, p.tree(b.index)) and sorted(leaves(p.tree(b.index))) == sorted(b.aliases), qid
        runs = run_interleaved(con, [(sql, False)] + [(pq.render(p), True) for p in plans], repeats=1, warmup=0)
        assert all(r[0].ok and r[0].fingerprint == runs[0][0].fingerprint for r in runs[1:]), qid
        new += len(plans)
    assert new >= 8  # the family has trees the DP alone does not find


def test_single_perturbations_scale_one_join_of_the_dp_tree(setup):
    con, cat, stats = setup
    pq = prepare(tpc_queries("tpcds")["q07"], con, cat)  # one block of five relations
    est = Estimator(stats, pq.graph)
    singles = [how for how, _ in _found(pq, est, draws=0)]
    assert singles and all(how.startswith("single:") for how in singles)
    assert len(singles) % 6 == 0  # each join below the root, k in +-1..3
    assert len(_found(pq, est, draws=3)) == len(singles) + 3


@pytest.mark.parametrize("perturbed", [0, 3])
def test_tune_tries_perturbed_trees_only_when_asked(tmp_path, perturbed, monkeypatch):
    """Every screening a fixed loss (no timing): the candidates are what is proposed."""
    from lqo.book.book import AcceptanceVerdict, Candidate, PlanBook
    from lqo.cli import main
    from lqo.trees.plan import Plan
    from lqo.tune.inputs import TuneConfig
    from lqo.tune.trials import Trials
    from lqo.tune.tuner import Tuner
    from lqo.workloads.workload import Workload

    assert main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(tmp_path / "w")]) == 0
    assert main(["workload", "vary", str(tmp_path / "w"), "--per-template", "3", "--seed", "3",
                 "--out", str(tmp_path / "v")]) == 0
    wl = Workload.load(tmp_path / "v")
    wl = wl.subset(q.id for q in wl if q.template == "q05")  # six relations
    monkeypatch.setattr(Trials, "screen", lambda self, t, entry, c: (1.2, 0))
    monkeypatch.setattr(Trials, "accept", lambda self, t, entry, c: AcceptanceVerdict(False, "not measured here"))
    out = tmp_path / f"p{perturbed}"
    Tuner(wl, out, TuneConfig(budget_min=1.0, perturbed_trees=perturbed, true_cards=False), log=lambda line: None).run()
    (e,) = PlanBook.load(out).entries.values()
    trees: list[Candidate] = [c for c in e.candidates.values() if c.kind == "tree" and not c.disabled]
    mine = [c for c in trees if c.origin == "perturbed"]
    assert len(mine) == perturbed
    others = {Plan.from_json(c.plan) for c in trees if c.origin != "perturbed"}
    assert not others & {Plan.from_json(c.plan) for c in mine}  # none repeats another origin's tree


def test_negative_perturbed_count_is_refused(tmp_path, capsys):
    from lqo.cli import main

    assert main(["tune", str(tmp_path), "--budget", "1", "--out", str(tmp_path / "m"), "--perturbed", "-1"]) == 2
    assert "--perturbed must be >= 0" in capsys.readouterr().err
