"""The first stage of the cold path (lqo.triage): plan a first-seen query only where the
predicted gain pays for planning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lqo.triage import FACT_NAMES, Triage, TriageConfig, query_facts

ROWS = {"fact": 3_000_000, "dim": 10_000, "tiny": 20}


def _texts(n: int, rng: np.random.Generator):
    """Synthetic workload: latency grows with the fact table and the number of joins."""
    texts, native, planning = [], [], []
    for _ in range(n):
        joins = int(rng.integers(0, 4))
        big = bool(rng.integers(0, 2))
        tables = (["fact"] if big else ["tiny"]) + ["dim"] * joins
        texts.append("SELECT count(*) FROM " + ", ".join(f"{t} t{i}" for i, t in enumerate(tables)))
        native.append((400.0 if big else 2.0) * (1 + joins) * math.exp(rng.normal(0, 0.1)))
        planning.append(5.0 + 3.0 * joins)
    return texts, native, planning


def test_facts_are_read_from_the_text_alone():
    f = query_facts("select a from FACT f join dim d on f.k = d.k where d.x in (select x from dim)", ROWS)
    assert len(f) == len(FACT_NAMES)
    named = dict(zip(FACT_NAMES, f))
    assert named["tables"] == 2 and named["table_refs"] == 3 and named["selects"] == 2
    assert named["log_rows_max"] == pytest.approx(math.log1p(3_000_000))
    assert query_facts("SELECT 1", ROWS)[1] == 0  # no table named: facts still defined


def test_fitted_triage_plans_slow_queries_and_runs_fast_ones_as_written():
    texts, native, planning = _texts(200, np.random.default_rng(0))
    t = Triage.fit(texts, native, planning, ROWS)
    predicted = np.array([t.predict(x)[0] for x in texts])
    on_fact = np.array(["fact" in x for x in texts])
    assert predicted[on_fact].min() > 5 * predicted[~on_fact].max()  # slow and fast told apart
    assert np.corrcoef(np.log(predicted), np.log(native))[0, 1] > 0.9
    slow = t.judge("SELECT count(*) FROM fact t0, dim t1")
    fast = t.judge("SELECT count(*) FROM tiny t0, dim t1")
    assert slow.plan and slow.reason is None
    assert not fast.plan and fast.reason.startswith("not worth planning") and "ms" in fast.reason
    # the rule: plan iff expected_gain x native >= safety x planning
    for v in (slow, fast):
        assert v.plan == (0.10 * v.native_ms >= 2.0 * v.planning_ms)
    # the search budget follows the predicted latency, capped by the configured one
    assert t.search_budget_ms(100.0, 10.0) == pytest.approx(2.0)
    assert t.search_budget_ms(10_000.0, 10.0) == 10.0 and t.search_budget_ms(1.0, 10.0) == 1.0


def test_config_and_round_trip():
    texts, native, planning = _texts(50, np.random.default_rng(1))
    t = Triage.fit(texts, native, planning, ROWS, TriageConfig(enabled=False))
    assert all(t.judge(x).plan for x in texts)  # disabled: everything is planned
    back = Triage.from_json(json.loads(json.dumps(t.to_json())))
    assert back == t and back.predict(texts[0]) == t.predict(texts[0])
    never = Triage.fit(texts, native, planning, ROWS, TriageConfig(safety=1e9))
    assert not any(never.judge(x).plan for x in texts)


def test_length_envelope_bounds_every_training_query_and_spares_small_databases_the_facts(monkeypatch):
    import lqo.triage as triage_module

    texts, native, planning = _texts(200, np.random.default_rng(2))
    t = Triage.fit(texts, native, planning, ROWS)
    a, b = t.envelope
    assert all(math.exp(a + b * math.log(len(x) + 1)) >= n for x, n in zip(texts, native))
    assert t.planning_floor_ms == min(planning)
    assert t.judge("SELECT count(*) FROM fact t0, dim t1").plan  # the bound lets slow ones through
    # a small database: 2-5 ms queries, planning 3+ ms; the facts are never read
    small = [x.replace("fact", "tiny") for x in texts]
    t = Triage.fit(small, [2.0 + len(x) % 3 for x in small], planning, ROWS)

    def no_facts(*_):
        raise AssertionError("facts read")

    monkeypatch.setattr(triage_module, "query_facts", no_facts)
    for x in small[:20] + ["SELECT count(*) FROM tiny t0, dim t1, dim t2, dim t3, dim t4"]:
        v = t.judge(x)
        assert not v.plan and "this long" in v.reason
    # a model saved before the envelope existed judges by the facts alone
    old = {k: v for k, v in t.to_json().items() if k not in ("envelope", "planning_floor_ms")}
    assert Triage.from_json(old).envelope is None


def test_length_cutoff_is_the_envelope_rule_solved_once():
    """The check judges short texts by one comparison of lengths; it must decide exactly
    as the envelope's formula does, at every length, and follow config changes."""
    texts, native, planning = _texts(50, np.random.default_rng(3))
    t = Triage.fit([x.replace("fact", "tiny") for x in texts], [2.0 + i % 3 for i in range(50)], planning, ROWS)
    a, b = t.envelope
    for safety in (0.25, 0.3, 0.35):  # boundaries near 50, 300 and 1,000 characters
        t.config.safety = safety
        cut = [n for n in range(1, 3000)
               if 0.10 * math.exp(a + b * math.log(n + 1)) < safety * t.planning_floor_ms]
        assert 20 < len(cut) < 2999  # the boundary lies inside the range tested
        for n in range(1, 3000):
            v = t.judge("S" * n)
            short = v.reason is not None and "this long" in v.reason
            assert short == (n in cut), (safety, n)
            if short:
                assert 0.10 * v.native_ms >= 0.10 * math.exp(a + b * math.log(n + 1)) - 1e-9  # a bound
    t.config.safety = 0.0  # planning called free: nothing is cut by length
    assert t.judge("S").reason is None or "this long" not in t.judge("S").reason
