"""The learned optimizer end to end: a short real training run on TPC-H sf 0.01.

Checks: training loss falls; held-out plans are ranked better than chance; save/load
gives identical predictions; optimize() returns the native result on every TPC-H query;
bad inputs fail clearly.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from lqo.sql.catalog import Catalog
from lqo.cli import main
from lqo.errors import InvalidSQLError, LqoError, MissingFileError, NotSelectError, SchemaMismatchError
from lqo.engine.harness import Harness
from lqo.learn.features import Featurizer
from lqo.learn.model_kinds import make_model
from lqo.optimizer import Optimizer, optimize
from lqo.trees.query import prepare
from lqo.train.recipe import Recipe
from lqo.estimates.stats import DatabaseStats
from lqo.train.trainer import Trainer
from lqo.workloads.workload import Workload


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "tpch"
    assert main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(out)]) == 0
    return Workload.load(out)


@pytest.fixture(scope="module")
def trained(workload, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "m"
    recipe = Recipe.from_toml_text(
        "iterations = 2\ntime_budget_min = 4.0\n[model]\nepochs = 40\n"
        "[exploration]\nbootstrap_plans = 8\n[split]\ntest_fraction = 0.3\n"
    )
    recipe.workload, recipe.out = str(workload.root), str(out)
    result = Trainer(recipe, log=lambda line: None).run()
    assert result.iterations == 2
    return out


def test_training_writes_a_resumable_checkpoint(trained, workload):
    assert (trained / "model.lqo").is_file() and (trained / "state.json").is_file()
    lines = (trained / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2
    # the bootstrap measured the star-shaped plan of (nearly) every reorderable query
    import duckdb
    with duckdb.connect(str(trained / "experience.duckdb"), read_only=True) as con:
        kinds = dict(con.execute("SELECT kind, count(DISTINCT query_key) FROM plans GROUP BY kind").fetchall())
    assert kinds.get("star", 0) >= 8, kinds
    # resuming with more iterations continues from iteration 3 and keeps the experience
    recipe = Recipe.from_toml_text("iterations = 3\ntime_budget_min = 3.0\n[model]\nepochs = 20\n")
    recipe.workload, recipe.out = str(workload.root), str(trained)
    result = Trainer(recipe, log=lambda line: None).run()
    assert [h["iteration"] for h in result.history] == [3]
    assert result.history[0]["samples"] > 0


def test_loss_falls_and_ranking_beats_chance(trained, workload):
    """Fit on 70% of the executed plans; rank the latencies of the other 30%.

    Latencies at sf 0.01 are a few ms, so one split's rho swings with machine noise:
    the check is on the mean over three splits.
    """
    from lqo.train.samples import collect_samples

    con = workload.connect()
    cat = Catalog.from_connection(con)
    prepared = {q.id: prepare(q.sql, con, cat) for q in workload}
    prepared = {k: v for k, v in prepared.items() if v.forceable and v.free_blocks}
    samples = collect_samples([trained / "experience.duckdb"], prepared)
    con.close()
    ids = sorted(prepared)
    feat = Featurizer(DatabaseStats.load(trained / "stats.json"))
    rhos = []
    for seed in range(3):
        random.Random(seed).shuffle(samples)
        cut = int(0.7 * len(samples))
        train, test = samples[:cut], samples[cut:]
        X = [feat.featurize(prepared[s.query_id].graph, s.plan, s.forced) for s in train]
        y = np.array([s.latency_ms for s in train])
        g = np.array([ids.index(s.query_id) for s in train])
        model = make_model("tree_conv", loss="combined", epochs=80, n_members=3, seed=seed).fit(X, y, g)
        losses = [h["train_loss"] for h in model.history_]
        assert min(losses[-5:]) < losses[0]
        pred = model.predict([feat.featurize(prepared[s.query_id].graph, s.plan, s.forced) for s in test])
        rhos.append(spearman(pred, [s.latency_ms for s in test]))
    print(f"held-out plans: {len(test)} (trained on {len(train)}), Spearman rho {np.round(rhos, 2)}")
    assert len(test) >= 20 and np.mean(rhos) > 0.4


def test_save_load_identical_predictions(trained, workload, tmp_path):
    con = workload.connect()
    opt = Optimizer.load(trained, con)
    pq = opt.prepare(workload.query("q05").sql, con)
    plans = [pq.native_plan] + pq.random_plans(5, random.Random(1))
    before = opt.scorer(pq)(plans)
    copy = tmp_path / "copy"
    opt.save(copy)
    again = Optimizer.load(copy, con)
    np.testing.assert_array_equal(before, again.scorer(again.prepare(pq.sql, con))(plans))
    con.close()


def test_optimize_returns_native_result_on_every_tpch_query(trained, workload):
    con = workload.connect()
    opt = Optimizer.load(trained, con)
    h = Harness(con)
    forced = 0
    for q in workload:
        res = optimize(q.sql, con, model=opt)
        assert (res.fallback is None) == res.forced
        forced += res.forced
        assert h.run(q.sql, profile=False).fingerprint == Harness(con).run(res.sql, forced=res.forced, profile=False).fingerprint, q.id
        rows = res.execute(con)
        assert con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0] == ""
        assert len(rows) == len(con.execute(q.sql).fetchall())
    print(f"{forced} of {len(workload)} queries planned by lqo")
    con.close()


def test_bad_inputs_fail_clearly(trained, workload, tmp_path, tpcds_db, capsys):
    con = workload.connect()
    opt = Optimizer.load(trained, con)
    with pytest.raises(InvalidSQLError):
        opt.optimize("SELEC 1", con)
    with pytest.raises(NotSelectError):
        opt.optimize("DELETE FROM nation", con)
    # queries kept native without an EXPLAIN are still bound: a bad column fails here
    with pytest.raises(LqoError, match="nosuch"):
        opt.optimize("SELECT nosuch FROM orders LEFT JOIN customer ON o_custkey = c_custkey", con)
    with pytest.raises(LqoError, match="nosuch"):
        opt.optimize("SELECT max(nosuch) FROM nation", con)
    kept = opt.optimize("SELECT count(*) FROM orders LEFT JOIN customer ON o_custkey = c_custkey", con)
    assert not kept.forced and "LEFT" in kept.fallback
    assert kept.execute(con) == con.execute(kept.original_sql).fetchall()
    con.close()
    with pytest.raises(MissingFileError):
        Optimizer.load(tmp_path / "nope")
    from lqo.engine.db import connect_read_only

    other = connect_read_only(tpcds_db)
    with pytest.raises(SchemaMismatchError):
        Optimizer.load(trained, other)
    other.close()
    sql = workload.query("q03").sql
    assert main(["optimize", sql, "--db", str(tpcds_db), "--model", str(trained)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "schema" in err[0]
    assert main(["optimize", sql, "--db", str(workload.database), "--model", str(tmp_path / "nope")]) == 2
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nkind = 'transformer'\n")
    assert main(["train", str(bad), "--workload", str(workload.root)]) == 2
    assert "model.kind" in capsys.readouterr().err


def test_cli_optimize_and_compare(trained, workload, capsys):
    import json

    assert main(["optimize", workload.query("q05").sql, "--db", str(workload.database), "--model", str(trained), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["native"] and out["planning_ms"] > 0
    assert main(["compare", str(workload.root), "--model", str(trained), "--split", "test", "--repeat", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["wrong_results"] == 0
    for key in ("native_ms", "lqo_ms", "ratio", "geomean_ratio", "worst_ratio", "planning_ms_median", "planning_ms_p99"):
        assert key in report["totals"]
    for q in report["queries"]:
        assert {"id", "native_ms", "lqo_ms", "planning_ms", "ratio", "fallback"} <= set(q)
