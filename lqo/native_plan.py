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

import json
import re
from dataclasses import dataclass, field
from itertools import permutations
from typing import Any

import duckdb

from .join_graph import JoinBlock, QueryGraph
from sqlglot import exp

from .plan import Join, Leaf, Plan, Tree

JOIN_OPERATORS = {
    "HASH_JOIN", "NESTED_LOOP_JOIN", "PIECEWISE_MERGE_JOIN", "IE_JOIN", "BLOCKWISE_NL_JOIN",
    "CROSS_PRODUCT", "LEFT_DELIM_JOIN", "RIGHT_DELIM_JOIN",
}
PASS_THROUGH = {"FILTER", "PROJECTION"}
# Joins that only filter one input (from WHERE subqueries): the index of that input.
_FILTERING_JOIN_INPUT = {"SEMI": 0, "ANTI": 0, "MARK": 0, "RIGHT_SEMI": 1, "RIGHT_ANTI": 1}


@dataclass
class PNode:
    """A physical-plan node, from EXPLAIN or profiling JSON."""

    name: str
    info: dict[str, Any]
    children: list["PNode"]
    actual: int | None = None

    @classmethod
    def from_json(cls, node: dict) -> "PNode":
        name = node.get("name") or node.get("operator_name") or node.get("operator_type") or ""
        kids = [cls.from_json(c) for c in node.get("children", [])]
        return cls(name.strip(), node.get("extra_info") or {}, kids, node.get("operator_cardinality"))

    @property
    def join_type(self) -> str:
        if self.name == "CROSS_PRODUCT":
            return "INNER"
        return str(self.info.get("Join Type", "")).upper() if self.name in JOIN_OPERATORS else ""

    @property
    def is_inner_join(self) -> bool:
        return self.name in JOIN_OPERATORS and self.join_type == "INNER" and len(self.children) == 2

    @property
    def estimate(self) -> float | None:
        est = self.info.get("Estimated Cardinality")
        try:
            return float(est) if est is not None else None
        except ValueError:
            return None

    @property
    def conditions(self) -> list[str]:
        conds = self.info.get("Conditions", [])
        return [conds] if isinstance(conds, str) else list(conds)


@dataclass
class NativeTrees:
    """DuckDB's join tree per block, with per-join estimated (and actual) cardinalities."""

    trees: dict[int, Tree] = field(default_factory=dict)
    estimates: dict[int, dict[frozenset[str], float | None]] = field(default_factory=dict)
    actuals: dict[int, dict[frozenset[str], int | None]] = field(default_factory=dict)
    missing: dict[int, str] = field(default_factory=dict)  # block -> why no tree was found

    @property
    def plan(self) -> Plan:
        return Plan.of(self.trees)


def explain_json(con: duckdb.DuckDBPyConnection, sql: str) -> list[PNode]:
    """Roots of DuckDB's physical plan for ``sql`` (EXPLAIN (FORMAT JSON))."""
    rows = con.execute("EXPLAIN (FORMAT JSON) " + sql).fetchall()
    return [PNode.from_json(n) for n in json.loads(rows[0][1])]


def read_native_trees(graph: QueryGraph, roots: list[PNode]) -> NativeTrees:
    """Match every reorderable block of ``graph`` to a join tree in the physical plan."""
    ctes = _cte_tables(roots)
    candidates = [t for r in roots for t in _join_trees(r)]
    out = NativeTrees()
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


# -- the physical plan's inner-join trees --------------------------------------------


@dataclass
class JTree:
    """An inner-join tree of the physical plan: a join (two kids) or a leaf subplan."""

    node: PNode
    kids: tuple["JTree", ...] = ()
    tables: tuple[str, ...] = ()
    filters: str = ""  # a leaf's filter text (FILTER expressions and scan filters)

    @property
    def filter_words(self) -> set[str]:
        if not hasattr(self, "_words"):
            self._words = set(_WORD.findall(self.filters.lower()))
        return self._words


def _skip(node: PNode, aside: list[PNode], filters: list[str] | None = None) -> PNode:
    """Descend through operators that do not change a block's join tree; the other
    inputs of filtering joins (subqueries) go to ``aside``, filter texts to ``filters``."""
    while True:
        if node.name in PASS_THROUGH and len(node.children) == 1:
            if filters is not None and node.name == "FILTER":
                filters.append(str(node.info.get("Expression", "")))
            node = node.children[0]
        elif node.name in ("LEFT_DELIM_JOIN", "RIGHT_DELIM_JOIN") and node.children:
            # A decorrelated subquery: child 0 is the outer block's input.
            aside.extend(node.children[1:])
            node = node.children[0]
        elif node.name in JOIN_OPERATORS and node.join_type in _FILTERING_JOIN_INPUT and len(node.children) == 2:
            keep = _FILTERING_JOIN_INPUT[node.join_type]
            aside.append(node.children[1 - keep])
            node = node.children[keep]
        elif _scalar_subquery_side(node) is not None:
            side = _scalar_subquery_side(node)
            aside.append(node.children[side])
            node = node.children[1 - side]
        elif node.is_inner_join and any(_is_delim_scan(c) for c in node.children):
            # Decorrelation joins a subquery block with the outer values (DELIM_SCAN):
            # not one of the block's relations.
            node = next(c for c in node.children if not _is_delim_scan(c))
        else:
            return node


