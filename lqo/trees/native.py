"""DuckDB's own plan -> lqo ``Plan``: read join trees from EXPLAIN (or profiling) JSON.

Inner joins of the physical plan form trees whose leaves are scans or other subplans.
For each join block of the query lqo finds the subtree whose leaves are exactly the
block's relations, matching leaves by the base tables read beneath them (CTE scans
expanded) and, where one table appears several times, by the join conditions. Filters,
projections and semi/anti/mark joins between inner joins are passed through: they are
placed by DuckDB whatever the tree.

The same reader works on the profiling JSON (``operator_name``/``operator_cardinality``),
which gives actual cardinalities for the same join nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

from sqlglot import exp

from lqo.sql.join_graph import JoinBlock, QueryGraph
from lqo.trees.physical import JOIN_OPERATORS, JTree, PNode, cte_tables, explain_json, list_join_trees
from lqo.trees.plan import Join, Leaf, Plan, Tree

__all__ = ["JOIN_OPERATORS", "NativeTrees", "PNode", "explain_json", "read_native_trees"]


@dataclass
class NativeTrees:
    """DuckDB's join tree per block, with per-join estimated (and actual) cardinalities."""

    trees: dict[int, Tree] = field(default_factory=dict)
    estimates: dict[int, dict[frozenset[str], float | None]] = field(default_factory=dict)
    actuals: dict[int, dict[frozenset[str], int | None]] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)  # block -> why no tree was found
    # DuckDB computes a join shared by several blocks once (a common-subplan CTE); forced
    # trees lose that sharing (TPC-DS q61: the forced native tree ran 1.7x).
    shared_subplan: bool = False

    @property
    def plan(self) -> Plan:
        """DuckDB's trees as a Plan."""
        return Plan.of(self.trees)


def read_native_trees(graph: QueryGraph, roots: list[PNode]) -> NativeTrees:
    """Match every reorderable block of ``graph`` to a join tree in the physical plan."""
    ctes = cte_tables(roots)
    candidates = [t for r in roots for t in list_join_trees(r)]
    out = NativeTrees(shared_subplan=ctes.shared_subplan)
    used: set[int] = set()
    for block in graph.reorderable:
        best = None
        for cand in candidates:
            found = _match_block(block, cand, ctes)
            if found is None:
                continue
            # Unused trees first (a tree DuckDB shares between identical blocks, through
            # its common-subplan CTEs, may serve several), then the best filter match.
            rank = (id(cand) not in used, found[0])
            if best is None or rank > best[0]:
                best = (rank, cand, found[1:])
        if best is None:
            out.missing[block.index] = "no join tree in DuckDB's plan has exactly this block's relations"
            continue
        tree, est, act, interior = best[2]
        used |= interior  # join nodes of this block's tree serve no other block
        out.trees[block.index], out.estimates[block.index], out.actuals[block.index] = tree, est, act
    return out



def _match_block(block: JoinBlock, jt: JTree, ctes: Any) -> tuple[int, Tree, dict, dict, set[int]] | None:
    """The best-scoring consistent reading of ``jt`` as ``block``'s tree, or None."""
    want = tuple(sorted(t for r in block.relations for t in r.tables))
    if jt.tables != want:
        return None
    rel_cols = {
        r.alias: {c.name.lower() for f in block.filters.get(r.alias, []) for c in f.find_all(exp.Column)}
        for r in block.relations
    }
    perfect = sum(1 for cols in rel_cols.values() if cols)
    best = None
    tries = 0
    for cut in _cuts(jt, len(block.relations), {r.tables for r in block.relations}):
        for assign in _assignments(block, cut):
            tries += 1
            if tries > 2000 or (best is not None and best[0] == perfect):
                break
            if not _conditions_consistent(block, jt, assign):
                continue
            score = _filter_score(cut, assign, rel_cols)
            if best is None or score > best[0]:
                best = (score, assign)
    if best is None:
        return None
    tree = _to_tree(jt, best[1])
    if tree is None:  # not reached: a cut's frontier covers every branch of jt
        return None
    est: dict[frozenset[str], float | None] = {}
    act: dict[frozenset[str], int | None] = {}
    _collect_cards(jt, best[1], est, act)
    return best[0], tree, est, act, _interior(jt, best[1])


