"""Where a query's constants are: comparison, BETWEEN and IN sites tied to base columns,
with the join path to the fact table that weights their values. See
:mod:`lqo.workloads.vary`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from lqo.workloads.values import Column, ColumnValues, Hop

_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_MAX_HOPS = 3  # joins between a predicate's table and the fact table it is weighted by

@dataclass(frozen=True)
class Site:
    """One literal token tied to a base-table column: ``sql[start:end + 1]`` is the token.

    ``group`` names the fact table (occurrence in the query) that the column's table joins
    to, None if none; ``path`` is the chain of equi-joins from that fact table to the
    column's table (empty for a column of the fact table itself). ``offset`` is ``k`` in
    ``literal + k`` (a number, or an interval as a ``timedelta``), None for a bare literal.
    """

    column: Column
    start: int
    end: int
    is_string: bool
    value: str
    group: str | None = None
    path: tuple[Hop, ...] = ()
    offset: Decimal | dt.timedelta | None = None

    @property
    def fact(self) -> tuple[str, str]:
        """(schema, table) of the fact table the site is weighted by (if ``group``)."""
        return self.path[0][0][:2] if self.path else self.column[:2]


def find_sites(sql: str, catalog: ColumnValues) -> list[Site]:
    """The literal tokens of ``sql`` that compare against a base-table column.

    >>> [s.value for s in find_sites("SELECT 1 FROM region WHERE r_name = 'ASIA'", cat)]  # doctest: +SKIP
    ['ASIA']
    """
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
        tree = qualify(tree, schema=dict(catalog.schema), db=catalog.default_db, dialect="duckdb",
                       validate_qualify_columns=False, identify=False)
        scopes = list(traverse_scope(tree))
    except Exception:  # noqa: BLE001 - anything sqlglot cannot handle is left unchanged
        return []
    scope_of = {id(c): s for s in scopes for c in s.columns}
    try:
        edges = _join_graph(tree, scope_of, catalog)
    except Exception:  # noqa: BLE001 - no join graph: every column is drawn uniformly
        edges = {}
    occurrence_nodes = list(tree.find_all(exp.Table))
    occurrence = {id(t): i for i, t in enumerate(occurrence_nodes)}
    elsewhere: dict[tuple[str, str], tuple[str, tuple[Hop, ...]] | None] = {}
    raw: list[tuple[Site, tuple[str, tuple[Hop, ...]] | None]] = []
    for node in tree.find_all(*_CMP, exp.Between, exp.In):
        if not _in_predicate(node):
            continue
        col, values = _column_and_values(node)
        if col is None or id(col) not in scope_of:
            continue
        source = _resolve(col, scope_of[id(col)], catalog, 0)
        if source is None:
            continue
        table, column = source
        found = _fact_path(table, column[:2], edges, catalog) if table is not None else None
        weight = (f"{occurrence[id(found[0])]}:{found[0].name}", found[1]) if found else None
        for v in values:
            lit = _anchor(v)
            span = lit.meta if lit is not None else {}
            if lit is None or "start" not in span or "end" not in span:
                continue
            site = Site(column, span["start"], span["end"], lit.is_string, str(lit.this), offset=_offset(v))
            if _token_matches(sql, site):
                raw.append((site, weight))
    # a table occurrence with no fact join of its own (date_dim in a scalar or IN subquery)
    # takes the first fact join of another occurrence of the same table in the query
    sites = []
    for site, weight in raw:
        base = site.column[:2]
        if weight is None and base not in elsewhere:
            elsewhere[base] = None
            for occ in occurrence_nodes:
                if catalog.column(occ.db or catalog.default_db, occ.name, site.column[2]) == site.column:
                    found = _fact_path(occ, base, edges, catalog)
                    if found is not None:
                        elsewhere[base] = (f"{occurrence[id(found[0])]}:{found[0].name}", found[1])
                        break
        weight = weight or elsewhere.get(base)
        sites.append(dataclasses.replace(site, group=weight[0], path=weight[1]) if weight else site)
    return sites


def _in_predicate(node: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, (exp.Case, exp.If, exp.Select)):
            return False
        if isinstance(parent, (exp.Where, exp.Having, exp.Qualify, exp.Join)):
            return True
        parent = parent.parent
    return False


def _column_and_values(node: exp.Expr) -> tuple[exp.Column | None, list[exp.Expr]]:
    if isinstance(node, exp.Between):
        col, values = node.this, [node.args.get("low"), node.args.get("high")]
    elif isinstance(node, exp.In):
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            return None, []
        col, values = node.this, list(node.expressions)
    else:
        left, right = node.this.unnest(), node.expression.unnest()
        col, values = (left, [right]) if isinstance(left, exp.Column) else (right, [left])
    col = col.unnest() if col is not None else None
    if not isinstance(col, exp.Column):
        return None, []
    return col, [v for v in values if v is not None]


def _anchor(value: exp.Expr) -> exp.Literal | None:
    """The literal to resample in ``lit``, ``CAST(lit AS t)`` or ``anchor +/- constant``."""
    value = value.unnest()
    if isinstance(value, exp.Literal):
        return value
    if isinstance(value, exp.Cast) and isinstance(value.this, exp.Literal):
        return value.this
    if isinstance(value, (exp.Add, exp.Sub)) and not value.expression.find(exp.Column, exp.Query):
        return _anchor(value.this)
    return None


Source = tuple[exp.Table | None, Column]  # the table occurrence (if one) and the column


def _offset(value: exp.Expr) -> Decimal | dt.timedelta | None:
    """``k`` in ``anchor + k`` / ``anchor - k`` (nested sums added up): a number, or an
    ``INTERVAL n DAY|WEEK|MONTH|YEAR`` as a ``timedelta`` (months 30 days, years 365);
    None for a bare anchor or an offset that cannot be read."""
    value = value.unnest()
    if not isinstance(value, (exp.Add, exp.Sub)):
        return None
    step = _step(value.expression.unnest())
    inner = value.this.unnest()
    base = _offset(inner) if isinstance(inner, (exp.Add, exp.Sub)) else (type(step)() if step is not None else None)
    if isinstance(base, Decimal) and isinstance(step, Decimal):
        return base + step if isinstance(value, exp.Add) else base - step
    if isinstance(base, dt.timedelta) and isinstance(step, dt.timedelta):
        return base + step if isinstance(value, exp.Add) else base - step
    return None  # no step, an unreadable inner offset, or a number mixed with an interval


_DAYS = {"DAY": 1, "DAYS": 1, "WEEK": 7, "WEEKS": 7, "MONTH": 30, "MONTHS": 30, "YEAR": 365, "YEARS": 365}


def _step(node: exp.Expr) -> Decimal | dt.timedelta | None:
    try:
        if isinstance(node, exp.Literal) and not node.is_string:
            return Decimal(str(node.this))
        if isinstance(node, exp.Interval) and isinstance(node.this, exp.Literal):
            days = _DAYS.get(node.text("unit").upper())
            return dt.timedelta(days=days * float(Decimal(str(node.this.this)))) if days else None
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return None


def _resolve(col: exp.Column, scope: Scope, catalog: ColumnValues, depth: int, loose: bool = False
             ) -> Source | None:
    """The base-table column behind a qualified column, through plain projections, with
    the table occurrence (``exp.Table`` node) it is read from. ``loose``: a UNION's output
    stands for its first branch even where the branches read different columns."""
    source: exp.Table | Scope | None = None
    s: Scope | None = scope
    while s is not None and source is None:
        source = s.sources.get(col.table)
        s = s.parent
    if isinstance(source, exp.Table):
        column = catalog.column(source.db or catalog.default_db, source.name, col.name)
        return (source, column) if column is not None else None
    if isinstance(source, Scope) and isinstance(source.expression, exp.Selectable) and depth < 16:
        names = source.expression.named_selects
        if col.name in names:
            return _output(source, names.index(col.name), catalog, depth + 1, loose)
    return None


def _output(scope: Scope, index: int, catalog: ColumnValues, depth: int, loose: bool = False
            ) -> Source | None:
    """The base column behind output ``index`` of a derived table, CTE or set operation
    (all branches of a UNION must agree on the column; the first one's table is returned)."""
    expr = scope.expression
    if isinstance(expr, exp.Select):
        selects = expr.selects
        inner = selects[index].unalias() if index < len(selects) else None
        return _resolve(inner, scope, catalog, depth, loose) if isinstance(inner, exp.Column) else None
    branches = scope.set_operation_scopes if isinstance(expr, exp.SetOperation) else []
    found = [_output(b, index, catalog, depth + 1, loose) for b in branches] if depth < 16 else [None]
    columns = {f[1] if f is not None else None for f in found}
    if (len(columns) != 1 and not loose) or None in columns:
        return None
    return found[0]  # the first branch's table occurrence stands for all of them


def _join_graph(tree: exp.Expr, scope_of: dict[int, Scope], catalog: ColumnValues
                ) -> dict[int, list[tuple[exp.Table, Column, Column]]]:
    """Equi-join edges ``a = b`` between table occurrences, in every scope (correlated
    predicates included): ``id(table) -> [(other table, own column, other's column)]``."""
    edges: dict[int, list[tuple[exp.Table, Column, Column]]] = {}
    for node in tree.find_all(exp.EQ):
        left, right = node.this.unnest(), node.expression.unnest()
        if not (isinstance(left, exp.Column) and isinstance(right, exp.Column) and _in_predicate(node)):
            continue
        if id(left) not in scope_of or id(right) not in scope_of:
            continue
        a = _resolve(left, scope_of[id(left)], catalog, 0, loose=True)
        b = _resolve(right, scope_of[id(right)], catalog, 0, loose=True)
        if a is None or b is None or a[0] is None or b[0] is None or a[0] is b[0]:
            continue
        edges.setdefault(id(a[0]), []).append((b[0], a[1], b[1]))
        edges.setdefault(id(b[0]), []).append((a[0], b[1], a[1]))
    return edges


def _fact_path(table: exp.Table, name: tuple[str, str], edges: dict[int, list[tuple[exp.Table, Column, Column]]],
               catalog: ColumnValues) -> tuple[exp.Table, tuple[Hop, ...]] | None:
    """The nearest fact table occurrence joined to ``table`` (base table ``name``; breadth
    first, at most ``_MAX_HOPS`` joins) and the join path from it to ``table``."""
    if catalog.is_fact(*name):
        return table, ()
    frontier: list[tuple[exp.Table, tuple[Hop, ...]]] = [(table, ())]
    seen = {id(table)}
    for _ in range(_MAX_HOPS):
        following = []
        for node, path in frontier:
            for other, own, theirs in edges.get(id(node), []):
                if id(other) in seen:
                    continue
                seen.add(id(other))
                longer = ((theirs, own),) + path
                if catalog.is_fact(*theirs[:2]):
                    return other, longer
                following.append((other, longer))
        frontier = following
    return None


def _token_matches(sql: str, site: Site) -> bool:
    token = sql[site.start : site.end + 1]
    if site.is_string:
        return token == render_string(site.value)
    return token == site.value


# --- drawing new values --------------------------------------------------------------


def render_string(text: str) -> str:
    """A SQL string literal of ``text``."""
    return "'" + text.replace("'", "''") + "'"
