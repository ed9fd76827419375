"""Cost-based trees: the DP finds the C_out-cheapest tree; true-cardinality plans run right."""

from __future__ import annotations

from functools import partial

import pytest

from conftest import tpc_queries
from lqo.engine.db import connect_read_only
from lqo.engine.harness import run_interleaved
from lqo.estimates.cardinality import Estimator
from lqo.estimates.stats import DatabaseStats
from lqo.search import small_block_plans
from lqo.sql.catalog import Catalog
from lqo.trees.dp import dp_plan, dp_tree, profiled_cards
from lqo.trees.enumerate import exhaustive_trees, is_valid_tree
from lqo.trees.native import read_native_trees
from lqo.engine.profile import profile_json
from lqo.trees.physical import profile_nodes
from lqo.trees.plan import Join, joins, leaves
from lqo.trees.query import prepare


@pytest.fixture(scope="module")
def setup(tpcds_db):
    con = connect_read_only(tpcds_db)
    cat = Catalog.from_connection(con)
    yield con, cat, DatabaseStats.build(con, cat, sample_rows=5_000)
    con.close()


def _c_out(tree, cards) -> float:
    return sum(cards(j.rels) for j in joins(tree))


def test_dp_tree_is_the_cheapest_of_every_tree_and_builds_on_the_smaller_side(setup):
    con, cat, stats = setup
    checked = 0
    for qid, sql in tpc_queries("tpcds").items():
        try:
            pq = prepare(sql, con, cat)
        except Exception:
            continue
        if not pq.forceable:
            continue
        est = Estimator(stats, pq.graph)
        for b in pq.free_blocks:
            cards = partial(est.join_rows, b)
            tree = dp_tree(b, cards)
            if tree is None:
                continue
            assert is_valid_tree(b, tree) and sorted(leaves(tree)) == sorted(b.aliases), qid
            assert all(cards(j.build.rels) <= cards(j.probe.rels) for j in joins(tree)), qid
            if len(b.aliases) <= 5:  # brute force: no tree has a smaller C_out
                best = min(_c_out(t, cards) for t in exhaustive_trees(b))
                assert _c_out(tree, cards) == pytest.approx(best, rel=1e-9), qid
                checked += 1
    assert checked >= 30


def test_true_cardinality_plans_use_the_profiled_counts_and_return_the_native_result(setup):
    con, cat, stats = setup
    ran = 0
    for qid in ("q03", "q07", "q19", "q25", "q42", "q52", "q55"):
        sql = tpc_queries("tpcds")[qid]
        pq = prepare(sql, con, cat)
        roots = profile_nodes(profile_json(con, sql, disabled=("join_filter_pushdown",)))
        actual = read_native_trees(pq.graph, roots).actuals
        est = Estimator(stats, pq.graph)
        b = pq.free_blocks[0]
        cards = profiled_cards(b, partial(est.join_rows, b), actual[b.index])
        profiled = {s: n for s, n in actual[b.index].items() if n is not None}
        assert len(profiled) >= len(b.aliases)  # every relation and the native joins
        assert all(cards(s) == max(float(n), 1.0) for s, n in profiled.items())
        plan = dp_plan(pq.native_plan, pq.free_blocks, lambda blk: profiled_cards(
            blk, partial(est.join_rows, blk), actual.get(blk.index, {})))
        native_runs, plan_runs = run_interleaved(con, [(sql, False), (pq.render(plan), True)], repeats=1, warmup=0)
        assert plan_runs[0].ok and plan_runs[0].fingerprint == native_runs[0].fingerprint, qid
        ran += 1
    assert ran == 7


def test_small_blocks_get_every_tree(setup):
    con, cat, _ = setup
    pq = prepare(tpc_queries("tpcds")["q03"], con, cat)  # date_dim, store_sales, item
    (b,) = pq.free_blocks
    plans = small_block_plans(pq.native_plan, pq.free_blocks)
    assert len(plans) == len(exhaustive_trees(b)) - 1  # all but the native tree itself
    assert all(isinstance(p.tree(b.index), Join) for p in plans)
    assert small_block_plans(pq.native_plan, pq.free_blocks, max_relations=2) == []
