"""Where varied constants come from: a column's real values in the database.

A column of a fact table (``FACT_TABLES``), or of a table the query joins to one, takes
values from a sample of the fact rows joined along the query's own join path (values
with their frequency in the facts, drawn together row by row); any other column takes
values uniformly from a hash-chosen sample of its distinct values. See
:mod:`lqo.workloads.vary`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from decimal import Decimal
from typing import Any

import duckdb

from lqo.engine.db import one_value

Column = tuple[str, str, str]  # (schema, table, column) as named in the catalog
Hop = tuple[Column, Column]  # equi-join ``a = b``: a of the table before, b of the next

#: Tables whose rows are the events that queries count (lowercase names): a predicate on
#: a table joined to one of these draws its constants from the fact rows (TPC-DS).
FACT_TABLES = frozenset({
    "store_sales", "catalog_sales", "web_sales",
    "store_returns", "catalog_returns", "web_returns", "inventory",
})



class ColumnValues:
    """Schema of a DuckDB database (for qualify) plus a cache of sampled column values.

    >>> cat = ColumnValues(connect_read_only("tpch.duckdb"))  # doctest: +SKIP
    >>> cat.values(("main", "region", "r_name"))[1]      # doctest: +SKIP
    ['AFRICA', 'AMERICA', 'ASIA', 'EUROPE', 'MIDDLE EAST']
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, limit: int = 1000, sample_rows: int = 10000,
                 facts: frozenset[str] | set[str] = FACT_TABLES) -> None:
        self.con, self.limit, self.sample_rows = con, limit, sample_rows
        self.default_db = one_value(con, "SELECT current_schema()")
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
                size = one_value(self.con, f"SELECT count(*) FROM {_quote(fact[0])}.{_quote(fact[1])}")
                rows = self.con.execute(_joint_sql(fact, members, self.sample_rows, size)).fetchall()
            except duckdb.Error:  # e.g. a join between incompatible types: draw uniformly
                rows = []
            values = [r[:-1] for r in rows]
            bounds = []
            for j, (_, column) in enumerate(members):
                info = self.values(column)
                seen = [r[j] for r in values if info is not None and usable_value(r[j], info[0])]
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
        category = value_category(values[0])
        if category is None or any(value_category(v) != category for v in values):
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


def value_category(value: Any) -> str | None:
    """The kind of literal a value is (number, string, date, timestamp); None for others, booleans too."""
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


def usable_value(value: Any, category: str) -> bool:
    """Whether ``value`` can replace a literal of ``category`` (finite, same kind)."""
    if value_category(value) != category:
        return False
    return not (isinstance(value, float) and not math.isfinite(value))