def _is_delim_scan(node: PNode) -> bool:
    while node.name in PASS_THROUGH and len(node.children) == 1:
        node = node.children[0]
    return node.name == "DELIM_SCAN"


def _scalar_subquery_side(node: PNode) -> int | None:
    """An inner join with an uncorrelated scalar subquery (``x > SUBQUERY``) is a filter
    DuckDB places itself: the index of the subquery's input, or None."""
    if not node.is_inner_join or not any("SUBQUERY" in c for c in node.conditions):
        return None
    for side in (1, 0):
        top = node.children[side]
        while top.name in PASS_THROUGH and len(top.children) == 1:
            top = top.children[0]
        if top.name in ("UNGROUPED_AGGREGATE", "SIMPLE_AGGREGATE"):
            return side
    return None


def _build_jtree(node: PNode, ctes: _Ctes, aside: list[PNode]) -> JTree:
    filters: list[str] = []
    node = _skip(node, aside, filters)
    if node.name == "CTE_SCAN":
        # DuckDB's common-subplan optimizer materializes a join shared by two blocks as a
        # CTE: read through it so each block sees its whole tree.
        body = ctes.bodies.get(str(node.info.get("CTE Index")))
        if body is not None and _skip(body, []).is_inner_join:
            return _build_jtree(body, ctes, aside)
    if node.is_inner_join:
        kids = tuple(_build_jtree(c, ctes, aside) for c in node.children)
        return JTree(node, kids, tuple(sorted(kids[0].tables + kids[1].tables)))
    scan_filters = node.info.get("Filters", "")
    filters += scan_filters if isinstance(scan_filters, list) else [str(scan_filters)]
    return JTree(node, (), tuple(sorted(_scanned_tables(node, ctes))), " ".join(filters))


def _join_trees(root: PNode) -> list[JTree]:
    """Every inner-join subtree, outermost first (a subtree may be a block of its own)."""
    ctes = _cte_tables([root])
    out: list[JTree] = []

    def visit(node: PNode) -> None:
        aside: list[PNode] = []
        skipped = _skip(node, aside)
        if skipped.is_inner_join:
            jt = _build_jtree(skipped, ctes, aside)
            # This tree's subtrees first, then the subplans below its leaves and beside
            # it: the order blocks are numbered in (outer before nested), so ties between
            # identical blocks resolve to the right one.
            leaves, stack = [], [jt]
            while stack:
                t = stack.pop(0)
                if t.kids:
                    out.append(t)
                    stack.extend(t.kids)
                else:
                    leaves.append(t)
            for t in leaves:
                visit_children(t.node)
            for other in aside:
                visit(other)
        else:
            visit_children(node)

    def visit_children(node: PNode) -> None:
        for c in node.children:
            visit(c)

    visit(root)
    return out


def _table_name(node: PNode) -> str | None:
    table = node.info.get("Table")
    return str(table).split(".")[-1].strip('"').lower() if table else None


@dataclass
class _Ctes:
    """Materialized CTEs of a plan by index: their definitions and base tables."""

    bodies: dict[str, PNode] = field(default_factory=dict)
    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _cte_tables(roots: list[PNode]) -> _Ctes:
    ctes = _Ctes()

    def visit(node: PNode) -> None:
        if node.name == "CTE" and node.children:
            index = str(node.info.get("Table Index"))
            ctes.bodies[index] = node.children[0]
            ctes.tables[index] = tuple(_scanned_tables(node.children[0], ctes))
        for c in node.children:
            visit(c)

    for r in roots:
        visit(r)
    return ctes


def _scanned_tables(node: PNode, ctes: _Ctes) -> list[str]:
    """Base tables on ``node``'s data path: subquery inputs of filtering joins excluded,
    as ``Relation.tables`` excludes tables of subqueries in expressions."""
    node = _skip(node, [])
    if node.name == "CTE_SCAN":
        return list(ctes.tables.get(str(node.info.get("CTE Index")), ()))
    if node.name == "CTE" and len(node.children) == 2:
        return _scanned_tables(node.children[1], ctes)
    name = _table_name(node)
    if name:
        return [name]
    return [t for c in node.children for t in _scanned_tables(c, ctes)]


# -- matching a block to a join tree ---------------------------------------------------


def _match_block(block: JoinBlock, jt: JTree, ctes) -> tuple[int, Tree, dict, dict, set[int]] | None:
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
    est: dict[frozenset[str], float | None] = {}
    act: dict[frozenset[str], int | None] = {}
    _collect_cards(jt, best[1], est, act)
    return best[0], tree, est, act, _interior(jt, best[1])


def _interior(jt: JTree, assign: dict[int, str]) -> set[int]:
    """Ids of the join nodes that make up the block's tree (above its leaves)."""
    if id(jt) in assign or not jt.kids:
        return set()
    return {id(jt)}.union(*(_interior(k, assign) for k in jt.kids))


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def _rels(jt: JTree, assign) -> frozenset[str]:
    if id(jt) in assign:
        return frozenset((assign[id(jt)],))
    return frozenset().union(*(_rels(k, assign) for k in jt.kids))


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _conditions_consistent(block: JoinBlock, jt: JTree, assign) -> bool:
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


def _collect_cards(jt: JTree, assign, est: dict, act: dict) -> None:
    rels = _rels(jt, assign)
    est[rels] = jt.node.estimate
    act[rels] = jt.node.actual
    if id(jt) not in assign:
        for k in jt.kids:
            _collect_cards(k, assign, est, act)
