"""Model-guided beam search over whole-query plans.

The search moves through complete plans: start from DuckDB's native plan plus a few
seeds (a cardinality-greedy tree and star-shaped trees per block), then repeatedly
apply local moves to the best ``width`` plans (swap a join's probe and build sides,
rotate a join, exchange a relation between neighbouring joins), score all new plans
with the model in one batch, and keep the best ``width``. Every move keeps trees
cross-product-free. The native plan is always among the candidates. The search stops
after ``max_steps`` rounds, when nothing improves, or when ``time_budget_ms`` is spent.

>>> result = beam_search(pq, scorer, SearchConfig(width=8, max_steps=4))  # doctest: +SKIP
>>> result.best, result.best_score, result.native_score                  # doctest: +SKIP
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from lqo.sql.join_graph import JoinBlock
from lqo.trees.enumerate import exhaustive_trees, random_tree
from lqo.trees.plan import Join, Leaf, Plan, Tree
from lqo.trees.query import PreparedQuery

# A scorer maps plans to predicted latencies (ms, lower is better) in one batch.
Scorer = Callable[[Sequence[Plan]], np.ndarray]


@dataclass
class SearchConfig:
    """Beam search settings: width, rounds, random seeds, time budget."""

    width: int = 4  # plans kept per round (the beam)
    max_steps: int = 3  # rounds of local moves
    random_seeds: int = 0  # random trees added to the first round
    time_budget_ms: float = 10.0  # stop expanding once this is spent
    max_per_step: int = 32  # new plans scored per round (a sample when there are more)
    seed: int = 0


@dataclass
class SearchResult:
    """The best plan found, its score, native's score and every plan scored."""

    best: Plan
    best_score: float
    native_score: float
    scored: dict[Plan, float] = field(default_factory=dict)
    steps: int = 0
    elapsed_ms: float = 0.0


def beam_search(pq: PreparedQuery, scorer: Scorer, config: SearchConfig | None = None,
                seeds: Sequence[Plan] = ()) -> SearchResult:
    """Best plan for ``pq`` by ``scorer``; ``pq`` must be forceable."""
    config = config or SearchConfig()
    start = time.perf_counter()
    rng = random.Random(config.seed)
    native = pq.native_plan
    blocks = pq.free_blocks
    scored: dict[Plan, float] = {}

    def score(plans: list[Plan]) -> None:
        new = [p for p in dict.fromkeys(plans) if p not in scored]
        if new:
            for p, s in zip(new, scorer(new)):
                scored[p] = float(s)

    first = [native, *seeds]
    for _ in range(config.random_seeds if blocks else 0):
        b = rng.choice(blocks)
        first.append(native.replace(b.index, random_tree(b, rng)))
    score(first)
    beam = sorted(scored, key=scored.__getitem__)[: config.width]
    steps = 0
    while blocks and steps < config.max_steps:
        if (time.perf_counter() - start) * 1000 > config.time_budget_ms:
            break
        steps += 1
        best_before = scored[beam[0]]
        fresh = [n for n in dict.fromkeys(n for p in beam for n in neighbours(p, blocks)) if n not in scored]
        if len(fresh) > config.max_per_step:
            fresh = rng.sample(fresh, config.max_per_step)
        score(fresh)
        beam = sorted(scored, key=scored.__getitem__)[: config.width]
        if scored[beam[0]] >= best_before and steps > 1:
            break
    best = min(scored, key=scored.__getitem__)
    return SearchResult(best, scored[best], scored[native], scored, steps, (time.perf_counter() - start) * 1000)


def star_tree(block: JoinBlock, estimator: Any) -> Tree:
    """A left-deep tree that probes with the largest relation and builds hash tables on
    the others, adding next the connected relation that keeps the estimated
    intermediate result smallest: the shape that wins most often on star schemas."""
    rows = {a: estimator.relation_rows(block, a) for a in block.aliases}
    start = max(block.aliases, key=lambda a: rows[a])
    tree: Tree = Leaf(start)
    done = frozenset((start,))
    while len(done) < len(block.aliases):
        cands = [a for a in block.aliases if a not in done and block.connects(done, frozenset((a,)))]
        if not cands:  # a cross product as written: take the next relation in order
            cands = [a for a in block.aliases if a not in done][:1]
        nxt = min(cands, key=lambda a: (estimator.join_rows(block, done | {a}), rows[a]))
        tree = Join(tree, Leaf(nxt))
        done = done | {nxt}
    return tree


def star_plan(pq: PreparedQuery, estimator: Any) -> Plan:
    """The native plan with every free block replaced by its ``star_tree``."""
    plan = pq.native_plan
    for b in pq.free_blocks:
        plan = plan.replace(b.index, star_tree(b, estimator))
    return plan


def small_block_plans(plan: Plan, blocks: Sequence[JoinBlock], max_relations: int = 3) -> list[Plan]:
    """Every tree of each block with at most ``max_relations`` relations (12 for three,
    sides included), one block at a time, the others as in ``plan``."""
    out = []
    for b in blocks:
        if len(b.aliases) <= max_relations:
            out += [plan.replace(b.index, t) for t in exhaustive_trees(b)]
    return [p for p in dict.fromkeys(out) if p != plan]


def neighbours(plan: Plan, blocks: Sequence[JoinBlock]) -> list[Plan]:
    """Plans one local move away, in any free block."""
    out = []
    for b in blocks:
        tree = plan.tree(b.index)
        for t in tree_moves(b, tree):
            out.append(plan.replace(b.index, t))
    return out


def tree_moves(block: JoinBlock, tree: Tree) -> list[Tree]:
    """Cross-product-free trees one move from ``tree``: swap, rotate, exchange."""
    out: list[Tree] = []

    def rebuild(t: Tree, replace: Any) -> None:
        # For every join node, try each local move there, rebuilding the path to the root.
        if isinstance(t, Leaf):
            return
        for alt in _local(block, t):
            out.append(replace(alt))
        rebuild(t.probe, lambda x, t=t: replace(Join(x, t.build)))
        rebuild(t.build, lambda x, t=t: replace(Join(t.probe, x)))

    rebuild(tree, lambda x: x)
    return [t for t in dict.fromkeys(out) if t != tree]


def _local(block: JoinBlock, j: Join) -> list[Tree]:
    ok = block.connects
    alts: list[Tree] = [Join(j.build, j.probe)]  # swap sides
    a, b = j.probe, j.build
    if isinstance(a, Join):  # ((x y) b) -> (x (y b)), ((x b) y)
        x, y = a.probe, a.build
        if ok(y.rels, b.rels) and ok(x.rels, y.rels | b.rels):
            alts.append(Join(x, Join(y, b)))
        if ok(x.rels, b.rels) and ok(x.rels | b.rels, y.rels):
            alts.append(Join(Join(x, b), y))
    if isinstance(b, Join):  # (a (x y)) -> ((a x) y), ((a y) x)
        x, y = b.probe, b.build
        if ok(a.rels, x.rels) and ok(a.rels | x.rels, y.rels):
            alts.append(Join(Join(a, x), y))
        if ok(a.rels, y.rels) and ok(a.rels | y.rels, x.rels):
            alts.append(Join(Join(a, y), x))
    return alts
