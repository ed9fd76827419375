"""Fuzzed correctness of forced plans: random SQL over TPC-H / TPC-DS (sf 0.01).

A fixed-seed sample of the campaign in ``benchmarks/fuzz_forced_plans.py`` (same
generator, same judge): every query either forces to DuckDB's native result under each
tree lqo renders (native tree, random and enumerated trees, one tree with a rule of
lqo's tree+arm candidates off), or is refused with a reason; and every query (refused
ones too) gives the native result under 2-4 setting arms (DuckDB optimizer rules off).
Every 10th query runs with 2 threads and 24 MB of memory. A wrong result or a crash
fails, with the query's SQL (Hypothesis shrinks it). The generator's filters keep
results non-empty: at least 80% of the judged queries must return something a plan
that loses rows would change. The full campaign: ``python
benchmarks/fuzz_forced_plans.py --queries 10000 --seed 2 --json OUT``.

Failures the fuzzer found are kept below as explicit SQL (shrunk by hand from the
fuzzer's cases), each checked against every tree of its block.
"""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from lqo.engine.harness import Harness
from lqo.sql.catalog import Catalog
from lqo.trees.enumerate import exhaustive_trees
from lqo.trees.query import prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz_forced_plans as fz  # noqa: E402

SAMPLE = 200  # queries; about 45 s on 2 cores (25 s before arms, stress and non-empty results)

# Open lqo bugs the fuzzer found, each (name, test on a crash's or wrong result's detail).
# A sample query that hits one is counted and printed, not failed, so the sample keeps
# guarding everything else; its reproducers in OPEN are xfail(strict) tests that fail
# once the bug is fixed: then move them to REGRESSIONS and drop the entry here.
SHARED_CTE_UPPERCASE = "a shared CTE leaves the upper-case alias of a relation it absorbed in the SQL"
KNOWN_LQO_BUGS = [
    (SHARED_CTE_UPPERCASE, lambda detail: "__lqo_shared_" in detail and 'Binder Error: Referenced table' in detail),
]


@pytest.fixture(scope="module")
def envs(tpch_db, tpcds_db):
    out = {}
    for kind, path in (("tpch", tpch_db), ("tpcds", tpcds_db)):
        con = fz.connect(path)
        out[kind] = (con, Catalog.from_connection(con), fz.load_schema(con, kind))
    yield out
    for con, _, _ in out.values():
        con.close()


