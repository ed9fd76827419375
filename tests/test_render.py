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


# ----- predicates DuckDB places itself (lqo.sql.placement) -------------------------------

_PCAT = Catalog({"d": {"k": "INT", "m": "INT", "y": "INT"}, "s": {"k": "INT", "v": "INT"},
                 "i": {"k": "INT", "p": "INT", "c": "INT"}})


def _rendered(sql: str, tree) -> str:
    return render(build_query_graph(sql, _PCAT), Plan.of({0: tree}))


def test_scalar_and_in_subquery_filters_are_rendered_inside_their_relation():
    sql = ("SELECT count(*) FROM s, d, i WHERE s.k = d.k AND s.v = i.k AND d.y = 2000 "
           "AND d.m = (SELECT max(m) FROM d WHERE y = 1) "
           "AND i.p > (SELECT avg(j.p) FROM i AS j WHERE j.c = i.c) AND i.c IN (SELECT k FROM s)")
    out = _rendered(sql, Join(Join(Leaf("s"), Leaf("d")), Leaf("i")))
    assert "JOIN (SELECT * FROM d WHERE d.y = 2000 AND d.m = (SELECT MAX(m) FROM d WHERE y = 1)) AS d" in out
    assert "(SELECT * FROM i WHERE i.p > (SELECT AVG(j.p) FROM i AS j WHERE j.c = i.c) AND i.c IN (SELECT k FROM s)) AS i" in out
    assert " WHERE d.y" not in out.split(") AS i")[-1]


@pytest.mark.parametrize("pred, why", [
    ("EXISTS (SELECT 1 FROM i WHERE i.k = d.k)", "EXISTS: a semi join DuckDB runs after the selective joins"),
    ("d.m > (SELECT max(v) FROM s AS t WHERE t.k = s.k) + d.y", "two relations of the block"),
    ("d.m > (SELECT max(v) FROM s AS t WHERE t.k = zz)", "a name no relation has"),
    ("d.m IN (SELECT k FROM s LIMIT 3)", "a LIMIT"),
])
def test_unplaceable_subquery_filters_stay_in_where(pred, why):
    out = _rendered(f"SELECT count(*) FROM s, d WHERE s.k = d.k AND {pred}", Join(Leaf("s"), Leaf("d")))
    assert "(SELECT * FROM d" not in out, why


def test_correlated_filter_of_a_subquery_block_is_rendered_inside_its_relation():
    sql = ("SELECT sum(s.v) FROM s, i WHERE s.v = i.k AND i.p = 7 AND s.v > "
           "(SELECT avg(t.v) FROM s AS t, d WHERE t.k = d.k AND t.v = i.k AND d.y = 2000)")
    g = build_query_graph(sql, _PCAT)
    inner = next(b for b in g.blocks if b.index == 1)
    assert inner.correlated == {"t"}
    out = render(g, Plan.of({0: Join(Leaf("s"), Leaf("i")), 1: Join(Leaf("d"), Leaf("t"))}))
    assert "FROM d JOIN (SELECT * FROM s AS t WHERE t.v = i.k) AS t ON d.k = t.k" in out


def test_placed_subquery_filter_runs_below_the_fact_join(dbs, prepared):
    """TPC-DS q06: the ``d_month_seq = (SELECT ..)`` join must sit under the join with
    store_sales in the forced native plan (left above every join it cost 25x at SF1)."""
    con = dbs[0]["tpcds"]
    pq = prepared["tpcds"]["q06"]
    assert pq.forceable and pq.graph.blocks[0].placed
    with forced_settings(con):
        roots = explain_json(con, pq.render(pq.native_plan))
    subquery_joins = [n for r in roots for n in _walk(r) if any("SUBQUERY" in c for c in n.conditions)]
    assert subquery_joins
    for node in subquery_joins:
        scanned = {n.info.get("Table", "").split(".")[-1] for n in _walk(node)}
        assert "store_sales" not in scanned, "the subquery filter runs after the fact table's joins"
    h = Harness(con, timeout_s=30)
    assert h.run(pq.render(pq.native_plan), forced=True).fingerprint == h.run(pq.sql).fingerprint


def test_forced_native_with_placed_predicates_returns_native_result(dbs, prepared):
    con = dbs[0]["tpcds"]
    h = Harness(con, timeout_s=30)
    checked = 0
    for qid, pq in prepared["tpcds"].items():
        if pq.forceable and any(b.placed or b.correlated for b in pq.graph.blocks):
            forced = h.run(pq.render(pq.native_plan), forced=True, profile=False)
            assert forced.error is None and forced.fingerprint == h.run(pq.sql, profile=False).fingerprint, qid
            checked += 1
    assert checked >= 15


def _walk(node):
    yield node
    for c in node.children:
        yield from _walk(c)


def test_optimizer_keeps_native_where_a_forced_plan_loses_a_shared_subplan(dbs, prepared):
    """TPC-DS q83's blocks share subqueries that DuckDB computes once (a common-subplan
    CTE); forced, the sharing is lost (DuckDB shares a join only with the estimates its
    join order makes). q58's forced trees keep it (it ends in an aggregate), q61's and
    q70's because lqo renders the join their blocks have in common once
    (lqo.trees.shared; q61 lost it, 1.7x at SF1, before). The decision sees this with
    one EXPLAIN of the chosen plan."""
    from lqo.optimizer import SHARED_SUBPLAN_REASON, Optimizer
    from lqo.search import SearchResult

    con = dbs[0]["tpcds"]
    opt = Optimizer(model=object(), featurizer=None, schema="")
    opt.check_schema(con)
    # the search's verdict is replaced: force DuckDB's own tree, which shares or not
    opt.decide = lambda pq, search=None: (SearchResult(pq.native_plan, 1.0, 2.0), None)
    for qid, shares_when_forced in (("q83", False), ("q58", True), ("q61", True), ("q70", True)):
        pq = prepared["tpcds"][qid]
        assert pq.native.shared_subplan, qid
        res = opt.optimize(pq.sql, con)
        if shares_when_forced:
            assert res.forced and res.fallback is None, qid
        else:
            assert not res.forced and res.fallback == SHARED_SUBPLAN_REASON and res.sql == pq.sql, qid
