"""Fuzzed correctness of forced plans: random SQL over TPC-H / TPC-DS (sf 0.01).

A fixed-seed sample of the campaign in ``benchmarks/fuzz_forced_plans.py`` (same
generator, same judge): every query either forces to DuckDB's native result under each
tree lqo renders (native tree, random and enumerated trees), or is refused with a
reason. A wrong result or a crash fails, with the query's SQL (Hypothesis shrinks it).
The full campaign: ``python benchmarks/fuzz_forced_plans.py --queries 10000 --seed 1
--json OUT``.

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

SAMPLE = 200  # queries; about 20 s on 2 cores


@pytest.fixture(scope="module")
def envs(tpch_db, tpcds_db):
    out = {}
    for kind, path in (("tpch", tpch_db), ("tpcds", tpcds_db)):
        con = fz.connect(path)
        out[kind] = (con, Catalog.from_connection(con), fz.load_schema(con, kind))
    yield out
    for con, _, _ in out.values():
        con.close()


def test_fuzzed_queries_force_to_the_native_result_or_are_refused(envs):
    seen: Counter = Counter()
    reasons: Counter = Counter()
    features: Counter = Counter()

    @settings(max_examples=SAMPLE, derandomize=True, database=None, deadline=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(kind=st.sampled_from(["tpch", "tpcds"]), rng=st.randoms(use_true_random=False))
    def one(kind, rng):
        con, catalog, schema = envs[kind]
        gen = fz.QueryGen(schema, rng)
        sql = gen.query()
        note(f"{kind}: {sql}")
        out = fz.check_query(sql, con, catalog, random.Random(sql), n_random=2, timeout_s=5)
        note(f"{out.status}: {out.reason or ''} {out.detail or ''}")
        seen[out.status] += 1
        seen["plans"] += out.plans
        features.update(gen.features.keys())
        if out.status == "refused":
            assert out.reason, sql
            reasons[out.reason] += 1
        assert out.status not in ("wrong", "crash"), f"{out.status}: {out.detail}\n{sql}"

    one()
    print(f"fuzz sample: {dict(seen)}; refusals: {dict(reasons)}")
    n = sum(seen[s] for s in ("ok", "refused", "invalid", "slow"))
    assert seen["invalid"] <= 0.03 * n, "the generator writes SQL DuckDB rejects"
    # The sample exercises the forced path, not only refusals.
    assert seen["ok"] >= 0.4 * n and seen["plans"] >= 2 * seen["ok"]
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
