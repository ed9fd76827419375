"""Per-database statistics for lqo's own cardinality estimates, built from samples.

Per table: an exact row count, HyperLogLog distinct counts over the full table
(``approx_count_distinct``: the costliest part, kept because join estimates lean on
distinct counts of keys; TPC-DS SF1 builds in 10-16 s on 2 cores), and a reservoir
sample (up to ``sample_rows`` rows) from which every column gets its null fraction,
most-common values (MCVs) and an equi-depth histogram of the remaining values. Numbers, dates and
timestamps are stored as floats (dates and timestamps as days since 1970-01-01);
strings keep MCVs and a histogram of (truncated) strings, which doubles as a small
systematic sample for LIKE patterns.

Stats are JSON (never pickle) and carry a data fingerprint: row counts and DuckDB's
estimated table sizes, plus the schema fingerprint. ``load_or_build`` rebuilds when it
differs. Updates that keep every row count are not detected: delete the cache file.

>>> stats = DatabaseStats.load_or_build(con, Catalog.from_connection(con), cache_path)  # doctest: +SKIP
>>> stats.column("orders", "o_orderdate").le_frac(9000.0)  # doctest: +SKIP
0.43
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import duckdb
import numpy as np

from lqo.sql.catalog import Catalog

FORMAT_VERSION = 1
MAX_STRING = 100  # stored strings are truncated: stats files stay small

_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "REAL", "DOUBLE", "DECIMAL", "NUMERIC",
            "BOOLEAN", "INT", "SIGNED")
_STRING = ("VARCHAR", "CHAR", "TEXT", "STRING", "BPCHAR", "ENUM")


def column_kind(dtype: str) -> str:
    """``num`` | ``date`` (dates and timestamps, as days) | ``str`` | ``other``."""
    t = dtype.upper()
    if "[" in t or t.startswith(("STRUCT", "MAP", "UNION")):
        return "other"  # nested values: no order, no histogram
    if t.startswith("DATE") or t.startswith("TIMESTAMP"):
        return "date"
    if t.startswith(_NUMERIC):
        return "num"
    if t.startswith(_STRING):
        return "str"
    return "other"


@dataclass
class ColumnStats:
    """One column. Fractions are of *all* rows of the table (nulls included).

    ``hist`` holds equi-depth bucket boundaries of the non-null values that are not
    MCVs, so ``rest = 1 - null_frac - sum(mcv_freq)`` of the rows lie in it.
    """

    kind: str
    null_frac: float
    ndv: float
    mcv: list = field(default_factory=list)
    mcv_freq: list[float] = field(default_factory=list)
    hist: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._mcv_map = dict(zip(self.mcv, self.mcv_freq))
        self.rest = max(0.0, 1.0 - self.null_frac - sum(self.mcv_freq))
        # Integer columns (keys): their range, to tell how much of a key space a column covers.
        self.lo = self.hi = None
        ends = [v for v in (self.hist[:1] + self.hist[-1:] + self.mcv) if isinstance(v, (int, float))]
        if self.kind == "num" and ends and all(float(v).is_integer() for v in ends):
            self.lo, self.hi = float(min(ends)), float(max(ends))

    def to_json(self) -> dict:
        """The column's statistics as plain JSON data."""
        return {"kind": self.kind, "null_frac": self.null_frac, "ndv": self.ndv,
                "mcv": self.mcv, "mcv_freq": self.mcv_freq, "hist": self.hist}

    @classmethod
    def from_json(cls, d: dict) -> "ColumnStats":
        """Column statistics from their JSON."""
        return cls(d["kind"], d["null_frac"], d["ndv"], d["mcv"], d["mcv_freq"], d["hist"])

    def eq_frac(self, v: Any) -> float:
        """Fraction of rows with ``col = v`` (``v`` already in the column's domain)."""
        if v in self._mcv_map:
            return self._mcv_map[v]
        others = self.ndv - len(self.mcv)
        if self.rest <= 0 or others < 1:
            return 0.0
        return self.rest / others

    def le_frac(self, v: Any) -> float:
        """Fraction of rows with ``col <= v``."""
        return self._cdf(v, strict=False)

    def lt_frac(self, v: Any) -> float:
        """Fraction of rows with ``col < v``."""
        return self._cdf(v, strict=True)

    def _cdf(self, v: Any, strict: bool) -> float:
        try:
            mcv = sum(f for m, f in zip(self.mcv, self.mcv_freq) if (m < v if strict else m <= v))
            return mcv + self.rest * _hist_cdf(self.hist, v, strict)
        except TypeError:  # a literal of another type than the column's values
            return 0.5 * (1.0 - self.null_frac)

    def match_frac(self, pred: Callable[[str], bool]) -> float:
        """Fraction of rows whose (string) value satisfies ``pred``, e.g. a LIKE pattern."""
        mcv = sum(f for m, f in zip(self.mcv, self.mcv_freq) if isinstance(m, str) and pred(m))
        if not self.hist:
            return mcv
        hits = sum(1 for h in self.hist if pred(h))
        # No hit among the stored strings still leaves a rare match possible.
        return mcv + self.rest * max(hits, 0.5) / len(self.hist)


