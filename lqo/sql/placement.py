"""Which relation a predicate with subqueries restricts, so a forced plan can place it.

DuckDB plans a predicate that compares with a subquery (``x = (SELECT ..)``,
``x IN (SELECT ..)``, ``EXISTS (..)``, correlated or not) as a join against the
subquery's result. Its join-order optimizer places that join low, on the relation it
restricts; with ``join_order`` disabled it stays above every join of the block, so the
whole block's rows flow through the joins before the filter applies (TPC-DS q06: 25x).
A predicate that refers to exactly one relation of its block can instead be rendered
inside that relation, ``(SELECT * FROM date_dim AS d WHERE ..) AS d``, where it filters
before any join, as DuckDB places it natively. The same holds inside a correlated
subquery for a filter that references the enclosing query (``ws_item_sk = i_item_sk``:
a join with the outer values; TPC-DS q92 3.4x). Predicates over several relations stay in
WHERE: DuckDB places those on top of the block too.

Scoping is decided conservatively: a column inside the subquery must be bound by a FROM
item of the subquery itself (or of a SELECT nested between), or refer to the one
relation. EXISTS predicates stay where they are written (measured slower when placed
first). Anything unclear (columns of unknown relations, references to other relations
of the block or to enclosing queries, a LIMIT) leaves the predicate where it was written.

>>> import sqlglot
>>> from lqo.sql.catalog import Catalog
>>> cat = Catalog({"d": {"m": "INT", "y": "INT"}, "s": {"k": "INT"}})
>>> conj = sqlglot.parse_one("SELECT 1 FROM d AS x, s WHERE x.m = (SELECT max(m) FROM d WHERE y = 1)").args["where"].this
>>> sorted(subquery_relations(conj, {"x", "s"}, lambda c: c.table or None, {}, cat))
['x']
>>> subquery_relations(conj.expression.this.args["where"].this, {"x", "s"}, lambda c: c.table or None, {}, cat) is None
True
"""

from __future__ import annotations

from typing import Callable

from sqlglot import exp

from lqo.sql.catalog import Catalog
from lqo.sql.relations import from_items, relation

__all__ = ["has_subquery", "subquery_relations"]


def has_subquery(expr: exp.Expr) -> bool:
    """Whether ``expr`` contains a subquery."""
    return any(isinstance(n, (exp.Select, exp.Subquery, exp.Exists)) for n in expr.walk())


def subquery_relations(conj: exp.Expr, aliases: set[str], resolve: Callable[[exp.Column], str | None],
                       ctes: dict, catalog: Catalog) -> frozenset[str] | None:
    """The relation aliases of the block that ``conj`` refers to, or None if unsure.

    ``conj`` must hold a subquery; ``resolve`` maps a column of the block's own scope to
    the alias of the relation that has it (None when unsure or not the block's).
    """
    if not has_subquery(conj) or any(isinstance(n, exp.Select) and n.args.get("limit") for n in conj.walk()):
        return None
    if any(isinstance(n, exp.Exists) for n in conj.walk()):
        # A correlated EXISTS is a semi join whose cost grows with the rows it sees: DuckDB
        # runs it after the selective joins (placed first, TPC-DS q16 ran 6x, q94 5x).
        return None
    owners: set[str] = set()
    for col in conj.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            return None
        scopes = _selects_between(col, conj)
        bound = _bound_inside(col, scopes, ctes, catalog)
        if bound is None:
            return None  # unsure
        if bound:
            continue
        if col.args.get("db"):
            return None
        owner = resolve(col)
        if owner is None or owner not in aliases:
            return None
        owners.add(owner)
    return frozenset(owners) if owners else None


def _selects_between(node: exp.Expr, top: exp.Expr) -> list[exp.Select]:
    """SELECTs enclosing ``node`` below ``top``, innermost first."""
    out = []
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Select):
            out.append(parent)
        parent = parent.parent
    return out


def _bound_inside(col: exp.Column, scopes: list[exp.Select], ctes: dict, catalog: Catalog) -> bool | None:
    """Whether one of ``scopes`` binds ``col`` (True), none does (False), or unsure (None)."""
    name, table = col.name.lower(), col.table.lower()
    for select in scopes:
        for item in from_items(select):
            alias = item.alias_or_name.lower()
            if table:
                if alias == table:
                    return True
                continue
            rel = relation(item, ctes, catalog)
            if isinstance(rel, str) or rel.columns is None:
                return None  # a relation whose columns are unknown may hold the name
            if name in rel.columns:
                return True
        if not table and any(e.alias and e.alias.lower() == name for e in select.expressions):
            return None  # a SELECT-list alias: not the block's column
    return False
