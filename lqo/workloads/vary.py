"""Vary a workload: new instances of each query with resampled predicate constants.

For every comparison ``column OP literal`` (``=, <>, <, <=, >, >=``), ``column BETWEEN
lo AND hi`` and ``column IN (literals)`` in a WHERE / HAVING / JOIN ON clause, the
literal is replaced by a value drawn from the column's real values in the database.
Columns are resolved to base tables with ``sqlglot.optimizer.qualify`` against the DuckDB
catalog, following plain column projections of derived tables and CTEs.

Where the values come from (so that instances behave like real parameter bindings):

* a column of a fact table (``FACT_TABLES``: TPC-DS ``store_sales``, ``web_returns``,
  ``inventory``, ...), or of a table the query joins to one by ``a = b`` predicates (at
  most ``_MAX_HOPS`` joins away, e.g. ``date_dim`` on ``ss_sold_date_sk = d_date_sk``,
  ``customer_address`` through ``customer``), takes values from a sample of that fact
  table's rows joined along the query's own join path: values occur with their frequency
  in the fact rows, so a ``d_year`` lies in the years the sales cover, not anywhere in
  ``date_dim``'s 1900-2100. All such columns reached from the same fact table (alias) of a
  query are drawn *together*, row by row, so their new values co-occur in some fact row
  (an ``i_category`` with one of its ``i_class`` values, an item sold in the chosen month);
* any other column (no fact join in the query, e.g. all of TPC-H) takes values uniformly
  from a hash-chosen sample of its distinct values, as before.

Rules that keep instances meaningful:

* one mapping per column and query: the same original constant on the same column gets
  the same new value everywhere (e.g. TPC-H Q2's ``r_name`` in the query and its
  subquery), and different constants get different values;
* the order of a column's constants is kept, so ``BETWEEN lo AND hi`` keeps
  ``lo <= hi`` and ``col >= a AND col < b`` keeps ``a <= b``;
* ``literal + constant`` (``DATE '1994-01-01' + INTERVAL 1 YEAR``, ``1200 + 11``)
  moves the literal and keeps the offset;
* types and spelling are kept: only the literal token is rewritten, so a
  ``CAST('1995-03-15' AS date)`` stays a date cast, numbers stay numbers;
* a literal that cannot be tied to a column (``substr(c_phone, 1, 2) IN (...)``,
  ``sum(x) > 300``, ``LIKE`` patterns, ``CASE`` arms) is left unchanged.

>>> from lqo.workloads.workload import Workload
>>> w = vary(Workload.load("workloads/tpch-sf1"), per_template=5, seed=0,
...          out="workloads/tpch-sf1-v5")  # doctest: +SKIP
>>> w.query("q07_v3").template              # doctest: +SKIP
'q07'
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import itertools
import math
import os
import random
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from lqo.errors import WorkloadError
from lqo.workloads.workload import Workload, check_out_dir, staging_dir, write_workload

Column = tuple[str, str, str]  # (schema, table, column) as named in the catalog
Hop = tuple[Column, Column]  # equi-join ``a = b``: a of the table before, b of the next
_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_MAX_ATTEMPTS = 20
_MAX_HOPS = 3  # joins between a predicate's table and the fact table it is weighted by

#: Tables whose rows are the events that queries count (lowercase names): a predicate on
#: a table joined to one of these draws its constants from the fact rows (TPC-DS).
FACT_TABLES = frozenset({
    "store_sales", "catalog_sales", "web_sales",
    "store_returns", "catalog_returns", "web_returns", "inventory",
})


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


def instance_id(query_id: str, i: int) -> str:
    """Id of the ``i``-th (1-based) varied instance of a query: ``q07`` -> ``q07_v3``."""
    return f"{query_id}_v{i}"


class ColumnValues:
    """Schema of a DuckDB database (for qualify) plus a cache of sampled column values.

    >>> cat = ColumnValues(connect_read_only("tpch.duckdb"))  # doctest: +SKIP
    >>> cat.values(("main", "region", "r_name"))[1]      # doctest: +SKIP
    ['AFRICA', 'AMERICA', 'ASIA', 'EUROPE', 'MIDDLE EAST']
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, limit: int = 1000, sample_rows: int = 10000,
                 facts: frozenset[str] | set[str] = FACT_TABLES) -> None:
        self.con, self.limit, self.sample_rows = con, limit, sample_rows
        self.default_db = con.execute("SELECT current_schema()").fetchone()[0]
        rows = con.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_catalog = current_database() ORDER BY ALL"
        ).fetchall()
        self.schema: dict[str, dict[str, dict[str, str]]] = {}
        self._names: dict[tuple[str, str, str], Column] = {}
        for db, table, col in rows:
            self.schema.setdefault(db, {}).setdefault(table, {})[col] = "TEXT"
            self._names[(db.lower(), table.lower(), col.lower())] = (db, table, col)
        self.facts = {(db, table) for db in self.schema for table in self.schema[db]
                      if table.lower() in {f.lower() for f in facts}}
        self._cache: dict[Column, tuple[str, list] | None] = {}
        self._joint: dict[tuple, tuple[list[tuple], list[int], list]] = {}

    def column(self, db: str, table: str, col: str) -> Column | None:
        """The catalog's spelling of a column, or None if there is no such column."""
        return self._names.get((db.lower(), table.lower(), col.lower()))

    def values(self, column: Column) -> tuple[str, list] | None:
        """(category, sorted distinct sample) of a column; None for unusable types.

        The sample is up to ``limit`` distinct non-null values chosen by hash, so it is
        the same on every run. Categories: date, timestamp, number, string.
        """
        if column not in self._cache:
            self._cache[column] = self._sample(column)
        return self._cache[column]

    def is_fact(self, db: str, table: str) -> bool:
        """Whether ``db.table`` is a fact table (see ``FACT_TABLES``)."""
        return (db, table) in self.facts

    def joint(self, fact: tuple[str, str], members: tuple[tuple[tuple[Hop, ...], Column], ...]
              ) -> tuple[list[tuple], list[int], list[tuple[Any, Any] | None]]:
        """Value tuples of ``members`` (join path from ``fact``, column) that co-occur in
        sampled fact rows, their cumulative row counts, and each member's (min, max) there:
        ``(rows, cumulative, bounds)``.

        The sample is about ``sample_rows`` fact rows chosen by hash of the row id (the same
        on every run: a plain filter, where ``ORDER BY hash(rowid) LIMIT n`` under joins
        was seen to vary between runs), joined along the members' paths; tuples with a NULL
        are left out, the ``sample_rows`` most frequent tuples are kept. Empty if the query
        fails.
        """
        key = (fact, members)
        if key not in self._joint:
            try:
                size = self.con.execute(f"SELECT count(*) FROM {_quote(fact[0])}.{_quote(fact[1])}").fetchone()[0]
                rows = self.con.execute(_joint_sql(fact, members, self.sample_rows, size)).fetchall()
            except duckdb.Error:  # e.g. a join between incompatible types: draw uniformly
                rows = []
            values = [r[:-1] for r in rows]
            bounds = []
            for j, (_, column) in enumerate(members):
                info = self.values(column)
                seen = [r[j] for r in values if info is not None and _usable(r[j], info[0])]
                bounds.append((min(seen), max(seen)) if seen else None)
            self._joint[key] = (values, list(itertools.accumulate(r[-1] for r in rows)), bounds)
        return self._joint[key]

    def _sample(self, column: Column) -> tuple[str, list] | None:
        db, table, col = (_quote(p) for p in column)
        rows = self.con.execute(
            f"SELECT v FROM (SELECT DISTINCT {col} AS v FROM {db}.{table} WHERE {col} IS NOT NULL) "
            f"ORDER BY hash(v), v LIMIT {int(self.limit)}"
        ).fetchall()
        values = [r[0] for r in rows]
        if not values:
            return None
        category = _category(values[0])
        if category is None or any(_category(v) != category for v in values):
            return None
        if category == "number":
            values = [v for v in values if not (isinstance(v, float) and not math.isfinite(v))]
        return category, sorted(set(values))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _joint_sql(fact: tuple[str, str], members: tuple[tuple[tuple[Hop, ...], Column], ...], rows: int,
               size: int) -> str:
    """SQL for ``ColumnValues.joint``: one join per distinct path prefix (alias ``t<i>``)."""
    aliases: dict[tuple[Hop, ...], str] = {(): "t0"}
    joins: list[str] = []
    fact_cols: list[str] = []
    for path, column in members:
        for i, (src, dst) in enumerate(path):
            if i == 0 and src[2] not in fact_cols:
                fact_cols.append(src[2])
            if path[: i + 1] not in aliases:
                alias = aliases[path[: i + 1]] = f"t{len(aliases)}"
                joins.append(f"JOIN {_quote(dst[0])}.{_quote(dst[1])} AS {alias} "
                             f"ON {aliases[path[:i]]}.{_quote(src[2])} = {alias}.{_quote(dst[2])}")
        if not path and column[2] not in fact_cols:
            fact_cols.append(column[2])
    values = [f"{aliases[path]}.{_quote(column[2])}" for path, column in members]
    where = f" WHERE hash(rowid) < {int(rows) * 2**64 // int(size)}" if size > rows else ""
    sample = (f"(SELECT {', '.join(_quote(c) for c in fact_cols)} FROM {_quote(fact[0])}.{_quote(fact[1])}"
              f"{where}) AS t0")
    select = ", ".join(f"{v} AS v{i}" for i, v in enumerate(values))
    not_null = " AND ".join(f"{v} IS NOT NULL" for v in values)
    order = ", ".join(str(i + 1) for i in range(len(values)))
    return (f"SELECT {select}, count(*) AS n FROM {sample} {' '.join(joins)} WHERE {not_null} "
            f"GROUP BY ALL ORDER BY n DESC, {order} LIMIT {int(rows)}")


