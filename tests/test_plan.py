"""Plan trees and enumeration."""

from __future__ import annotations

import random

import pytest

from lqo.sql.catalog import Catalog
from lqo.trees.enumerate import components, exhaustive_trees, random_tree
from lqo.sql.join_graph import build_query_graph
from lqo.trees.plan import Join, Leaf, Plan, is_left_deep, joins, leaves, shape, tree_from_json, tree_to_json

CAT = Catalog({t: {"k": "INTEGER", "j": "INTEGER"} for t in "abcdefgh"})


def block_of(sql):
    return build_query_graph(sql, CAT).blocks[0]


def test_tree_value_semantics_and_json():
    t = Join(Join(Leaf("a"), Leaf("b")), Join(Leaf("c"), Leaf("d")))
    assert str(t) == "((a b) (c d))"
    assert tree_from_json(tree_to_json(t)) == t
    assert hash(t) == hash(tree_from_json([["a", "b"], ["c", "d"]]))
    assert leaves(t) == ["a", "b", "c", "d"]
    assert [str(j) for j in joins(t)] == ["(a b)", "(c d)", "((a b) (c d))"]
    assert not is_left_deep(t) and is_left_deep(Join(Join(Leaf("a"), Leaf("b")), Leaf("c")))
    assert shape(Join(Leaf("b"), Leaf("a"))) == shape(Join(Leaf("a"), Leaf("b")))
    with pytest.raises(ValueError):
        tree_from_json(["a"])


def test_plan_json_round_trip_and_key():
    p = Plan.of({3: Join(Leaf("x"), Leaf("y")), 0: Join(Join(Leaf("a"), Leaf("b")), Leaf("c"))})
    assert [i for i, _ in p.trees] == [0, 3]
    q = Plan.from_json(p.to_json())
    assert q == p and q.key == p.key and len(p.key) == 16
    assert p.replace(3, Join(Leaf("y"), Leaf("x"))).key != p.key
    assert str(p) == "#0 ((a b) c); #3 (x y)"


def test_exhaustive_counts_chain_and_clique():
    chain = block_of("SELECT 1 FROM a, b, c WHERE a.k = b.k AND b.j = c.j")
    clique = block_of("SELECT 1 FROM a, b, c WHERE a.k = b.k AND b.k = c.k")
    assert len(exhaustive_trees(chain)) == 8  # (ab)c, c(ab), a(bc), (bc)a, each with 2 inner sides
    assert len(exhaustive_trees(clique)) == 12
    assert len(set(exhaustive_trees(clique))) == 12
    left_deep = exhaustive_trees(chain, bushy=False)
    assert all(is_left_deep(t) or is_left_deep(Join(t.build, t.probe)) for t in left_deep)


def test_exhaustive_trees_are_cross_product_free():
    b = block_of("SELECT 1 FROM a, b, c, d, e WHERE a.k = b.k AND b.j = c.j AND c.k = d.k AND d.j = e.j")
    trees = exhaustive_trees(b)
    assert trees and len(set(trees)) == len(trees)
    for t in trees:
        assert sorted(leaves(t)) == ["a", "b", "c", "d", "e"]
        for j in joins(t):
            assert b.connects(j.probe.rels, j.build.rels)


def test_random_trees_valid_deterministic_and_varied():
    b = block_of(
        "SELECT 1 FROM a, b, c, d, e, f WHERE a.k = b.k AND a.k = c.k AND c.j = d.j AND d.k = e.k AND e.j = f.j"
    )
    r1 = [random_tree(b, random.Random(s)) for s in range(40)]
    r2 = [random_tree(b, random.Random(s)) for s in range(40)]
    assert r1 == r2
    assert len(set(r1)) > 20
    assert any(not is_left_deep(t) for t in r1)
    for t in r1 + [random_tree(b, random.Random(s), bushy=False) for s in range(10)]:
        assert sorted(leaves(t)) == sorted(b.aliases)
        for j in joins(t):
            assert b.connects(j.probe.rels, j.build.rels)


def test_disconnected_components_joined_by_cross_product():
    b = block_of("SELECT 1 FROM a, b, c, d WHERE a.k = b.k AND c.k = d.k")
    assert components(b) == [["a", "b"], ["c", "d"]]
    t = random_tree(b, random.Random(1))
    assert sorted(leaves(t)) == ["a", "b", "c", "d"]
    assert not b.connects(t.probe.rels, t.build.rels)  # the one cross product is at the top
    assert len(exhaustive_trees(b)) == 4
