"""Rule sets (AutoSteer-style): a pair or set of disabled rules that screened below native
grows by one rule, only where DuckDB's EXPLAIN shows a plan not tried before."""

from __future__ import annotations

from functools import partial

import pytest

from lqo.book.book import BookEntry, Candidate
from lqo.engine.db import connect_read_only
from lqo.engine.settings import current_setting
from lqo.tune.arms import plan_signature
from lqo.tune.trials import ARMS, COMBINED, MAX_SET_RULES, SET_RULES, combinations, grow_rule_set

SQL = ("SELECT n_name, count(*) AS n, sum(o_totalprice) AS s FROM customer, orders, nation, region "
       "WHERE c_custkey = o_custkey AND c_nationkey = n_nationkey AND n_regionkey = r_regionkey "
       "AND r_name = 'ASIA' AND o_orderdate >= DATE '1994-01-01' GROUP BY n_name ORDER BY s DESC LIMIT 3")


@pytest.fixture(scope="module")
def con(tpch_db):
    c = connect_read_only(tpch_db)
    yield c
    c.close()


def _arm(rules: tuple[str, ...], origin: str = "") -> Candidate:
    rules = tuple(sorted(rules))
    return Candidate("arm:" + ",".join(rules), "arm", rules, origin=origin or "arm:" + ",".join(rules))


def _entry(screened: dict[tuple[str, ...], float]) -> BookEntry:
    e = BookEntry("k", "t", SQL)
    for rules, ratio in screened.items():
        c = _arm(rules)
        e.candidates[c.id] = c
        e.screened[c.id] = ratio
    return e


def test_a_winning_pair_grows_by_rules_that_change_the_plan(con):
    plan = partial(plan_signature, con, SQL)
    pair = ("build_side_probe_side", "join_order")
    e = _entry({("build_side_probe_side",): 0.8, ("join_order",): 0.9, ("join_filter_pushdown",): 0.95,
                ("cte_inlining",): 1.2, pair: 0.7})
    grown = grow_rule_set(e, e.candidates["arm:" + ",".join(pair)], plan)
    assert grown and all(c.origin == "arm-set" and c.kind == "arm" and len(c.disabled) == 3 for c in grown)
    assert all(set(pair) < set(c.disabled) and c.id == "arm:" + ",".join(c.disabled) for c in grown)
    # the rule a single arm won with comes first (where it changes the plan); then rules never tried alone
    pair_plan = plan(pair)
    first = next(r for r in ("join_filter_pushdown",) + SET_RULES
                 if plan(tuple(sorted(pair + (r,)))) not in (pair_plan, plan(())))
    assert grown[0].disabled == tuple(sorted(pair + (first,)))
    assert all(set(c.disabled) - set(pair) <= set(ARMS) | set(SET_RULES) for c in grown)
    # each plan differs from native's, the pair's, every arm's and each other's
    tried = {plan(()), *(plan(c.disabled) for c in e.candidates.values())}
    sigs = [plan(c.disabled) for c in grown]
    assert len(set(sigs)) == len(sigs) and not set(sigs) & tried
    assert current_setting(con, "disabled_optimizers") == ""


def test_only_winning_sets_grow_and_never_past_the_cap(con):
    plan = partial(plan_signature, con, SQL)
    pair = ("build_side_probe_side", "join_order")
    e = _entry({pair: 1.02})
    assert grow_rule_set(e, e.candidates["arm:" + ",".join(pair)], plan) == []  # slower than native
    single = _entry({("join_order",): 0.5})
    assert grow_rule_set(single, single.candidates["arm:join_order"], plan) == []  # pairs come from combinations
    full = tuple(sorted(pair + SET_RULES[: MAX_SET_RULES - 2]))
    e = _entry({full: 0.5})
    assert grow_rule_set(e, e.candidates["arm:" + ",".join(full)], plan) == []
    three = tuple(sorted(pair + ("unused_columns",)))
    e = _entry({three: 0.5})
    grown = grow_rule_set(e, e.candidates["arm:" + ",".join(three)], plan)
    assert grown and all(len(c.disabled) == 4 for c in grown)
    for c in grown:  # proposed once: a grown set already among the candidates is not proposed again
        e.candidates[c.id] = c
    assert not {c.id for c in grow_rule_set(e, e.candidates["arm:" + ",".join(three)], plan)} & set(e.candidates)


def test_combinations_grow_sets_only_with_a_plan_signature(con):
    pair = ("build_side_probe_side", "join_order")
    e = _entry({pair: 0.7})
    c = e.candidates["arm:" + ",".join(pair)]
    assert combinations(e, c) == []
    grown = combinations(e, c, partial(plan_signature, con, SQL))
    assert grown and {x.origin for x in grown} == {"arm-set"} and "arm-set" in COMBINED


def test_a_grown_set_gives_the_native_result(con):
    want = sorted(con.execute(SQL).fetchall())
    from lqo.engine.harness import run_interleaved

    rules = tuple(sorted(("build_side_probe_side", "join_order") + SET_RULES[:2]))
    native, arm = run_interleaved(con, [(SQL, False), (SQL, False, rules)], repeats=1, warmup=0)
    assert arm[0].ok and arm[0].fingerprint == native[0].fingerprint
    assert sorted(con.execute(SQL).fetchall()) == want


@pytest.mark.parametrize("rule_sets", [False, True])
def test_tune_grows_rule_sets_only_when_asked(tmp_path, rule_sets, monkeypatch):
    """Every screening a fixed win (no timing): pairs are proposed either way, grown sets
    of 3-4 rules only with ``--rule-sets``, each from a pair or set that screened below native."""
    from lqo.book.book import AcceptanceVerdict, PlanBook
    from lqo.cli import main
    from lqo.tune.inputs import TuneConfig
    from lqo.tune.trials import Trials
    from lqo.tune.tuner import Tuner
    from lqo.workloads.workload import Workload

    assert main(["workload", "create", "tpch", "--sf", "0.01", "--out", str(tmp_path / "w")]) == 0
    assert main(["workload", "vary", str(tmp_path / "w"), "--per-template", "3", "--seed", "3",
                 "--out", str(tmp_path / "v")]) == 0
    wl = Workload.load(tmp_path / "v")
    wl = wl.subset(q.id for q in wl if q.template == "q05")
    monkeypatch.setattr(Trials, "screen", lambda self, t, entry, c: (0.9 - 0.01 * len(c.disabled), 0))
    monkeypatch.setattr(Trials, "accept", lambda self, t, entry, c: AcceptanceVerdict(False, "not measured here"))
    out = tmp_path / ("sets" if rule_sets else "plain")
    Tuner(wl, out, TuneConfig(budget_min=1.5, rule_sets=rule_sets, true_cards=False), log=lambda line: None).run()
    (e,) = PlanBook.load(out).entries.values()
    origins = {c.origin for c in e.candidates.values()}
    assert "arm-pair" in origins
    grown = [c for c in e.candidates.values() if c.origin == "arm-set"]
    assert bool(grown) == rule_sets
    for c in grown:
        assert 3 <= len(c.disabled) <= MAX_SET_RULES
        parents = ["arm:" + ",".join(r for r in c.disabled if r != x) for x in c.disabled]
        assert any(e.screened.get(p, 9) < 1.0 for p in parents), c.id