def test_fuzzed_queries_force_to_the_native_result_or_are_refused(envs, monkeypatch):
    # An arm without filter_pushdown may run a cross product: stopped sooner here.
    monkeypatch.setattr(fz, "SLOW_FLOOR_S", 0.5)
    seen: Counter = Counter()
    reasons: Counter = Counter()
    features: Counter = Counter()
    arms: Counter = Counter()

    @settings(max_examples=SAMPLE, derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(["tpch", "tpcds"]), rng=st.randoms(use_true_random=False))
    def one(kind, rng):
        con, catalog, schema = envs[kind]
        gen = fz.QueryGen(schema, rng)
        sql = gen.query()
        note(f"{kind}: {sql}")
        seen["n"] += 1
        stress = seen["n"] % 10 == 0
        out = fz.check_query(sql, con, catalog, random.Random(sql), n_random=2, timeout_s=5, stress=stress)
        note(f"{out.status}: {out.reason or ''} {out.detail or ''} arms {out.arms}")
        seen[out.status] += 1
        seen["plans"] += out.plans
        seen["tree_arm_runs"] += out.tree_arm_runs
        seen["stress_judged"] += out.stress and not out.stress_fallback and out.status != "slow"
        if out.status == "ok":
            seen["judged_non_trivial"] += out.trivial is False
        if out.arms:
            seen["arm_judged"] += 1
        arms.update(verdict for _, verdict, _ in out.arms)
        features.update(gen.features.keys())
        if out.status == "refused":
            assert out.reason, sql
            reasons[out.reason] += 1
        known = [name for name, hit in KNOWN_LQO_BUGS if out.status in ("wrong", "crash") and hit(out.detail or "")]
        if known:
            seen["known_lqo_bug"] += 1
            print(f"known lqo bug ({known[0]}): {sql}")
            return
        assert out.status not in ("wrong", "crash"), f"{out.status}: {out.detail}\n{sql}"
        # DuckDB's own wrong results under a rule that uncovers its LIMIT bug (see
        # test_duckdb_filter_pushdown_off_uncovers_the_limit_bug) are counted, not failed
        duckdb_bug = [f for f in out.arm_failures if f.get("cause") == fz.LIMIT_FILTER_BUG]
        seen["arm_duckdb_limit_bug"] += len(duckdb_bug)
        assert len(duckdb_bug) == len(out.arm_failures), f"setting arm: {out.arm_failures}\n{sql}"

    one()
    print(f"fuzz sample: {dict(seen)}; arms: {dict(arms)}; refusals: {dict(reasons)}")
    n = sum(seen[s] for s in ("ok", "refused", "invalid", "slow", "flaky", "known_lqo_bug"))
    assert seen["invalid"] <= 0.03 * n, "the generator writes SQL DuckDB rejects"
    # The sample exercises the forced path, not only refusals.
    assert seen["ok"] >= 0.4 * n and seen["plans"] >= 2 * seen["ok"]
    # ... on results that can show a lost row: not empty, not one row of 0 / NULL
    assert seen["judged_non_trivial"] >= 0.8 * seen["ok"], "the generator's filters leave results empty"
    # Setting arms are judged on every query with a native result, refused ones too;
    # lqo's tree+arm candidates (a forced tree with a rule off) once per forced query.
    assert seen["arm_judged"] == seen["ok"] + seen["refused"] + seen["flaky"] + seen["known_lqo_bug"] and arms["ok"] >= 2 * seen["arm_judged"] * 0.95
    assert seen["tree_arm_runs"] >= 0.9 * seen["ok"]
    assert seen["stress_judged"] >= 0.08 * n  # every 10th query with 2 threads, 24 MB
    for construct in ("cte", "derived", "explicit_join", "subquery_exists", "subquery_in", "union",
                      "out_group_by", "limit", "filter_date", "filter_like", "filter_null",
                      "outer_semi_anti", "residual_cmp"):
        assert features[construct] > 0, construct


def _all_trees(sql: str, env) -> tuple[str, str | None, int]:
    """(status, reason, plans): every tree of each free block (up to 5 relations)
    rendered, forced and compared with the native result."""
    con, catalog, _ = env
    h = Harness(con, timeout_s=10)
    native = h.run(sql, profile=False)
    assert native.error is None, native.error
    pq = prepare(sql, con, catalog)
    if not pq.forceable:
        return "refused", pq.reason, 0
    plans = [pq.native_plan]
    for block in pq.free_blocks:
        if len(block.relations) <= 5:
            plans += [pq.native_plan.replace(block.index, t) for t in exhaustive_trees(block)]
    for plan in plans:
        forced = h.run(pq.render(plan), forced=True, profile=False)
        assert forced.error is None, f"{plan}: {forced.error}"
        assert forced.fingerprint == native.fingerprint, f"wrong result with {plan}:\n{pq.render(plan)}"
    return "ok", None, len(plans)


