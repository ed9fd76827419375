"""Dynamic programming over cardinalities: the cheapest tree of a block by C_out.

``dp_tree`` finds, over every cross-product-free bushy tree of a block, the one whose
intermediate results are smallest in total (C_out), building each hash table on the
smaller input. With lqo's own estimates that is a classic cost-based optimizer; with
the cardinalities a profiled run of the native plan recorded (``profiled_cards``), it
is a *true-cardinality plan*: what an optimizer would choose if its estimates were
right where DuckDB's plan could check them. Both are candidates for ``lqo tune``.

>>> from lqo.sql.join_graph import build_query_graph
>>> from lqo.sql.catalog import Catalog
>>> cat = Catalog({"f": {"a": "INT", "b": "INT"}, "d1": {"a": "INT"}, "d2": {"b": "INT"}})
>>> block = build_query_graph("SELECT * FROM f, d1, d2 WHERE f.a = d1.a AND f.b = d2.b", cat).blocks[0]
>>> rows = {frozenset({"f"}): 1e6, frozenset({"d1"}): 10, frozenset({"d2"}): 1e4,
...         frozenset({"f", "d1"}): 1e3, frozenset({"f", "d2"}): 9e5, frozenset({"f", "d1", "d2"}): 900}
>>> str(dp_tree(block, rows.__getitem__))  # the selective join first, built on the smaller side
'(d2 (f d1))'
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Callable, Mapping

from lqo.sql.join_graph import JoinBlock
from lqo.trees.enumerate import components
from lqo.trees.plan import Join, Leaf, Plan, Tree

# Subsets x splits grow as 3^n: 10 relations are ~30,000 splits, a few tens of ms.
MAX_DP_RELATIONS = 10

Cards = Callable[[frozenset[str]], float]


def dp_tree(block: JoinBlock, cards: Cards) -> Tree | None:
    """The C_out-cheapest cross-product-free tree of ``block`` under ``cards``; None where
    the block is too large or is not connected (a cross join as written stays native)."""
    aliases = list(block.aliases)
    if not 2 <= len(aliases) <= MAX_DP_RELATIONS or len(components(block)) != 1:
        return None
    best: dict[frozenset[str], tuple[float, Tree]] = {frozenset((a,)): (0.0, Leaf(a)) for a in aliases}
    for size in range(2, len(aliases) + 1):
        for combo in combinations(aliases, size):
            s = frozenset(combo)
            first, rest = combo[0], combo[1:]
            found: tuple[float, Tree] | None = None
            # Every split once: the first relation always on the left.
            for k in range(0, len(rest)):
                for picked in combinations(rest, k):
                    left = frozenset((first, *picked))
                    right = s - left
                    lb, rb = best.get(left), best.get(right)
                    if lb is None or rb is None or not block.connects(left, right):
                        continue
                    cost = lb[0] + rb[0]
                    if found is not None and cost >= found[0]:
                        continue
                    probe, build = (lb[1], rb[1]) if cards(left) >= cards(right) else (rb[1], lb[1])
                    found = (cost, Join(probe, build))
            if found is not None:
                best[s] = (found[0] + cards(s), found[1])
    whole = best.get(frozenset(aliases))
    return None if whole is None else whole[1]


def profiled_cards(block: JoinBlock, estimate: Cards, actual: Mapping[frozenset[str], int | None]) -> Cards:
    """Cardinalities for ``dp_tree``: the profiled count where the native plan recorded
    one; elsewhere lqo's estimate, corrected by each relation's profiled-to-estimated
    ratio and by the error of the largest profiled join inside the set.

    >>> est = {frozenset("a"): 100.0, frozenset("b"): 10.0, frozenset("ab"): 50.0, frozenset("abc"): 80.0,
    ...        frozenset("c"): 5.0, frozenset("ac"): 20.0, frozenset("bc"): 8.0}
    >>> act = {frozenset("a"): 1000, frozenset("b"): 10, frozenset("ab"): 2000}
    >>> f = profiled_cards(None, est.__getitem__, act)
    >>> f(frozenset("ab")), f(frozenset("ac")), f(frozenset("abc"))  # 80 x 10 (a) x 2000 / (50 x 10)
    (2000.0, 200.0, 3200.0)
    """
    known = {s: float(v) for s, v in actual.items() if v is not None}
    joins = sorted((s for s in known if len(s) > 1), key=len, reverse=True)
    corr = {next(iter(s)): known[s] / max(estimate(s), 1.0) for s in known if len(s) == 1}

    def corrected(s: frozenset[str]) -> float:
        return estimate(s) * math.prod(corr.get(a, 1.0) for a in s)

    def cards(s: frozenset[str]) -> float:
        if s in known:
            return max(known[s], 1.0)
        c = corrected(s)
        inner = next((k for k in joins if k < s), None)
        if inner is not None:
            c *= known[inner] / max(corrected(inner), 1.0)
        return max(c, 1.0)

    return cards


def dp_plan(native: Plan, blocks: list[JoinBlock], cards_of: Callable[[JoinBlock], Cards]) -> Plan:
    """``native`` with every block ``dp_tree`` can order replaced by its tree."""
    plan = native
    for b in blocks:
        tree = dp_tree(b, cards_of(b))
        if tree is not None:
            plan = plan.replace(b.index, tree)
    return plan
