"""Vary a workload: new instances of each query with resampled predicate constants.

For every comparison ``column OP literal`` (``=, <>, <, <=, >, >=``), ``column BETWEEN
lo AND hi`` and ``column IN (literals)`` in a WHERE / HAVING / JOIN ON clause, the
literal is replaced by a value drawn from the column's real distinct values in the
database. Columns are resolved to base tables with ``sqlglot.optimizer.qualify`` against
the DuckDB catalog, following plain column projections of derived tables and CTEs.

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

import datetime as dt
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
_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Site:
    """One literal token tied to a base-table column: ``sql[start:end + 1]`` is the token."""

    column: Column
    start: int
    end: int
    is_string: bool
    value: str


def instance_id(query_id: str, i: int) -> str:
    """Id of the ``i``-th (1-based) varied instance of a query: ``q07`` -> ``q07_v3``."""
    return f"{query_id}_v{i}"


class ColumnValues:
    """Schema of a DuckDB database (for qualify) plus a cache of sampled column values.

    >>> cat = ColumnValues(connect_read_only("tpch.duckdb"))  # doctest: +SKIP
    >>> cat.values(("main", "region", "r_name"))[1]      # doctest: +SKIP
    ['AFRICA', 'AMERICA', 'ASIA', 'EUROPE', 'MIDDLE EAST']
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, limit: int = 1000) -> None:
        self.con, self.limit = con, limit
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
        self._cache: dict[Column, tuple[str, list] | None] = {}

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
    sites: list[Site] = []
    for node in tree.find_all(*_CMP, exp.Between, exp.In):
        if not _in_predicate(node):
            continue
        col, values = _column_and_values(node)
        if col is None or id(col) not in scope_of:
            continue
        column = _resolve(col, scope_of[id(col)], catalog, 0)
        if column is None:
            continue
        for v in values:
            lit = _anchor(v)
            span = lit.meta if lit is not None else {}
            if lit is None or "start" not in span or "end" not in span:
                continue
            site = Site(column, span["start"], span["end"], lit.is_string, str(lit.this))
            if _token_matches(sql, site):
                sites.append(site)
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


def _resolve(col: exp.Column, scope: Scope, catalog: ColumnValues, depth: int) -> Column | None:
    """The base-table column behind a qualified column, through plain projections."""
    source, s = None, scope
    while s is not None and source is None:
        source = s.sources.get(col.table)
        s = s.parent
    if isinstance(source, exp.Table):
        return catalog.column(source.db or catalog.default_db, source.name, col.name)
    if isinstance(source, Scope) and depth < 16:
        names = source.expression.named_selects
        if col.name in names:
            return _output(source, names.index(col.name), catalog, depth + 1)
    return None


def _output(scope: Scope, index: int, catalog: ColumnValues, depth: int) -> Column | None:
    """The base column behind output ``index`` of a derived table, CTE or set operation
    (all branches of a UNION must agree)."""
    expr = scope.expression
    if isinstance(expr, exp.Select):
        selects = expr.selects
        inner = selects[index].unalias() if index < len(selects) else None
        return _resolve(inner, scope, catalog, depth) if isinstance(inner, exp.Column) else None
    branches = scope.set_operation_scopes if isinstance(expr, exp.SetOperation) else []
    found = {_output(b, index, catalog, depth + 1) for b in branches} if depth < 16 else {None}
    return found.pop() if len(found) == 1 else None


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

    >>> instantiate(sql, find_sites(sql, cat), cat, random.Random(1))  # doctest: +SKIP
    """
    by_column: dict[Column, list[Site]] = {}
    for site in sites:
        by_column.setdefault(site.column, []).append(site)
    replacements: dict[tuple[int, int], str] = {}
    for column in sorted(by_column):
        info = catalog.values(column)
        if info is None:
            continue
        category, pool = info
        column_sites = by_column[column]
        olds = [_parse_value(s, category) for s in column_sites]
        if any(v is None for v in olds):
            continue
        distinct = sorted(set(olds))
        if len(pool) < len(distinct):
            continue
        mapping = dict(zip(distinct, sorted(rng.sample(pool, len(distinct)))))
        texts = [_render(mapping[old], category, s) for s, old in zip(column_sites, olds)]
        if any(t is None for t in texts):
            continue
        for s, text in zip(column_sites, texts):
            replacements[(s.start, s.end)] = text
    out = sql
    for (start, end), text in sorted(replacements.items(), reverse=True):
        out = out[:start] + text + out[end + 1 :]
    return out


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