# (kind, SQL, expected): "ok" (every tree gives the native result) or "refused: <part of the reason>"
REGRESSIONS = [
    # SELECT * listed columns in the rendered FROM order: rows came back with columns
    # permuted. Fixed in render: `*` becomes each relation's star in written order.
    ("tpch", "SELECT * FROM nation, region WHERE n_regionkey = r_regionkey", "ok"),
    ("tpch", "SELECT *, 1 AS one FROM nation n, region AS \"R x\" WHERE n.n_regionkey = \"R x\".r_regionkey "
             "ORDER BY 1 LIMIT 3", "ok"),
    ("tpcds", "SELECT * FROM inventory AS t1, item AS t2, date_dim t3 WHERE t2.i_item_sk = t1.inv_item_sk "
              "AND t1.inv_date_sk = t3.d_date_sk ORDER BY ALL LIMIT 1", "ok"),
    ("tpch", "SELECT count(*), count(DISTINCT c1) FROM (SELECT * FROM part, partsupp WHERE p_partkey = ps_partkey "
             "AND p_size < 5) AS w(c0, c1)", "ok"),
    # ... and expansions that cannot be kept so are refused (they were rewritten wrong)
    ("tpch", "SELECT * EXCLUDE (n_comment) FROM nation n, region r WHERE n.n_regionkey = r.r_regionkey",
     "refused: with modifiers"),
    ("tpch", "SELECT COLUMNS(*) FROM partsupp t1, supplier t2 WHERE t1.ps_suppkey = t2.s_suppkey "
             "ORDER BY ALL LIMIT 1", "refused: COLUMNS"),
    # A derived table referring to a sibling FROM item (DuckDB's implicit LATERAL) was
    # reordered before it: "Referenced table n not found", or an outer table of the same
    # name bound instead. Refused now.
    ("tpch", "SELECT n.n_name, d.r_name FROM nation n, (SELECT * FROM region r WHERE r.r_regionkey = n.n_regionkey) d "
             "WHERE n.n_regionkey = d.r_regionkey", "refused: implicit LATERAL"),
    ("tpch", "SELECT n.n_name, d.r_name FROM nation n, (SELECT * FROM region WHERE r_regionkey = n_regionkey) d "
             "WHERE n.n_regionkey = d.r_regionkey", "refused: implicit LATERAL"),
    # DuckDB pushes a join's runtime filter below a LIMIT on the probe side (campaign seed 1,
    # query 2245: 50 rows vs native 0). Refused now: build sides must stay DuckDB's there.
    ("tpch", "SELECT count(*) FROM (SELECT c_custkey FROM customer ORDER BY 1 LIMIT 58) AS t6, customer AS t3 "
             "WHERE t6.c_custkey = t3.c_custkey AND t3.c_name >= 'Customer#000001125'", "refused: with LIMIT"),
    ("tpch", "WITH t6 AS (SELECT c_custkey FROM customer ORDER BY 1 LIMIT 58) SELECT count(*) FROM t6, customer AS t3 "
             "WHERE t6.c_custkey = t3.c_custkey AND t3.c_name >= 'Customer#000001125'", "refused: with LIMIT"),
    # A join whose inputs were both decorrelation scans crashed the native-tree reader
    # (StopIteration; campaign seed 1, query 8125). Read now.
    ("tpch", "WITH cte1 AS (SELECT t8.o_orderkey AS o_orderkey, t8.o_orderkey AS val FROM orders AS t8 "
             "WHERE t8.o_orderstatus LIKE 'F%' AND t8.o_orderstatus = 'F') SELECT count(*) AS cnt FROM customer AS t1, "
             "orders t2, (SELECT t3.c_custkey AS c_custkey, t3.c_custkey AS val FROM customer t3 JOIN orders AS t4 "
             "ON t3.c_custkey = t4.o_custkey JOIN customer AS t5 ON t4.o_custkey = t5.c_custkey WHERE t5.c_custkey = 1) "
             "AS t6, (SELECT DISTINCT t7.l_orderkey AS l_orderkey FROM lineitem AS t7 JOIN cte1 AS t9 "
             "ON t7.l_orderkey = t9.o_orderkey JOIN cte1 AS t10 ON t9.o_orderkey = t10.o_orderkey AND t10.val > 0 "
             "WHERE t7.l_orderkey = t2.o_orderkey) AS t11 WHERE t1.c_custkey = t2.o_custkey "
             "AND t2.o_custkey = t6.c_custkey AND t2.o_orderkey = t11.l_orderkey", "ok or refused"),
    # Equalities through a derived column of unknown type were made transitive: with a
    # collation, a.r_name = d.k (NOCASE) and d.k = e.lk do not make a.r_name = e.lk, and
    # even DuckDB's native tree rendered gave another count. Now pairwise (residuals).
    ("tpch", "SELECT count(*), min(a.r_name), max(e.lk) FROM region a, (SELECT r_name COLLATE NOCASE AS k FROM region) d, "
             "(SELECT lower(r_name) AS lk FROM region) e WHERE a.r_name = d.k AND d.k = e.lk", "ok"),
    ("tpch", "SELECT count(*) FROM region a, (SELECT r_name COLLATE NOCASE AS k FROM region) d, "
             "(SELECT lower(r_name) AS lk FROM region) e, nation n WHERE a.r_name = d.k AND d.k = e.lk "
             "AND n.n_regionkey = a.r_regionkey", "ok"),
    # a derived key that is a plain column keeps its type: still a transitive key class
    ("tpch", "SELECT count(*) FROM lineitem l, orders o, (SELECT o_orderkey AS k FROM orders WHERE o_totalprice > 1e5) d "
             "WHERE l.l_orderkey = d.k AND d.k = o.o_orderkey AND l.l_quantity < 5", "ok"),
]


