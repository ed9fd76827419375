"""Beam search on real prepared TPC-H queries (sf 0.01) with synthetic scorers.

A scorer here is a deterministic function of the plan, so the best plan is known from
exhaustive enumeration (``lqo.trees.enumerate``) wherever the blocks are small: beam
search must find it, keep DuckDB's native plan among the candidates, and respect its
budgets (steps, plans per step, width, time).
"""

from __future__ import annotations

import random
import time
from collections import deque

import numpy as np
import pytest

from conftest import tpc_queries
from lqo.engine.db import connect_read_only
from lqo.search import SearchConfig, beam_search, neighbours, tree_moves
from lqo.trees.enumerate import exhaustive_trees, is_valid_tree, random_tree
from lqo.trees.plan import Leaf, joins
from lqo.trees.query import prepare

# Forceable TPC-H queries whose free blocks have 3..6 relations: small enough to enumerate.
SMALL = ["q02", "q03", "q05", "q07", "q09", "q10", "q11", "q18", "q21"]
# Wide and deep enough for these blocks; no sampling (max_per_step), no clock.
THOROUGH = SearchConfig(width=8, max_steps=50, time_budget_ms=1e9, max_per_step=10_000)


@pytest.fixture(scope="module")
def con(tpch_db):
    con = connect_read_only(tpch_db)
    yield con
    con.close()


@pytest.fixture(scope="module")
def pqs(con):
    out = {qid: prepare(sql, con) for qid, sql in tpc_queries("tpch").items()}
    return {qid: pq for qid, pq in out.items() if pq.forceable and pq.free_blocks}


@pytest.fixture(scope="module")
def rows(con):
    return dict(con.execute("SELECT table_name, estimated_size FROM duckdb_tables()").fetchall())


def all_plans(pq):
    """Every plan: each free block's exhaustive trees, the other blocks native."""
    plans = [pq.native_plan]
    for b in pq.free_blocks:
        plans = [p.replace(b.index, t) for p in plans for t in exhaustive_trees(b)]
    return plans


_GRAPHS: dict = {}


def move_graph(qid, block):
    """Every tree of the block -> the trees one move leads to (built once per block)."""
    key = (qid, block.index)
    if key not in _GRAPHS:
        _GRAPHS[key] = {t: tree_moves(block, t) for t in exhaustive_trees(block)}
    return _GRAPHS[key]


def cost_scorer(pq, sizes, build_weight, probe_weight):
    """A C_out-like cost: a join's output is its larger input (key/foreign-key joins);
    each join pays ``probe_weight x probe rows + build_weight x build rows``."""

    def cost(t):
        if isinstance(t, Leaf):
            return sizes[t.rel], 0.0
        ps, pc = cost(t.probe)
        bs, bc = cost(t.build)
        return max(ps, bs), pc + bc + probe_weight * ps + build_weight * bs

    def score(plans):
        return np.array([sum(cost(p.tree(b.index))[1] for b in pq.free_blocks) for p in plans])

    return score


def block_sizes(pq, rows):
    return {r.alias: rows[r.tables[0]] if r.kind == "table" else 1000
            for b in pq.free_blocks for r in b.relations}


# --------------------------------------------------------------------------- moves

@pytest.mark.parametrize("qid", SMALL)
def test_moves_reach_exactly_the_exhaustive_trees(pqs, qid):
    """From DuckDB's native tree, repeated moves reach every cross-product-free tree
    and nothing else: the search space is the whole space, and only valid trees."""
    pq = pqs[qid]
    for b in pq.free_blocks:
        graph = move_graph(qid, b)
        start = pq.native_plan.tree(b.index)
        assert start in graph
        seen, todo = {start}, [start]
        while todo:
            for n in tree_moves(b, todo.pop()):
                assert n in graph, (qid, str(n))  # a valid tree
                if n not in seen:
                    seen.add(n)
                    todo.append(n)
        assert seen == set(graph), qid


def test_neighbours_change_one_free_block(pqs):
    pq = pqs["q11"]  # two free blocks of 3 relations
    native = pq.native_plan
    ns = neighbours(native, pq.free_blocks)
    assert ns and native not in ns and len(set(ns)) == len(ns)
    for n in ns:
        changed = [i for (i, t), (_, u) in zip(n.trees, native.trees) if t != u]
        assert len(changed) == 1 and changed[0] in {b.index for b in pq.free_blocks}
    # each block contributes its own moves
    per_block = {b.index: len(tree_moves(b, native.tree(b.index))) for b in pq.free_blocks}
    assert len(ns) == sum(per_block.values())


# --------------------------------------------------------------------------- finds the best

