"""Plan featurization: valid FlatPlans for every TPC query, consistent layout, caches that change nothing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from conftest import tpc_queries
from lqo.sql.catalog import Catalog
from lqo.engine.db import connect_read_only
from lqo.trees.enumerate import random_tree
from lqo.sql.join_graph import build_query_graph
from lqo.learn.featurized import BLOCK, JOIN, SCAN
from lqo.learn.features import N_NODE_FEATURES, N_QUERY_FEATURES, Featurizer
from lqo.trees.plan import Join, Leaf, Plan, leaves
from lqo.estimates.stats import DatabaseStats


def _setup(db):
    con = connect_read_only(db)
    try:
        cat = Catalog.from_connection(con)
        return cat, DatabaseStats.build(con, cat, sample_rows=5_000)
    finally:
        con.close()


@pytest.fixture(scope="module")
def tpch(tpch_db):
    return _setup(tpch_db)


@pytest.fixture(scope="module")
def tpcds(tpcds_db):
    return _setup(tpcds_db)


def graphs(kind: str, cat: Catalog):
    for qid, sql in tpc_queries(kind).items():
        g = build_query_graph(sql, cat)
        if g.unsafe_reason is None and g.reorderable:
            yield qid, g


def random_plan(g, seed: int, bushy: bool = True) -> Plan:
    rng = random.Random(seed)
    return Plan.of({b.index: random_tree(b, rng, bushy=bushy) for b in g.reorderable})


def check_flat(g, plan: Plan, flat) -> None:
    flat.validate()
    blocks = {b.index: b for b in g.blocks}
    n_rels = sum(len(leaves(t)) for _, t in plan.trees)
    n_blocks = len(plan.trees)
    assert flat.n_nodes == 1 + n_blocks + sum(2 * len(leaves(t)) - 1 for _, t in plan.trees)
    assert flat.x.shape == (flat.n_nodes, N_NODE_FEATURES) and flat.query.shape == (N_QUERY_FEATURES,)
    assert np.isfinite(flat.x).all() and np.isfinite(flat.query).all()
    kinds = flat.x[:, :4].argmax(axis=1)
    assert (flat.x[1:, :4].sum(axis=1) == 1).all()
    assert kinds[1] == BLOCK and (kinds == BLOCK).sum() == n_blocks
    assert (kinds == JOIN).sum() == n_rels - n_blocks
    scans = np.nonzero(kinds == SCAN)[0]
    scans = scans[scans > 0]
    assert flat.rel_nodes.tolist() == scans.tolist() and len(scans) == n_rels
    assert (flat.left[scans] == 0).all() and (flat.right[scans] == 0).all()
    joins_ = np.nonzero(kinds == JOIN)[0]
    joins_ = joins_[joins_ > 0]
    assert (flat.left[joins_] > 0).all() and (flat.right[joins_] > 0).all()
    assert set(kinds[flat.left[joins_]]) <= {SCAN, JOIN} and set(kinds[flat.right[joins_]]) <= {SCAN, JOIN}
    # Every node but the root has exactly one parent.
    children = np.concatenate([flat.left[flat.left > 0], flat.right[flat.right > 0]])
    assert sorted(children.tolist()) == list(range(2, flat.n_nodes))
    # Table ids: base tables known, CTE / derived leaves 0.
    n_tables = sum(r.kind == "table" for i, _ in plan.trees for r in blocks[i].relations)
    assert n_tables == int((flat.table[scans] > 0).sum())
    assert (flat.table[kinds != SCAN] == 0).all()
    # Edges: vertices of one block sharing a key class, both directions.
    if flat.edges.shape[1]:
        assert flat.edges.max() < n_rels
        pairs = set(map(tuple, flat.edges.T.tolist()))
        assert all((v, u) in pairs for u, v in pairs)
    n_pairs = sum(len({frozenset((x.rel, y.rel)) for cls in blocks[i].classes for x in cls for y in cls
                       if x.rel != y.rel}) for i, _ in plan.trees)
    assert flat.edges.shape[1] == 2 * n_pairs


@pytest.mark.parametrize("kind", ["tpch", "tpcds"])
def test_every_tpc_query_featurizes(kind, request):
    cat, stats = request.getfixturevalue(kind)
    fz = Featurizer(stats)
    n = 0
    for qid, g in graphs(kind, cat):
        for seed in range(3):
            plan = random_plan(g, seed, bushy=seed != 0)
            flat = fz.featurize(g, plan)
            check_flat(g, plan, flat)
        n += 1
    assert n >= (15 if kind == "tpch" else 70)


def test_different_trees_different_features(tpch):
    cat, stats = tpch
    fz = Featurizer(stats)
    g = build_query_graph(tpc_queries("tpch")["q05"], cat)
    b = g.reorderable[0]
    flats = {}
    for seed in range(20):
        plan = random_plan(g, seed)
        flats[str(plan)] = fz.featurize(g, plan)
    assert len(flats) > 5
    xs = [f.x.tobytes() for f in flats.values()]
    assert len(set(xs)) == len(xs)
    # Same plan -> identical arrays; the query vector is the plan-independent part.
    plan = random_plan(g, 0)
    a, c = fz.featurize(g, plan), fz.featurize(g, plan)
    assert np.array_equal(a.x, c.x) and np.array_equal(a.edges, c.edges)
    assert all(np.array_equal(f.query, a.query) for f in flats.values())
    # Swapping probe and build of the root join changes the join's side features.
    t = plan.tree(b.index)
    swapped = fz.featurize(g, plan.replace(b.index, Join(t.build, t.probe)))
    names = Featurizer.feature_names()
    root_join = a.right[1]
    i = names.index("join_log_build_over_probe")
    assert swapped.x[root_join, i] == pytest.approx(-a.x[root_join, i])


def test_join_and_scan_features_follow_estimates(tpch):
    cat, stats = tpch
    fz = Featurizer(stats)
    g = build_query_graph("SELECT * FROM orders, customer WHERE o_custkey = c_custkey AND c_mktsegment = 'BUILDING'", cat)
    plan = Plan.of({0: Join(Leaf("orders"), Leaf("customer"))})
    flat = fz.featurize(g, plan)
    names = Featurizer.feature_names()
    f = {n: i for i, n in enumerate(names)}
    est = fz.estimator(g)
    block = g.blocks[0]
    join, probe, build = 2, 3, 4
    assert flat.left[join] == probe and flat.right[join] == build
    assert np.exp(flat.x[join, f["log_rows"]] * 10) - 1 == pytest.approx(est.join_rows(block, frozenset(block.aliases)), rel=1e-4)
    assert flat.x[join, f["join_n_key_classes"]] == 1 and flat.x[join, f["join_is_cross"]] == 0
    assert flat.x[build, f["scan_selectivity"]] == pytest.approx(0.2, rel=0.2)
    assert flat.x[build, f["scan_n_filters"]] == 1 and flat.x[probe, f["scan_n_filters"]] == 0
    assert flat.x[build, f["scan_is_table"]] == 1
    vocab = fz.vocabulary
    assert vocab == {t: i + 1 for i, t in enumerate(sorted(cat.tables))}
    assert flat.table[probe] == vocab["orders"] and flat.table[build] == vocab["customer"]
    assert sorted(map(tuple, flat.edges.T.tolist())) == [(0, 1), (1, 0)]
    # A saved vocabulary is reused as given; tables it lacks get 0.
    other = Featurizer(stats, {"customer": 7})
    flat2 = other.featurize(g, plan)
    assert flat2.table[build] == 7 and flat2.table[probe] == 0
    # A cross product is flagged.
    g2 = build_query_graph("SELECT * FROM nation, region", cat)
    flat3 = fz.featurize(g2, Plan.of({0: Join(Leaf("nation"), Leaf("region"))}))
    assert flat3.x[2, f["join_is_cross"]] == 1 and flat3.edges.shape == (2, 0)


def test_bad_plans_are_rejected(tpch):
    cat, stats = tpch
    fz = Featurizer(stats)
    g = build_query_graph("SELECT * FROM orders, customer WHERE o_custkey = c_custkey", cat)
    with pytest.raises(ValueError):
        fz.featurize(g, Plan.of({0: Join(Leaf("orders"), Leaf("nation"))}))
    with pytest.raises(ValueError):
        fz.featurize(g, Plan.of({3: Join(Leaf("orders"), Leaf("customer"))}))


def test_cached_featurization_equals_fresh(tpcds):
    """Search featurizes many plans of one query with one featurizer, which keeps the
    query's estimator and each block tree's fragment: on the largest TPC-DS plans
    (>= 8 relations), what comes out of the caches is what a fresh featurizer computes.
    (Timings: ``python benchmarks/planning_latency.py WORKLOAD --min-relations 8``.)"""
    cat, stats = tpcds
    warm = Featurizer(stats)
    n = 0
    for qid, g in graphs("tpcds", cat):
        if sum(len(b.relations) for b in g.reorderable) < 8:
            continue
        n += 1
        base = random_plan(g, 0)
        plans = [base] + [random_plan(g, s) for s in range(1, 4)]
        # plans that share all blocks but one with an earlier plan: cached fragments reused
        rng = random.Random(qid)
        for b in g.reorderable:
            plans.append(base.replace(b.index, random_tree(b, rng)))
        for plan in plans + plans[:2]:  # and again: every fragment cached
            got, want = warm.featurize(g, plan), Featurizer(stats).featurize(g, plan)
            for name in ("x", "left", "right", "table", "query", "rel_nodes", "edges"):
                assert np.array_equal(getattr(got, name), getattr(want, name)), (qid, str(plan), name)
    assert n >= 10
