"""The FROM items of a SELECT as ``Relation``s: tables, CTE references, derived tables.

Also what makes a FROM clause unsafe to reorder (outer/semi/anti/lateral joins, USING,
table functions) and which base tables each relation reads on its data path (used to
recognise the relation in DuckDB's physical plan).

>>> import sqlglot
>>> from lqo.sql.catalog import Catalog
>>> sel = sqlglot.parse_one("SELECT 1 FROM a, (SELECT 2 AS y FROM b) d", read="duckdb")
>>> [relation(i, {}, Catalog({"a": {"x": "INT"}, "b": {"z": "INT"}})).tables for i in from_items(sel)]
[('a',), ('b',)]
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from lqo.sql.catalog import Catalog
from lqo.errors import UnknownTableError


@dataclass
class Relation:
    """One FROM item of a block."""

    alias: str
    kind: str  # "table" | "cte" | "derived"
    name: str | None  # base-table or CTE name; None for a derived table
    columns: dict[str, str] | None  # column -> type ("" if unknown); None: unknown set
    tables: tuple[str, ...]  # base tables read underneath, sorted (for matching EXPLAIN)


def from_items(select: exp.Select) -> list[exp.Expression]:
    """The FROM items of a SELECT in written order."""
    frm = select.args.get("from_")
    if frm is None:
        return []
    return [frm.this] + [j.this for j in select.args.get("joins") or []]


def check_tables(items, ctes, catalog: Catalog) -> None:
    for item in items:
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            name = item.name.lower()
            if name not in ctes and not catalog.has_table(name):
                raise UnknownTableError(f"unknown table: {item.name}")


def unsafe_join(join: exp.Join) -> str | None:
    kind = (join.args.get("kind") or "").upper()
    if join.args.get("side") or kind not in ("", "INNER", "CROSS"):
        return f"{' '.join(filter(None, [join.args.get('side'), kind])) or 'non-inner'} join"
    if join.args.get("method"):
        return f"{join.args['method']} join"
    if join.args.get("using"):
        return "JOIN ... USING"
    return None


def relation(item: exp.Expression, ctes, catalog: Catalog) -> Relation | str:
    """A Relation for a FROM item, or the reason it cannot be reordered."""
    alias = item.alias_or_name.lower()
    if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
        if item.args.get("joins"):
            return "parenthesized join in FROM"
        name = item.name.lower()
        if name in ctes and not item.args.get("db"):
            query = ctes[name].this
            cols = _alias_columns(ctes[name].args.get("alias")) or _output_columns(query)
            return Relation(alias, "cte", name, cols, _base_tables(query, ctes, catalog, {name}))
        return Relation(alias, "table", name, dict(catalog.columns(name)), (name,))
    if isinstance(item, exp.Subquery) and isinstance(item.this, exp.Query) and not item.args.get("joins"):
        if not item.alias:
            return "derived table without alias"
        cols = _alias_columns(item.args.get("alias")) or _output_columns(item.this)
        return Relation(alias, "derived", None, cols, _base_tables(item.this, ctes, catalog, set()))
    if isinstance(item, exp.Subquery) and not isinstance(item.this, exp.Query):
        return "parenthesized join in FROM"
    return f"FROM item {type(item).__name__} ({item.sql(dialect='duckdb')[:40]})"


def _alias_columns(alias: exp.TableAlias | None) -> dict[str, str] | None:
    if alias is None or not alias.columns:
        return None
    return {c.name.lower(): "" for c in alias.columns}


def _output_columns(query: exp.Expression) -> dict[str, str] | None:
    while isinstance(query, exp.SetOperation):
        query = query.this
    while isinstance(query, exp.Subquery):
        query = query.this
    if not isinstance(query, exp.Select):
        return None
    cols: dict[str, str] = {}
    for e in query.expressions:
        if isinstance(e, exp.Star) or (isinstance(e, exp.Column) and isinstance(e.this, exp.Star)):
            return None
        if not e.alias_or_name:
            return None
        cols[e.alias_or_name.lower()] = ""
    return cols


def _base_tables(query: exp.Expression, ctes, catalog: Catalog, seen: set[str]) -> tuple[str, ...]:
    """Base tables on ``query``'s data path (FROM items, CTEs expanded; not tables of
    subqueries in expressions, which DuckDB turns into filtering joins), sorted."""
    names: list[str] = []
    if isinstance(query, (exp.Intersect, exp.Except)):
        return _base_tables(query.this, ctes, catalog, seen)  # the right side is a semi/anti join
    if isinstance(query, exp.SetOperation):
        return tuple(sorted(_base_tables(query.this, ctes, catalog, seen) + _base_tables(query.expression, ctes, catalog, seen)))
    if isinstance(query, exp.Subquery):
        return _base_tables(query.this, ctes, catalog, seen)
    if not isinstance(query, exp.Select):
        return ()
    for item in from_items(query):
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            name = item.name.lower()
            if name in ctes and name not in seen and not item.args.get("db"):
                names += _base_tables(ctes[name].this, ctes, catalog, seen | {name})
            elif catalog.has_table(name):
                names.append(name)
        elif isinstance(item, exp.Subquery):
            names += _base_tables(item.this, ctes, catalog, seen)
    return tuple(sorted(names))
