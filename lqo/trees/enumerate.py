"""Enumerating join trees of a block: random and exhaustive, left-deep and bushy.

Trees are cross-product-free within each connected component of the block's join
graph; components that share no predicate (a cross join as written) are combined by
cross products in written order. Both children orders (probe/build sides) are
enumerated, so sides are chosen, not only the order.

>>> from lqo.sql.join_graph import build_query_graph
>>> from lqo.sql.catalog import Catalog
>>> cat = Catalog({"a": {"x": "INT"}, "b": {"x": "INT"}, "c": {"x": "INT"}})
>>> block = build_query_graph("SELECT * FROM a, b, c WHERE a.x = b.x AND b.x = c.x", cat).blocks[0]
>>> len(exhaustive_trees(block))  # 3 splits x 2 sides at each of 2 joins
12
"""

from __future__ import annotations

import random
from functools import lru_cache
from itertools import combinations

from lqo.sql.join_graph import JoinBlock
from lqo.trees.plan import Join, Leaf, Tree

MAX_EXHAUSTIVE_RELATIONS = 8


def components(block: JoinBlock) -> list[list[str]]:
    """Connected components of the block's join graph, each in written order."""
    aliases = block.aliases
    seen: set[str] = set()
    comps = []
    for start in aliases:
        if start in seen:
            continue
        comp = {start}
        frontier = [start]
        while frontier:
            frontier.pop()
            for b in aliases:
                if b not in comp and block.connects(frozenset(comp), frozenset((b,))):
                    comp.add(b)
                    frontier.append(b)
        seen |= comp
        comps.append([a for a in aliases if a in comp])
    return comps


def _combine(block: JoinBlock, parts: list[Tree]) -> Tree:
    tree = parts[0]
    for p in parts[1:]:
        tree = Join(tree, p)
    return tree


def random_tree(block: JoinBlock, rng: random.Random, bushy: bool = True) -> Tree:
    """A uniformly-built random cross-product-free tree (random sides too)."""
    parts = [_random_component(block, comp, rng, bushy) for comp in components(block)]
    return _combine(block, parts)


def _random_component(block: JoinBlock, comp: list[str], rng: random.Random, bushy: bool) -> Tree:
    if not bushy:
        start = rng.choice(comp)
        tree: Tree = Leaf(start)
        done = {start}
        while len(done) < len(comp):
            cands = [a for a in comp if a not in done and block.connects(frozenset(done), frozenset((a,)))]
            a = rng.choice(cands)
            tree = Join(tree, Leaf(a)) if rng.random() < 0.5 else Join(Leaf(a), tree)
            done.add(a)
        return tree
    # Bushy: repeatedly join two random connected subtrees.
    forest: list[Tree] = [Leaf(a) for a in comp]
    while len(forest) > 1:
        pairs = [
            (i, j)
            for i in range(len(forest))
            for j in range(i + 1, len(forest))
            if block.connects(forest[i].rels, forest[j].rels)
        ]
        i, j = rng.choice(pairs)
        left, right = forest[i], forest[j]
        if rng.random() < 0.5:
            left, right = right, left
        forest = [t for k, t in enumerate(forest) if k not in (i, j)] + [Join(left, right)]
    return forest[0]


def exhaustive_trees(block: JoinBlock, bushy: bool = True, limit: int = 100_000) -> list[Tree]:
    """Every cross-product-free tree (both sides at each join), up to ``limit``."""
    comps = components(block)
    if len(block.relations) > MAX_EXHAUSTIVE_RELATIONS:
        raise ValueError(f"{len(block.relations)} relations: too many to enumerate exhaustively")

    @lru_cache(maxsize=None)
    def trees(rels: frozenset[str]) -> tuple[Tree, ...]:
        if len(rels) == 1:
            return (Leaf(next(iter(rels))),)
        out: list[Tree] = []
        items = sorted(rels)
        for k in range(1, len(items)):
            for left in combinations(items, k):
                ls = frozenset(left)
                rs = rels - ls
                if not bushy and len(rs) != 1 and len(ls) != 1:
                    continue
                if not block.connects(ls, rs):
                    continue
                for lt in trees(ls):
                    for rt in trees(rs):
                        out.append(Join(lt, rt))
                        if len(out) > limit:
                            raise ValueError(f"more than {limit} trees")
        return tuple(out)

    per_comp = [trees(frozenset(c)) for c in comps]
    result: list[Tree] = [t for t in per_comp[0]]
    for more in per_comp[1:]:
        result = [Join(a, b) for a in result for b in more]
        if len(result) > limit:
            raise ValueError(f"more than {limit} trees")
    return result


def is_valid_tree(block: JoinBlock, tree: Tree) -> bool:
    """Whether ``tree`` covers the block's relations exactly once."""
    from lqo.trees.plan import leaves

    names = leaves(tree)
    return sorted(names) == sorted(block.aliases)