def _category(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, dt.datetime):
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


# --- finding literals ----------------------------------------------------------------


def find_sites(sql: str, catalog: ColumnValues) -> list[Site]:
    """The literal tokens of ``sql`` that compare against a base-table column.

    >>> [s.value for s in find_sites("SELECT 1 FROM region WHERE r_name = 'ASIA'", cat)]  # doctest: +SKIP
    ['ASIA']
    """
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
        tree = qualify(tree, schema=catalog.schema, db=catalog.default_db, dialect="duckdb",
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
        table = site.column[:2]
        if weight is None and table not in elsewhere:
            elsewhere[table] = None
            for node in occurrence_nodes:
                if catalog.column(node.db or catalog.default_db, node.name, site.column[2]) == site.column:
                    found = _fact_path(node, table, edges, catalog)
                    if found is not None:
                        elsewhere[table] = (f"{occurrence[id(found[0])]}:{found[0].name}", found[1])
                        break
        weight = weight or elsewhere.get(table)
        sites.append(dataclasses.replace(site, group=weight[0], path=weight[1]) if weight else site)
    return sites


def _in_predicate(node: exp.Expression) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, (exp.Case, exp.If, exp.Select)):
            return False
        if isinstance(parent, (exp.Where, exp.Having, exp.Qualify, exp.Join)):
            return True
        parent = parent.parent
    return False


