"""Fuzzed correctness of forced plans: random SQL over the TPC-H / TPC-DS schemas.

Usage: python benchmarks/fuzz_forced_plans.py [--queries 10000] [--seed 1] [--json OUT]
       [--data DIR] [--kinds tpch,tpcds] [--log FILE.jsonl] [--timeout 10] [--threads 1]
       [--random-plans 2] [--shrink-s 120] [--only I]

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
function or VALUES. Every query is run natively, then through lqo: ``prepare`` (parse,
join graph, EXPLAIN, native trees), then DuckDB's native tree rendered plus random and
exhaustively enumerated trees, each rendered and executed under ``forced_settings``. A
forced result must have the native result's fingerprint, or lqo must refuse the query
with a reason (``PreparedQuery.reason`` or a typed ``LqoError``). Anything else is a
crash. Results are deterministic: ``LIMIT`` always comes with an ORDER BY over every
output column.

Outcomes per query: ``ok`` (forced, every plan equal to native), ``refused`` (with the
reason), ``wrong`` (a forced plan returned another result), ``crash`` (an exception
other than a typed refusal, a forced SQL DuckDB rejects), ``invalid`` (the generator
wrote SQL DuckDB itself rejects: a generator bug, not lqo's), ``slow`` (native over the
timeout). Forced runs over the timeout (or the memory / spill limits) are counted, not
judged. A wrong result or crash is shrunk (``--shrink-s`` seconds): the generator's own
draws are set to zero or halved one by one while the failure stays, which drops
optional constructs and relations; the shrunk SQL goes to the log and the summary.

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
import json
import os
import random
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from lqo.engine.db import connect_read_only
from lqo.engine.harness import Harness
from lqo.errors import LqoError
from lqo.sql.catalog import Catalog
from lqo.trees.enumerate import exhaustive_trees
from lqo.trees.query import prepare

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


@dataclass
class Schema:
    kind: str
    columns: dict[str, dict[str, str]]  # table -> column -> type
    rows: dict[str, int]
    samples: dict[str, dict[str, list]]  # table -> column -> sorted quantile values
    nulls: dict[str, set[str]]  # table -> columns holding NULLs
    links: dict[str, list[Link]]
    ndv: dict[tuple[str, tuple[str, ...]], int]

    def key_columns(self, table: str) -> set[str]:
        return {c for link in self.links.get(table, []) for c in link.cols}


def load_schema(con: duckdb.DuckDBPyConnection, kind: str) -> Schema:
    """Columns, sizes, value quantiles and key distinct counts (one scan per table)."""
    catalog = Catalog.from_connection(con)
    columns = {t: dict(cols) for t, cols in catalog.tables.items()}
    links: dict[str, list[Link]] = {}
    for a, acols, b, bcols in KEYS[kind]:
        ac, bc = tuple(acols.split(",")), tuple(bcols.split(","))
        links.setdefault(a, []).append(Link(ac, b, bc))
        links.setdefault(b, []).append(Link(bc, a, ac))
    rows, samples, nulls, ndv = {}, {}, {}, {}
    qs = "[0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]"
    for table, cols in sorted(columns.items()):
        names = list(cols)
        parts = ["count(*)"] + [f"quantile_disc({c}, {qs})" for c in names] + [f"count({c})" for c in names]
        keysets = sorted({link.cols for link in links.get(table, [])})
        parts += [f"count(DISTINCT ({', '.join(k)}))" if len(k) > 1 else f"count(DISTINCT {k[0]})" for k in keysets]
        res = con.execute(f"SELECT {', '.join(parts)} FROM {table}").fetchone()
        rows[table] = res[0]
        samples[table] = {c: [v for v in (res[1 + i] or []) if v is not None] for i, c in enumerate(names)}
        nulls[table] = {c for i, c in enumerate(names) if res[1 + len(names) + i] < res[0]}
        for j, k in enumerate(keysets):
            ndv[(table, k)] = max(1, res[1 + 2 * len(names) + j])
    return Schema(kind, columns, rows, samples, nulls, links, ndv)


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


@dataclass
class Block:
    srcs: list[Src] = field(default_factory=list)
    links: dict[int, list[str]] = field(default_factory=dict)  # src index -> key predicates to earlier srcs
    filters: dict[int, list[str]] = field(default_factory=dict)
    residuals: list[tuple[set[int], str]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)  # subquery predicates etc.
    est: float = 1.0
    special: str | None = None  # join type of the last relation (outer, semi, anti)


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

    def sample(self, table: str | None, c: str) -> list:
        if table is None:
            return []
        return self.s.samples.get(table, {}).get(c, [])

    # ---------------------------------------------------------------- base relations
    def table_src(self, table: str) -> Src:
        alias = self.new_alias(table)
        qa = self.qalias(alias)
        if alias == table:
            text = table if not self.chance(0.2) else f"main.{table}"
        else:
            text = f"{table} {qa}" if self.chance(0.3) else f"{table} AS {qa}"
        cols = dict(self.s.columns[table])
        return self.register(Src(alias, text, cols, {c: (table, c) for c in cols}, float(self.s.rows[table]), table))

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

    def walk(self, n: int, block: Block | None = None, start: str | None = None, bound: float = MAX_EST_ROWS) -> Block:
        """A block of up to ``n`` base tables, each joined on a key to one before it."""
        block = block or Block()
        if start is None:
            facts = [t for t in FACTS[self.s.kind] if t in self.s.columns]
            start = self.pick(facts) if self.chance(0.7) or not self.s.links else self.pick(sorted(self.s.links))
        if not block.srcs:
            first = self.table_src(start)
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
            new = self.table_src(link.other)
            block.srcs.append(new)
            block.links[len(block.srcs) - 1] = [self.key_pred(block.srcs[i], mine, new, link.other_cols)]
            block.est = est
        return block

    # ---------------------------------------------------------------- filters
    def filter_on(self, src: Src, c: str) -> str:
        dtype = src.cols[c]
        fam = family(dtype)
        ref = self.col(src, c)
        table, col = src.origin.get(c, (None, None))
        vals = self.sample(table, col) if table else []
        nullable = table is None or col in self.s.nulls.get(table, set())
        if not vals and fam == "num" and self.chance(0.7):
            self.feat("filter_num")
            return f"{ref} {self.pick(['>', '<=', '<>'])} {self.pick([0, 1, 2, 10, 100, 1000])}"
        if (nullable and self.chance(0.12)) or not vals:
            self.feat("filter_null")
            return f"{ref} IS {'NOT ' if self.chance(0.6) else ''}NULL"
        v = lambda: self.pick(vals)  # noqa: E731
        lit = lambda x: self.literal(x, dtype)  # noqa: E731
        if fam == "num":
            self.feat("filter_num")
            form = self.upto(0, 5)
            if form == 0:
                return f"{ref} {self.pick(['<', '<=', '>', '>='])} {lit(v())}"
            if form == 1:
                a, b = sorted([v(), v()])
                return f"{ref} BETWEEN {lit(a)} AND {lit(b)}"
            if form == 2:
                return f"{ref} {'NOT ' if self.chance(0.2) else ''}IN ({', '.join(lit(v()) for _ in range(self.upto(1, 4)))})"
            if form == 3:
                return f"{ref} <> {lit(v())}"
            if form == 4:
                return f"({ref} < {lit(v())} OR {ref} > {lit(v())})"
            return f"{ref} = {lit(v())}"
        if fam == "date":
            self.feat("filter_date")
            form = self.upto(0, 3)
            a, b = sorted([v(), v()])
            if form == 0:
                return f"{ref} BETWEEN {lit(a)} AND {lit(b)}"
            if form == 1:
                return f"{ref} >= {lit(a)} AND {ref} < {lit(a)} + INTERVAL {self.upto(1, 400)} DAY"
            if form == 2:
                return f"extract(year FROM {ref}) = {getattr(a, 'year', 1998)}"
            return f"{ref} {self.pick(['<', '>='])} {lit(a)}"
        if fam == "str":
            self.feat("filter_str")
            form = self.upto(0, 4)
            s = str(v())
            if form == 0:
                return f"{ref} = {lit(s)}"
            if form == 1:
                return f"{ref} {'NOT ' if self.chance(0.2) else ''}IN ({', '.join(lit(str(v())) for _ in range(self.upto(1, 4)))})"
            clean = re.sub(r"[%_'\\]", "", s)
            if form == 2:
                self.feat("filter_like")
                k = self.upto(1, 3)
                return f"{ref} {'NOT ' if self.chance(0.2) else ''}LIKE '{clean[:k]}%'"
            if form == 3:
                self.feat("filter_like")
                mid = clean[1:3] if len(clean) > 2 else clean
                return f"{ref} {self.pick(['LIKE', 'ILIKE'])} '%{mid}%'"
            return f"{ref} {self.pick(['<', '>='])} {lit(s)}"
        return f"{ref} IS NOT NULL"

    def add_filters(self, block: Block, p: float = 0.45) -> None:
        for i, src in enumerate(block.srcs):
            if not self.chance(p):
                continue
            for _ in range(1 + int(self.chance(0.3))):
                keys = self.s.key_columns(src.table) if src.table else set()
                plain = [c for c in src.cols if c not in keys] or list(src.cols)
                c = self.pick(plain if not self.chance(0.15) else list(src.cols))
                f = self.filter_on(src, c)
                if self.chance(0.12):
                    self.feat("filter_or")
                    f = f"({f} OR {self.filter_on(src, self.pick(list(src.cols)))})"
                block.filters.setdefault(i, []).append(f)

    def add_residuals(self, block: Block) -> None:
        visible = [i for i, s in enumerate(block.srcs) if not s.hidden]
        if len(visible) < 2 or not self.chance(0.25):
            return
        for _ in range(1 + int(self.chance(0.3))):
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
                fa = self.filter_on(a, self.pick(list(a.cols)))
                fb = self.filter_on(b, self.pick(list(b.cols)))
                block.residuals.append(({i, j}, f"({fa} OR {fb})"))
                continue
            fam = self.pick(shared)
            x, y = self.pick(fams[fam][0]), self.pick(fams[fam][1])
            ra, rb = self.col(a, x), self.col(b, y)
            self.feat("residual_cmp")
            if form == 1 or fam == "date":
                block.residuals.append(({i, j}, f"{ra} {self.pick(['<', '<=', '>', '<>'])} {rb}"))
            elif form == 2:
                block.residuals.append(({i, j}, f"{ra} + {rb} > {self.pick([0, 10, 100, 1000])}"))
            else:
                block.residuals.append(({i, j}, f"(coalesce({ra}, 0) <> coalesce({rb}, -1) OR {ra} IS NULL)"))

    # ---------------------------------------------------------------- attachments
    def sub_select(self, table: str, key: str, depth: int, lateral: str | None = None,
                   ) -> tuple[str, dict[str, str], dict[str, tuple[str, str]], float, float]:
        """A derived query over ``table`` (maybe joined further) exposing ``key`` and
        some values; returns (sql, visible columns, their origins, estimated rows,
        estimated distinct keys). ``lateral``: a column of a sibling FROM item the key
        must equal (an implicit LATERAL reference)."""
        inner = self.walk(1 + (self.upto(0, 2) if depth < 2 else 0), start=table, bound=MAX_EST_ROWS)
        if depth < 2 and len(inner.srcs) < 4 and self.chance(0.15):
            self.feat("derived_nested")
            self.attach(inner, depth + 1)
        self.add_filters(inner, 0.5)
        if depth < 2 and self.chance(0.15):
            self.feat("derived_with_subquery")
            self.where_subquery(inner, depth + 1)
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
            tail = f" GROUP BY {kref}" + (" HAVING count(*) > 1" if self.chance(0.2) else "")
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
            other = self.walk(1, start=table)
            self.add_filters(other, 0.8)
            op = self.pick(["UNION", "UNION ALL", "INTERSECT", "EXCEPT"])
            ofrm, orest = self.from_clause(other)
            osql = f"SELECT {self.col(other.srcs[0], key)} FROM {ofrm}{self.where_clause(other, [], orest)}"
            frm, rest = self.from_clause(inner)
            body = f"SELECT {kout} AS {key} FROM {frm}{self.where_clause(inner, [], rest)} {op} {osql}"
            size = inner.est + other.est
            return body, {key: ktype}, {key: (table, key)}, size, min(size, self.ndv(head, (key,)))
        else:
            self.feat("derived_rows")
            i, c = self.pick(nums)
            sel = f"{kout} AS {key}, {self.col(inner.srcs[i], c)} AS val"
            tail, cols, size = "", {key: ktype, "val": inner.srcs[i].cols[c]}, inner.est
            if self.chance(0.2):
                self.feat("derived_limit")
                tail = f" ORDER BY 1, 2 LIMIT {self.upto(5, 500)}"
        frm, rest = self.from_clause(inner)
        sql = f"SELECT {sel} FROM {frm}{self.where_clause(inner, [], rest)}{tail}"
        origin = {key: (table, key)}
        if sel == "*":
            origin = {c: (table, c) for c in cols}
        return sql, cols, origin, size, min(size, self.ndv(head, (key,)))

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
        sql, cols, origin, size, key_ndv = self.sub_select(link.other, key, depth + 1, lateral)
        est = block.est * size / max(self.ndv(block.srcs[i], mine), key_ndv, 1.0)
        if est > MAX_EST_ROWS:
            self.features = saved  # too large a join: not attached
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
        block.srcs.append(new)
        block.links[len(block.srcs) - 1] = [self.key_pred(block.srcs[i], mine, new, (kcol,))]
        if kind == "cte" and self.chance(0.2) and len(block.srcs) < 8:
            self.feat("cte_twice")
            alias2 = self.new_alias(None)
            again = self.register(Src(alias2, f"{self.ctes[-1].split(' ')[0]} AS {self.qalias(alias2)}", dict(renamed), dict(origin), new.size))
            block.srcs.append(again)
            block.links[len(block.srcs) - 1] = [f"{self.col(new, kcol)} = {self.col(again, kcol)}"]

    # ---------------------------------------------------------------- subqueries in WHERE
    def where_subquery(self, block: Block, depth: int) -> None:
        visible = [(i, s) for i, s in enumerate(block.srcs) if not s.hidden and s.table]
        if not visible:
            return
        i, src = self.pick(visible)
        links = [(m, link) for m, link in self.links_of(src) if len(link.cols) == 1]
        kind = self.pick(["in", "exists", "scalar", "scalar_corr", "all"])
        if kind in ("in", "exists") and links:
            (mine,), link = self.pick(links)
            sub = self.walk(1 + (self.upto(0, 2) if depth < 2 else 0), start=link.other)
            self.add_filters(sub, 0.7)
            inner = self.col(sub.srcs[0], link.other_cols[0])
            frm, rest = self.from_clause(sub)
            if kind == "in":
                neg = self.chance(0.3)
                self.feat("subquery_not_in" if neg else "subquery_in")
                pred = f"{self.col(src, mine)} {'NOT ' if neg else ''}IN (SELECT {inner} FROM {frm}{self.where_clause(sub, [], rest)})"
            else:
                neg = self.chance(0.3)
                self.feat("subquery_not_exists" if neg else "subquery_exists")
                corr = f"{inner} = {self.col(src, mine)}"
                pred = f"{'NOT ' if neg else ''}EXISTS (SELECT 1 FROM {frm}{self.where_clause(sub, [corr], rest)})"
            if self.chance(0.1):
                self.feat("subquery_or")
                pred = f"({pred} OR {self.filter_on(src, self.pick(list(src.cols)))})"
            block.where.append(pred)
            return
        nums = [c for c, t in src.cols.items() if family(t) == "num" and c not in self.s.key_columns(src.table)]
        if not nums:
            return
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
            block.where.append(f"{self.col(src, c)} {self.pick(['<', '>'])} (SELECT {self.pick(['0.5 * avg', 'avg', 'max', 'min'])}({self.col(x, c)}) FROM {frm}{self.where_clause(sub, corr, rest)})")
        elif kind == "all":
            self.feat("subquery_all")
            block.where.append(f"{self.col(src, c)} {self.pick(['>=', '<'])} {self.pick(['ALL', 'ANY'])} (SELECT {self.col(x, c)} FROM {frm}{self.where_clause(sub, [], rest)})")
        else:
            self.feat("subquery_scalar")
            block.where.append(f"{self.col(src, c)} {self.pick(['<', '>='])} (SELECT avg({self.col(x, c)}) FROM {frm}{self.where_clause(sub, [], rest)})")

    def select_subquery(self, outer: list[Src]) -> str | None:
        """A correlated scalar subquery for the SELECT list, its own join block."""
        options = [(src, mine, link) for src in outer for mine, link in self.links_of(src) if len(link.cols) == 1]
        if not options:
            return None
        src, (mine,), link = self.pick(options)
        sub = self.walk(1 + self.upto(0, 2), start=link.other)
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
                tail += f" HAVING count(*) > {self.pick([1, 2, 5])}"
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
    def main_block(self, depth: int = 0, n_max: int = 8) -> Block:
        n = 1 + self.upto(1, 3) + (self.upto(0, 3) if self.chance(0.3) else 0)
        if self.chance(0.06):
            n = 1  # a single table: the joins are in its subqueries
        block = self.walk(min(n, n_max))
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
            branches = []
            for _ in range(2 + int(self.chance(0.2))):
                b = self.main_block(n_max=4)
                frm, rest = self.from_clause(b)
                keys = [self.col(s, c) for s in b.srcs if s.table and not s.hidden for c in self.s.key_columns(s.table)]
                k = self.pick(keys) if keys else "1"
                branches.append(f"SELECT {k} AS k, count(*) AS n FROM {frm}{self.where_clause(b, [], rest)} GROUP BY 1")
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

@dataclass
class Outcome:
    status: str  # ok | refused | wrong | crash | invalid | slow
    reason: str | None = None
    plans: int = 0
    forced_timeouts: int = 0
    detail: str | None = None
    ms: float = 0.0


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


def check_query(sql: str, con: duckdb.DuckDBPyConnection, catalog: Catalog, rng: random.Random,
                n_random: int = 2, timeout_s: float = 10.0) -> Outcome:
    """Run ``sql`` natively and through lqo's forced plans; judge the outcome."""
    t0 = time.perf_counter()
    h = Harness(con, timeout_s=timeout_s)
    out = _check(sql, con, catalog, rng, n_random, h)
    out.ms = (time.perf_counter() - t0) * 1000.0
    return out


