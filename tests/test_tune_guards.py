"""``lqo tune`` never adopts a candidate whose rows differ from native's.

Tuning checks a candidate's result fingerprint against the native one twice
(:mod:`lqo.tune.trials`): on the screening run and on every acceptance run. Each test
here runs the real tuner on tiny TPC-H data with a single real tree candidate and
makes that candidate return other rows in one phase only (the text its ``variant`` gives
is swapped for a wrong one while that phase runs), so each test fails when its own
check is removed and does not depend on the other check.
"""

from __future__ import annotations

from collections import Counter

import pytest

import lqo.tune.trials as trials
import lqo.tune.tuner as tune
from lqo.book.book import PlanBook
from lqo.tune.trials import Trials
from lqo.tune.inputs import TuneConfig
from lqo.tune.tuner import Tuner
from lqo.engine.run_result import fingerprint_rows
from lqo.workloads.workload import Workload, write_workload

SQL = """SELECT n_name, count(*) AS lines
FROM customer, orders, lineitem, nation
WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND c_nationkey = n_nationkey
  AND l_quantity > {q}
GROUP BY n_name"""
# Wrong but plausible: the same columns and number of rows (25 nations), other counts,
# and far cheaper than the join, so timing alone would favour it.
WRONG = "SELECT n_name, count(*) AS lines FROM nation GROUP BY n_name"


@pytest.fixture(scope="module")
def workload(tpch_db, tmp_path_factory):
    """One template, three tuning instances (all tuned on, none held out)."""
    root = tmp_path_factory.mktemp("guards")
    write_workload(root, "guards", tpch_db, [(f"t_{i}", "t", SQL.format(q=q)) for i, q in enumerate((5, 20, 35))])
    w = Workload.load(root)
    con = w.connect()
    try:  # the wrong text really returns other rows than every instance
        assert all(fingerprint_rows(con.execute(q.sql).fetchall()) != fingerprint_rows(con.execute(WRONG).fetchall())
                   for q in w)
    finally:
        con.close()
    return w


def _tune(workload, out, monkeypatch, wrong_in: str):
    """Tune ``workload`` with one tree candidate that returns other rows while
    ``Trials.<wrong_in>`` runs; what its ``variant`` gave per phase (right or wrong)."""
    phase: list[str] = []
    ran: Counter = Counter()
    target: dict[str, str] = {}

    def in_phase(name):
        real = getattr(Trials, name)

        def wrapped(self, *args):
            phase.append(name)
            try:
                return real(self, *args)
            finally:
                phase.pop()
        return wrapped

    real_candidates = Trials._candidates

    def one_tree(self, t, entry, rng):
        tree = next(c for c in real_candidates(self, t, entry, rng) if c.kind == "tree" and c.slots)
        target["id"] = tree.id
        return [tree]

    real_variant = trials.variant

    def variant(c, sql, catalog):
        text, *how = real_variant(c, sql, catalog)  # (text, forced, disabled rules, settings)
        where = phase[-1] if phase else "?"
        if c.id == target.get("id") and where == wrong_in:
            ran[(where, "wrong")] += 1
            return (WRONG, *how)
        ran[(where, "right")] += 1
        return (text, *how)

    monkeypatch.setattr(Trials, "_candidates", one_tree)
    monkeypatch.setattr(Trials, "screen", in_phase("screen"))
    monkeypatch.setattr(Trials, "accept", in_phase("accept"))
    monkeypatch.setattr(trials, "variant", variant)
    monkeypatch.setattr(tune, "combinations", lambda entry, c, grow=None: [])  # no retries or pairs: one candidate
    # Every candidate that screens without a wrong result or a time-out gets its acceptance
    # test (now, or put off until screening is done), whatever one cold run measured.
    config = TuneConfig(budget_min=2, rounds=5, screen_below=1e9, true_cards=False)
    result = Tuner(workload, out, config, log=lambda _: None).run()
    book = PlanBook.load(out)
    (entry,) = book.entries.values()
    return result, entry, target["id"], ran


def test_screening_refuses_a_candidate_with_other_rows(workload, tmp_path, monkeypatch):
    result, entry, cid, ran = _tune(workload, tmp_path / "m", monkeypatch, wrong_in="screen")
    assert ran[("screen", "wrong")] == 1  # the screening run got the wrong text
    assert entry.screened[cid] == float("inf")  # recorded as a wrong result, not a ratio
    assert result.screened == 1 and result.wrong == 1
    assert cid not in entry.verdicts and result.tested == 0 and not ran[("accept", "right")]  # never tested
    assert entry.choice == "native" and result.adopted == 0


def test_acceptance_refuses_a_candidate_with_other_rows(workload, tmp_path, monkeypatch):
    result, entry, cid, ran = _tune(workload, tmp_path / "m", monkeypatch, wrong_in="accept")
    assert ran[("screen", "right")] == 1  # screening saw the native rows ...
    screened = entry.screened[cid]
    assert screened < float("inf") and result.wrong == 0, "screening timed out: no acceptance test to check"
    assert ran[("accept", "wrong")] >= 1  # ... the acceptance runs did not
    v = entry.verdicts[cid]
    assert not v.accepted and v.reason == "wrong result on t_0"
    assert entry.choice == "native" and result.adopted == 0
    assert PlanBook.load(tmp_path / "m").entries[entry.key].chosen.kind == "native"
