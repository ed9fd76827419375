"""Rendering plans to SQL: DuckDB executes exactly the tree, with the native result.

- Replica check: rendering DuckDB's own native trees and forcing them reproduces the
  native join trees (EXPLAIN read back) on every TPC-H and TPC-DS query lqo can force.
- Property test: random trees of TPC blocks, forced, return the native result and are
  executed as rendered.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tpc_queries
from lqo.sql.catalog import Catalog
from lqo.engine.db import connect_read_only
from lqo.engine.harness import Harness
from lqo.engine.settings import forced_settings
from lqo.sql.join_graph import build_query_graph
from lqo.trees.native import explain_json, read_native_trees
from lqo.trees.plan import Join, Leaf, Plan
from lqo.trees.query import prepare
from lqo.trees.render import render
from lqo.errors import PlanError

# Queries lqo must force at sf 0.01, per benchmark. The rest are left native with a
# reason: outer joins (tpch q13; tpcds q05 q40 q49 q51 q72 q75 q77 q78 q80 q93 q97) and,
# at this tiny scale only, plans where DuckDB proves a filter empty (EMPTY_RESULT) or the
# tree is not recognised. At SF1 TPC-DS 88 of 99 replicate (the 11 others: outer joins).
MIN_REPLICATED = {"tpch": 17, "tpcds": 78}  # tpch: every query with joins but q13


@pytest.fixture(scope="module")
def dbs(tpch_db, tpcds_db):
    cons = {"tpch": connect_read_only(tpch_db), "tpcds": connect_read_only(tpcds_db)}
    cats = {k: Catalog.from_connection(c) for k, c in cons.items()}
    yield cons, cats
    for c in cons.values():
        c.close()


@pytest.fixture(scope="module")
def prepared(dbs):
    cons, cats = dbs
    return {
        kind: {qid: prepare(sql, cons[kind], cats[kind]) for qid, sql in tpc_queries(kind).items()}
        for kind in ("tpch", "tpcds")
    }


@pytest.mark.parametrize("kind", ["tpch", "tpcds"])
def test_native_tree_replica(kind, dbs, prepared):
    con = dbs[0][kind]
    replicated, exceptions = 0, {}
    for qid, pq in prepared[kind].items():
        if not pq.forceable:
            assert pq.reason, qid
            exceptions[qid] = pq.reason
            continue
        with forced_settings(con):
            forced = read_native_trees(pq.graph, explain_json(con, pq.render(pq.native_plan)))
        assert forced.trees == pq.native.trees, f"{qid}: forced tree differs from native"
        replicated += 1
    print(f"{kind}: {replicated} replicated; left native: {exceptions}")
    assert replicated >= MIN_REPLICATED[kind]


def test_forced_native_returns_native_result(dbs, prepared):
    con = dbs[0]["tpch"]
    h = Harness(con, timeout_s=30)
    for qid, pq in prepared["tpch"].items():
        if pq.forceable:
            assert h.run(pq.render(pq.native_plan), forced=True).fingerprint == h.run(pq.sql).fingerprint, qid


def test_render_places_keys_in_on_and_filters_in_where():
    cat = Catalog({"a": {"x": "INT", "y": "INT"}, "b": {"x": "INT", "z": "INT"}, "c": {"z": "INT"}})
    g = build_query_graph("SELECT * FROM a, b, c WHERE a.x = b.x AND b.z = c.z AND a.y = 1 AND (a.y > c.z OR b.z = 2)", cat)
    sql = render(g, Plan.of({0: Join(Leaf("c"), Join(Leaf("a"), Leaf("b")))}))
    # `*` keeps the written column order (a, b, c) whatever the tree
    assert sql == (
        "SELECT a.*, b.*, c.* FROM c JOIN (a JOIN b ON a.x = b.x) ON c.z = b.z AND (a.y > c.z OR b.z = 2) WHERE a.y = 1"
    )
    with pytest.raises(PlanError):
        render(g, Plan.of({0: Join(Leaf("a"), Leaf("b"))}))
    with pytest.raises(PlanError):
        render(g, Plan.of({7: Join(Leaf("a"), Leaf("b"))}))


def _forceable(prepared):
    out = []
    for kind in ("tpch", "tpcds"):
        for qid, pq in prepared[kind].items():
            if pq.forceable and any(len(b.relations) >= 2 for b in pq.graph.reorderable):
                out.append((kind, qid))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_trees_return_native_result(data, dbs, prepared):
    cons, _ = dbs
    kind, qid = data.draw(st.sampled_from(_forceable(prepared)), label="query")
    seed = data.draw(st.integers(0, 10_000), label="seed")
    pq = prepared[kind][qid]
    (plan,) = pq.random_plans(1, random.Random(seed)) or [pq.native_plan]
    con = cons[kind]
    h = Harness(con, timeout_s=20)
    native = h.run(pq.sql, profile=False)
    forced = h.run(pq.render(plan), forced=True, profile=False)
    if forced.timed_out:  # a catastrophic tree is allowed to be slow, never wrong
        return
    assert forced.error is None, forced.error
    assert forced.fingerprint == native.fingerprint, f"{kind} {qid} {plan}"
    with forced_settings(con):
        executed = read_native_trees(pq.graph, explain_json(con, pq.render(plan)))
    blocks = {b.index: b for b in pq.graph.blocks}
    # Relations reading the same tables (three references to one CTE), and blocks that
    # differ only in constants, cannot be told apart in EXPLAIN: compare the multiset of
    # trees with leaves named by their tables.
    shown = sorted(str(_by_tables(blocks[i], t)) for i, t in executed.trees.items())
    rendered = sorted(str(_by_tables(blocks[i], t)) for i, t in plan.trees if i in executed.trees)
    assert shown == rendered, f"{kind} {qid}: executed {executed.plan}, rendered {plan}"


def _by_tables(block, tree):
    if isinstance(tree, Leaf):
        return Leaf(",".join(block.relation(tree.rel).tables))
    return Join(_by_tables(block, tree.probe), _by_tables(block, tree.build))