def _column_and_values(node: exp.Expression) -> tuple[exp.Column | None, list[exp.Expression]]:
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


def _anchor(value: exp.Expression) -> exp.Literal | None:
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


def _offset(value: exp.Expression) -> Decimal | dt.timedelta | None:
    """``k`` in ``anchor + k`` / ``anchor - k`` (nested sums added up): a number, or an
    ``INTERVAL n DAY|WEEK|MONTH|YEAR`` as a ``timedelta`` (months 30 days, years 365);
    None for a bare anchor or an offset that cannot be read."""
    value = value.unnest()
    if not isinstance(value, (exp.Add, exp.Sub)):
        return None
    step = _step(value.expression.unnest())
    inner = value.this.unnest()
    base = _offset(inner) if isinstance(inner, (exp.Add, exp.Sub)) else (type(step)() if step is not None else None)
    if step is None or base is None or type(base) is not type(step):
        return None
    return base + step if isinstance(value, exp.Add) else base - step


_DAYS = {"DAY": 1, "DAYS": 1, "WEEK": 7, "WEEKS": 7, "MONTH": 30, "MONTHS": 30, "YEAR": 365, "YEARS": 365}


def _step(node: exp.Expression) -> Decimal | dt.timedelta | None:
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
    source, s = None, scope
    while s is not None and source is None:
        source = s.sources.get(col.table)
        s = s.parent
    if isinstance(source, exp.Table):
        column = catalog.column(source.db or catalog.default_db, source.name, col.name)
        return (source, column) if column is not None else None
    if isinstance(source, Scope) and depth < 16:
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