# Open bugs (KNOWN_LQO_BUGS): fail once fixed, then move to REGRESSIONS as "ok".
OPEN = [
    # Joins several blocks compute identically become one materialized CTE
    # (lqo/trees/shared.py); a residual of a block that names a relation inside it by an
    # upper-case alias keeps that alias, out of scope: even DuckDB's native tree rendered
    # fails to bind ('Referenced table "N1" not found'). Lower-case aliases are rewritten.
    # Found by the campaign (seed 2) and the sample; shrunk by hand.
    ("tpch", "SELECT count(*) FROM customer C1, nation N1, supplier S1 WHERE N1.n_nationkey = C1.c_nationkey "
             "AND N1.n_nationkey = S1.s_nationkey AND C1.c_acctbal > N1.n_regionkey UNION ALL SELECT count(*) "
             "FROM customer C2, nation N2, supplier S2 WHERE N2.n_nationkey = C2.c_nationkey "
             "AND C2.c_nationkey = S2.s_nationkey", "ok"),
    # ... and a derived table's SELECT list naming a relation the shared CTE absorbed
    # (campaign seed 2, query 8325, shrunk by the campaign)
    ("tpch", "SELECT count(*) AS cnt FROM nation AS T1, region T2, nation AS T3, (SELECT DISTINCT T4.r_regionkey AS "
             "r_regionkey FROM region T4, nation T5 WHERE T4.r_regionkey = T5.n_regionkey) AS T6 WHERE T1.n_regionkey = "
             "T2.r_regionkey AND T2.r_regionkey = T3.n_regionkey AND T3.n_regionkey = T6.r_regionkey", "ok"),
]


@pytest.mark.xfail(strict=True, reason=SHARED_CTE_UPPERCASE)
@pytest.mark.parametrize("kind, sql, expected", OPEN, ids=[f"open{i}" for i in range(len(OPEN))])
def test_open_fuzz_bugs(kind, sql, expected, envs):
    test_fuzz_regressions(kind, sql, expected, envs)


@pytest.mark.parametrize("kind, sql, expected", REGRESSIONS, ids=[f"r{i}" for i in range(len(REGRESSIONS))])
def test_fuzz_regressions(kind, sql, expected, envs):
    status, reason, plans = _all_trees(sql, envs[kind])
    if expected == "ok or refused":
        assert status in ("ok", "refused"), reason
    elif expected == "ok":
        assert status == "ok", reason
        assert plans >= 2  # a reordered tree ran, not only the native one
    else:
        assert status == "refused" and expected.split(": ", 1)[1] in reason, reason


def test_typed_derived_keys_stay_transitive(envs):
    _, catalog, _ = envs["tpch"]
    from lqo.sql.join_graph import build_query_graph

    g = build_query_graph(REGRESSIONS[-1][1], catalog)
    (block,) = [b for b in g.blocks if len(b.relations) == 3]
    assert len(block.classes) == 1 and {c.rel for c in block.classes[0]} == {"l", "o", "d"}
    g = build_query_graph(REGRESSIONS[-3][1], catalog)
    assert g.blocks[0].classes == [] and len(g.blocks[0].residuals) == 2