def _check(sql, con, catalog, rng, n_random, h) -> Outcome:
    native = h.run(sql, profile=False)
    if native.timed_out or (native.error and native.error.startswith(RESOURCE_ERRORS)):
        return Outcome("slow")
    if native.error:
        return Outcome("invalid", detail=native.error.splitlines()[0][:300])
    try:
        pq = prepare(sql, con, catalog)
    except LqoError as err:
        return Outcome("refused", reason=f"{type(err).__name__}: {normalize_reason(str(err))[:80]}")
    except Exception:  # noqa: BLE001 - anything else is the crash we look for
        return Outcome("crash", detail="prepare: " + traceback.format_exc(limit=6)[-1500:])
    if not pq.forceable:
        if not pq.reason:
            return Outcome("crash", detail="not forceable without a reason")
        return Outcome("refused", reason=normalize_reason(pq.reason))
    out = Outcome("ok")
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
        for plan in plans:
            step = f"render {plan}"
            text = pq.render(plan)
            r = h.run(text, forced=True, profile=False)
            out.plans += 1
            if r.timed_out or (r.error and r.error.startswith(RESOURCE_ERRORS)):
                out.forced_timeouts += 1  # a catastrophic tree may be slow, never wrong
                continue
            if r.error:
                return Outcome("crash", plans=out.plans, detail=f"forced SQL fails: {r.error.splitlines()[0][:300]}\n"
                               f"plan {plan}\n{text}")
            if r.fingerprint != native.fingerprint:
                return Outcome("wrong", plans=out.plans, detail=f"plan {plan}: {r.rows} rows vs native "
                               f"{native.rows}\n{text}")
    except Exception:  # noqa: BLE001
        return Outcome("crash", plans=out.plans, detail=f"{step}: " + traceback.format_exc(limit=6)[-1500:])
    return out


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
           budget_s: float = 120.0) -> tuple[str, str | None]:
    """A smaller query failing the same way: draws set to 0 (no optional construct, the
    first choice) or halved, one at a time, kept while the failure stays (Hypothesis-
    style, on the generator's own draws). Returns (SQL, its failure detail)."""
    def run(vals: list[int]) -> tuple[str, Outcome]:
        sql = QueryGen(schema, Draws(values=vals)).query()
        return sql, check_query(sql, con, catalog, random.Random(0), 4, timeout_s)

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
    con.execute("SET memory_limit = '2GB'")
    con.execute("SET max_temp_directory_size = '1GB'")
    return con