def _interior(jt: JTree, assign: dict[int, str]) -> set[int]:
    """Ids of the join nodes that make up the block's tree (above its leaves)."""
    if id(jt) in assign or not jt.kids:
        return set()
    return {id(jt)}.union(*(_interior(k, assign) for k in jt.kids))


def _filter_score(cut: list["JTree"], assign: dict[int, str], rel_cols: dict[str, set[str]]) -> int:
    """How well the scans' filters agree with the relations' filters: tells apart
    structurally identical blocks (or self-joined tables) by what they filter on."""
    score = 0
    for leaf in cut:
        cols = rel_cols[assign[id(leaf)]]
        if cols and not leaf.kids:
            score += 1 if cols <= leaf.filter_words else -1
    return score


def _cuts(jt: JTree, n: int, signatures: set[tuple[str, ...]]):
    """Ways to cut the tree into exactly ``n`` frontier subtrees, each reading the tables
    of some relation of the block (``signatures``)."""
    def go(t: JTree, k: int):
        if k == 1 and t.tables in signatures:
            yield [t]
        if t.kids and k >= 2:
            for k0 in range(1, k):
                lefts = list(go(t.kids[0], k0))
                if not lefts:
                    continue
                for b in go(t.kids[1], k - k0):
                    for a in lefts:
                        yield a + b

    yield from go(jt, n)


def _assignments(block: JoinBlock, cut: list[JTree]):
    """Bijections frontier-node -> relation alias with equal base-table multisets."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for r in block.relations:
        groups.setdefault(r.tables, []).append(r.alias)
    slots: dict[tuple[str, ...], list[int]] = {}
    for i, t in enumerate(cut):
        slots.setdefault(t.tables, []).append(i)
    if {k: len(v) for k, v in groups.items()} != {k: len(v) for k, v in slots.items()}:
        return
    keys = list(groups)
    options = [list(permutations(groups[k])) for k in keys]

    def go(i: int, acc: dict[int, str]):
        if i == len(keys):
            yield {id(cut[j]): a for j, a in acc.items()}
            return
        for perm in options[i][:720]:
            nxt = dict(acc)
            nxt.update(zip(slots[keys[i]], perm))
            yield from go(i + 1, nxt)

    yield from go(0, {})


def _to_tree(jt: JTree, assign: dict[int, str]) -> Tree | None:
    if id(jt) in assign:
        return Leaf(assign[id(jt)])
    if not jt.kids:
        return None
    a, b = _to_tree(jt.kids[0], assign), _to_tree(jt.kids[1], assign)
    return Join(a, b) if a is not None and b is not None else None


def _rels(jt: JTree, assign: Any) -> frozenset[str]:
    if id(jt) in assign:
        return frozenset((assign[id(jt)],))
    return frozenset().union(*(_rels(k, assign) for k in jt.kids))


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _conditions_consistent(block: JoinBlock, jt: JTree, assign: Any) -> bool:
    """Every plain ``x = y`` join condition links the two sides by a key class."""

    def check(t: JTree) -> frozenset[str] | None:
        # Post-order: each node's relation set once, None as soon as a condition fails.
        if id(t) in assign:
            return frozenset((assign[id(t)],))
        left = check(t.kids[0])
        right = check(t.kids[1]) if left is not None else None
        if left is None or right is None:
            return None
        for cond in t.node.conditions:
            parts = [p.strip() for p in cond.split(" = ")]
            if len(parts) == 2 and all(_IDENT.match(p) for p in parts):
                if not _linked(block, parts[0].lower(), parts[1].lower(), left, right):
                    return None
        return left | right

    return check(jt) is not None


def _linked(block: JoinBlock, x: str, y: str, left: frozenset[str], right: frozenset[str]) -> bool:
    known = False
    for cls in block.classes:
        names = {c.name for c in cls}
        if x in names or y in names:
            known = True
        for a in cls:
            for b in cls:
                if a.name == x and b.name == y and (
                    (a.rel in left and b.rel in right) or (a.rel in right and b.rel in left)
                ):
                    return True
    return not known  # a condition lqo cannot place (e.g. a residual) does not decide


def _collect_cards(jt: JTree, assign: Any, est: dict, act: dict) -> None:
    rels = _rels(jt, assign)
    est[rels] = jt.node.estimate
    act[rels] = jt.node.actual
    if id(jt) not in assign:
        for k in jt.kids:
            _collect_cards(k, assign, est, act)
