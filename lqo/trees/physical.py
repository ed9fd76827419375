"""DuckDB's physical plan as lqo reads it: operator nodes and their inner-join trees.

``PNode`` wraps a node of ``EXPLAIN (FORMAT JSON)`` or of the profiling JSON (which has
the same shape plus ``operator_cardinality``). ``list_join_trees`` lists every inner-join
tree of a plan, outermost first. Operators that do not change a block's join tree are
read through: filters and projections, semi/anti/mark joins from WHERE subqueries,
decorrelation (delim) joins, scalar-subquery comparisons, and the CTEs DuckDB's
common-subplan optimizer materializes for joins shared by two blocks.

>>> roots = explain_json(con, sql)        # doctest: +SKIP
>>> [t.tables for t in list_join_trees(roots[0])]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import duckdb

from lqo.trees.shared import SHARED_PREFIX

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
        """A node (and its children) from DuckDB's JSON."""
        name = node.get("name") or node.get("operator_name") or node.get("operator_type") or ""
        kids = [cls.from_json(c) for c in node.get("children", [])]
        return cls(name.strip(), node.get("extra_info") or {}, kids, node.get("operator_cardinality"))

    @property
    def join_type(self) -> str:
        """``INNER``, ``LEFT``, ... for a join operator (a cross product is inner); "" otherwise."""
        if self.name == "CROSS_PRODUCT":
            return "INNER"
        return str(self.info.get("Join Type", "")).upper() if self.name in JOIN_OPERATORS else ""

    @property
    def is_inner_join(self) -> bool:
        """Whether the node is a binary inner join."""
        return self.name in JOIN_OPERATORS and self.join_type == "INNER" and len(self.children) == 2

    @property
    def estimate(self) -> float | None:
        """DuckDB's cardinality estimate, None where it gave none."""
        est = self.info.get("Estimated Cardinality")
        try:
            return float(est) if est is not None else None
        except ValueError:
            return None

    @property
    def conditions(self) -> list[str]:
        """The join conditions, as DuckDB prints them."""
        conds = self.info.get("Conditions", [])
        return [conds] if isinstance(conds, str) else list(conds)


def explain_json(con: duckdb.DuckDBPyConnection, sql: str) -> list[PNode]:
    """Roots of DuckDB's physical plan for ``sql`` (EXPLAIN (FORMAT JSON))."""
    rows = con.execute("EXPLAIN (FORMAT JSON) " + sql).fetchall()
    return [PNode.from_json(n) for n in json.loads(rows[0][1])]


def profile_nodes(profile: dict | None) -> list[PNode] | None:
    """Roots of a profiling JSON (``lqo.engine.profile.profile_json``), None for None."""
    return None if profile is None else [PNode.from_json(c) for c in profile.get("children", [])]


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class JTree:
    """An inner-join tree of the physical plan: a join (two kids) or a leaf subplan."""

    node: PNode
    kids: tuple["JTree", ...] = ()
    tables: tuple[str, ...] = ()
    filters: str = ""  # a leaf's filter text (FILTER expressions and scan filters)

    @property
    def filter_words(self) -> set[str]:
        """The words of the tree's filters, lower case (computed once)."""
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
        elif node.name in JOIN_OPERATORS and node.join_type == "LEFT" and len(node.children) == 2 and \
                any("IS NOT DISTINCT FROM" in c for c in node.conditions):
            # A decorrelated scalar subquery (``x > (SELECT avg(..) .. WHERE outer.k = k)``)
            # joined to its outer input, which lqo may have placed inside one relation.
            aside.append(node.children[1])
            node = node.children[0]
        elif (side := _scalar_subquery_side(node)) is not None:
            aside.append(node.children[side])
            node = node.children[1 - side]
        elif node.is_inner_join and any(_is_delim_scan(c) for c in node.children):
            # Decorrelation joins a subquery block with the outer values (DELIM_SCAN):
            # not one of the block's relations.
            rest = next((c for c in node.children if not _is_delim_scan(c)), None)
            if rest is None:  # both inputs are decorrelation scans: nothing of a block below
                return node
            node = rest
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


def _build_jtree(node: PNode, ctes: Ctes, aside: list[PNode]) -> JTree:
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


def list_join_trees(root: PNode) -> list[JTree]:
    """Every inner-join subtree, outermost first (a subtree may be a block of its own)."""
    ctes = cte_tables([root])
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
class Ctes:
    """Materialized CTEs of a plan by index: their definitions and base tables."""

    bodies: dict[str, PNode] = field(default_factory=dict)
    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # "__common_subplan_N": made by DuckDB

    @property
    def shared_subplan(self) -> bool:
        """Whether DuckDB computes a join shared by several blocks once (its
        common-subplan optimizer materializes it as a CTE of its own, or lqo's rendering
        did: ``lqo.trees.shared``)."""
        return any(n.startswith(("__common_subplan", SHARED_PREFIX)) for n in self.names.values())


def cte_tables(roots: list[PNode]) -> Ctes:
    """Every CTE of the plan by table index: its body, its name and the tables it reads."""
    ctes = Ctes()

    def visit(node: PNode) -> None:
        if node.name == "CTE" and node.children:
            index = str(node.info.get("Table Index"))
            ctes.bodies[index] = node.children[0]
            ctes.names[index] = str(node.info.get("CTE Name", ""))
            ctes.tables[index] = tuple(_scanned_tables(node.children[0], ctes))
        for c in node.children:
            visit(c)

    for r in roots:
        visit(r)
    return ctes


def _scanned_tables(node: PNode, ctes: Ctes) -> list[str]:
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
