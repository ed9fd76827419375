"""The plan book: template keys, slot renderings, the acceptance rule, tune and serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tpc_queries
from lqo.tune.accept import AcceptRule, judge
from lqo.book.book import Candidate, PlanBook
from lqo.model_dir import BOOK_FILE
from lqo.book.ranges import LiteralRanges
from lqo.book.slots import SlotRendering
from lqo.tune.trials import COMBINED
from lqo.book.serve import BookServer
from lqo.book.template import literal_free_text, template_key, tokens
from lqo.cli import main
from lqo.engine.run_result import fingerprint_rows
from lqo.errors import BookError, QueryRuntimeError, SchemaMismatchError
from lqo.optimizer import Optimizer
from lqo.sql.catalog import Catalog
from lqo.sql.join_graph import build_query_graph
from lqo.trees.query import prepare
from lqo.trees.render import render
from lqo.workloads.workload import Workload

LQO = [sys.executable, "-c", "import sys, lqo.cli; sys.exit(lqo.cli.main())"]


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """TPC-H sf 0.01, 4 instances per template (3 tuned, 1 held out)."""
    root = tmp_path_factory.mktemp("book")
    assert main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(root / "w")]) == 0
    assert main(["workload", "vary", str(root / "w"), "--per-template", "4", "--seed", "3", "--out", str(root / "v")]) == 0
    return Workload.load(root / "v")


@pytest.fixture(scope="module")
def tuned(varied, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "m"
    assert main(["tune", str(varied.root), "--budget", "3", "--out", str(out), "--json"]) == 0
    return out


# ----- template keys --------------------------------------------------------------------

def test_key_distinct_across_all_tpc_templates():
    keys = {}
    for kind in ("tpch", "tpcds"):
        for qid, sql in tpc_queries(kind).items():
            keys.setdefault(template_key(sql).key, []).append(f"{kind}/{qid}")
    assert [v for v in keys.values() if len(v) > 1] == []
    assert len(keys) == 22 + 99


def test_key_stable_across_varied_instances(varied):
    by_template = defaultdict(set)
    changed = 0
    for q in varied:
        by_template[q.template].add(template_key(q.sql).key)
        changed += q.sql != varied.query(q.id.rsplit("_", 1)[0] + "_v1").sql
    assert changed > 30  # the instances really differ in their constants
    assert {t: k for t, k in by_template.items() if len(k) > 1} == {}
    assert len({next(iter(k)) for k in by_template.values()}) == 22


def test_key_ignores_layout_not_meaning():
    a = template_key("SELECT a FROM t WHERE x = 1 -- c\nAND y IN ('a', 'b')")
    b = template_key("select a\n  from t /* z */ where x=2 and y in ('q','r','s')")
    assert a.key == b.key and b.literals == ("2", "'q'", "'r'", "'s'") and b.shape == (1, 3)
    assert template_key("SELECT a FROM t WHERE x = 1").key != template_key("SELECT a FROM t WHERE x < 1").key
    assert template_key("SELECT a FROM t WHERE x = 1").key != template_key("SELECT a FROM u WHERE x = 1").key
    # The literals are the tokenizer's literal tokens, a sign included where it is one.
    sql = "SELECT a - 1 FROM t WHERE x > -5 AND y = 'it''s'"
    assert template_key(sql).literals == tuple(t[2] for t in tokens(sql) if t[3]) == ("1", "-5", "'it''s'")


# ----- slot rendering -------------------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_slot_rendering_equals_full_rendering(varied, data):
    import random

    con = varied.connect()
    try:
        catalog = Catalog.from_connection(con)
        templates = sorted({q.template for q in varied})
        t = data.draw(st.sampled_from(templates))
        instances = [q for q in varied if q.template == t]
        pq = prepare(instances[0].sql, con, catalog)
        if not pq.forceable:
            return
        plans = [pq.native_plan] + pq.random_plans(3, random.Random(data.draw(st.integers(0, 1000))))
        plan = data.draw(st.sampled_from(plans))
        sr = SlotRendering.build(instances[0].sql, catalog, plan)
        other = data.draw(st.sampled_from(instances))
        assert sr.fill(template_key(other.sql).literals) == render(build_query_graph(other.sql, catalog), plan)
    finally:
        con.close()


# ----- acceptance rule ------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(1, 1000), st.floats(1.0, 3.0)), min_size=5, max_size=8),
                min_size=1, max_size=4))
def test_acceptance_never_accepts_paired_runs_that_are_slower(instances):
    # Every paired round has the candidate at >= the native time: never accepted.
    pairs = {f"i{k}": [(n, n * f) for n, f in rounds] for k, rounds in enumerate(instances)}
    assert not judge(pairs).accepted


def test_acceptance_rule_thresholds():
    rule = AcceptRule()
    clear = {"a": [(100, 70)] * 5, "b": [(80, 60)] * 5, "c": [(50, 40)] * 5}
    assert judge(clear, rule).accepted
    assert not judge({"a": [(100, 70)] * 4}, rule).accepted  # too few rounds
    assert not judge({**clear, "d": [(100, 110)] * 5}, rule).accepted  # one instance > 1.05x
    many = {f"i{k}": [(100, 70)] * 5 for k in range(8)}
    assert judge(many, rule).accepted
    v = judge({**many, "slow": [(100, 110)] * 5}, rule)  # median and interval fine, one instance is not
    assert not v.accepted and v.ci_high < 1.0 and v.worst_instance > 1.05
    assert not judge({"a": [(100, 96)] * 5}, rule).accepted  # median above 0.95
    noisy = {"a": [(100, 50), (100, 150), (100, 60), (100, 140), (100, 90)]}
    v = judge(noisy, rule)
    assert not v.accepted and v.ci_high >= 1.0  # median 0.9, but the interval reaches 1
    assert not judge(clear, rule, failed="wrong result").accepted


# ----- tune, book, serving --------------------------------------------------------------

def test_tune_ends_with_a_book(tuned, varied):
    book = PlanBook.load(tuned)
    assert len(book.entries) == 22
    for e in book.entries.values():
        assert len(e.instances) == 3 and len(e.held_out) == 1
        assert set(e.native_ms) <= set(e.instances)
        if e.choice != "native":
            v = e.verdicts[e.choice]
            assert v.accepted and v.median_ratio <= 0.95 and v.ci_high < 1.0 and v.worst_instance <= 1.05
    assert sum(len(e.screened) for e in book.entries.values()) > 22
    # combinations (if this run's timings proposed any) pair parts that each screened < 1
    combos = [c for e in book.entries.values() for c in e.candidates.values() if c.origin in COMBINED]
    assert all(len(c.disabled) == {"tree+arm": 1, "arm-pair": 2}.get(c.origin, len(c.disabled)) for c in combos)
    for e in book.entries.values():
        for c in e.candidates.values():
            if c.origin == "arm-pair":
                assert all(e.screened.get(f"arm:{r}", 9) < 1.0 for r in c.disabled), (e.template, c.id)
            if c.origin == "arm-set":  # a set grown by one rule from a set that screened below native
                assert 3 <= len(c.disabled) <= 4, c.id
                assert any(e.screened.get("arm:" + ",".join(r for r in c.disabled if r != x), 9) < 1.0
                           for x in c.disabled), (e.template, c.id)
    for e in book.entries.values():  # whatever was tried can be adopted and loaded again
        assert set(e.screened) <= set(e.candidates) and set(e.verdicts) <= set(e.candidates), e.template
        ranges = LiteralRanges.from_json(e.ranges)  # recorded; its own instances lie inside
        assert all(ranges.outside(template_key(varied.query(q).sql)) is None for q in e.instances), e.template
    # q13 (an outer join: no trees) is still tried with setting arms, and they are recorded
    q13 = book.by_template()["q13"]
    assert q13.candidates and all(c.kind == "arm" for c in q13.candidates.values()) and "arms only" in q13.note
    history = json.loads((tuned / "tune_history.json").read_text())
    if history[-1]["elapsed_s"] < 150:  # finished inside its budget: no test was left put off
        wins = {(e.template, k) for e in book.entries.values() for k, r in e.screened.items() if r < 0.95}
        assert wins <= {(e.template, k) for e in book.entries.values() for k in e.verdicts}
    held = {i for e in book.entries.values() for i in e.held_out}
    ran = {r[0] for r in _store_query_ids(tuned)}
    assert held and not held & ran  # held-out instances never ran while tuning


def test_tune_screens_combinations_and_records_them_apart(tuned, tmp_path):
    """Combinations a run proposed but did not screen are screened by the next run, run
    with both parts applied, and kept apart from the plain tree in the store."""
    import shutil

    out = tmp_path / "m"
    shutil.copytree(tuned, out)
    book = PlanBook.load(out)
    e = next(e for e in book.entries.values() if any(c.kind == "tree" and c.slots for c in e.candidates.values()))
    tree = next(c for c in e.candidates.values() if c.kind == "tree" and c.slots and not c.disabled)
    pair = combinations_of(e, tree)
    for c in pair:
        e.candidates[c.id] = c
        e.screened.pop(c.id, None)
    book.save(out / BOOK_FILE)
    assert main(["tune", str(book.meta["workload"]), "--budget", "1", "--out", str(out), "--json"]) == 0
    after = PlanBook.load(out).entries[e.key]
    assert all(c.id in after.screened for c in pair)
    import duckdb

    con = duckdb.connect(str(out / "experience.duckdb"), read_only=True)
    try:
        recorded = {r[0] for r in con.execute("SELECT plan_json FROM plans").fetchall()}
    finally:
        con.close()
    assert any('"arm"' in (r or "") and '"tree"' in (r or "") for r in recorded)  # tree+arm, apart
    assert any(r and '"cte_inlining"' in r and '"join_filter_pushdown"' in r for r in recorded)  # the pair


def combinations_of(e, tree):
    return [replace(tree, id=tree.id + "+join_filter_pushdown", disabled=("join_filter_pushdown",), origin="tree+arm"),
            Candidate("arm:cte_inlining,join_filter_pushdown", "arm", ("cte_inlining", "join_filter_pushdown"),
                      origin="arm-pair")]


def _store_query_ids(model_dir: Path):
    import duckdb

    con = duckdb.connect(str(model_dir / "experience.duckdb"), read_only=True)
    try:
        return con.execute("SELECT DISTINCT q.query_id FROM runs r JOIN queries q USING (query_key)").fetchall()
    finally:
        con.close()


def test_served_plans_return_the_native_result(tuned, varied):
    con = varied.connect()
    try:
        opt = Optimizer.load(tuned, con)
        book = PlanBook.load(tuned)
        # Force at least one choice of every kind the book can hold, so the forced and
        # arm branches are exercised whatever this run's timings adopted.
        kinds: dict[str, tuple] = {}
        for e in book.entries.values():
            for c in e.candidates.values():
                if c.kind not in kinds and (c.kind == "arm" or c.slots) and e.key not in {k[0].key for k in kinds.values()}:
                    kinds[c.kind] = (e, c.id)
        # a rewrite where a template has one (TPC-H q02, q17, q20: a correlated scalar subquery)
        assert {"arm", "tree"} <= set(kinds) <= {"arm", "tree", "rewrite"}
        # and the combinations tune proposes: a tree with one more rule off, two rules off
        e_tree, tree_id = kinds["tree"]
        combo = replace(e_tree.candidates[tree_id], id=tree_id + "+join_filter_pushdown",
                        disabled=("join_filter_pushdown",), origin="tree+arm")
        e_tree.candidates[combo.id] = combo
        kinds["tree+arm"] = (e_tree, combo.id)
        e_pair = next(e for e in book.entries.values() if e.key not in {k[0].key for k in kinds.values()})
        e_pair.candidates["arm:cte_inlining,join_filter_pushdown"] = Candidate(
            "arm:cte_inlining,join_filter_pushdown", "arm", ("cte_inlining", "join_filter_pushdown"), origin="arm-pair")
        kinds["arm-pair"] = (e_pair, "arm:cte_inlining,join_filter_pushdown")
        for e, cid in kinds.values():
            e.adopt(cid)
        opt = Optimizer(None, None, book.schema, book=book)
        opt.check_schema(con)
        sources = defaultdict(int)
        for q in varied:
            res = opt.optimize(q.sql, con)
            assert res.source == "book"
            sources["forced" if res.forced else "arm" if res.disabled else "native"] += 1
            sources["with rules off"] += len(res.disabled) >= (2 if not res.forced else 1)
            sources["rewritten"] += not res.forced and res.sql != q.sql
            assert fingerprint_rows(res.execute(con)) == fingerprint_rows(con.execute(q.sql).fetchall()), q.id
        assert sources["forced"] >= 4 and sources["arm"] >= 4
        assert sources["with rules off"] >= 8  # the tree+arm and the arm pair were served as such
        assert sources["rewritten"] >= (3 if "rewrite" in kinds else 0)  # each instance its own rewrite
        assert opt.optimize("SELECT count(*) FROM nation", con).source == "native"
    finally:
        con.close()


def test_native_templates_are_found_without_the_tokenizer(tuned, varied):
    """A template kept native is found by its literal-free text; that shortcut serves
    exactly what the full look-up would, and never stands for a template it shares the
    text with."""
    book = PlanBook.load(tuned)
    server, full = BookServer(book), BookServer(book)
    full._native_by_text = {}
    native = {e.key for e in book.entries.values() if e.chosen.kind == "native"}
    assert native and server._native_by_text
    shortcut = 0
    for q in varied:
        hit = server._native_by_text.get(literal_free_text(q.sql))
        if hit is not None:
            assert hit.key == template_key(q.sql).key, q.id
            shortcut += 1
        a, b = server.serve(q.sql), full.serve(q.sql)
        assert (a.sql, a.forced, a.disabled, a.fallback) == (b.sql, b.forced, b.disabled, b.fallback), q.id
    assert shortcut >= 0.8 * sum(template_key(q.sql).key in native for q in varied)
    # and serving a native template really skips the tokenizer-based key
    import lqo.book.serve as serve_module
    fresh, real = BookServer(book), serve_module.template_key
    serve_module.template_key = None  # calling it would fail
    try:
        for q in varied:
            if server._native_by_text.get(literal_free_text(q.sql)) is not None:
                assert fresh.serve(q.sql).source == "book", q.id
    finally:
        serve_module.template_key = real
    # a template kept native whose literal-free text another template of the book shares
    # is looked up in full: here a copy of a tree choice's template, one number changed
    e_tree = next(e for e in book.entries.values() if any(c.kind == "tree" and c.slots for c in e.candidates.values()))
    e_tree.adopt(next(c.id for c in e_tree.candidates.values() if c.kind == "tree" and c.slots))
    twin = book.entry("twin", template="twin", sample_sql=e_tree.sample_sql)
    assert twin.chosen.kind == "native"
    server = BookServer(book)
    assert literal_free_text(e_tree.sample_sql) not in server._native_by_text
    assert server.serve(e_tree.sample_sql).forced


def test_book_show_and_compare_held_out_instances(tuned, varied, capsys):
    assert main(["book", "show", str(tuned), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["templates"]
    assert len(rows) == 22 and all(r["instances"] == 3 for r in rows)
    assert main(["compare", str(varied.root), "--model", str(tuned), "--split", "instances", "--repeat", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["queries"] == 22 and report["totals"]["wrong_results"] == 0
    assert {q["id"].rsplit("_", 1)[1] for q in report["queries"]} == {"v4"}
    assert all(q["source"] == "book" for q in report["queries"])


def test_bad_book_input(tuned, varied, tmp_path, capsys):
    corrupt = tmp_path / "m"
    corrupt.mkdir()
    (corrupt / BOOK_FILE).write_text("{not json")
    assert main(["book", "show", str(corrupt)]) == 2
    assert main(["tune", str(varied.root), "--budget", "1", "--out", str(corrupt)]) == 2
    assert (corrupt / BOOK_FILE).read_text() == "{not json"  # nothing overwritten
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "corrupt plan book" in err
    with pytest.raises(BookError):
        PlanBook.load(tmp_path / "nothing")
    with pytest.raises(SchemaMismatchError):
        PlanBook.load(tuned, expected_schema="sha1:other")
    assert main(["tune", str(varied.root), "--budget", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_kill_during_tune_then_resume(varied, tmp_path):
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(LQO + ["tune", str(varied.root), "--budget", "5", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until screening has recorded something
        if (out / BOOK_FILE).is_file():
            try:
                if sum(len(e.screened) for e in PlanBook.load(out).entries.values()) >= 5:
                    break
            except BookError:
                pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = PlanBook.load(out)  # the book on disk is whole after a kill
    screened = {(k, c) for k, e in before.entries.items() for c in e.screened}
    assert len(screened) >= 5
    assert main(["tune", str(varied.root), "--budget", "0.2", "--out", str(out)]) == 0
    after = PlanBook.load(out)
    again = {(k, c) for k, e in after.entries.items() for c in e.screened}
    assert screened <= again  # nothing recorded before the kill is lost
    for k, e in before.entries.items():  # and nothing measured is redone or changed
        for c, ratio in e.screened.items():
            assert after.entries[k].screened[c] == ratio


def test_feedback_records_and_drift_triggers_a_recheck(varied, tmp_path):
    import shutil

    from lqo.model_dir import FEEDBACK_FILE
    from lqo.tune.inputs import TuneConfig
    from lqo.tune.tuner import Tuner

    out = tmp_path / "m"
    assert main(["tune", str(varied.root), "--budget", "0.3", "--out", str(out)]) == 0
    book = PlanBook.load(out)
    e = next(e for e in book.entries.values() if any(c.kind == "arm" for c in e.candidates.values()))
    arm = next(c.id for c in e.candidates.values() if c.kind == "arm")
    inst = [varied.query(i) for i in e.instances]
    # Pretend the arm was verified as 0.5x native (so served latencies will look drifted).
    from lqo.book.book import AcceptanceVerdict

    fake = AcceptanceVerdict(True, "accepted", 0.5, 0.4, 0.6, 0.55, 3, 15)
    e.verdicts[arm] = fake
    e.adopt(arm)
    book.save(out / BOOK_FILE)
    con = varied.connect()
    try:
        opt = Optimizer.load(out, con, record=True)
        for q in inst * 2:
            opt.optimize(q.sql, con).execute(con)
        recorded = (out / FEEDBACK_FILE).read_text().splitlines()
        assert len(recorded) == 6 and all(json.loads(r)["choice"] == arm for r in recorded)
        quiet = Optimizer.load(out, con)  # record is opt-in
        quiet.optimize(inst[0].sql, con).execute(con)
        assert len((out / FEEDBACK_FILE).read_text().splitlines()) == 6
    finally:
        con.close()
    fresh = tmp_path / "copy"
    shutil.copytree(out, fresh)
    (fresh / FEEDBACK_FILE).unlink()
    assert Tuner(varied, fresh, TuneConfig(budget_min=0.01), log=lambda _: None).run().rechecked == 0
    # Served latencies 1.5x above the verified figure: the choice is tested again.
    lines = [json.dumps({"key": e.key, "choice": arm, "ms": 10 * max(e.native_ms.values()), "at": 0})] * 5
    (out / FEEDBACK_FILE).write_text("\n".join(lines) + "\n")
    result = Tuner(varied, out, TuneConfig(budget_min=0.01), log=lambda _: None).run()
    assert result.rechecked == 1
    after = PlanBook.load(out).entries[e.key]
    assert after.verdicts[arm] != fake  # measured again
    assert after.choice == (arm if after.verdicts[arm].accepted else "native")


def test_a_verified_plan_that_no_longer_binds_runs_native(varied):
    from lqo.optimized import Optimized

    con = varied.connect()
    try:
        q = next(iter(varied))
        broken = q.sql.replace("lineitem", "lineitem_gone", 1) if "lineitem" in q.sql else q.sql + " gone"
        res = Optimized.from_book(q.sql, broken, None, 0.1)
        rows = res.execute(con)
        assert fingerprint_rows(rows) == fingerprint_rows(con.execute(q.sql).fetchall())
        assert "no longer binds" in res.fallback and res.sql == q.sql and not res.forced
        model_made = Optimized.planned(q.sql, None, None, 0.1, forced_sql=broken)
        with pytest.raises(QueryRuntimeError):
            model_made.execute(con)  # only a book's verified plan falls back; a fresh plan is a bug
    finally:
        con.close()


def test_a_book_whose_arm_choice_was_not_recorded_loads(tuned, tmp_path):
    """Books written before arms of templates without trees were recorded (the choice an
    arm id, the candidate list empty) load, with the arm rebuilt from its id."""
    data = json.loads((tuned / BOOK_FILE).read_text())
    entry = next(iter(data["templates"].values())) if isinstance(data["templates"], dict) else data["templates"][0]
    entry["candidates"], entry["choice"] = [], "arm:join_filter_pushdown"
    path = tmp_path / BOOK_FILE
    path.write_text(json.dumps(data))
    loaded = next(e for e in PlanBook.load(path).entries.values() if e.key == entry["key"])
    assert loaded.chosen.kind == "arm" and loaded.chosen.disabled == ("join_filter_pushdown",)
    entry["choice"] = "tree:0123456789ab"  # a tree cannot be rebuilt from its id: still an error
    path.write_text(json.dumps(data))
    with pytest.raises(BookError, match="not among its candidates"):
        PlanBook.load(path)