def _hist_cdf(h: list, v: Any, strict: bool) -> float:
    """Fraction of the histogram's values below ``v`` (``<=`` unless strict)."""
    n = len(h)
    if n == 0:
        return 0.5
    if n == 1:
        return float(h[0] < v if strict else h[0] <= v)
    if strict:
        if v <= h[0]:
            return 0.0
        if v > h[-1]:
            return 1.0
        i = bisect_left(h, v) - 1
    else:
        if v < h[0]:
            return 0.0
        if v >= h[-1]:
            return 1.0
        i = bisect_right(h, v) - 1
    lo, hi = h[i], h[i + 1]
    if isinstance(v, str):
        frac = 0.5  # no interpolation between strings
    else:
        frac = (v - lo) / (hi - lo) if hi > lo else 1.0
    return (i + frac) / (n - 1)


@dataclass
class TableStats:
    """One table's row count and per-column statistics."""

    rows: int
    sampled: int  # rows the per-column figures come from (== rows: complete)
    columns: dict[str, ColumnStats]

    def to_json(self) -> dict:
        """The table's statistics as plain JSON data."""
        return {"rows": self.rows, "sampled": self.sampled,
                "columns": {c: s.to_json() for c, s in self.columns.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "TableStats":
        """Table statistics from their JSON."""
        return cls(d["rows"], d["sampled"], {c: ColumnStats.from_json(s) for c, s in d["columns"].items()})


@dataclass
class DatabaseStats:
    """Statistics of every table of a catalog.

    >>> stats = DatabaseStats.build(con, catalog, sample_rows=20_000)  # doctest: +SKIP
    >>> stats.rows("lineitem")  # doctest: +SKIP
    60175
    """

    tables: dict[str, TableStats]
    fingerprint: str
    sample_rows: int
    build_seconds: float = 0.0

    def rows(self, table: str) -> int | None:
        """A table's row count, None for a table it does not know."""
        t = self.tables.get(table.lower())
        return None if t is None else t.rows

    def column(self, table: str, column: str) -> ColumnStats | None:
        """A column's statistics, None for one it does not know."""
        t = self.tables.get(table.lower())
        return None if t is None else t.columns.get(column.lower())

    @staticmethod
    def data_fingerprint(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
        """The fingerprint fresh stats of this data would carry (see ``data_fingerprint``)."""
        return data_fingerprint(con, catalog)

    # ----------------------------------------------------------------- building
    @classmethod
    def build(cls, con: duckdb.DuckDBPyConnection, catalog: Catalog, sample_rows: int = 20_000,
              seed: int = 0, buckets: int = 100, max_mcv: int = 100) -> "DatabaseStats":
        """Scan every table of ``catalog`` (read-only) and summarise it."""
        start = time.perf_counter()
        cur = con.cursor()  # the progress-bar setting stays local to this cursor
        try:
            cur.execute("SET enable_progress_bar = false")
            tables = {t: _table_stats(cur, t, cols, sample_rows, seed, buckets, max_mcv)
                      for t, cols in sorted(catalog.tables.items())}
            fp = data_fingerprint(cur, catalog)
        finally:
            cur.close()
        return cls(tables, fp, sample_rows, time.perf_counter() - start)

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a half-written cache must never be loaded)."""
        data = {"version": FORMAT_VERSION, "fingerprint": self.fingerprint, "sample_rows": self.sample_rows,
                "build_seconds": self.build_seconds,
                "tables": {t: s.to_json() for t, s in self.tables.items()}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatabaseStats":
        """Read statistics saved by :meth:`save`; ``ValueError`` for another format version."""
        data = json.loads(Path(path).read_text())
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"stats file {path}: version {data.get('version')}, expected {FORMAT_VERSION}")
        tables = {t: TableStats.from_json(s) for t, s in data["tables"].items()}
        return cls(tables, data["fingerprint"], data["sample_rows"], data.get("build_seconds", 0.0))

    @classmethod
    def load_or_build(cls, con: duckdb.DuckDBPyConnection, catalog: Catalog, cache_path: str | os.PathLike,
                      sample_rows: int = 20_000, save: bool = True) -> "DatabaseStats":
        """The cached stats if their fingerprint matches the data, else fresh ones (saved
        to ``cache_path`` unless ``save`` is off: a directory lqo only reads)."""
        cur = con.cursor()
        try:
            fp = data_fingerprint(cur, catalog)
        finally:
            cur.close()
        if Path(cache_path).is_file():
            try:
                cached = cls.load(cache_path)
                if cached.fingerprint == fp:
                    return cached
            except (ValueError, KeyError, TypeError):
                pass  # unreadable or old format: rebuild
        stats = cls.build(con, catalog, sample_rows=sample_rows)
        if save:
            stats.save(cache_path)
        return stats


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def data_fingerprint(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> str:
    """Schema fingerprint + exact row counts + DuckDB's estimated sizes: cheap to compute."""
    sizes = sorted(con.execute(
        "SELECT lower(table_name), estimated_size FROM duckdb_tables() "
        "WHERE database_name = current_database() AND schema_name = current_schema() AND NOT temporary"
    ).fetchall())
    # Base tables only: counting a view's rows would run its query.
    names = [t for t, _ in sizes if t in catalog.tables]
    counts = con.execute(" UNION ALL ".join(
        f"SELECT {i} AS i, count(*) AS n FROM {_q(t)}" for i, t in enumerate(names))).fetchall() if names else []
    text = catalog.fingerprint + repr(sorted(counts)) + repr(sizes)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _select_expr(col: str, kind: str) -> str:
    c = _q(col)
    if kind == "num":
        return f"CAST({c} AS DOUBLE)"
    if kind == "date":
        return f"epoch({c}) / 86400.0"
    if kind == "str":
        return f"CAST({c} AS VARCHAR)"
    return f"CASE WHEN {c} IS NULL THEN NULL ELSE 0 END"  # only the null fraction


def _hll(cur: Any, table: str, col: str) -> float | None:
    """HyperLogLog distinct count over the full table (None for types it rejects)."""
    try:
        return float(cur.execute(f"SELECT approx_count_distinct({_q(col)}) FROM {_q(table)}").fetchone()[0])
    except duckdb.Error:
        return None


def _table_stats(cur: Any, table: str, columns: dict[str, str], sample_rows: int, seed: int,
                 buckets: int, max_mcv: int) -> TableStats:
    rows = int(cur.execute(f"SELECT count(*) FROM {_q(table)}").fetchone()[0])
    cols = list(columns)
    if not cols:
        return TableStats(rows, 0, {})
    kinds = {c: column_kind(t) for c, t in columns.items()}
    complete = rows <= sample_rows
    sample = f" USING SAMPLE reservoir({sample_rows} ROWS) REPEATABLE ({seed})" if not complete else ""
    select = ", ".join(f"{_select_expr(c, kinds[c])} AS c{i}" for i, c in enumerate(cols))
    try:
        data = cur.execute(f"SELECT {select} FROM {_q(table)}{sample}").fetchnumpy()
    except duckdb.Error:  # a type lqo misjudged: keep null fractions and distinct counts only
        kinds = {c: "other" for c in cols}
        select = ", ".join(f"{_select_expr(c, 'other')} AS c{i}" for i, c in enumerate(cols))
        data = cur.execute(f"SELECT {select} FROM {_q(table)}{sample}").fetchnumpy()
    n = len(data["c0"]) if cols else 0
    # Full-table distinct counts only where the sample cannot tell (one scan per column
    # costs about what one scan for all of them does).
    stats = {c: _column_stats(data[f"c{i}"], kinds[c], n, rows, complete, partial(_hll, cur, table, c),
                              buckets, max_mcv)
             for i, c in enumerate(cols)}
    return TableStats(rows, n, stats)


def _column_stats(arr: Any, kind: str, n: int, rows: int, complete: bool, hll: Callable[[], float | None],
                  buckets: int, max_mcv: int) -> ColumnStats:
    if n == 0:
        return ColumnStats(kind, 0.0, 0.0)
    if np.ma.isMaskedArray(arr):
        vals = arr.compressed()
    else:
        vals = np.asarray(arr)
    if kind in ("num", "date"):
        vals = vals.astype(np.float64)
        vals = vals[~np.isnan(vals)]
    exact_ndv = None
    if kind == "str":
        exact_ndv = len(set(vals.tolist()))  # before truncation merges long strings
        vals = np.array([s[:MAX_STRING] for s in vals], dtype=object) if len(vals) else vals
    null_frac = 1.0 - len(vals) / n
    if kind == "other" or len(vals) == 0:
        return ColumnStats(kind, null_frac, float(min(hll() or 0.0, rows * (1.0 - null_frac))))
    uniq, counts = np.unique(vals, return_counts=True)
    nn = len(vals)
    if complete:
        ndv = float(exact_ndv or len(uniq))
    elif counts.min() >= 3:
        # No value seen once or twice: the sample has met every value (Good-Turing), and
        # HLL is off by up to ~30% at such small counts.
        ndv = float(len(uniq))
    else:
        ndv = float(min(max(hll() or len(uniq), len(uniq)), rows * (1 - null_frac)))
    min_count = 2 if complete else 5  # sampling noise makes rarer "MCVs" pure overestimates
    if len(uniq) <= max_mcv and (complete or counts.min() >= min_count):
        keep = np.argsort(-counts, kind="stable")
    else:
        avg = nn / max(ndv, 1.0)
        # Sampled counts of a uniform column reach avg + ~3.5 sd by chance alone.
        floor = 1.25 * avg if complete else avg + 4.0 * avg ** 0.5
        cand = np.nonzero(counts >= max(min_count, floor))[0]
        keep = cand[np.argsort(-counts[cand], kind="stable")][:max_mcv]
    mcv = [_py(uniq[i]) for i in keep]
    mcv_freq = [float(counts[i]) / n for i in keep]
    mask = np.ones(len(uniq), dtype=bool)
    mask[keep] = False
    rest_counts = counts[mask]
    hist: list = []
    if len(rest_counts):
        # Equi-depth boundaries over the non-MCV values, read off the sorted uniques.
        rest_vals = uniq[mask]
        cum = np.cumsum(rest_counts)
        total = int(cum[-1])
        nb = min(buckets, max(total - 1, 0))
        pos = np.linspace(0, total - 1, nb + 1) if nb else np.array([0.0])
        idx = np.searchsorted(cum, np.floor(pos).astype(np.int64) + 1, side="left")
        hist = [_py(rest_vals[i]) for i in idx]
    return ColumnStats(kind, null_frac, ndv, mcv, mcv_freq, hist)


def _py(v: Any):
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, np.integer):
        return int(v)
    return str(v)