def test_duckdb_pushes_join_filters_below_a_probed_limit(envs):
    """Why LIMIT relations are refused: DuckDB 1.5.5 itself answers wrong when a LIMIT
    subquery is the probe side. If this starts failing, DuckDB fixed it; the refusal in
    lqo.sql.relations (LIMIT_REASON) and the arm filter in lqo.tune.trials can go."""
    con = envs["tpch"][0]
    from lqo.engine.settings import forced_settings

    sql = ("SELECT count(*) FROM orders AS t1 JOIN (customer AS t2 JOIN ((SELECT t4.c_custkey AS c_custkey "
           "FROM orders AS t5 JOIN customer AS t4 ON t5.o_custkey = t4.c_custkey ORDER BY 1 LIMIT 58) AS t6 "
           "JOIN customer AS t3 ON t6.c_custkey = t3.c_custkey) ON t2.c_custkey = t3.c_custkey) "
           "ON t1.o_custkey = t2.c_custkey WHERE t3.c_name >= 'Customer#000001125'")
    assert con.execute(sql).fetchall() == [(0,)]  # the LIMIT keeps customers 1..32, the filter wants >= 1125
    with forced_settings(con):
        assert con.execute(sql).fetchall() != [(0,)]


def test_duckdb_filter_pushdown_off_uncovers_the_limit_bug(envs):
    """Why the campaign's arm "filter_pushdown" can be wrong (seed 2, query 2834, shrunk):
    with it off, DuckDB 1.5.5 again lets a join's runtime filter act below a LIMIT in
    FROM (1400 rows instead of 0, one thread). join_filter_pushdown off as well gives
    the right count. With 2 threads even a native text of this kind answered 0 or 56 by
    timing (the campaign then counts ``native_nondeterministic``). lqo does not use
    filter_pushdown as an arm. If this starts failing, DuckDB fixed it."""
    con = envs["tpch"][0]
    from lqo.engine.settings import disabled_optimizers

    sql = ("SELECT count(*) AS cnt FROM (SELECT t5.c_nationkey AS c_nationkey, t5.c_custkey AS val FROM customer t5 "
           "JOIN nation AS t6 ON t5.c_nationkey = t6.n_nationkey WHERE t6.n_name NOT IN ('CANADA', 'ALGERIA', 'RUSSIA') "
           "ORDER BY 1, 2 LIMIT 120) AS t7, nation AS t3, nation t4, nation AS t1, region AS t2 WHERE t1.n_name = 'PERU' "
           "AND t1.n_regionkey = t2.r_regionkey AND t2.r_regionkey = t3.n_regionkey AND t2.r_regionkey = t4.n_regionkey "
           "AND t1.n_nationkey = t7.c_nationkey")
    assert con.execute(sql).fetchall() == [(0,)]  # the LIMIT keeps nations 1, 2, ...; PERU is 17
    with disabled_optimizers(con, ["filter_pushdown", "join_filter_pushdown"]):
        assert con.execute(sql).fetchall() == [(0,)]
    with disabled_optimizers(con, ["filter_pushdown"]):
        assert con.execute(sql).fetchall() != [(0,)]


def test_duckdb_internal_binder_error_on_a_valid_join(envs):
    """DuckDB 1.5.5 fails this valid query with an internal error ('Failed to bind
    column reference "r_name"'; seed 2, queries 1213 and 1310 of the campaign, shrunk by
    hand): the campaign counts such queries as ``duckdb_internal_errors``. With
    statistics_propagation or filter_pushdown off it runs. If this starts failing,
    DuckDB fixed it."""
    import duckdb

    con = envs["tpch"][0]
    from lqo.engine.settings import disabled_optimizers

    sql = ("SELECT r_name, min(n4.n_nationkey) AS a1 FROM customer c, nation AS n4, region AS r, orders AS o "
           "WHERE c.c_custkey = o_custkey AND n4.n_nationkey = c.c_nationkey AND r.r_regionkey = n4.n_regionkey "
           "AND o_custkey <> n4.n_regionkey AND c.c_nationkey + n4.n_regionkey > 0 GROUP BY r_name")
    with pytest.raises(duckdb.InternalException, match="Failed to bind column reference"):
        con.execute(sql).fetchall()
    with disabled_optimizers(con, ["statistics_propagation"]):
        assert len(con.execute(sql).fetchall()) == 5