@pytest.mark.parametrize("qid", SMALL)
def test_finds_a_hidden_target_plan(pqs, qid):
    """Scorer: how many moves a plan is from a hidden random plan (0 at the target).
    Every other plan has a neighbour one move closer, so a beam search that expands
    its best plans must walk straight to the target."""
    pq = pqs[qid]
    for seed in range(3):
        rng = random.Random(seed)
        target = pq.native_plan
        dist = {}
        for b in pq.free_blocks:
            t = random_tree(b, rng)
            target = target.replace(b.index, t)
            graph = move_graph(qid, b)
            back = {x: [] for x in graph}
            for x, ns in graph.items():
                for n in ns:
                    back[n].append(x)
            d = {t: 0}
            queue = deque([t])
            while queue:
                x = queue.popleft()
                for y in back[x]:
                    if y not in d:
                        d[y] = d[x] + 1
                        queue.append(y)
            assert len(d) == len(graph)
            dist[b.index] = d

        def scorer(plans):
            return np.array([sum(dist[i][p.tree(i)] for i in dist) for p in plans], dtype=float)

        result = beam_search(pq, scorer, SearchConfig(width=4, max_steps=100, time_budget_ms=1e9,
                                                      max_per_step=10_000))
        assert result.best == target, (qid, seed, str(result.best), str(target))
        assert result.best_score == 0.0
        assert result.native_score == scorer([pq.native_plan])[0]
        assert min(scorer(all_plans(pq))) == 0.0


@pytest.mark.parametrize("qid", SMALL)
@pytest.mark.parametrize("prefer", ["small_build", "large_build"])
def test_finds_the_exhaustive_optimum_of_a_cost(pqs, rows, qid, prefer):
    """A cost that prefers small build sides (as DuckDB does), or large ones (native is
    then far from the best): beam search's best equals the minimum over every plan."""
    pq = pqs[qid]
    weights = (4.0, 1.0) if prefer == "small_build" else (1.0, 4.0)
    scorer = cost_scorer(pq, block_sizes(pq, rows), *weights)
    plans = all_plans(pq)
    scores = scorer(plans)
    result = beam_search(pq, scorer, THOROUGH)
    assert result.best_score == pytest.approx(scores.min()), (qid, prefer)
    assert scorer([result.best])[0] == pytest.approx(result.best_score)
    assert result.best in set(plans)
    assert result.scored[result.best] == result.best_score == min(result.scored.values())
    if prefer == "large_build":  # native is never best here: returning it would fail
        assert result.native_score > result.best_score


def test_scored_plans_are_valid_and_keep_fixed_blocks(pqs, rows):
    """Every plan scored (seeds, random seeds, moves) on the 8-relation q08: each free
    block is a cross-product-free tree of its relations, every other block is native."""
    pq = pqs["q08"]
    free = {b.index: b for b in pq.free_blocks}
    scorer = cost_scorer(pq, block_sizes(pq, rows), 1.0, 4.0)
    result = beam_search(pq, scorer, SearchConfig(width=6, max_steps=6, random_seeds=5,
                                                  time_budget_ms=1e9, max_per_step=64))
    assert len(result.scored) > 50
    for plan in result.scored:
        for i, tree in plan.trees:
            if i not in free:
                assert tree == pq.native_plan.tree(i)
                continue
            assert is_valid_tree(free[i], tree), str(tree)
            for j in joins(tree):
                assert free[i].connects(j.probe.rels, j.build.rels), str(tree)


def test_is_deterministic(pqs, rows):
    pq = pqs["q05"]
    scorer = cost_scorer(pq, block_sizes(pq, rows), 1.0, 4.0)
    cfg = SearchConfig(width=4, max_steps=5, random_seeds=3, time_budget_ms=1e9, max_per_step=8, seed=7)
    a, b = beam_search(pq, scorer, cfg), beam_search(pq, scorer, cfg)
    assert a.best == b.best and list(a.scored) == list(b.scored)


# --------------------------------------------------------------------------- native

