"""The FROM items of a SELECT as ``Relation``s: tables, CTE references, derived tables.

Also what makes a block unsafe to reorder (outer/semi/anti/lateral joins, USING, table
functions, a SELECT list whose ``*`` would follow a reordered FROM) and which base tables
each relation reads on its data path (used to recognise the relation in DuckDB's
physical plan).

>>> import sqlglot
>>> from lqo.sql.catalog import Catalog
>>> sel = sqlglot.parse_one("SELECT 1 FROM a, (SELECT 2 AS y FROM b) d", read="duckdb")
>>> [relation(i, {}, Catalog({"a": {"x": "INT"}, "b": {"z": "INT"}})).tables for i in from_items(sel)]
[('a',), ('b',)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from lqo.errors import UnknownTableError
from lqo.sql.catalog import Catalog


@dataclass
class Relation:
    """One FROM item of a block."""

    alias: str
    kind: str  # "table" | "cte" | "derived"
    name: str | None  # base-table or CTE name; None for a derived table
    columns: dict[str, str] | None  # column -> type ("" if unknown); None: unknown set
    tables: tuple[str, ...]  # base tables read underneath, sorted (for matching EXPLAIN)


def from_items(select: exp.Select) -> list[exp.Expr]:
    """The FROM items of a SELECT in written order."""
    frm = select.args.get("from_")
    if frm is None:
        return []
    return [frm.this] + [j.this for j in select.args.get("joins") or []]


def check_tables(items: Any, ctes: Any, catalog: Catalog) -> None:
    """``UnknownTableError`` for a table of ``items`` that is neither a CTE nor in the
    catalog, nor a file DuckDB reads by its path (see ``file_path``)."""
    for item in items:
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            name = item.name.lower()
            if name not in ctes and not catalog.has_table(name) and not file_path(item):
                raise UnknownTableError(f"unknown table: {item.name}")


def file_path(item: exp.Expr) -> bool:
    """Whether the FROM item is a quoted name that looks like a path, one DuckDB may read
    as a file (``FROM 'sales.parquet'``, ``'logs/*.csv'``, ``'s3://b/x.json'``) rather
    than a table: lqo leaves it to DuckDB, which says whether it exists when it binds.

    >>> import sqlglot
    >>> [file_path(t) for t in sqlglot.parse_one("SELECT 1 FROM 'x.parquet', 'y', t", read="duckdb").find_all(exp.Table)]
    [True, False, False]
    """
    if not (isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier) and item.this.quoted):
        return False
    return not item.args.get("db") and any(ch in item.name for ch in "./\\*:")


def unsafe_join(join: exp.Join) -> str | None:
    """Why lqo must not reorder across ``join`` (outer, semi, anti, lateral, ...), or None."""
    kind = (join.args.get("kind") or "").upper()
    if join.args.get("side") or kind not in ("", "INNER", "CROSS"):
        return f"{' '.join(filter(None, [join.args.get('side'), kind])) or 'non-inner'} join"
    if join.args.get("method"):
        return f"{join.args['method']} join"
    if join.args.get("using"):
        return "JOIN ... USING"
    return None


def star_expansion(select: exp.Select) -> str | None:
    """Why the SELECT list's columns would follow a reordered FROM, or None.

    A plain ``*`` lists the relations' columns in FROM order; render keeps the written
    order by naming each relation's star. ``* EXCLUDE/REPLACE/RENAME``, ``COLUMNS(..)``
    and a ``*`` inside an expression (other than ``count(*)``) cannot be kept so.
    """
    for e in select.expressions:
        for node in e.walk(prune=lambda n, e=e: n is not e and isinstance(n, (exp.Query, exp.Subquery))):
            if isinstance(node, exp.Columns):
                return "COLUMNS(...) in the SELECT list expands columns in FROM order"
            if not isinstance(node, exp.Star) or isinstance(node.parent, (exp.Column, exp.Count)):
                continue
            if node is not e or any(node.args.get(k) for k in ("except_", "replace", "rename", "ilike")):
                return "a * in the SELECT list with modifiers or inside an expression expands columns in FROM order"
    return None


def lateral_reference(items: Any, relations: list[Relation], ctes: Any, catalog: Catalog) -> str | None:
    """Why a derived table of the block refers to a sibling FROM item, or None.

    DuckDB binds a derived table's column that its own FROM items lack to an earlier
    FROM item of the same SELECT (an implicit ``LATERAL``): such a table must stay after
    that item, so the block is left as written. Qualified references are matched by
    alias; an unqualified name may be one when a sibling has that column (or columns
    lqo does not know) and nothing inside the derived table is known to provide it.

    >>> import sqlglot
    >>> cat = Catalog({"a": {"x": "INT"}, "b": {"y": "INT"}})
    >>> sel = sqlglot.parse_one("SELECT 1 FROM a, (SELECT y FROM b WHERE y = x) d", read="duckdb")
    >>> items = from_items(sel)
    >>> lateral_reference(items, [relation(i, {}, cat) for i in items], {}, cat)
    'derived table d may refer to its sibling a (implicit LATERAL)'
    """
    siblings = {r.alias: r for r in relations}
    for item, rel in zip(items, relations):
        if rel.kind != "derived":
            continue
        query = item.this
        inner = {t.alias_or_name.lower() for t in query.find_all(exp.Table, exp.Subquery, exp.CTE)}
        names = _inner_columns(query, ctes, catalog)
        for col in query.find_all(exp.Column):
            if col.table:
                ref = col.table.lower()
                if ref in siblings and ref != rel.alias and ref not in inner:
                    return f"derived table {rel.alias} refers to its sibling {ref} (implicit LATERAL)"
            elif not isinstance(col.this, exp.Star) and col.name.lower() not in names:
                name = col.name.lower()
                for other in relations:
                    if other.alias != rel.alias and (other.columns is None or name in other.columns):
                        return f"derived table {rel.alias} may refer to its sibling {other.alias} (implicit LATERAL)"
    return None


def _inner_columns(query: exp.Expr, ctes: Any, catalog: Catalog) -> set[str]:
    """Column names the relations and SELECT aliases inside ``query`` are known to
    provide (a relation with unknown columns adds none)."""
    names: set[str] = set()
    local = {c.alias_or_name.lower(): c for c in query.find_all(exp.CTE)}
    for t in query.find_all(exp.Table):
        name = t.name.lower()
        cte = local.get(name) or (ctes.get(name) if not t.args.get("db") else None)
        if cte is not None:
            cols = _alias_columns(cte.args.get("alias")) or _output_columns(cte.this)
        elif isinstance(t.this, exp.Identifier) and catalog.has_table(name):
            cols = catalog.columns(name)
        else:
            cols = None  # a table function, or a table lqo does not know
        names |= set(cols or ())
    for sub in query.find_all(exp.Subquery):
        if sub.alias:
            cols = _alias_columns(sub.args.get("alias")) or _output_columns(sub.this)
            names |= set(cols or ())
    for sel in query.find_all(exp.Select):
        names |= {e.alias.lower() for e in sel.expressions if e.alias}
    return names


# DuckDB 1.5.5 pushes a hash join's runtime filter (min/max, key set) from the build side
# into the probe side's scan even through a LIMIT / TOP_N above that scan: the LIMIT then
# keeps other rows and the join returns a wrong result. Native plans mostly build on the
# small LIMIT side and escape it; a forced tree (or a build-side arm) can probe it.
LIMIT_REASON = "derived table or CTE with LIMIT (DuckDB pushes join filters below it when it is probed)"


def has_limit(query: exp.Expr) -> bool:
    """Whether ``query`` (a derived table's or CTE's body) limits its rows anywhere.

    >>> import sqlglot
    >>> has_limit(sqlglot.parse_one("SELECT a FROM t ORDER BY a LIMIT 5")), has_limit(sqlglot.parse_one("SELECT a FROM t"))
    (True, False)
    """
    return query.find(exp.Limit, exp.Fetch, exp.Offset) is not None


def limit_in_from(ast: exp.Expr) -> bool:
    """Whether any FROM item of ``ast`` (a derived table or a CTE) holds a LIMIT."""
    return any(has_limit(s.this) for s in ast.find_all(exp.Subquery) if isinstance(s.this, exp.Query)) or any(
        has_limit(c.this) for c in ast.find_all(exp.CTE))


def relation(item: exp.Expr, ctes: Any, catalog: Catalog) -> Relation | str:
    """A Relation for a FROM item, or the reason it cannot be reordered."""
    alias = item.alias_or_name.lower()
    if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
        if item.args.get("joins"):
            return "parenthesized join in FROM"
        name = item.name.lower()
        if name in ctes and not item.args.get("db"):
            query = ctes[name].this
            if has_limit(query):
                return LIMIT_REASON
            cols = _columns_of(ctes[name].args.get("alias"), query, ctes, catalog, {name})
            return Relation(alias, "cte", name, cols, _base_tables(query, ctes, catalog, {name}))
        if not catalog.has_table(name):
            return f"file {item.name} in FROM (lqo has no statistics for it and cannot find it in DuckDB's plan)"
        return Relation(alias, "table", name, dict(catalog.columns(name)), (name,))
    if isinstance(item, exp.Subquery) and isinstance(item.this, exp.Query) and not item.args.get("joins"):
        if not item.alias:
            return "derived table without alias"
        if has_limit(item.this):
            return LIMIT_REASON
        cols = _columns_of(item.args.get("alias"), item.this, ctes, catalog, set())
        return Relation(alias, "derived", None, cols, _base_tables(item.this, ctes, catalog, set()))
    if isinstance(item, exp.Subquery) and not isinstance(item.this, exp.Query):
        return "parenthesized join in FROM"
    if isinstance(item, exp.Table) and isinstance(item.this, exp.Func):
        function = item.this.sql(dialect="duckdb").split("(")[0].lower()
        return f"FROM item {function}(...): a table function (lqo has no statistics for it)"
    return f"FROM item {type(item).__name__} ({item.sql(dialect='duckdb')[:40]})"


def _alias_columns(alias: exp.TableAlias | None) -> dict[str, str] | None:
    if alias is None or not alias.columns:
        return None
    return {c.name.lower(): "" for c in alias.columns}


def _output_columns(query: exp.Expr, ctes: Any = None, catalog: Catalog | None = None,
                    seen: frozenset[str] = frozenset()) -> dict[str, str] | None:
    """Output column -> type of a query; the type is "" unless certain (a plain column of
    a relation whose type is known, the same in every branch of a set operation): an
    expression can change it or its comparison (``x COLLATE NOCASE``)."""
    if isinstance(query, exp.SetOperation):
        left = _output_columns(query.this, ctes, catalog, seen)
        right = _output_columns(query.expression, ctes, catalog, seen)
        if left is None or right is None or len(left) != len(right):
            return None if left is None else {k: "" for k in left}
        return {k: t if t and t == rt else "" for (k, t), rt in zip(left.items(), right.values())}
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
        inner = e.this if isinstance(e, exp.Alias) else e
        typ = ""
        if catalog is not None and isinstance(inner, exp.Column):
            typ = _column_type(inner, query, ctes or {}, catalog, seen)
        cols[e.alias_or_name.lower()] = typ
    return cols


def _columns_of(alias: exp.TableAlias | None, query: exp.Expr, ctes: Any, catalog: Catalog,
                seen: set[str] | frozenset[str]) -> dict[str, str] | None:
    """A CTE's or derived table's columns with their types (see ``_output_columns``);
    a column alias list renames them by position."""
    out = _output_columns(query, ctes, catalog, frozenset(seen))
    names = _alias_columns(alias)
    if names is None:
        return out
    if out is None or len(out) != len(names):
        return names
    return dict(zip(names, out.values()))


def _column_type(col: exp.Column, select: exp.Select, ctes: Any, catalog: Catalog, seen: frozenset[str]) -> str:
    """The type of a plain column of ``select``'s FROM items, or "" if not certain."""
    if col.args.get("db"):
        return ""
    name, table = col.name.lower(), col.table.lower()
    found = []
    for item in from_items(select):
        alias = item.alias_or_name.lower()
        if table and alias != table:
            continue
        cols: dict[str, str] | None = None
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            tname = item.name.lower()
            if tname in ctes and not item.args.get("db"):
                if tname not in seen:  # a recursive CTE's own columns stay unknown
                    cte = ctes[tname]
                    cols = _columns_of(cte.args.get("alias"), cte.this, ctes, catalog, seen | {tname})
            elif catalog.has_table(tname):
                cols = catalog.columns(tname)
        elif isinstance(item, exp.Subquery):
            cols = _columns_of(item.args.get("alias"), item.this, ctes, catalog, seen)
        if cols is None:
            return ""  # a relation whose columns are unknown may hold the name
        if name in cols:
            found.append(cols[name])
    return found[0] if len(found) == 1 else ""


def _base_tables(query: exp.Expr, ctes: Any, catalog: Catalog, seen: set[str]) -> tuple[str, ...]:
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