def _join_graph(tree: exp.Expression, scope_of: dict[int, Scope], catalog: ColumnValues
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
        return token == _render_string(site.value)
    return token == site.value


# --- drawing new values --------------------------------------------------------------


def _parse_value(site: Site, category: str) -> Any:
    """The literal's value in the column's category, or None if it does not fit."""
    text = site.value.strip()
    try:
        if category == "date" and site.is_string:
            return dt.date.fromisoformat(text)
        if category == "timestamp" and site.is_string:
            return dt.datetime.fromisoformat(text)
        if category == "number":
            number = Decimal(text)
            return number if number.is_finite() else None
        if category == "string" and site.is_string:
            return site.value
    except (ValueError, InvalidOperation):
        return None
    return None


def _render_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _render(value: Any, category: str, site: Site) -> str | None:
    if category == "number":
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        plain = not any(ch in site.value for ch in ".eE")
        text = str(int(number)) if plain and number == number.to_integral_value() else format(number, "f")
        return _render_string(text) if site.is_string else text
    if not site.is_string:
        return None
    if category == "timestamp":
        return _render_string(value.isoformat(sep=" "))
    if category == "date":
        return _render_string(value.isoformat())
    return _render_string(str(value))


def instantiate(sql: str, sites: list[Site], catalog: ColumnValues, rng: random.Random) -> str:
    """``sql`` with every site's column given fresh values (order-preserving, consistent).

    Columns weighted by a fact table are drawn first, group by group (``_draw_groups``);
    the others, and any values a group could not supply, uniformly from the column's
    distinct values.

    >>> instantiate(sql, find_sites(sql, cat), cat, random.Random(1))  # doctest: +SKIP
    """
    by_column: dict[Column, list[Site]] = {}
    for site in sites:
        by_column.setdefault(site.column, []).append(site)
    usable: dict[Column, tuple[str, list, list]] = {}
    for column in sorted(by_column):
        info = catalog.values(column)
        if info is None:
            continue
        category, pool = info
        olds = [_parse_value(s, category) for s in by_column[column]]
        if any(v is None for v in olds):
            continue
        usable[column] = (category, pool, olds)
    drawn = _draw_groups(by_column, usable, catalog, rng)
    replacements: dict[tuple[int, int], str] = {}
    for column, (category, pool, olds) in usable.items():
        column_sites = by_column[column]
        distinct = sorted(set(olds))
        new = drawn.get(column, [])
        if len(new) < len(distinct):  # top up uniformly (all of it where no fact weighs in)
            taken = set(new)
            rest = [v for v in pool if v not in taken] if taken else pool
            if len(rest) < len(distinct) - len(new):
                continue
            new = new + rng.sample(rest, len(distinct) - len(new))
        mapping = dict(zip(distinct, sorted(new)))
        texts = [_render(mapping[old], category, s) for s, old in zip(column_sites, olds)]
        if any(t is None for t in texts):
            continue
        for s, text in zip(column_sites, texts):
            replacements[(s.start, s.end)] = text
    out = sql
    for (start, end), text in sorted(replacements.items(), reverse=True):
        out = out[:start] + text + out[end + 1 :]
    return out


def _draw_groups(by_column: dict[Column, list[Site]], usable: dict[Column, tuple[str, list, list]],
                 catalog: ColumnValues, rng: random.Random) -> dict[Column, list]:
    """New values for the columns weighted by a fact table: ``column -> distinct values``.

    A column belongs to the group of its first site that has one. Each group draws fact
    rows (with replacement, weighted by frequency) from ``catalog.joint`` and takes every
    member's value from the same row until each member has as many distinct values as it
    has distinct constants, so the new constants co-occur in real rows. A row is skipped
    if a value plus one of its column's offsets (``2001+1``, ``+ INTERVAL 30 DAY``) falls
    outside the column's range in the sample, so shifted constants stay where the data is.
    """
    groups: dict[tuple[str, tuple[str, str]], list[tuple[tuple[Hop, ...], Column]]] = {}
    for column in usable:
        home = next((s for s in by_column[column] if s.group is not None), None)
        if home is not None:
            groups.setdefault((home.group, home.fact), []).append((home.path, column))
    drawn: dict[Column, list] = {}
    for group, fact in sorted(groups):
        members = tuple(groups[(group, fact)])
        rows, cumulative, bounds = catalog.joint(fact, members)
        if not rows:
            continue
        need = [len(set(usable[column][2])) for _, column in members]
        categories = [usable[column][0] for _, column in members]
        offsets = [{s.offset for s in by_column[column] if s.offset} for _, column in members]
        picked: list[list] = [[] for _ in members]
        for _ in range(20 * sum(need) + 20):
            if all(len(p) >= k for p, k in zip(picked, need)):
                break
            row = rows[bisect.bisect_right(cumulative, rng.randrange(cumulative[-1]))]
            if not all(_usable(v, c) and _fits(v, o, b) for v, c, o, b in zip(row, categories, offsets, bounds)):
                continue
            for p, k, value in zip(picked, need, row):
                if len(p) < k and value not in p:
                    p.append(value)
        drawn.update((column, p) for (_, column), p in zip(members, picked))
    return drawn


def _fits(value: Any, offsets: set, bounds: tuple[Any, Any] | None) -> bool:
    """Whether ``value + k`` lies within ``bounds`` for every offset ``k``."""
    if bounds is None:
        return True
    lo, hi = bounds
    for k in offsets:
        try:
            if isinstance(k, Decimal):
                shifted, lo_, hi_ = Decimal(str(value)) + k, Decimal(str(lo)), Decimal(str(hi))
            else:
                shifted, lo_, hi_ = value + k, lo, hi
            if not lo_ <= shifted <= hi_:
                return False
        except (TypeError, InvalidOperation, OverflowError):
            continue
    return True


def _usable(value: Any, category: str) -> bool:
    if _category(value) != category:
        return False
    return not (isinstance(value, float) and not math.isfinite(value))


def _parses(checker: duckdb.DuckDBPyConnection, sql: str) -> bool:
    try:
        return len(checker.extract_statements(sql)) == 1
    except duckdb.Error:
        return False


def vary(
    workload: Workload,
    per_template: int,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    force: bool = False,
    progress: Callable | None = None,
) -> Workload:
    """Make ``per_template`` instances of every query of ``workload`` into the new
    workload directory ``out`` (ids ``<id>_v1``.., template ids kept, same database by
    absolute path). Deterministic for a given seed and database. ``progress`` wraps the
    iteration over queries (e.g. a progress bar), if given.

    >>> w2 = vary(Workload.load("w"), per_template=3, seed=7, out="w-v3")  # doctest: +SKIP
    >>> [q.id for q in w2][:3]                                             # doctest: +SKIP
    ['q01_v1', 'q01_v2', 'q01_v3']
    """
    if isinstance(per_template, bool) or not isinstance(per_template, int) or per_template < 1:
        raise WorkloadError(f"--per-template must be a positive integer, not {per_template!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise WorkloadError(f"seed must be an integer, not {seed!r}")
    if out is None:
        raise WorkloadError("an output directory is required")
    out_path = check_out_dir(out, force)
    database = workload.database.absolute()
    if out_path == database or out_path in database.parents:
        raise WorkloadError(f"output directory {out_path} holds the workload's database {database}")

    con = workload.connect()
    checker = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    queries: list[tuple[str, str, str]] = []
    try:
        catalog = ColumnValues(con)
        for q in (progress(workload.queries) if progress else workload.queries):
            sites = find_sites(q.sql, catalog)
            seen: set[str] = set()
            for i in range(1, per_template + 1):
                text = q.sql
                for attempt in range(_MAX_ATTEMPTS if sites else 0):
                    rng = random.Random(f"{seed}/{q.id}/{i}/{attempt}")
                    text = instantiate(q.sql, sites, catalog, rng)
                    if text not in seen:
                        break
                if text != q.sql and not _parses(checker, text):  # defensive: never emit broken SQL
                    text = q.sql
                seen.add(text)
                queries.append((instance_id(q.id, i), q.template, text.strip()))
    finally:
        checker.close()
        con.close()

    name = f"{workload.name}-vary{per_template}-seed{seed}"
    with staging_dir(out_path, force) as tmp:
        write_workload(tmp, name, database, queries, kind=workload.kind, scale_factor=workload.scale_factor)
        Workload.load(tmp)
    return Workload.load(out_path)
