"""Serving fuzz: a fixed-seed sample of ``benchmarks/serving_fuzz.py``.

Per template family (TPC-H and TPC-DS sf 0.01: IN lists of other lengths, mixed-type lists,
negative / scientific numbers, strings holding quotes and comment markers, quoted
identifiers holding ``--`` and ``/*``, comments holding literals, intervals, casts,
dates, LIMIT / OFFSET, positions, NULL and booleans, shared joins, adversarial pairs
that differ in something other than a literal), a plan book adopted from one instance
(a forced native tree, a random tree, a setting arm, and a tree sharing a join where
the family has one) serves the family's other instances through
``lqo.Optimizer.load(dir).optimize(sql, con).execute(con)``; every served result must
equal DuckDB's native result and nothing may raise where the native text does not.

The full campaign: ``python benchmarks/serving_fuzz.py --instances 10000 --seed 1
--json OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import serving_fuzz as sf  # noqa: E402

SEED = 5
PER_FAMILY = 8  # instances per family, each served under every mode: ~650 serves, ~20 s


@pytest.fixture(scope="module")
def campaign(tpch_db, tpcds_db):
    camp = sf.Campaign({"tpch": tpch_db, "tpcds": tpcds_db}, SEED, timeout_s=20.0, shrink_s=0.0, log=lambda s: None)
    yield camp
    camp.close()


def _describe(report: dict) -> str:
    lines = []
    for f in report["failures"][:4]:
        lines.append(f"{f['status']} ({f['mode']}, variant {f['variant']}): native {f['native_rows']} rows, "
                     f"served {f['served_rows']} rows; {f['detail']}\n  tuned:    {f['tuned_sql']!r}\n"
                     f"  instance: {f['instance_sql']!r}\n  served:   {f['served_sql']!r}")
    return "\n".join(lines)


@pytest.mark.parametrize("name", [f.name for f in sf.FAMILIES])
def test_served_instances_return_the_native_result(campaign, name):
    index = next(i for i, f in enumerate(sf.FAMILIES) if f.name == name)
    report = campaign.run_family(sf.FAMILIES[index], PER_FAMILY, index)
    counts = {m: e["counts"] for m, e in report["modes"].items()}
    wrong = sum(c["wrong"] for c in counts.values())
    crashes = sum(c["crashes"] for c in counts.values())
    invalid = sum(c["invalid"] for c in counts.values())
    assert invalid == 0, f"the generator wrote SQL DuckDB rejects: {report['failures']}"
    assert (wrong, crashes) == (0, 0), f"{name}: {wrong} wrong, {crashes} crashes\n{_describe(report)}"


def test_a_known_template_is_served_from_a_connections_first_call(campaign):
    fam = sf.FAMILY_BY_NAME["operator_pair"]
    report = campaign.run_family(fam, 2, sf.FAMILIES.index(fam), modes=["tree", "arm"])
    firsts = {m: e["first_call"] for m, e in report["modes"].items()}
    assert firsts == {"tree": {"status": "served_tree", "reason": None},
                      "arm": {"status": "served_arm", "reason": None}}, firsts


def test_a_book_for_another_schema_is_refused(campaign):
    bad = [c for c in campaign.schema_checks() if c["ok"] is False]
    assert not bad, bad


def test_instances_are_deterministic_per_seed(campaign):
    for fam in sf.FAMILIES:
        pools = campaign.envs[fam.kind].pools
        tuned = sf.draw_instance(fam, SEED, 0, pools, None)
        a = sf.draw_instance(fam, SEED, 5, pools, tuned.params).sql()
        b = sf.draw_instance(fam, SEED, 5, pools, tuned.params).sql()
        assert a == b