@pytest.mark.parametrize("qid", ["q03", "q05", "q08", "q11"])
def test_native_is_always_a_candidate(pqs, rows, qid):
    pq = pqs[qid]
    native = pq.native_plan
    calls = []

    def recording(score):
        def scorer(plans):
            calls.append(list(plans))
            return score(plans)
        return scorer

    # Native ranked worst: still scored, in the first batch, with its own score.
    base = cost_scorer(pq, block_sizes(pq, rows), 1.0, 4.0)
    worst = recording(lambda plans: np.array([1e12 if p == native else s for p, s in zip(plans, base(plans))]))
    other = native.replace(pq.free_blocks[0].index, random_tree(pq.free_blocks[0], random.Random(1)))
    for cfg in (SearchConfig(time_budget_ms=1e9), SearchConfig(random_seeds=4, time_budget_ms=1e9),
                SearchConfig(max_steps=0), SearchConfig(time_budget_ms=0)):
        calls.clear()
        result = beam_search(pq, worst, cfg, seeds=[other])
        assert calls[0][0] == native
        assert native in result.scored and result.native_score == 1e12
        assert result.best != native
    # Native ranked best: it is the answer, whatever the seeds.
    best = recording(lambda plans: np.array([0.0 if p == native else 1.0 + s for p, s in zip(plans, base(plans))]))
    result = beam_search(pq, best, SearchConfig(random_seeds=4, time_budget_ms=1e9), seeds=[other])
    assert result.best == native and result.best_score == result.native_score == 0.0
    # No budget at all: only native and the seeds are scored.
    result = beam_search(pq, worst, SearchConfig(max_steps=0), seeds=[other])
    assert set(result.scored) == {native, other} and result.best == other and result.steps == 0


# --------------------------------------------------------------------------- budgets

def improving_scorer(log=None, sleep_s=0.0):
    """Every batch scores below everything before it: the search never stops for lack
    of improvement, only on a budget."""
    state = {"next": 0.0}

    def scorer(plans):
        if log is not None:
            log.append((time.perf_counter(), list(plans)))
        if sleep_s:
            time.sleep(sleep_s)
        out = state["next"] - np.arange(1, len(plans) + 1, dtype=float)
        state["next"] = out[-1]
        return out

    return scorer


@pytest.mark.parametrize("max_steps", [0, 1, 2, 5])
def test_max_steps_is_the_number_of_rounds(pqs, max_steps):
    log = []
    result = beam_search(pqs["q05"], improving_scorer(log), SearchConfig(max_steps=max_steps, time_budget_ms=1e9))
    assert result.steps == max_steps
    assert len(log) == 1 + max_steps  # the first batch, then one batch per round


@pytest.mark.parametrize("max_per_step", [1, 5, 20])
def test_max_per_step_caps_each_round(pqs, max_per_step):
    log = []
    cfg = SearchConfig(width=8, max_steps=6, random_seeds=3, max_per_step=max_per_step, time_budget_ms=1e9)
    result = beam_search(pqs["q08"], improving_scorer(log), cfg)
    assert result.steps == 6
    assert len(log[0][1]) == 1 + 3  # native + random seeds
    assert [len(batch) for _, batch in log[1:]] == [max_per_step] * 6  # q08 has plenty of neighbours
    assert len(result.scored) == 4 + 6 * max_per_step


@pytest.mark.parametrize("width", [1, 3])
def test_each_round_expands_exactly_the_best_width_plans(pqs, rows, width):
    """With no sampling, round k scores exactly the unscored neighbours of the
    ``width`` best plans scored before it (scores are distinct, so no ties)."""
    pq = pqs["q05"]
    base = cost_scorer(pq, block_sizes(pq, rows), 1.0, 4.0)
    log, seen = [], {}

    def scorer(plans):
        log.append(list(plans))
        out = base(plans) + np.array([int(p.key, 16) % 1000 / 1e4 for p in plans])  # break ties
        seen.update(zip(plans, out))
        return out

    beam_search(pq, scorer, SearchConfig(width=width, max_steps=5, time_budget_ms=1e9, max_per_step=10_000))
    assert len(log) >= 3
    scored = {}
    for batch in log:
        if scored:
            beam = sorted(scored, key=scored.get)[:width]
            expected = {n for p in beam for n in neighbours(p, pq.free_blocks)} - set(scored)
            assert set(batch) == expected
        scored.update((p, seen[p]) for p in batch)


def test_time_budget_stops_the_rounds(pqs):
    """Each batch takes >= 20 ms: with a 50 ms budget no round starts once the budget
    is spent, so at most 2 rounds (20 and 40 ms spent), though max_steps allows 100."""
    log = []
    cfg = SearchConfig(max_steps=100, time_budget_ms=50)
    result = beam_search(pqs["q05"], improving_scorer(log, sleep_s=0.02), cfg)
    assert result.steps <= 2 and len(log) == 1 + result.steps
    assert result.elapsed_ms >= 20 * len(log)
    # Without the clock, the same scorer runs all the rounds asked for.
    unlimited = beam_search(pqs["q05"], improving_scorer(sleep_s=0.02), SearchConfig(max_steps=4, time_budget_ms=1e9))
    assert unlimited.steps == 4
    # A spent budget: only the first batch (native) is scored.
    spent = beam_search(pqs["q05"], improving_scorer(), SearchConfig(max_steps=100, time_budget_ms=0))
    assert spent.steps == 0 and list(spent.scored) == [pqs["q05"].native_plan]
