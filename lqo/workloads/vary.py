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
import datetime as dt
import os
import random
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import duckdb

from lqo.errors import WorkloadError
from lqo.workloads.sites import Site, find_sites, render_string
from lqo.workloads.values import Column, ColumnValues, Hop, usable_value
from lqo.workloads.workload import Workload, check_out_dir, staging_dir, write_workload

_MAX_ATTEMPTS = 20

def instance_id(query_id: str, i: int) -> str:
    """Id of the ``i``-th (1-based) varied instance of a query: ``q07`` -> ``q07_v3``."""
    return f"{query_id}_v{i}"


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


def _render(value: Any, category: str, site: Site) -> str | None:
    if category == "number":
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        plain = not any(ch in site.value for ch in ".eE")
        text = str(int(number)) if plain and number == number.to_integral_value() else format(number, "f")
        return render_string(text) if site.is_string else text
    if not site.is_string:
        return None
    if category == "timestamp":
        return render_string(value.isoformat(sep=" "))
    if category == "date":
        return render_string(value.isoformat())
    return render_string(str(value))


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
        rendered = [t for t in texts if t is not None]
        if len(rendered) < len(texts):
            continue
        for s, text in zip(column_sites, rendered):
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
        if home is not None and home.group is not None:  # always so: the test above
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
            if not all(usable_value(v, c) and _fits(v, o, b) for v, c, o, b in zip(row, categories, offsets, bounds)):
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