def query_rng(seed: int, i: int) -> random.Random:
    return random.Random(f"fuzz:{seed}:{i}")


def summarize(records: list[dict], elapsed_s: float) -> dict:
    status = Counter(r["status"] for r in records)
    refusals = Counter(r["reason"] for r in records if r["status"] == "refused")
    features = Counter()
    for r in records:
        features.update(r.get("features", {}).keys())
    return {
        "queries": len(records),
        "forced_ok": status["ok"],
        "plans_run": sum(r["plans"] for r in records),
        "forced_timeouts": sum(r.get("forced_timeouts", 0) for r in records),
        "wrong": status["wrong"],
        "crashes": status["crash"],
        "invalid_generated": status["invalid"],
        "slow_native": status["slow"],
        "refused": status["refused"],
        "refusals_by_reason": dict(refusals.most_common()),
        "by_kind": {k: dict(Counter(r["status"] for r in records if r["kind"] == k)) for k in sorted({r["kind"] for r in records})},
        "features": dict(sorted(features.items())),
        "elapsed_s": round(elapsed_s, 1),
        "query_ms_median": sorted(r["ms"] for r in records)[len(records) // 2] if records else None,
        "failures": [{k: r.get(k) for k in ("i", "kind", "status", "sql", "detail", "shrunk_sql", "shrunk_detail")}
                     for r in records if r["status"] in ("wrong", "crash", "invalid")][:50],
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
            out = check_query(sql, cons[kind], catalogs[kind], rng, args.random_plans, args.timeout)
            rec = {"seed": args.seed, "i": i, "kind": kind, "status": out.status, "reason": out.reason,
                   "plans": out.plans, "forced_timeouts": out.forced_timeouts, "ms": round(out.ms, 1),
                   "features": dict(gen.features), "sql": sql, "detail": out.detail}
            if out.status in ("wrong", "crash") and args.shrink_s > 0:
                small, detail = shrink(schemas[kind], draws.values, cons[kind], catalogs[kind], out.status,
                                       args.timeout, args.shrink_s)
                rec["shrunk_sql"], rec["shrunk_detail"] = small, detail
            records.append(rec)
            if args.only is not None:
                print(sql)
                print(json.dumps({k: v for k, v in rec.items() if k != "sql"}, indent=1))
            if logf:
                logf.write(json.dumps(rec, default=str) + "\n")
                logf.flush()
            if out.status in ("wrong", "crash"):
                print(f"[{i}] {out.status.upper()} ({kind}): {sql}\n  {out.detail}", file=sys.stderr)
                if rec.get("shrunk_sql"):
                    print(f"[{i}] shrunk: {rec['shrunk_sql']}\n  {rec['shrunk_detail']}", file=sys.stderr)
            if n % args.progress == 0 or n == len(todo):
                st = Counter(r["status"] for r in records)
                el = time.perf_counter() - t0
                print(f"{len(records)}/{args.queries} queries, {el:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(st.items())),
                      file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: rerun with the same --log to resume", file=sys.stderr)
    finally:
        if logf:
            logf.close()
    summary = summarize(records, prior + time.perf_counter() - t0)
    summary.update({"seed": args.seed, "kinds": kinds, "timeout_s": args.timeout, "threads": args.threads})
    text = json.dumps(summary, indent=1, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    short = {k: v for k, v in summary.items() if k not in ("failures", "features")}
    print(json.dumps(short, indent=1, default=str))
    return 1 if summary["wrong"] or summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
