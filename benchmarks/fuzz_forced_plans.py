"""Fuzzed correctness of forced plans and setting arms: random SQL over TPC-H / TPC-DS.

Usage: python benchmarks/fuzz_forced_plans.py [--queries 10000] [--seed 1] [--json OUT]
       [--data DIR] [--kinds tpch,tpcds] [--log FILE.jsonl] [--timeout 10] [--threads 1]
       [--random-plans 2] [--stress-every 10] [--no-arms] [--shrink-s 120] [--only I]

Each generated query joins 2-8 relations on real key pairs of the schema (foreign key ->
primary key, composite keys, shared dimensions, a key pair of differing types, string
equalities), written comma-style or as JOIN .. ON chains, with filters on every column
type (ranges, BETWEEN, IN, LIKE / ILIKE, IS NULL, dates, ORs), residual (non-key) join
predicates, keys compared through expressions, GROUP BY / HAVING / ORDER BY / LIMIT /
DISTINCT / window functions / SELECT * (plain, EXCLUDE, COLUMNS), CTEs (materialized,
referenced twice), derived tables (grouped, DISTINCT, set operations, SELECT *, column
aliases, computed keys, implicit LATERAL references), correlated and uncorrelated
subqueries (IN, NOT IN, EXISTS, NOT EXISTS, scalar, ANY / ALL, in the SELECT list),
UNION / INTERSECT / EXCEPT, aggregates over a whole query, bare and qualified columns,
aliases that need quotes, and now and then an outer / semi / anti join, a table
function or VALUES.

Results worth comparing: a plan that loses rows cannot show on an empty result (or one
row of 0 / NULL). Filter constants are real values, drawn from a fixed sample of each
table's rows (of a dimension, the rows its facts reach through the key joined on) as
often as they occur; and each filter, residual, subquery or derived table is added only
while the block keeps enough rows by that sample (``QueryGen.admit``). The summary's
``non_trivial`` counts the judged queries whose native result is neither (10,000 of
seed 2: 88%; the generator before this: 56% on 2,000 of seed 1).

Every query is run natively, then under 2-3 *setting arms* (the original text with one
DuckDB optimizer rule off: lqo's arms and a few more, ``ARM_RULES``; now and then a
set of 2-4 rules, and one *settings arm*: a DuckDB operator setting of lqo's ``SETTING_ARMS``,
drawn per query text so that the other draws stay as they were), also when lqo refuses
the query for trees, and every rewrite ``lqo.sql.rewrites`` proves for the text
(``rewrite:<family>:<site>``: a CTE's materialization, a correlated scalar subquery
joined pre-aggregated, eager aggregation); each must give the native result's fingerprint. Then through lqo: ``prepare`` (parse, join graph, EXPLAIN, native trees),
then DuckDB's native tree rendered plus random and exhaustively enumerated trees, each
rendered and executed under ``forced_settings``, and one of them again with a rule of
lqo's tree+arm candidates off. A forced result must have the native result's
fingerprint, or lqo must refuse the query with a reason (``PreparedQuery.reason`` or a
typed ``LqoError``). Anything else is a crash. Results are deterministic: ``LIMIT``
always comes with an ORDER BY over every output column. Every ``--stress-every``-th
query runs all of that with 2 threads and 24 MB of memory (``STRESS_SETTINGS``): runtime
join filters built in parallel, and operators that spill; if the native run fails for
memory there, the query runs again without.

Outcomes per query: ``ok`` (forced, every plan equal to native), ``refused`` (with the
reason), ``wrong`` (a forced plan returned another result), ``crash`` (an exception
other than a typed refusal, a forced SQL DuckDB rejects), ``invalid`` (the generator
wrote SQL DuckDB itself rejects: a generator bug, not lqo's; or valid SQL DuckDB fails
with an internal error, counted apart as ``duckdb_internal_errors``), ``slow`` (native
over the timeout), ``flaky`` (a plan's result differed and native's own result changed
when run again: DuckDB answers nondeterministically, nothing to judge against). Forced
and arm runs over 50x native's time (2 s at least, ``--timeout`` at most) or the memory
/ spill limits are counted, not judged. Arm verdicts are counted apart (``arms``: runs,
wrong, crashes, timeouts): a wrong arm is a wrong result of DuckDB's own rule
(``eligible``: whether lqo would try that arm on the query; ``cause``: DuckDB's known
bug, LIMIT_FILTER_BUG, where turning join_filter_pushdown off too mends it). A wrong
result or crash, of a tree or an arm, is shrunk (``--shrink-s`` seconds): the
generator's own draws are set to zero or halved one by one while the failure stays,
which drops optional constructs and relations; the shrunk SQL goes to the log and the
summary.

The campaign is resumable: every query's outcome is appended to ``--log`` (default
``OUT.jsonl`` next to ``--json``), and a rerun with the same log skips the queries
already there. Query ``i`` of seed ``s`` is always the same query (its own RNG), so a
failure is reproduced with ``--only i``. ``tests/test_fuzz.py`` runs the same generator
and judge on a fixed Hypothesis sample.

Databases: ``DIR/tpch/tpch.duckdb`` and ``DIR/tpcds/tpcds.duckdb`` (``--data``, default
``data/fuzz``) are generated at sf 0.01 with ``lqo workload create`` when absent.
Connections are read-only, one thread by default, 2 GB memory and 1 GB spill at most.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import sys
import time
import traceback
import zlib
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import duckdb
import sqlglot

from lqo.engine.db import connect_read_only
from lqo.engine.harness import Harness
from lqo.engine.settings import current_setting
from lqo.errors import LqoError
from lqo.sql.catalog import Catalog
from lqo.sql.relations import limit_in_from
from lqo.sql.rewrites import rewrites
from lqo.trees.enumerate import exhaustive_trees
from lqo.trees.query import prepare
from lqo.tune.arms import SETTING_ARMS

# --------------------------------------------------------------------------- key graphs

# (table, columns) -> (table, columns): foreign key -> primary key, and a few real
# many-to-many equalities (two foreign keys to one dimension). Composite keys are
# comma-separated.
TPCH_KEYS = [
    ("lineitem", "l_orderkey", "orders", "o_orderkey"),
    ("lineitem", "l_partkey", "part", "p_partkey"),
    ("lineitem", "l_suppkey", "supplier", "s_suppkey"),
    ("lineitem", "l_partkey,l_suppkey", "partsupp", "ps_partkey,ps_suppkey"),
    ("partsupp", "ps_partkey", "part", "p_partkey"),
    ("partsupp", "ps_suppkey", "supplier", "s_suppkey"),
    ("orders", "o_custkey", "customer", "c_custkey"),
    ("customer", "c_nationkey", "nation", "n_nationkey"),
    ("supplier", "s_nationkey", "nation", "n_nationkey"),
    ("nation", "n_regionkey", "region", "r_regionkey"),
    ("customer", "c_nationkey", "supplier", "s_nationkey"),  # shared dimension (Q5)
]

_DS_PK = {
    "date": ("date_dim", "d_date_sk"), "time": ("time_dim", "t_time_sk"), "item": ("item", "i_item_sk"),
    "cust": ("customer", "c_customer_sk"), "cdemo": ("customer_demographics", "cd_demo_sk"),
    "hdemo": ("household_demographics", "hd_demo_sk"), "addr": ("customer_address", "ca_address_sk"),
    "store": ("store", "s_store_sk"), "promo": ("promotion", "p_promo_sk"), "reason": ("reason", "r_reason_sk"),
    "cc": ("call_center", "cc_call_center_sk"), "cp": ("catalog_page", "cp_catalog_page_sk"),
    "sm": ("ship_mode", "sm_ship_mode_sk"), "wh": ("warehouse", "w_warehouse_sk"),
    "wp": ("web_page", "wp_web_page_sk"), "site": ("web_site", "web_site_sk"),
    "ib": ("income_band", "ib_income_band_sk"),
}
_DS_FK = {
    "store_sales": "ss_sold_date_sk:date ss_sold_time_sk:time ss_item_sk:item ss_customer_sk:cust "
                   "ss_cdemo_sk:cdemo ss_hdemo_sk:hdemo ss_addr_sk:addr ss_store_sk:store ss_promo_sk:promo",
    "store_returns": "sr_returned_date_sk:date sr_return_time_sk:time sr_item_sk:item sr_customer_sk:cust "
                     "sr_cdemo_sk:cdemo sr_hdemo_sk:hdemo sr_addr_sk:addr sr_store_sk:store sr_reason_sk:reason",
    "catalog_sales": "cs_sold_date_sk:date cs_ship_date_sk:date cs_sold_time_sk:time cs_bill_customer_sk:cust "
                     "cs_ship_customer_sk:cust cs_bill_cdemo_sk:cdemo cs_bill_hdemo_sk:hdemo cs_bill_addr_sk:addr "
                     "cs_ship_addr_sk:addr cs_call_center_sk:cc cs_catalog_page_sk:cp cs_ship_mode_sk:sm "
                     "cs_warehouse_sk:wh cs_item_sk:item cs_promo_sk:promo",
    "catalog_returns": "cr_returned_date_sk:date cr_item_sk:item cr_refunded_customer_sk:cust "
                       "cr_returning_customer_sk:cust cr_returning_addr_sk:addr cr_call_center_sk:cc "
                       "cr_catalog_page_sk:cp cr_ship_mode_sk:sm cr_warehouse_sk:wh cr_reason_sk:reason",
    "web_sales": "ws_sold_date_sk:date ws_ship_date_sk:date ws_sold_time_sk:time ws_item_sk:item "
                 "ws_bill_customer_sk:cust ws_ship_customer_sk:cust ws_bill_cdemo_sk:cdemo ws_bill_hdemo_sk:hdemo "
                 "ws_bill_addr_sk:addr ws_ship_addr_sk:addr ws_web_page_sk:wp ws_web_site_sk:site "
                 "ws_ship_mode_sk:sm ws_warehouse_sk:wh ws_promo_sk:promo",
    "web_returns": "wr_returned_date_sk:date wr_item_sk:item wr_refunded_customer_sk:cust "
                   "wr_returning_customer_sk:cust wr_refunded_addr_sk:addr wr_web_page_sk:wp wr_reason_sk:reason",
    "inventory": "inv_date_sk:date inv_item_sk:item inv_warehouse_sk:wh",
    # c_last_review_date_sk is INTEGER, d_date_sk BIGINT: a key pair of differing types
    "customer": "c_current_cdemo_sk:cdemo c_current_hdemo_sk:hdemo c_current_addr_sk:addr "
                "c_first_shipto_date_sk:date c_first_sales_date_sk:date c_last_review_date_sk:date",
    "household_demographics": "hd_income_band_sk:ib",
    "promotion": "p_item_sk:item p_start_date_sk:date",
    "catalog_page": "cp_start_date_sk:date",
    "web_page": "wp_customer_sk:cust wp_creation_date_sk:date",
    "call_center": "cc_open_date_sk:date",
    "store": "s_closed_date_sk:date",
}
TPCDS_KEYS = [
    (fact, fk, *_DS_PK[dim]) for fact, spec in _DS_FK.items() for fk, dim in (p.split(":") for p in spec.split())
] + [
    ("store_returns", "sr_item_sk,sr_ticket_number", "store_sales", "ss_item_sk,ss_ticket_number"),
    ("catalog_returns", "cr_item_sk,cr_order_number", "catalog_sales", "cs_item_sk,cs_order_number"),
    ("web_returns", "wr_item_sk,wr_order_number", "web_sales", "ws_item_sk,ws_order_number"),
    # equal values that are no keys: strings, many-to-many (an item's versions share its id)
    ("customer_address", "ca_state", "store", "s_state"),
    ("customer_address", "ca_state", "warehouse", "w_state"),
    ("customer_address", "ca_county", "call_center", "cc_county"),
    ("customer_address", "ca_zip", "store", "s_zip"),
    ("item", "i_item_id", "item", "i_item_id"),
    ("customer", "c_birth_country", "customer", "c_birth_country"),
]
KEYS = {"tpch": TPCH_KEYS, "tpcds": TPCDS_KEYS}
FACTS = {
    "tpch": ["lineitem", "orders", "partsupp", "customer"],
    "tpcds": ["store_sales", "catalog_sales", "web_sales", "store_returns", "catalog_returns",
              "web_returns", "inventory"],
}
MAX_EST_ROWS = 150_000  # cap on the estimated unfiltered size of a generated join

NUMERIC = ("BIGINT", "INTEGER", "DECIMAL", "DOUBLE", "HUGEINT")


def family(dtype: str) -> str:
    if dtype.startswith(NUMERIC):
        return "num"
    if dtype == "DATE":
        return "date"
    if dtype == "VARCHAR":
        return "str"
    return "other"


# --------------------------------------------------------------------------- schema

@dataclass
class Link:
    """Equality ``table.cols = other.cols`` (both directions are stored)."""

    cols: tuple[str, ...]
    other: str
    other_cols: tuple[str, ...]
    table: str = ""


SAMPLE_ROWS = 256  # rows sampled per table (and per key link) for picking filter constants


@dataclass
class Schema:
    kind: str
    columns: dict[str, dict[str, str]]  # table -> column -> type
    rows: dict[str, int]
    nulls: dict[str, set[str]]  # table -> columns holding NULLs
    links: dict[str, list[Link]]
    ndv: dict[tuple[str, tuple[str, ...]], int]
    # table -> a fixed pseudo-random sample of its rows (column -> value): filter constants
    # are real values drawn from it (as often as they occur), and the rows a block's filters
    # keep are counted on it.
    rowsample: dict[str, list[dict]] = field(default_factory=dict)
    # (table, cols, other) -> rows of ``other`` reached from sampled ``table`` rows through
    # the key link: a dimension's values as the facts joined to it see them (a date_dim
    # filter then picks a year that has sales).
    reached: dict[tuple[str, tuple[str, ...], str], list[dict]] = field(default_factory=dict)

    def key_columns(self, table: str) -> set[str]:
        return {c for link in self.links.get(table, []) for c in link.cols}

    def sample_rows(self, table: str, via: Link | None = None) -> list[dict]:
        if via is not None:
            rows = self.reached.get((via.table, via.cols, via.other))
            if rows:
                return rows
        return self.rowsample.get(table, [])


def load_schema(con: duckdb.DuckDBPyConnection, kind: str) -> Schema:
    """Columns, sizes, NULLs, key distinct counts, and row samples: of every table, and
    of every key link's far side as reached from the near side's sample."""
    catalog = Catalog.from_connection(con)
    columns = {t: dict(cols) for t, cols in catalog.tables.items()}
    links: dict[str, list[Link]] = {}
    for a, acols, b, bcols in KEYS[kind]:
        ac, bc = tuple(acols.split(",")), tuple(bcols.split(","))
        links.setdefault(a, []).append(Link(ac, b, bc, a))
        links.setdefault(b, []).append(Link(bc, a, ac, b))
    rows, nulls, ndv, rowsample = {}, {}, {}, {}
    n = SAMPLE_ROWS
    for table, cols in sorted(columns.items()):
        names = list(cols)
        parts = ["count(*)"] + [f"count({c})" for c in names]
        keysets = sorted({link.cols for link in links.get(table, [])})
        parts += [f"count(DISTINCT ({', '.join(k)}))" if len(k) > 1 else f"count(DISTINCT {k[0]})" for k in keysets]
        res = con.execute(f"SELECT {', '.join(parts)} FROM {table}").fetchone()
        rows[table] = res[0]
        nulls[table] = {c for i, c in enumerate(names) if res[1 + i] < res[0]}
        for j, k in enumerate(keysets):
            ndv[(table, k)] = max(1, res[1 + len(names) + j])
        got = con.execute(f"SELECT {', '.join(names)} FROM {table} ORDER BY hash(rowid), rowid LIMIT {n}").fetchall()
        rowsample[table] = [dict(zip(names, r)) for r in got]
    reached = {}
    for table, ls in sorted(links.items()):
        for link in ls:
            names = list(columns[link.other])
            sel = ", ".join(f"_b.{c}" for c in names)
            on = " AND ".join(f"_a.{x} = _b.{y}" for x, y in zip(link.cols, link.other_cols))
            got = con.execute(f"SELECT {sel} FROM (SELECT * FROM {table} ORDER BY hash(rowid), rowid LIMIT {n}) AS _a "
                              f"JOIN {link.other} AS _b ON {on} ORDER BY hash(_b.rowid), _b.rowid LIMIT {n}").fetchall()
            if len(got) < n // 8:  # few sampled rows have a partner (a date_dim sample and the sales)
                got = con.execute(f"SELECT {sel} FROM {link.other} AS _b WHERE EXISTS (SELECT 1 FROM {table} AS _a "
                                  f"WHERE {on}) ORDER BY hash(_b.rowid), _b.rowid LIMIT {n}").fetchall()
            if got and len(got) >= min(8, rows[link.other]):
                reached[(table, link.cols, link.other)] = [dict(zip(names, r)) for r in got]
    return Schema(kind, columns, rows, nulls, links, ndv, rowsample, reached)


# --------------------------------------------------------------------------- generator

@dataclass
class Src:
    """One FROM item of a generated block."""

    alias: str
    text: str  # the FROM item as written
    cols: dict[str, str]  # visible column -> type
    origin: dict[str, tuple[str, str]]  # column -> (base table, column) it carries
    size: float
    table: str | None = None  # base table (None: derived table / CTE reference)
    hidden: bool = False  # a semi/anti-joined relation: its columns are not visible
    lateral: bool = False  # refers to an earlier FROM item: must stay after it
    rows: list[dict] | None = None  # sample rows (visible column -> value); None: not built yet


@dataclass
class Block:
    srcs: list[Src] = field(default_factory=list)
    links: dict[int, list[str]] = field(default_factory=dict)  # src index -> key predicates to earlier srcs
    filters: dict[int, list[str]] = field(default_factory=dict)
    residuals: list[tuple[set[int], str]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # subquery predicates etc.
    est: float = 1.0  # estimated rows of the joins, before filters
    special: str | None = None  # join type of the last relation (outer, semi, anti)
    alive: dict[int, list[dict]] = field(default_factory=dict)  # src index -> its sample rows its filters keep
    sel: float = 1.0  # estimated selectivity of what the samples cannot count (residuals, subqueries, ...)


MIN_ROWS = 25.0  # a filter is added only while a block keeps this many rows (estimated), see QueryGen.admit
_MISSING = object()  # a column a sample row does not know (a derived column): its predicates pass


def _cmp(a, op: str, b):
    """``a op b`` with SQL's NULL (None: unknown); values of types Python cannot compare
    (a key cast to VARCHAR) count as passing."""
    if a is _MISSING:
        return True
    if a is None or b is None:
        return None
    try:
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": a == b, "<>": a != b}[op]
    except TypeError:
        return True


def _or(*vals):
    if any(v is True for v in vals):
        return True
    return None if any(v is None for v in vals) else False


def _and(*vals):
    if any(v is False for v in vals):
        return False
    return None if any(v is None for v in vals) else True


def _not(v):
    return None if v is None else not v


def _in(x, vals):
    if x is _MISSING:
        return True
    if x is None:
        return None
    try:
        return x in vals
    except TypeError:
        return True


class QueryGen:
    """Random queries over one schema, driven by ``rng`` (a ``random.Random``).

    Every decision is a draw from ``rng`` such that draws shrinking towards zero (as
    Hypothesis shrinks ``st.randoms()``) make the query simpler: fewer relations, no
    optional construct.
    """

    def __init__(self, schema: Schema, rng: random.Random):
        self.s = schema
        self.r = rng
        self.n = 0
        self.ctes: list[str] = []
        self.features: Counter = Counter()
        self.alias_style = self.pick(["t", "name", "upper", "quoted", "odd"])
        self.bare_p = self.pick([0.0, 0.0, 0.5, 1.0])  # how often unambiguous columns are written bare
        self.srcs: list[Src] = []  # every FROM item of the query (providers of column names)
        self.reg: dict[int, int] = {}

    # ---------------------------------------------------------------- draws
    def draw(self, lo: int, hi: int) -> int:
        """The one primitive every decision uses: an integer in [lo, hi], lo when the
        underlying draw is 0. Taken modulo from 24 random bits: Hypothesis draws small
        ranges (and floats) with a strong bias to their edges, wide ones near-uniformly,
        so its queries look like the campaign's and still shrink towards zero."""
        return lo + self.r.getrandbits(24) % (hi - lo + 1)

    def chance(self, p: float) -> bool:
        return self.draw(0, 999) >= 1000 - round(p * 1000)

    def pick(self, seq):
        seq = list(seq)
        return seq[self.draw(0, len(seq) - 1)]

    def upto(self, lo: int, hi: int) -> int:
        return self.draw(lo, hi)

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.draw(0, i)
            items[i], items[j] = items[j], items[i]

    def feat(self, name: str) -> None:
        self.features[name] += 1

    # ---------------------------------------------------------------- names, values
    def new_alias(self, table: str | None) -> str:
        self.n += 1
        if self.alias_style == "name" and table:
            return f"{table}{self.n}" if self.n > 1 else table
        if self.alias_style == "upper":
            return f"T{self.n}"
        if self.alias_style == "odd":  # needs quotes: a keyword, a space, mixed case
            return self.pick(["Order {}", "select{}", "My T{}", "ä{}"]).format(self.n)
        return f"t{self.n}"

    def qalias(self, alias: str) -> str:
        """How the alias is written where it is defined and referenced."""
        return f'"{alias}"' if self.alias_style in ("quoted", "odd") else alias

    def col(self, src: Src, c: str) -> str:
        """A column reference, as a marker: ``resolve`` writes it qualified, or bare
        where the name is unambiguous in the whole query."""
        if id(src) not in self.reg:
            self.register(src)
        return f"\x00{self.reg[id(src)]}\x01{c}\x00"

    def register(self, src: Src) -> Src:
        self.reg[id(src)] = len(self.srcs)
        self.srcs.append(src)
        return src

    def resolve(self, sql: str) -> str:
        providers = Counter(c for s in self.srcs for c in s.cols)

        def one(m: re.Match) -> str:
            src, c = self.srcs[int(m.group(1))], m.group(2)
            if providers[c] == 1 and self.chance(self.bare_p):
                self.features["bare_column"] = 1
                return c
            return f"{self.qalias(src.alias)}.{c}"

        return re.sub("\x00(\\d+)\x01(\\w+)\x00", one, sql)

    def literal(self, value, dtype: str) -> str:
        if value is None:
            return "NULL"
        fam = family(dtype)
        if fam == "str":
            return "'" + str(value).replace("'", "''") + "'"
        if fam == "date":
            return f"DATE '{value}'"
        return str(value)

    # ---------------------------------------------------------------- samples, selectivity
    def rows_of(self, src: Src) -> list[dict]:
        """Sample rows of ``src``: a base table's (as reached through its key link), or
        for a derived table its base table's rows under the derived column names
        (columns it computes are missing: their predicates pass)."""
        if src.rows is None:
            tables = Counter(t for t, _ in src.origin.values())
            src.rows = []
            if tables:
                t = tables.most_common(1)[0][0]
                cols = {c: oc for c, (ot, oc) in src.origin.items() if ot == t}
                src.rows = [{c: r[oc] for c, oc in cols.items()} for r in self.s.sample_rows(t)]
        return src.rows

    @staticmethod
    def _frac(rows: list[dict], kept: list[dict]) -> float:
        """Selectivity estimated from a sample: a value seen once or twice is rarer in
        the table than in the sample, so few rows kept count for less."""
        if not rows:
            return 1.0
        c = len(kept)
        return c / len(rows) if c >= 3 else 0.3 * c / len(rows)

    def src_sel(self, block: Block, i: int, alive: list[dict] | None = None) -> float:
        rows = self.rows_of(block.srcs[i])
        kept = block.alive.get(i, rows) if alive is None else alive
        s = self._frac(rows, kept)
        if block.special == "ANTI JOIN" and i == len(block.srcs) - 1:
            return max(1.0 - s, 0.0)  # an anti join keeps the rows whose partner its filters drop
        return s

    def expected(self, block: Block) -> float:
        """Estimated rows of the block with its filters (samples per relation, assumed
        independent of each other)."""
        e = block.est * block.sel
        for i in range(len(block.srcs)):
            e *= self.src_sel(block, i)
        return e

    def admit(self, block: Block, factor: float) -> bool:
        """Whether a predicate that keeps ``factor`` of the block's rows may be added:
        while the block keeps MIN_ROWS (estimated), or, for a block that small already,
        a predicate keeping half or more. Filters so stay selective one at a time but
        leave most queries a result to compare."""
        before = self.expected(block)
        return before * factor >= MIN_ROWS or (before < MIN_ROWS and factor >= 0.5)

    def pred_frac(self, block: Block, i: int, pred, guess: float) -> tuple[float, list[dict] | None]:
        """(factor, rows kept) of predicate ``pred`` (row -> True/False/None) on src
        ``i``'s sample rows still alive; ``guess`` where no sample says."""
        rows = self.rows_of(block.srcs[i])
        if pred is None or not rows:
            return guess, None
        cur = block.alive.get(i, rows)
        kept = [r for r in cur if pred(r) is True]
        old = self.src_sel(block, i)
        new = self.src_sel(block, i, kept)
        if old <= 0.0:
            return (1.0 if new > 0 else 0.0), kept
        return new / old, kept

    def values(self, src: Src, c: str) -> list:
        """Real non-NULL values of column ``c`` (from the sample, as often as they occur)."""
        return [r[c] for r in self.rows_of(src) if r.get(c) is not None]

    # ---------------------------------------------------------------- base relations
    def table_src(self, table: str, via: Link | None = None) -> Src:
        alias = self.new_alias(table)
        qa = self.qalias(alias)
        if alias == table:
            text = table if not self.chance(0.2) else f"main.{table}"
        else:
            text = f"{table} {qa}" if self.chance(0.3) else f"{table} AS {qa}"
        cols = dict(self.s.columns[table])
        return self.register(Src(alias, text, cols, {c: (table, c) for c in cols}, float(self.s.rows[table]), table,
                                 rows=self.s.sample_rows(table, via)))

    def links_of(self, src: Src) -> list[tuple[tuple[str, ...], Link]]:
        """Key links usable from ``src``: (src columns, link)."""
        out = []
        by_origin: dict[tuple[str, str], str] = {o: c for c, o in src.origin.items()}
        tables = {t for t, _ in src.origin.values()}
        for table in sorted(tables):
            for link in self.s.links.get(table, []):
                mine = [by_origin.get((table, c)) for c in link.cols]
                if all(mine):
                    out.append((tuple(mine), link))
        return out

    def ndv(self, src: Src, cols: tuple[str, ...]) -> float:
        origin = [src.origin.get(c) for c in cols]
        if all(origin) and len({t for t, _ in origin}) == 1:
            key = (origin[0][0], tuple(c for _, c in origin))
            if key in self.s.ndv:
                return float(min(self.s.ndv[key], max(src.size, 1.0)))
        return max(src.size, 1.0)

    def key_pred(self, a: Src, acols, b: Src, bcols) -> str:
        parts = []
        for x, y in zip(acols, bcols):
            l, r = self.col(a, x), self.col(b, y)
            if self.chance(0.5):
                l, r = r, l
            if self.chance(0.06):
                self.feat("key_expression")
                if "num" in (family(a.cols[x]), family(b.cols[y])):
                    forms = ["{l} + 0 = {r}", "CAST({l} AS BIGINT) = {r}", "{l} = CAST({r} AS DOUBLE)",
                             "CAST({l} AS VARCHAR) = CAST({r} AS VARCHAR)", "{l} IS NOT DISTINCT FROM {r}"]
                else:
                    forms = ["lower({l}) = lower({r})", "{l} || '' = {r}", "{l} COLLATE NOCASE = {r}",
                             "{l} IS NOT DISTINCT FROM {r}"]
                parts.append(self.pick(forms).format(l=l, r=r))
            else:
                parts.append(f"{l} = {r}")
        return " AND ".join(parts)

    def walk(self, n: int, block: Block | None = None, start: str | None = None, bound: float = MAX_EST_ROWS,
             via: Link | None = None) -> Block:
        """A block of up to ``n`` base tables, each joined on a key to one before it.
        ``via``: the key link ``start`` is reached through (its sample rows)."""
        block = block or Block()
        if start is None:
            facts = [t for t in FACTS[self.s.kind] if t in self.s.columns]
            start = self.pick(facts) if self.chance(0.7) or not self.s.links else self.pick(sorted(self.s.links))
        if not block.srcs:
            first = self.table_src(start, via)
            block.srcs.append(first)
            block.est = first.size
        while len(block.srcs) < n:
            options = []
            for i, src in enumerate(block.srcs):
                if src.hidden:
                    continue
                for mine, link in self.links_of(src):
                    other = link.other
                    size = self.s.rows[other]
                    d = max(self.ndv(src, mine), float(self.s.ndv.get((other, link.other_cols), size)))
                    est = block.est * size / max(d, 1.0)
                    if est <= bound:
                        options.append((i, mine, link, est))
            if not options:
                break
            i, mine, link, est = self.pick(options)
            new = self.table_src(link.other, link)
            block.srcs.append(new)
            block.links[len(block.srcs) - 1] = [self.key_pred(block.srcs[i], mine, new, link.other_cols)]
            block.est = est
        return block

    # ---------------------------------------------------------------- filters
    def filter_on(self, src: Src, c: str) -> str:
        return self.filter_pred(src, c)[0]

    def filter_pred(self, src: Src, c: str) -> tuple[str, object, float]:
        """A filter on column ``c`` of ``src``: (SQL, predicate on a sample row giving
        True / False / None as SQL would, or None where no sample says, a guessed
        selectivity for that case). Constants are real values of the column, drawn from
        its sample as often as they occur: an equality or IN list holds a value that is
        there, a range lies around real values."""
        dtype = src.cols[c]
        fam = family(dtype)
        ref = self.col(src, c)
        table, col = src.origin.get(c, (None, None))
        vals = self.values(src, c)
        nullable = table is None or col in self.s.nulls.get(table, set())
        get = lambda row: row.get(c, _MISSING)  # noqa: E731
        if not vals and fam == "num" and self.chance(0.7):
            # a computed column (a count, a sum): constants that keep most groups
            self.feat("filter_num")
            op, k, guess = self.pick([(">", 0, 0.9), (">=", 1, 0.9), ("<>", 0, 0.95), ("<=", 10**6, 0.9),
                                      (">", 1, 0.5), ("<", 1000, 0.6)])
            return f"{ref} {op} {k}", None, guess
        if (nullable and self.chance(0.12)) or not vals:
            self.feat("filter_null")
            neg = self.chance(0.6)
            pred = (lambda r: (get(r) is not None) if neg else (get(r) is _MISSING or get(r) is None))
            return f"{ref} IS {'NOT ' if neg else ''}NULL", (pred if vals else None), (0.95 if neg else 0.05)
        v = lambda: self.pick(vals)  # noqa: E731
        lit = lambda x: self.literal(x, dtype)  # noqa: E731
        if fam == "num":
            self.feat("filter_num")
            form = self.upto(0, 5)
            if form == 0:
                op, x = self.pick(["<", "<=", ">", ">="]), v()
                return f"{ref} {op} {lit(x)}", lambda r: _cmp(get(r), op, x), 0.5
            if form == 1:
                a, b = sorted([v(), v()])
                return f"{ref} BETWEEN {lit(a)} AND {lit(b)}", lambda r: _and(_cmp(get(r), ">=", a), _cmp(get(r), "<=", b)), 0.3
            if form == 2:
                neg = self.chance(0.2)
                xs = [v() for _ in range(self.upto(1, 4))]
                pred = (lambda r: _not(_in(get(r), xs))) if neg else (lambda r: _in(get(r), xs))
                return f"{ref} {'NOT ' if neg else ''}IN ({', '.join(lit(x) for x in xs)})", pred, 0.3
            if form == 3:
                x = v()
                return f"{ref} <> {lit(x)}", lambda r: _cmp(get(r), "<>", x), 0.9
            if form == 4:
                x, y = v(), v()
                return f"({ref} < {lit(x)} OR {ref} > {lit(y)})", lambda r: _or(_cmp(get(r), "<", x), _cmp(get(r), ">", y)), 0.5
            x = v()
            return f"{ref} = {lit(x)}", lambda r: _cmp(get(r), "=", x), 0.1
        if fam == "date":
            self.feat("filter_date")
            form = self.upto(0, 3)
            a, b = sorted([v(), v()])
            if form == 0:
                return f"{ref} BETWEEN {lit(a)} AND {lit(b)}", lambda r: _and(_cmp(get(r), ">=", a), _cmp(get(r), "<=", b)), 0.3
            if form == 1:
                days = self.upto(1, 400)
                end = a + datetime.timedelta(days=days)
                return (f"{ref} >= {lit(a)} AND {ref} < {lit(a)} + INTERVAL {days} DAY",
                        lambda r: _and(_cmp(get(r), ">=", a), _cmp(get(r), "<", end)), 0.3)
            if form == 2:
                year = getattr(a, "year", 1998)
                return (f"extract(year FROM {ref}) = {year}",
                        lambda r: _cmp(getattr(get(r), "year", get(r)), "=", year), 0.2)
            op = self.pick(["<", ">="])
            return f"{ref} {op} {lit(a)}", lambda r: _cmp(get(r), op, a), 0.5
        if fam == "str":
            self.feat("filter_str")
            form = self.upto(0, 4)
            s = str(v())
            if form == 0:
                return f"{ref} = {lit(s)}", lambda r: _cmp(get(r), "=", s), 0.1
            if form == 1:
                neg = self.chance(0.2)
                xs = [s] + [str(v()) for _ in range(self.upto(1, 4) - 1)]
                pred = (lambda r: _not(_in(get(r), xs))) if neg else (lambda r: _in(get(r), xs))
                return f"{ref} {'NOT ' if neg else ''}IN ({', '.join(lit(x) for x in xs)})", pred, 0.3
            clean = re.sub(r"[%_'\\]", "", s)
            if form == 2:
                self.feat("filter_like")
                k = self.upto(1, 3)
                neg = self.chance(0.2)
                pre = clean[:k]

                def like(r, pre=pre, neg=neg):
                    x = get(r)
                    if x is _MISSING:
                        return True
                    if x is None:
                        return None
                    return str(x).startswith(pre) != neg
                return f"{ref} {'NOT ' if neg else ''}LIKE '{pre}%'", like, 0.4
            if form == 3:
                self.feat("filter_like")
                mid = clean[1:3] if len(clean) > 2 else clean
                op = self.pick(["LIKE", "ILIKE"])

                def contains(r, mid=mid, op=op):
                    x = get(r)
                    if x is _MISSING:
                        return True
                    if x is None:
                        return None
                    return mid in str(x) if op == "LIKE" else mid.lower() in str(x).lower()
                return f"{ref} {op} '%{mid}%'", contains, 0.4
            op = self.pick(["<", ">="])
            return f"{ref} {op} {lit(s)}", lambda r: _cmp(get(r), op, s), 0.5
        return f"{ref} IS NOT NULL", lambda r: get(r) is not None, 0.95

    def add_filters(self, block: Block, p: float = 0.45) -> None:
        """Filters on the block's relations, each admitted (``admit``) by the rows its
        relation's sample keeps: up to three draws per filter, else none."""
        for i, src in enumerate(block.srcs):
            anti = block.special == "ANTI JOIN" and i == len(block.srcs) - 1
            if not (anti or self.chance(p)):  # an anti join without filters keeps no row
                continue
            for _ in range(1 + int(self.chance(0.3))):
                for _attempt in range(3):
                    saved = Counter(self.features)
                    keys = self.s.key_columns(src.table) if src.table else set()
                    plain = [c for c in src.cols if c not in keys] or list(src.cols)
                    c = self.pick(plain if not self.chance(0.15) else list(src.cols))
                    f, pred, guess = self.filter_pred(src, c)
                    if self.chance(0.12):
                        self.feat("filter_or")
                        g, gpred, gguess = self.filter_pred(src, self.pick(list(src.cols)))
                        f = f"({f} OR {g})"
                        pred = (lambda r, a=pred, b=gpred: _or(a(r), b(r))) if pred and gpred else None
                        guess = 1.0 - (1.0 - guess) * (1.0 - gguess)
                    factor, kept = self.pred_frac(block, i, pred, guess)
                    if kept != [] and self.admit(block, factor):
                        block.filters.setdefault(i, []).append(f)
                        if kept is None:
                            block.sel *= factor
                        else:
                            block.alive[i] = kept
                        break
                    self.features = saved

    def add_residuals(self, block: Block) -> None:
        visible = [i for i, s in enumerate(block.srcs) if not s.hidden]
        if len(visible) < 2 or not self.chance(0.25):
            return
        for _ in range(1 + int(self.chance(0.3))):
            saved = Counter(self.features)
            i = self.pick(visible)
            j = self.pick([v for v in visible if v != i])
            i, j = min(i, j), max(i, j)
            a, b = block.srcs[i], block.srcs[j]
            fams = {}
            for x, t in a.cols.items():
                fams.setdefault(family(t), [[], []])[0].append(x)
            for y, t in b.cols.items():
                fams.setdefault(family(t), [[], []])[1].append(y)
            shared = sorted(f for f, (xs, ys) in fams.items() if xs and ys and f in ("num", "date"))
            form = self.upto(0, 3)
            if form == 0 or not shared:
                self.feat("residual_or")
                fa, pa, ga = self.filter_pred(a, self.pick(list(a.cols)))
                fb, pb, gb = self.filter_pred(b, self.pick(list(b.cols)))
                sa, sb = self.pred_frac(block, i, pa, ga)[0], self.pred_frac(block, j, pb, gb)[0]
                factor = 1.0 - (1.0 - min(sa, 1.0)) * (1.0 - min(sb, 1.0))
                pred = f"({fa} OR {fb})"
            else:
                fam = self.pick(shared)
                x, y = self.pick(fams[fam][0]), self.pick(fams[fam][1])
                ra, rb = self.col(a, x), self.col(b, y)
                self.feat("residual_cmp")
                if form == 1 or fam == "date":
                    op = self.pick(["<", "<=", ">", "<>"])
                    pred, test = f"{ra} {op} {rb}", (lambda u, w, op=op: _cmp(u, op, w))
                elif form == 2:
                    k = self.pick([0, 10, 100, 1000])
                    pred, test = f"{ra} + {rb} > {k}", (lambda u, w, k=k: _cmp(u + w, ">", k))
                else:
                    pred = f"(coalesce({ra}, 0) <> coalesce({rb}, -1) OR {ra} IS NULL)"
                    test = lambda u, w: True  # noqa: E731
                factor = self.pair_frac(block, i, x, j, y, test)
            if self.admit(block, factor):
                block.residuals.append(({i, j}, pred))
                block.sel *= factor
            else:
                self.features = saved

    def pair_frac(self, block: Block, i: int, x: str, j: int, y: str, test) -> float:
        """Share of (row of i, row of j) sample pairs where ``test(i.x, j.y)`` holds."""
        us = [r.get(x, _MISSING) for r in block.alive.get(i, self.rows_of(block.srcs[i]))][:48]
        ws = [r.get(y, _MISSING) for r in block.alive.get(j, self.rows_of(block.srcs[j]))][:48]
        if not us or not ws or any(u is _MISSING for u in us) or any(w is _MISSING for w in ws):
            return 0.5
        hits = 0
        for u in us:
            for w in ws:
                if u is None or w is None:
                    continue
                try:
                    hits += test(u, w) is True
                except TypeError:
                    hits += 1
        return max(hits, 0.3) / (len(us) * len(ws))

    # ---------------------------------------------------------------- attachments
    def filter_frac(self, block: Block) -> float:
        """Estimated share of the block's joined rows its filters keep."""
        return min(1.0, self.expected(block) / max(block.est, 1e-9))

    def sub_select(self, table: str, key: str, depth: int, lateral: str | None = None, via: Link | None = None,
                   ) -> tuple[str, dict[str, str], dict[str, tuple[str, str]], float, float, float]:
        """A derived query over ``table`` (maybe joined further) exposing ``key`` and
        some values; returns (sql, visible columns, their origins, estimated rows,
        estimated distinct keys, estimated share of keys it keeps). ``lateral``: a
        column of a sibling FROM item the key must equal (an implicit LATERAL
        reference). ``via``: the key link it is joined on."""
        inner = self.walk(1 + (self.upto(0, 2) if depth < 2 else 0), start=table, bound=MAX_EST_ROWS, via=via)
        if depth < 2 and len(inner.srcs) < 4 and self.chance(0.15):
            self.feat("derived_nested")
            self.attach(inner, depth + 1)
        self.add_filters(inner, 0.5)
        if depth < 2 and self.chance(0.15) and self.where_subquery(inner, depth + 1):
            self.feat("derived_with_subquery")
        frac = self.filter_frac(inner)
        head = inner.srcs[0]
        kref = self.col(head, key)
        if lateral:
            inner.where.append(f"{kref} = {lateral}")
        form = self.upto(0, 4)
        ktype = head.cols[key]
        kout = kref
        if self.chance(0.12):  # a key computed by an expression: its type or comparison may change
            self.feat("derived_key_expression")
            forms = {"{k} + 0": ktype, "CAST({k} AS DOUBLE)": "DOUBLE", "CAST({k} AS VARCHAR)": "VARCHAR"}
            if family(ktype) == "str":
                forms = {"{k} COLLATE NOCASE": ktype, "lower({k})": ktype, "upper({k})": ktype, "{k} || ''": ktype}
            form_k = self.pick(sorted(forms))
            kout, ktype = form_k.format(k=kref), forms[form_k]
        nums = [(i, c) for i, s in enumerate(inner.srcs) for c, t in s.cols.items() if family(t) == "num"]
        if form == 0:
            self.feat("derived_group")
            i, c = self.pick(nums)
            sel = f"{kout} AS {key}, count(*) AS cnt, sum({self.col(inner.srcs[i], c)}) AS total"
            tail = f" GROUP BY {kref}"
            if self.chance(0.2):  # a group of one row per key (a lone dimension) has count 1
                many = len(inner.srcs) > 1
                tail += f" HAVING count(*) > {int(many)}"
                frac *= 0.5 if many else 1.0
            cols = {key: ktype, "cnt": "BIGINT", "total": "DECIMAL"}
            size = self.ndv(head, (key,))
        elif form == 1:
            self.feat("derived_distinct")
            sel, tail, cols, size = f"DISTINCT {kout} AS {key}", "", {key: ktype}, self.ndv(head, (key,))
        elif form == 2 and len(inner.srcs) == 1 and self.chance(0.5):
            self.feat("derived_star")
            sel, tail, cols, size = "*", "", dict(head.cols), inner.est
        elif form == 3:
            self.feat("derived_setop")
            other = self.walk(1, start=table, via=via)
            self.add_filters(other, 0.8)
            op = self.pick(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"])
            fo = self.filter_frac(other)
            frac = {"INTERSECT": frac * fo, "EXCEPT": frac * (1.0 - fo)}.get(op, min(1.0, frac + fo))
            ofrm, orest = self.from_clause(other)
            osql = f"SELECT {self.col(other.srcs[0], key)} FROM {ofrm}{self.where_clause(other, [], orest)}"
            frm, rest = self.from_clause(inner)
            body = f"SELECT {kout} AS {key} FROM {frm}{self.where_clause(inner, [], rest)} {op} {osql}"
            size = inner.est + other.est
            return body, {key: ktype}, {key: (table, key)}, size, min(size, self.ndv(head, (key,))), frac
        else:
            self.feat("derived_rows")
            i, c = self.pick(nums)
            sel = f"{kout} AS {key}, {self.col(inner.srcs[i], c)} AS val"
            tail, cols, size = "", {key: ktype, "val": inner.srcs[i].cols[c]}, inner.est
            val_origin = inner.srcs[i].origin.get(c)
            if self.chance(0.2):
                self.feat("derived_limit")
                k = self.upto(5, 500)
                tail = f" ORDER BY 1, 2 LIMIT {k}"
                frac *= min(1.0, k / max(size * frac, 1.0))
        frm, rest = self.from_clause(inner)
        sql = f"SELECT {sel} FROM {frm}{self.where_clause(inner, [], rest)}{tail}"
        origin = {key: (table, key)}
        if sel == "*":
            origin = {c: (table, c) for c in cols}
        elif "val" in cols and val_origin and val_origin[0] == table:
            origin["val"] = val_origin  # its real values: filters on it pick from the sample
        return sql, cols, origin, size, min(size, self.ndv(head, (key,))), frac

    def attach(self, block: Block, depth: int) -> None:
        """Join a derived table or a CTE reference to the block on a key."""
        options = [(i, mine, link) for i, s in enumerate(block.srcs) if not s.hidden and s.table
                   for mine, link in self.links_of(s) if len(link.cols) == 1]
        if not options:
            return
        i, mine, link = self.pick(options)
        key = link.other_cols[0]
        saved = Counter(self.features)
        lateral = None
        if self.chance(0.06):
            self.feat("lateral_derived")
            lateral = self.col(block.srcs[i], mine[0])
        sql, cols, origin, size, key_ndv, frac = self.sub_select(link.other, key, depth + 1, lateral, link)
        est = block.est * size / max(self.ndv(block.srcs[i], mine), key_ndv, 1.0)
        if est > MAX_EST_ROWS or not (lateral or self.admit(block, frac)):
            self.features = saved  # too large a join, or one that would keep no row: not attached
            return
        alias = self.new_alias(None)
        qa = self.qalias(alias)
        kind = "derived" if lateral else self.pick(["derived", "cte"])
        renamed = cols
        if kind == "cte":
            self.feat("cte")
            name = f"cte{len(self.ctes) + 1}"
            mat = self.pick(["", "", " MATERIALIZED", " NOT MATERIALIZED"])
            if mat:
                self.feat("cte_materialized")
            self.ctes.append(f"{name} AS{mat} ({sql})")
            text = f"{name} AS {qa}"
        else:
            self.feat("derived")
            if "*" not in sql.split(" FROM ")[0] and self.chance(0.25):
                self.feat("derived_column_aliases")
                tag = re.sub(r"\W", "", alias.lower())
                renamed = {f"{c}_{tag}": t for c, t in cols.items()}
                origin = {f"{c}_{tag}": o for c, o in ((c, origin.get(c)) for c in cols) if o}
                text = f"({sql}) AS {qa}({', '.join(renamed)})"
            else:
                text = f"({sql}) AS {qa}"
        new = self.register(Src(alias, text, renamed, origin, max(size, 1.0), lateral=lateral is not None))
        kcol = next(c for c, o in origin.items() if o == (link.other, key))
        block.est = est
        if not lateral:
            block.sel *= frac
        block.srcs.append(new)
        block.links[len(block.srcs) - 1] = [self.key_pred(block.srcs[i], mine, new, (kcol,))]
        if kind == "cte" and self.chance(0.2) and len(block.srcs) < 8:
            self.feat("cte_twice")
            alias2 = self.new_alias(None)
            again = self.register(Src(alias2, f"{self.ctes[-1].split(' ')[0]} AS {self.qalias(alias2)}", dict(renamed), dict(origin), new.size))
            block.srcs.append(again)
            block.links[len(block.srcs) - 1] = [f"{self.col(new, kcol)} = {self.col(again, kcol)}"]

    # ---------------------------------------------------------------- subqueries in WHERE
    def where_subquery(self, block: Block, depth: int) -> bool:
        """A subquery predicate in the block's WHERE, if ``admit`` lets it in."""
        visible = [(i, s) for i, s in enumerate(block.srcs) if not s.hidden and s.table]
        if not visible:
            return False
        saved = Counter(self.features)
        i, src = self.pick(visible)
        links = [(m, link) for m, link in self.links_of(src) if len(link.cols) == 1]
        kind = self.pick(["in", "exists", "scalar", "scalar_corr", "all"])
        if kind in ("in", "exists") and links:
            (mine,), link = self.pick(links)
            sub = self.walk(1 + (self.upto(0, 2) if depth < 2 else 0), start=link.other, via=link)
            self.add_filters(sub, 0.7)
            inner = self.col(sub.srcs[0], link.other_cols[0])
            frm, rest = self.from_clause(sub)
            # share of the block's rows whose key the subquery holds: its filters' share,
            # more where a key has many rows there
            other = link.other
            per_key = self.s.rows[other] / max(self.s.ndv.get((other, link.other_cols), self.s.rows[other]), 1)
            hit = min(1.0, self.filter_frac(sub) * max(per_key, 1.0))
            neg = self.chance(0.3)
            if kind == "in":
                self.feat("subquery_not_in" if neg else "subquery_in")
                extra = []
                factor = 1.0 - hit if neg else hit
                if neg and link.other_cols[0] in self.s.nulls.get(other, set()):
                    if self.chance(0.85):
                        extra.append(f"{inner} IS NOT NULL")
                    else:
                        factor *= 0.3  # NOT IN over a NULL keeps no row: only if the filters drop them
                pred = f"{self.col(src, mine)} {'NOT ' if neg else ''}IN (SELECT {inner} FROM {frm}{self.where_clause(sub, extra, rest)})"
            else:
                self.feat("subquery_not_exists" if neg else "subquery_exists")
                corr = f"{inner} = {self.col(src, mine)}"
                pred = f"{'NOT ' if neg else ''}EXISTS (SELECT 1 FROM {frm}{self.where_clause(sub, [corr], rest)})"
                factor = 1.0 - hit if neg else hit
            if self.chance(0.1):
                self.feat("subquery_or")
                f, p, g = self.filter_pred(src, self.pick(list(src.cols)))
                pred = f"({pred} OR {f})"
                factor = 1.0 - (1.0 - factor) * (1.0 - min(self.pred_frac(block, i, p, g)[0], 1.0))
        else:
            nums = [c for c, t in src.cols.items() if family(t) == "num" and c not in self.s.key_columns(src.table)]
            if not nums:
                return False
            c = self.pick(nums)
            sub = self.walk(1, start=src.table)
            self.add_filters(sub, 0.5)
            x = sub.srcs[0]
            frm, rest = self.from_clause(sub)
            if kind == "scalar_corr":
                keys = sorted(self.s.key_columns(src.table))
                k = self.pick(keys) if keys else c
                self.feat("subquery_scalar_correlated")
                corr = [f"{self.col(x, k)} = {self.col(src, k)}"]
                # against its own key's rows: max with <= and min with >= keep a row per key
                fn = self.pick(["0.5 * avg", "avg", "max", "min"])
                op = {"0.5 * avg": ">", "avg": self.pick(["<=", ">="]), "max": "<=", "min": ">="}[fn]
                pred = f"{self.col(src, c)} {op} (SELECT {fn}({self.col(x, c)}) FROM {frm}{self.where_clause(sub, corr, rest)})"
                factor = 0.8 * self.filter_frac(sub)  # a key's rows its filters drop compare with NULL
            elif kind == "all":
                self.feat("subquery_all")
                op, q = self.pick([">=", "<"]), self.pick(["ALL", "ANY"])
                extra, factor = [], 0.9
                vals = self.values(src, c)
                if q == "ALL" and vals:  # bounded by a real value: rows on its other side pass
                    b = self.pick(vals)
                    extra = [f"{self.col(x, c)} {'<=' if op == '>=' else '>='} {self.literal(b, src.cols[c])}"]
                    factor = 0.4
                elif q == "ALL":
                    factor = 0.1
                pred = f"{self.col(src, c)} {op} {q} (SELECT {self.col(x, c)} FROM {frm}{self.where_clause(sub, extra, rest)})"
            else:
                self.feat("subquery_scalar")
                pred = f"{self.col(src, c)} {self.pick(['<', '>='])} (SELECT avg({self.col(x, c)}) FROM {frm}{self.where_clause(sub, [], rest)})"
                factor = 0.5
        if not self.admit(block, factor):
            self.features = saved
            return False
        block.where.append(pred)
        block.sel *= factor
        return True

    def select_subquery(self, outer: list[Src]) -> str | None:
        """A correlated scalar subquery for the SELECT list, its own join block."""
        options = [(src, mine, link) for src in outer for mine, link in self.links_of(src) if len(link.cols) == 1]
        if not options:
            return None
        src, (mine,), link = self.pick(options)
        sub = self.walk(1 + self.upto(0, 2), start=link.other, via=link)
        self.add_filters(sub, 0.5)
        frm, rest = self.from_clause(sub)
        corr = f"{self.col(sub.srcs[0], link.other_cols[0])} = {self.col(src, mine)}"
        self.feat("subquery_select_correlated")
        return f"(SELECT count(*) FROM {frm}{self.where_clause(sub, [corr], rest)}) AS sq"

    # ---------------------------------------------------------------- rendering a block
    def from_clause(self, block: Block) -> tuple[str, list[str]]:
        """FROM text and the predicates left for WHERE. Comma style puts every
        predicate in WHERE; join style puts key predicates (and sometimes filters and
        residuals) in ON; ``special`` is the join type of the last relation."""
        n = len(block.srcs)
        special = block.special
        style = "comma" if n == 1 else self.pick(["comma", "join", "mixed"])
        if special:
            style = "join"
        rest: list[str] = []
        if style == "comma":
            order = list(range(n))
            if self.chance(0.5) and not any(s.lateral for s in block.srcs):
                self.shuffle(order)
            frm = ", ".join(block.srcs[i].text for i in order)
            for i in range(n):
                rest += block.links.get(i, []) + block.filters.get(i, [])
            rest += [r for _, r in block.residuals]
            return frm, rest
        self.feat("explicit_join")
        cut = n if style == "join" else self.upto(1, n)
        parts = [block.srcs[0].text]
        placed: set[int] = set()
        rest += block.filters.get(0, [])
        for i in range(1, n):
            src = block.srcs[i]
            preds = list(block.links.get(i, []))
            if i >= cut:
                parts.append(f", {src.text}")
                rest += preds + block.filters.get(i, [])
                continue
            kind = "JOIN" if self.chance(0.7) else "INNER JOIN"
            own = block.filters.get(i, [])
            if special and i == n - 1:
                kind = special
                if src.hidden or self.chance(0.5):
                    preds += own
                else:
                    rest += own
            elif self.chance(0.3):
                preds += own
            else:
                rest += own
            for k, (rels, r) in enumerate(block.residuals):
                if k not in placed and max(rels) == i and self.chance(0.5) and not special:
                    preds.append(r)
                    placed.add(k)
            if not preds:
                parts.append(f" CROSS JOIN {src.text}")
            else:
                parts.append(f" {kind} {src.text} ON {' AND '.join(preds)}")
        rest += [r for k, (_, r) in enumerate(block.residuals) if k not in placed]
        return "".join(parts), rest

    def where_clause(self, block: Block, extra: list[str], rest: list[str]) -> str:
        preds = list(extra) + list(rest or []) + block.where
        if not preds:
            return ""
        return " WHERE " + " AND ".join(preds)

    # ---------------------------------------------------------------- output
    def select_list(self, block: Block) -> tuple[str, str]:
        """SELECT list and tail (GROUP BY / HAVING / ORDER BY / LIMIT)."""
        visible = [s for s in block.srcs if not s.hidden]
        cols = [(s, c, t) for s in visible for c, t in s.cols.items()]
        nums = [(s, c) for s, c, t in cols if family(t) == "num"]
        mode = self.pick(["agg", "group", "group", "rows", "window", "star"])
        aggs = ["count(*) AS cnt"]
        for k in range(self.upto(0, 3)):
            if nums and self.chance(0.7):
                s, c = self.pick(nums)
                fn = self.pick(["sum", "min", "max", "avg", "count"])
                if fn == "sum" and len(nums) > 1 and self.chance(0.3):
                    s2, c2 = self.pick(nums)
                    aggs.append(f"sum({self.col(s, c)} * {self.col(s2, c2)}) AS a{k}")
                else:
                    aggs.append(f"{fn}({self.col(s, c)}) AS a{k}")
            else:
                s, c, _ = self.pick(cols)
                fn = self.pick(["min", "max", "count(DISTINCT "])
                aggs.append(f"{fn}{'' if fn.endswith(' ') else '('}{self.col(s, c)}) AS a{k}")
        if mode == "agg":
            self.feat("out_aggregate")
            if self.chance(0.1):
                self.feat("scalar_subquery_select")
                aggs.append("(SELECT count(*) FROM " + self.pick(sorted(self.s.columns)) + ") AS sq")
            return ", ".join(aggs), ""
        if mode == "group":
            self.feat("out_group_by")
            groups = [self.col(s, c) for s, c, _ in (self.pick(cols) for _ in range(self.upto(1, 2)))]
            groups = list(dict.fromkeys(groups))
            out = groups + aggs
            gb = self.pick(["exprs", "positions", "all"])
            group_by = {"exprs": ", ".join(groups), "positions": ", ".join(str(i + 1) for i in range(len(groups))),
                        "all": "ALL"}[gb]
            tail = f" GROUP BY {group_by}"
            if self.chance(0.25):
                self.feat("having")
                tail += f" HAVING count(*) > {self.pick([0, 1, 2])}"
            tail += self.order_limit(len(out), need_limit=False)
            return ", ".join(out), tail
        if mode == "star":
            self.feat("out_star")
            form = self.upto(0, 3)
            star = ["*", "*", f"* EXCLUDE ({self.pick(cols)[1]})", "COLUMNS(*)"][form]
            if form >= 2:
                self.feat("out_star_modifier")
            extra = f", {self.col(*self.pick(cols)[:2])}" if self.chance(0.3) else ""
            return star + extra, f" ORDER BY ALL LIMIT {self.pick([1, 5, 20])}"
        picked = [self.pick(cols) for _ in range(self.upto(1, 4))]
        out = list(dict.fromkeys(self.col(s, c) for s, c, _ in picked))
        if mode == "window" and nums:
            self.feat("window")
            s, c = self.pick(nums)
            g = out[0]
            out.append(f"{self.pick(['sum', 'count', 'max'])}({self.col(s, c)}) OVER (PARTITION BY {g}) AS w")
        if self.chance(0.15):
            sub = self.select_subquery([s for s in visible if s.table])
            if sub:
                out.append(sub)
        distinct = "DISTINCT " if self.chance(0.25) else ""
        if distinct:
            self.feat("distinct")
        self.feat("out_rows")
        return distinct + ", ".join(out), self.order_limit(len(out), need_limit=True)

    def order_limit(self, n_out: int, need_limit: bool) -> str:
        if not need_limit and not self.chance(0.4):
            return ""
        self.feat("order_by")
        if self.chance(0.3):
            order = f" ORDER BY ALL{self.pick(['', ' DESC', ' NULLS FIRST'])}"
        else:
            order = " ORDER BY " + ", ".join(f"{i + 1}{self.pick(['', '', ' DESC', ' DESC NULLS LAST'])}" for i in range(n_out))
        if need_limit or self.chance(0.5):
            self.feat("limit")
            order += f" LIMIT {self.pick([1, 5, 10, 50, 200])}"
            if self.chance(0.1):
                order += f" OFFSET {self.upto(1, 5)}"
        return order

    # ---------------------------------------------------------------- whole queries
    def main_block(self, depth: int = 0, n_max: int = 8, start: str | None = None) -> Block:
        n = 1 + self.upto(1, 3) + (self.upto(0, 3) if self.chance(0.3) else 0)
        if self.chance(0.06):
            n = 1  # a single table: the joins are in its subqueries
        block = self.walk(min(n, n_max), start=start)
        for _ in range(2):
            if len(block.srcs) < n_max and self.chance(0.25):
                self.attach(block, depth)
        if self.chance(0.05) and len(block.srcs) < n_max:
            self.feat("cross_join_tiny")
            tiny = self.pick([t for t in self.s.columns if self.s.rows[t] <= 25])
            src = self.table_src(tiny)
            block.srcs.append(src)
            block.filters.setdefault(len(block.srcs) - 1, [])
        last = len(block.srcs) - 1
        if last >= 1 and block.links.get(last) and not block.srcs[last].lateral and self.chance(0.12):
            block.special = self.pick(["LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "SEMI JOIN", "ANTI JOIN", "LEFT OUTER JOIN"])
            block.srcs[last].hidden = block.special in ("SEMI JOIN", "ANTI JOIN")
            self.feat("outer_semi_anti")
        self.add_filters(block)
        self.add_residuals(block)
        for _ in range(2):
            if self.chance(0.22):
                self.where_subquery(block, depth)
        return block

    def block_sql(self, block: Block) -> str:
        frm, rest = self.from_clause(block)
        if not block.special and self.chance(0.03):
            self.feat("table_function")
            frm += self.pick([", range(2) AS rg(i)", ", (VALUES (1), (2)) AS vv(i)"])
        sel, tail = self.select_list(block)
        return f"SELECT {sel} FROM {frm}{self.where_clause(block, [], rest)}{tail}"

    def query(self) -> str:
        form = self.pick(["block"] * 8 + ["union", "wrapped"])
        if form == "union":
            self.feat("union")
            op = self.pick(["UNION ALL", "UNION", "INTERSECT", "EXCEPT"])
            # INTERSECT / EXCEPT branches share their first key column (from the same
            # table): keys of one table and another rarely meet. INTERSECT's branches
            # list the keys (with 1): equal counts would be rarer still.
            same = op in ("INTERSECT", "EXCEPT")
            branches, first = [], None
            for _ in range(2 + int(self.chance(0.2))):
                b = self.main_block(n_max=4, start=first[0] if same and first else None)
                frm, rest = self.from_clause(b)
                if same and first and first[1] in b.srcs[0].cols:
                    k = self.col(b.srcs[0], first[1])
                else:
                    keys = [(s, c) for s in b.srcs if s.table and not s.hidden for c in sorted(self.s.key_columns(s.table))]
                    s, c = self.pick(keys) if keys else (None, None)
                    k = self.col(s, c) if s else "1"
                    if s and first is None:
                        first = (s.table, c)
                n = "1" if op == "INTERSECT" else "count(*)"
                branches.append(f"SELECT {k} AS k, {n} AS n FROM {frm}{self.where_clause(b, [], rest)} GROUP BY 1")
            body = f" {op} ".join(branches)
            sql = f"SELECT k, sum(n) AS n FROM ({body}) AS u GROUP BY k ORDER BY ALL LIMIT 20" if self.chance(0.5) else body
        elif form == "wrapped":
            self.feat("wrapped_aggregate")
            b = self.main_block()
            frm, rest = self.from_clause(b)
            visible = [s for s in b.srcs if not s.hidden]
            cols = list(dict.fromkeys(self.col(s, c) for s in visible for c in list(s.cols)[:3]))[:4]
            inner = f"SELECT {', '.join(f'{c} AS c{i}' for i, c in enumerate(cols))} FROM {frm}{self.where_clause(b, [], rest)}"
            sql = f"SELECT count(*), count(DISTINCT c0), min(c{len(cols) - 1}) FROM ({inner}) AS w"
        else:
            sql = self.block_sql(self.main_block())
        if self.ctes:
            sql = "WITH " + ", ".join(self.ctes) + " " + sql
        return self.resolve(sql)


# --------------------------------------------------------------------------- checking

# Setting arms: the original text run with DuckDB optimizer rules disabled. lqo's tuning
# tries ARMS (and pairs of them) on every query, and a forced tree with one of TREE_ARMS
# off (ARMS / TREE_ARMS of its trials module; copied: that module is being moved); the
# campaign judges those and a few more rules each query may meet.
ARMS: tuple[str, ...] = ("join_filter_pushdown", "build_side_probe_side", "join_order",
                         "compressed_materialization", "cte_inlining")
TREE_ARMS: tuple[str, ...] = ("join_filter_pushdown", "compressed_materialization", "cte_inlining")
ARM_RULES: tuple[str, ...] = tuple(dict.fromkeys(ARMS + (
    "filter_pushdown", "common_subplan", "late_materialization", "top_n", "statistics_propagation",
    # lqo.tune.trials.SET_RULES: grown into rule sets of up to 4 rules
    "unused_columns", "expression_rewriter", "column_lifetime")))
ARM_PAIR_P = 0.25  # share of queries that also get a set of 2-4 rules
# An arm or a forced tree may take this many times native's time (at least the floor,
# at most --timeout) before it is stopped and counted as a timeout, not judged.
SLOWDOWN, SLOW_FLOOR_S = 50.0, 2.0
MEMORY_LIMIT = "2GB"  # of every connection (``connect``), outside STRESS_SETTINGS
# Runtime-filter and spilling conditions for some queries: two threads, little memory.
STRESS_SETTINGS = {"threads": "2", "memory_limit": "24MB"}


@dataclass
class Outcome:
    status: str  # ok | refused | wrong | crash | invalid | slow | flaky
    reason: str | None = None
    plans: int = 0
    forced_timeouts: int = 0
    detail: str | None = None
    ms: float = 0.0
    native_rows: int | None = None
    trivial: bool | None = None  # native result empty, or one row of only 0 / NULL
    arms: list = field(default_factory=list)  # [rules, verdict, lqo would try it]
    arm_failures: list = field(default_factory=list)  # {"rules", "status", "detail", "eligible"}
    tree_arm_runs: int = 0
    stress: bool = False  # run under STRESS_SETTINGS
    stress_fallback: bool = False  # native failed for memory under stress: run again without
    spilled: bool = False  # under stress, a run raised DuckDB's peak spill size (see _PEAK_PROFILING)


def normalize_reason(reason: str) -> str:
    """A refusal reason without block numbers, aliases and SQL snippets: for counting."""
    reason = re.sub(r"^block \d+: ", "", reason)
    if reason.startswith("FROM item"):
        reason = reason.split(" (")[0]
    reason = re.sub(r"derived table .+? (may refer|refers) to its sibling .+? \(", r"derived table \1 to a sibling (", reason)
    reason = re.sub(r"duplicate alias .*", "duplicate alias", reason)
    return reason.strip()


# A forced tree that runs past the memory or spill limit failed for its cost, not its SQL.
RESOURCE_ERRORS = ("OutOfMemoryException", "IOException: IO Error: Could not write file")


def is_trivial(rows: list[tuple]) -> bool:
    """An empty result, or one row of only 0 / NULL (``count(*)`` of nothing): a plan
    that loses rows would give it too."""
    if not rows:
        return True
    if len(rows) > 1:
        return False
    return all(v is None or (isinstance(v, (int, float, Decimal)) and not isinstance(v, bool) and v == 0)
               for v in rows[0])


class _Tap:
    """The connection as the harness sees it, keeping the rows of the last result it
    fetched (the harness keeps a fingerprint only) and, with ``probe``, DuckDB's peak
    temporary-directory size after it (profiling must be on: ``stress_settings``)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, probe: bool = False):
        self._con, self.rows, self.probe, self.peak = con, None, probe, 0

    def execute(self, *args, **kwargs):
        return _TapResult(self, self._con.execute(*args, **kwargs))

    def __getattr__(self, name):
        return getattr(self._con, name)


class _TapResult:
    def __init__(self, tap: _Tap, res):
        self._tap, self._res = tap, res

    def fetchall(self):
        self._tap.rows = self._res.fetchall()
        if self._tap.probe:
            try:
                prof = json.loads(self._tap._con.get_profiling_information(format="json"))
                self._tap.peak = max(self._tap.peak, int(prof.get("system_peak_temp_dir_size") or 0))
            except (duckdb.Error, ValueError, TypeError):
                pass
        return self._tap.rows

    def __getattr__(self, name):
        return getattr(self._res, name)


# Profiling that reports only the instance's peak spill size (it never goes down: a
# query that raises it spilled; one that spilled less than an earlier one is not seen).
_PEAK_PROFILING = {"enable_profiling": "no_output", "custom_profiling_settings": '{"SYSTEM_PEAK_TEMP_DIR_SIZE": "true"}'}


@contextmanager
def stress_settings(con: duckdb.DuckDBPyConnection):
    """STRESS_SETTINGS while the block runs (they are the DuckDB instance's), and the
    peak-spill profiling; after it, ``connect``'s settings again (memory_limit reads
    back rounded, so it is set from MEMORY_LIMIT) and profiling off."""
    threads = current_setting(con, "threads")
    try:
        for k, v in {**STRESS_SETTINGS, **_PEAK_PROFILING}.items():
            con.execute(f"SET {k} = '{v}'")
        yield
    finally:
        con.execute("RESET custom_profiling_settings")
        con.execute("RESET enable_profiling")  # last: setting the metrics turns profiling on
        con.execute(f"SET threads = {int(threads)}")
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")


def has_limit_in_from(sql: str) -> bool:
    """Whether a derived table or CTE of ``sql`` holds a LIMIT (as lqo reads it)."""
    try:
        return limit_in_from(sqlglot.parse_one(sql, read="duckdb"))
    except Exception:  # noqa: BLE001 - lqo keeps the build-side arms off for what it cannot read
        return True


def lqo_arms(sql: str) -> tuple[str, ...]:
    """The arms lqo itself tries on ``sql`` (its trials: not the build-side rules where
    a LIMIT sits in FROM)."""
    limited = has_limit_in_from(sql)
    return tuple(a for a in ARMS if not (limited and a in ("build_side_probe_side", "join_order")))


LIMIT_FILTER_BUG = "join_filter_pushdown below a LIMIT in FROM"


def limit_filter_cause(h: Harness, sql: str, rules: tuple[str, ...], fingerprint: str, limit_s: float) -> str | None:
    """LIMIT_FILTER_BUG where a wrong arm is DuckDB's known bug: a LIMIT in FROM, and
    the same rules with join_filter_pushdown also off give the native result."""
    if "join_filter_pushdown" in rules or not has_limit_in_from(sql):
        return None
    r = h.run(sql, disabled=tuple(rules) + ("join_filter_pushdown",), profile=False, timeout_s=limit_s)
    return LIMIT_FILTER_BUG if r.ok and r.fingerprint == fingerprint else None


def native_flaky(h: Harness, sql: str, fingerprint: str, limit_s: float, times: int = 3) -> bool:
    """Whether the native result changes when run again: then no plan can be judged
    against it (DuckDB 1.5.5 with 2 threads: a join's runtime filter pushed below a
    LIMIT in FROM acts or not by timing)."""
    for _ in range(times):
        r = h.run(sql, profile=False, timeout_s=limit_s)
        if r.ok and r.fingerprint != fingerprint:
            return True
    return False


def pick_arms(rng: random.Random) -> list[tuple[str, ...]]:
    """2-3 single rules, and now and then a set of 2-4 (lqo's pairs and grown rule sets)."""
    arms = [(r,) for r in rng.sample(ARM_RULES, rng.choice([2, 3]))]
    if rng.random() < ARM_PAIR_P:
        arms.append(tuple(sorted(rng.sample(ARM_RULES, rng.choice([2, 2, 3, 4])))))
    return arms


def check_query(sql: str, con: duckdb.DuckDBPyConnection, catalog: Catalog, rng: random.Random,
                n_random: int = 2, timeout_s: float = 10.0, arms: bool = True, stress: bool = False,
                judge_arms: bool = True) -> Outcome:
    """Run ``sql`` natively, under setting arms (``arms``) and through lqo's forced
    plans; judge the outcome. ``stress``: all of it under STRESS_SETTINGS (if the native
    run fails for memory there, everything runs again without). ``judge_arms`` False:
    the arms are drawn from ``rng`` (the trees after them are the same) but not run."""
    t0 = time.perf_counter()
    if stress:
        state = rng.getstate()
        tap = _Tap(con, probe=True)
        with stress_settings(con):
            tap.peak = before = _peak(con)
            out = _check(sql, tap, catalog, rng, n_random, Harness(tap, timeout_s=timeout_s), arms, judge_arms)
        out.stress, out.spilled = True, tap.peak > before
        if out.status == "slow" and out.reason == "resources":
            rng.setstate(state)
            tap = _Tap(con)
            out = _check(sql, tap, catalog, rng, n_random, Harness(tap, timeout_s=timeout_s), arms, judge_arms)
            out.stress = out.stress_fallback = True
    else:
        tap = _Tap(con)
        out = _check(sql, tap, catalog, rng, n_random, Harness(tap, timeout_s=timeout_s), arms, judge_arms)
    out.ms = (time.perf_counter() - t0) * 1000.0
    return out


def _peak(con: duckdb.DuckDBPyConnection) -> int:
    """The instance's peak spill size so far (profiling on): read after a tiny query."""
    con.execute("SELECT 1").fetchall()
    try:
        return int(json.loads(con.get_profiling_information(format="json")).get("system_peak_temp_dir_size") or 0)
    except (duckdb.Error, ValueError, TypeError):
        return 0


def _check_rewrites(sql: str, h: Harness, catalog: Catalog, native: Any, limit: float,
                    unstable: Callable[[], bool], out: Outcome) -> None:
    """Every rewrite lqo.sql.rewrites proves for ``sql`` (all families; no ``rng`` draw),
    run as written: recorded with the arms as ``rewrite:<label>`` (a rewrite DuckDB
    rejects is a crash of the generator; other rows than native's are wrong)."""
    try:
        found = rewrites(sql, catalog.tables)
    except Exception:  # noqa: BLE001 - the generator must refuse, never raise
        out.arm_failures.append({"rules": ["rewrite"], "status": "crash", "eligible": True,
                                 "detail": traceback.format_exc(limit=4)[-800:]})
        out.arms.append([["rewrite"], "crash", True])
        return
    for rw in found:
        r = h.run(rw.sql, profile=False, timeout_s=limit)
        name = [f"rewrite:{rw.label}"]
        if r.timed_out or (r.error and r.error.startswith(RESOURCE_ERRORS)):
            verdict = "timeout"
        elif r.error:
            verdict = "crash"
            out.arm_failures.append({"rules": name, "status": "crash", "eligible": True,
                                     "detail": r.error.splitlines()[0][:300], "sql": rw.sql[:2000]})
        elif r.fingerprint != native.fingerprint and unstable():
            verdict = "flaky"
        elif r.fingerprint != native.fingerprint:
            verdict = "wrong"
            out.arm_failures.append({"rules": name, "status": "wrong", "eligible": True,
                                     "detail": f"{r.rows} rows vs native {native.rows}", "sql": rw.sql[:2000]})
        else:
            verdict = "ok"
        out.arms.append([name, verdict, True])


def _check(sql, tap, catalog, rng, n_random, h, arms=True, judge_arms=True) -> Outcome:
    con = tap._con
    native = h.run(sql, profile=False)
    if native.timed_out or (native.error and native.error.startswith(RESOURCE_ERRORS)):
        return Outcome("slow", reason="timeout" if native.timed_out else "resources")
    if native.error:
        return Outcome("invalid", detail=native.error.splitlines()[0][:300])
    out = Outcome("ok", native_rows=native.rows, trivial=is_trivial(tap.rows))
    tap.rows = None
    limit = min(h.timeout_s, max(SLOW_FLOOR_S, SLOWDOWN * native.latency_ms / 1000.0))
    flaky = None  # whether native's result changes from run to run: checked on a mismatch

    def unstable() -> bool:
        nonlocal flaky
        if flaky is None:
            flaky = native_flaky(h, sql, native.fingerprint, limit)
        return flaky

    if arms:
        allowed = set(lqo_arms(sql))
        # (rules, settings); drawn also when not run: the trees drawn after them stay the same
        picks: list[tuple[tuple[str, ...], tuple]] = [(rules, ()) for rules in pick_arms(rng)]
        # one settings arm, drawn from the text (not from ``rng``: the draws after it stay as they were)
        picks.append(((), (random.Random(zlib.crc32(sql.encode())).choice(SETTING_ARMS),)))
        for disabled, settings in picks if judge_arms else []:
            r = h.run(sql, disabled=disabled, settings=settings, profile=False, timeout_s=limit)
            rules = disabled + tuple(f"{n}={v}" for n, v in settings)  # as recorded
            eligible = bool(settings) or set(rules) <= allowed
            if r.timed_out or (r.error and r.error.startswith(RESOURCE_ERRORS)):
                verdict = "timeout"
            elif r.error:
                verdict = "crash"
                out.arm_failures.append({"rules": list(rules), "status": "crash", "eligible": eligible,
                                         "limit_in_from": has_limit_in_from(sql),
                                         "detail": r.error.splitlines()[0][:300]})
            elif r.fingerprint != native.fingerprint and unstable():
                verdict = "flaky"  # native itself answers differently run to run: not judged
            elif r.fingerprint != native.fingerprint:
                verdict = "wrong"
                out.arm_failures.append({"rules": list(rules), "status": "wrong", "eligible": eligible,
                                         "limit_in_from": has_limit_in_from(sql),
                                         "cause": None if settings else limit_filter_cause(h, sql, rules, native.fingerprint,
                                                                                           limit),
                                         "detail": f"{r.rows} rows vs native {native.rows}"})
            else:
                verdict = "ok"
            out.arms.append([list(rules), verdict, eligible])
        if judge_arms:
            _check_rewrites(sql, h, catalog, native, limit, unstable, out)
    try:
        pq = prepare(sql, con, catalog)
    except LqoError as err:
        out.status, out.reason = "refused", f"{type(err).__name__}: {normalize_reason(str(err))[:80]}"
        return out
    except Exception:  # noqa: BLE001 - anything else is the crash we look for
        out.status, out.detail = "crash", "prepare: " + traceback.format_exc(limit=6)[-1500:]
        return out
    if not pq.forceable:
        if not pq.reason:
            out.status, out.detail = "crash", "not forceable without a reason"
        else:
            out.status, out.reason = "refused", normalize_reason(pq.reason)
        return out
    step = "plans"
    try:
        plans = [pq.native_plan] + pq.random_plans(n_random, rng)
        free = [b for b in pq.free_blocks if len(b.relations) <= 6]
        if free:
            step = "enumerate"
            block = rng.choice(free)
            try:
                trees = exhaustive_trees(block, bushy=rng.random() < 0.7, limit=20_000)
            except ValueError:  # documented: too many trees to list
                trees = []
            if trees:
                plan = pq.native_plan.replace(block.index, rng.choice(trees))
                if plan not in plans:
                    plans.append(plan)
        # one tree also with a rule lqo's tree+arm candidates disable (TREE_ARMS)
        runs = [(plan, ()) for plan in plans]
        if arms:
            runs.append((rng.choice(plans), (rng.choice(TREE_ARMS),)))
        for plan, rules in runs:
            step = f"render {plan}"
            text = pq.render(plan)
            r = h.run(text, forced=True, profile=False, disabled=rules, timeout_s=limit)
            out.plans += 1
            out.tree_arm_runs += bool(rules)
            with_rules = f" with {','.join(rules)} off" if rules else ""
            if r.timed_out or (r.error and r.error.startswith(RESOURCE_ERRORS)):
                out.forced_timeouts += 1  # a catastrophic tree may be slow, never wrong
                continue
            if r.error:
                out.status, out.detail = "crash", (f"forced SQL fails: {r.error.splitlines()[0][:300]}\n"
                                                   f"plan {plan}{with_rules}\n{text}")
                return out
            if r.fingerprint != native.fingerprint:
                out.status = "flaky" if unstable() else "wrong"
                out.detail = f"plan {plan}{with_rules}: {r.rows} rows vs native {native.rows}\n{text}"
                return out
    except Exception:  # noqa: BLE001
        out.status, out.detail = "crash", f"{step}: " + traceback.format_exc(limit=6)[-1500:]
    return out


def check_arm(sql: str, con: duckdb.DuckDBPyConnection, rules: tuple[str, ...], timeout_s: float = 10.0,
              stress: bool = False) -> Outcome:
    """Only the native run and the one arm ``rules``: status wrong / crash / ok / invalid / slow."""
    h = Harness(con, timeout_s=timeout_s)
    with stress_settings(con) if stress else nullcontext():
        native = h.run(sql, profile=False)
        if native.timed_out or (native.error and native.error.startswith(RESOURCE_ERRORS)):
            return Outcome("slow")
        if native.error:
            return Outcome("invalid", detail=native.error.splitlines()[0][:300])
        r = h.run(sql, disabled=rules, profile=False)
        if r.timed_out or (r.error and r.error.startswith(RESOURCE_ERRORS)):
            return Outcome("slow")
        if r.error:
            return Outcome("crash", detail=r.error.splitlines()[0][:300])
        if r.fingerprint != native.fingerprint:
            if native_flaky(h, sql, native.fingerprint, timeout_s):
                return Outcome("flaky")
            return Outcome("wrong", detail=f"{','.join(rules)} off: {r.rows} rows vs native {native.rows}")
    return Outcome("ok")


# --------------------------------------------------------------------------- shrinking

class Draws:
    """The generator's source of draws: from ``rng`` (recorded in ``values``), or
    replayed from ``values`` (0, the simplest choice, past their end)."""

    def __init__(self, rng: random.Random | None = None, values: list[int] | None = None):
        self.rng, self.values, self.i = rng, list(values or []), 0

    def getrandbits(self, k: int) -> int:
        if self.rng is not None:
            self.values.append(self.rng.getrandbits(k))
            return self.values[-1]
        v = self.values[self.i] if self.i < len(self.values) else 0
        self.i += 1
        return v


def shrink(schema: Schema, values: list[int], con, catalog, status: str, timeout_s: float = 10.0,
           budget_s: float = 120.0, rules: tuple[str, ...] | None = None, stress: bool = False,
           rng_state=None) -> tuple[str, str | None]:
    """A smaller query failing the same way: draws set to 0 (no optional construct, the
    first choice) or halved, one at a time, kept while the failure stays (Hypothesis-
    style, on the generator's own draws). ``rules``: the failure is that setting arm's
    (else a forced tree's, sampled from ``rng_state``, the failing check's, with more
    random trees). Returns (SQL, its failure detail)."""
    def run(vals: list[int]) -> tuple[str, Outcome]:
        sql = QueryGen(schema, Draws(values=vals)).query()
        if rules is not None:
            return sql, check_arm(sql, con, rules, timeout_s, stress)
        rng = random.Random(0)
        if rng_state is not None:
            rng.setstate(rng_state)
        return sql, check_query(sql, con, catalog, rng, 8, timeout_s, arms=rng_state is not None, stress=stress,
                                judge_arms=False)

    best = list(values)
    sql, out = run(best)
    if out.status != status:  # another plan sample: keep the original
        return QueryGen(schema, Draws(values=best)).query(), None
    deadline = time.perf_counter() + budget_s
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for i in reversed(range(len(best))):
            for v in sorted({0, best[i] // 2, best[i] // 16}):
                if v >= best[i] or time.perf_counter() > deadline:
                    continue
                cand = best[:i] + [v] + best[i + 1:]
                csql, cout = run(cand)
                if cout.status == status and len(csql) <= len(sql):
                    best, sql, out, improved = cand, csql, cout, True
                    break
    return sql, out.detail


# --------------------------------------------------------------------------- campaign

def ensure_databases(data: Path, kinds: list[str]) -> dict[str, Path]:
    paths = {}
    for kind in kinds:
        path = data / kind / f"{kind}.duckdb"
        if not path.exists():
            from lqo.workloads.create import create_workload

            print(f"generating {kind} sf 0.01 into {data / kind}", file=sys.stderr)
            create_workload(kind, 0.01, data / kind)
        paths[kind] = path
    return paths


def connect(path: str | os.PathLike, threads: int = 1) -> duckdb.DuckDBPyConnection:
    """A read-only connection with bounded memory and spill: a generated query that
    runs away (a bad tree) is stopped by the timeout or fails, never fills the disk."""
    con = connect_read_only(path, threads=threads)
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute("SET max_temp_directory_size = '1GB'")
    known = {r[0] for r in con.execute("SELECT name FROM duckdb_optimizers()").fetchall()}
    missing = sorted(set(ARM_RULES) - known)
    if missing:
        raise SystemExit(f"DuckDB {duckdb.__version__} has no optimizer rule {', '.join(missing)}")
    return con


def query_rng(seed: int, i: int) -> random.Random:
    return random.Random(f"fuzz:{seed}:{i}")


def record(out: Outcome) -> dict:
    """The per-query fields of an outcome (the log's and the summary's)."""
    return {"status": out.status, "reason": out.reason, "plans": out.plans, "forced_timeouts": out.forced_timeouts,
            "ms": round(out.ms, 1), "detail": out.detail, "native_rows": out.native_rows, "trivial": out.trivial,
            "arms": out.arms, "arm_failures": out.arm_failures, "tree_arm_runs": out.tree_arm_runs,
            "stress": out.stress, "stress_fallback": out.stress_fallback, "spilled": out.spilled}


def summarize(records: list[dict], elapsed_s: float) -> dict:
    status = Counter(r["status"] for r in records)
    refusals = Counter(r["reason"] for r in records if r["status"] == "refused")
    features = Counter()
    for r in records:
        features.update(r.get("features", {}).keys())
    judged = [r for r in records if r["status"] == "ok"]
    armed = [r for r in records if r.get("arms")]
    arms = [a for r in records for a in r.get("arms", [])]
    verdicts = Counter(a[1] for a in arms)
    fails = [dict(f, i=r["i"], kind=r["kind"], sql=r["sql"]) for r in records for f in r.get("arm_failures", [])]
    stressed = [r for r in records if r.get("stress")]  # (fallbacks included)

    def share(rs):
        n = sum(1 for r in rs if r.get("trivial") is False)
        return {"queries": len(rs), "non_trivial": n, "share": round(n / len(rs), 4) if rs else None}

    return {
        "queries": len(records),
        "forced_ok": status["ok"],
        "plans_run": sum(r["plans"] for r in records),
        "forced_timeouts": sum(r.get("forced_timeouts", 0) for r in records),
        "wrong": status["wrong"],
        "crashes": status["crash"],
        # a mismatch where the native result itself changed when run again (not judged)
        "native_nondeterministic": status["flaky"],
        "invalid_generated": status["invalid"],
        # of those, valid SQL DuckDB itself fails on with an internal error (its bugs, not the generator's)
        "duckdb_internal_errors": sum(1 for r in records if r["status"] == "invalid" and "INTERNAL Error" in (r["detail"] or "")),
        "slow_native": status["slow"],
        "refused": status["refused"],
        # a result that is empty or one row of only 0 / NULL cannot show a plan that loses rows
        "non_trivial": {"judged": len(judged), "non_trivial": share(judged)["non_trivial"],
                        "share": share(judged)["share"], "arm_judged": len(armed),
                        "arm_judged_non_trivial": share(armed)["non_trivial"], "arm_judged_share": share(armed)["share"]},
        "arms": {
            "rules": list(ARM_RULES),
            "runs": len(arms),
            "wrong": verdicts["wrong"],
            "crashes": verdicts["crash"],
            "timeouts": verdicts["timeout"],
            "native_nondeterministic": verdicts["flaky"],
            "wrong_or_crash_lqo_tries": sum(1 for a in arms if a[1] in ("wrong", "crash") and a[2]),
            # DuckDB 1.5.5 pushes a join's runtime filter below a LIMIT in FROM (see tests/test_fuzz.py):
            # wrong arms with a LIMIT in FROM, and those right with join_filter_pushdown off too
            "wrong_with_limit_in_from": sum(1 for f in fails if f["status"] == "wrong" and has_limit_in_from(f["sql"])),
            "wrong_from_limit_filter_bug": sum(1 for f in fails if f.get("cause") == LIMIT_FILTER_BUG),
            "pair_runs": sum(1 for a in arms if len(a[0]) > 1),
            "runs_by_rule": dict(sorted(Counter(",".join(a[0]) for a in arms if len(a[0]) == 1).items())),
            "wrong_by_rules": dict(Counter(",".join(f["rules"]) for f in fails if f["status"] == "wrong")),
            "tree_arm_runs": sum(r.get("tree_arm_runs", 0) for r in records),
        },
        "stress": {"settings": STRESS_SETTINGS, "queries": len(stressed),
                   "judged_under_stress": sum(1 for r in stressed if not r.get("stress_fallback") and r["status"] != "slow"),
                   "native_out_of_memory_rerun_without": sum(1 for r in stressed if r.get("stress_fallback")),
                   # lower bound: DuckDB reports only its peak spill size, which never goes down
                   "raised_peak_spill": sum(1 for r in stressed if r.get("spilled")),
                   "forced_ok": sum(1 for r in stressed if r["status"] == "ok" and not r.get("stress_fallback")),
                   "arm_runs": sum(len(r.get("arms", [])) for r in stressed if not r.get("stress_fallback")),
                   "forced_timeouts_or_memory": sum(r.get("forced_timeouts", 0) for r in stressed)},
        "refusals_by_reason": dict(refusals.most_common()),
        "by_kind": {k: dict(Counter(r["status"] for r in records if r["kind"] == k)) for k in sorted({r["kind"] for r in records})},
        "features": dict(sorted(features.items())),
        "elapsed_s": round(elapsed_s, 1),
        "query_ms_median": sorted(r["ms"] for r in records)[len(records) // 2] if records else None,
        "failures": [{k: r.get(k) for k in ("i", "kind", "status", "sql", "detail", "shrunk_sql", "shrunk_detail")}
                     for r in records if r["status"] in ("wrong", "crash", "invalid")][:50],
        "arm_failures": fails[:50],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="summary JSON output")
    ap.add_argument("--log", type=Path, default=None, help="per-query JSONL (resume file); default OUT.jsonl")
    ap.add_argument("--data", type=Path, default=Path("data/fuzz"))
    ap.add_argument("--kinds", default="tpch,tpcds")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per run")
    ap.add_argument("--threads", type=int, default=1, help="DuckDB threads")
    ap.add_argument("--random-plans", type=int, default=2)
    ap.add_argument("--stress-every", type=int, default=10,
                    help="every Nth query runs under STRESS_SETTINGS (2 threads, 24 MB); 0: none")
    ap.add_argument("--no-arms", action="store_true", help="judge forced trees only")
    ap.add_argument("--only", type=int, default=None, help="run only query i (prints its SQL and outcome)")
    ap.add_argument("--progress", type=int, default=50, help="print progress every N queries")
    ap.add_argument("--shrink-s", type=float, default=120.0, help="seconds to shrink each failure (0: off)")
    args = ap.parse_args(argv)

    kinds = args.kinds.split(",")
    paths = ensure_databases(args.data, kinds)
    cons = {k: connect(p, threads=args.threads) for k, p in paths.items()}
    catalogs = {k: Catalog.from_connection(c) for k, c in cons.items()}
    schemas = {k: load_schema(c, k) for k, c in cons.items()}

    log = args.log or (args.json.with_suffix(".jsonl") if args.json else None)
    records: list[dict] = []
    done: set[int] = set()
    if log and log.exists() and args.only is None:
        for line in log.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec.get("seed") == args.seed and rec["i"] < args.queries:
                    records.append(rec)
                    done.add(rec["i"])
        print(f"resuming: {len(done)} queries already in {log}", file=sys.stderr)
    logf = open(log, "a") if log and args.only is None else None
    t0 = time.perf_counter()
    prior = sum(r["ms"] for r in records) / 1000.0
    todo = [args.only] if args.only is not None else [i for i in range(args.queries) if i not in done]
    try:
        for n, i in enumerate(todo, 1):
            rng = query_rng(args.seed, i)
            kind = kinds[rng.randrange(len(kinds))]
            draws = Draws(rng)
            gen = QueryGen(schemas[kind], draws)
            sql = gen.query()
            stress = args.stress_every > 0 and i % args.stress_every == args.stress_every - 1
            state = rng.getstate()
            out = check_query(sql, cons[kind], catalogs[kind], rng, args.random_plans, args.timeout,
                              arms=not args.no_arms, stress=stress)
            rec = {"seed": args.seed, "i": i, "kind": kind, **record(out), "features": dict(gen.features), "sql": sql}
            under = out.stress and not out.stress_fallback
            if out.status in ("wrong", "crash") and args.shrink_s > 0:
                small, detail = shrink(schemas[kind], draws.values, cons[kind], catalogs[kind], out.status,
                                       args.timeout, args.shrink_s, stress=under, rng_state=state)
                rec["shrunk_sql"], rec["shrunk_detail"] = small, detail
            for f in out.arm_failures:
                if args.shrink_s > 0 and not f["rules"][0].startswith("rewrite"):  # shrinking replays rules only
                    f["shrunk_sql"], f["shrunk_detail"] = shrink(
                        schemas[kind], draws.values, cons[kind], catalogs[kind], f["status"], args.timeout,
                        args.shrink_s, rules=tuple(f["rules"]), stress=under)
            records.append(rec)
            if args.only is not None:
                print(sql)
                print(json.dumps({k: v for k, v in rec.items() if k != "sql"}, indent=1, default=str))
            if logf:
                logf.write(json.dumps(rec, default=str) + "\n")
                logf.flush()
            if out.status in ("wrong", "crash"):
                print(f"[{i}] {out.status.upper()} ({kind}): {sql}\n  {out.detail}", file=sys.stderr)
                if rec.get("shrunk_sql"):
                    print(f"[{i}] shrunk: {rec['shrunk_sql']}\n  {rec['shrunk_detail']}", file=sys.stderr)
            for f in out.arm_failures:
                print(f"[{i}] ARM {f['status'].upper()} ({kind}, {','.join(f['rules'])} off): {sql}\n  {f['detail']}"
                      + (f"\n[{i}] shrunk: {f['shrunk_sql']}\n  {f['shrunk_detail']}" if f.get("shrunk_sql") else ""),
                      file=sys.stderr)
            if n % args.progress == 0 or n == len(todo):
                st = Counter(r["status"] for r in records)
                av = Counter(a[1] for r in records for a in r.get("arms", []))
                el = time.perf_counter() - t0
                print(f"{len(records)}/{args.queries} queries, {el:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items()))
                      + "; arms " + ", ".join(f"{k} {v}" for k, v in sorted(av.items())), file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: rerun with the same --log to resume", file=sys.stderr)
    finally:
        if logf:
            logf.close()
    summary = summarize(records, prior + time.perf_counter() - t0)
    summary.update({"seed": args.seed, "kinds": kinds, "timeout_s": args.timeout, "threads": args.threads,
                    "stress_every": args.stress_every, "duckdb": duckdb.__version__})
    text = json.dumps(summary, indent=1, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    short = {k: v for k, v in summary.items() if k not in ("failures", "features", "arm_failures")}
    print(json.dumps(short, indent=1, default=str))
    bad = summary["wrong"] + summary["crashes"] + summary["arms"]["wrong"] + summary["arms"]["crashes"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
