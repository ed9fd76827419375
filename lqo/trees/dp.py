"""Dynamic programming over cardinalities: the cheapest tree of a block by C_out.

``dp_tree`` finds, over every cross-product-free bushy tree of a block, the one whose
intermediate results are smallest in total (C_out), building each hash table on the
smaller input. With lqo's own estimates that is a classic cost-based optimizer; with
the cardinalities a profiled run of the native plan recorded (``profiled_cards``), it
is a *true-cardinality plan*: what an optimizer would choose if its estimates were
right where DuckDB's plan could check them. Both are candidates for ``lqo tune``; so,
with ``lqo tune --perturbed N``, are the trees it finds with the join estimates scaled
by 10^k on purpose (``perturbation_plans``, ``perturbed_plans``: Kepler-style row-count
evolution).

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
import random
from itertools import combinations, zip_longest
from typing import Callable, Iterable, Mapping

from lqo.sql.join_graph import JoinBlock
from lqo.trees.enumerate import components
from lqo.trees.plan import Join, Leaf, Plan, Tree, joins

# Subsets x splits grow as 3^n: 10 relations are ~30,000 splits, a few tens of ms.
MAX_DP_RELATIONS = 10
# Perturbed-cardinality plans (Kepler-style row-count evolution): join estimates scaled by
# 10^k for k in this range (0: the estimate as it is).
PERTURB_EXPONENTS = (-3, -2, -1, 0, 1, 2, 3)

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


def scaled_cards(cards: Cards, target: frozenset[str], factor: float) -> Cards:
    """``cards`` with the estimate of one relation set scaled by ``factor``.

    >>> f = scaled_cards(lambda s: 10.0 * len(s), frozenset("ab"), 100.0)
    >>> f(frozenset("ab")), f(frozenset("abc"))
    (2000.0, 30.0)
    """
    return lambda s: cards(s) * factor if s == target else cards(s)


def randomly_scaled_cards(cards: Cards, rng: random.Random) -> Cards:
    """``cards`` with every join's estimate (a set of 2+ relations) scaled by its own 10^k,
    k drawn from ``PERTURB_EXPONENTS`` the first time the set is asked for; relations stay.

    >>> f = randomly_scaled_cards(lambda s: 1.0, random.Random(0))
    >>> f(frozenset("a")), f(frozenset("ab")) == f(frozenset("ab")), f(frozenset("ab")) in (1e-3, 1e-2, 0.1, 1, 10, 100, 1e3)
    (1.0, True, True)
    """
    factors: dict[frozenset[str], float] = {}

    def scaled(s: frozenset[str]) -> float:
        if len(s) < 2:
            return cards(s)
        if s not in factors:
            factors[s] = 10.0 ** rng.choice(PERTURB_EXPONENTS)
        return cards(s) * factors[s]

    return scaled


def perturbation_plans(native: Plan, blocks: list[JoinBlock], cards_of: Callable[[JoinBlock], Cards], draws: int,
                       rng: random.Random) -> list[tuple[str, Plan]]:
    """``dp_plan`` under perturbed estimates, as ``(how, plan)``, repeats included: first
    each join of each block's ``dp_tree`` scaled alone by 10^k, k != 0 (``single:...``; the
    other blocks keep their ``dp`` trees), then ``draws`` plans with every join of every
    block scaled at random (``random:<i>``, ``randomly_scaled_cards``)."""
    plain = dp_plan(native, blocks, cards_of)
    out: list[tuple[str, Plan]] = []
    for b in blocks:
        cards = cards_of(b)
        tree = dp_tree(b, cards)
        if tree is None:
            continue
        for j in joins(tree):
            target = j.rels
            if len(target) == len(b.aliases):
                continue  # the whole block: every tree of it has this set, scaling it changes nothing
            for k in PERTURB_EXPONENTS:
                scaled = dp_tree(b, scaled_cards(cards, target, 10.0 ** k)) if k else None
                if scaled is not None:
                    out.append((f"single:{','.join(sorted(target))}x1e{k}", plain.replace(b.index, scaled)))
    for d in range(draws):
        out.append((f"random:{d}", dp_plan(native, blocks, lambda b: randomly_scaled_cards(cards_of(b), rng))))
    return out


def perturbed_plans(found: Iterable[tuple[str, Plan]], exclude: Iterable[Plan], limit: int) -> list[Plan]:
    """Up to ``limit`` distinct plans of ``found`` (``perturbation_plans``) not in ``exclude``,
    single and random perturbations taken in turn.

    >>> from lqo.trees.plan import Leaf
    >>> p = [Plan.of({0: Join(Leaf(a), Leaf(b))}) for a, b in ("xy", "yx", "xz")]
    >>> found = [("single:x", p[0]), ("single:y", p[1]), ("random:0", p[1]), ("random:1", p[2])]
    >>> perturbed_plans(found, exclude=[p[0]], limit=5) == [p[1], p[2]]
    True
    """
    singles = [p for how, p in found if how.startswith("single")]
    randoms = [p for how, p in found if not how.startswith("single")]
    skip = set(exclude)
    out: list[Plan] = []
    for pair in zip_longest(singles, randoms):
        for p in pair:
            if p is not None and p not in skip and len(out) < limit:
                skip.add(p)
                out.append(p)
    return out
