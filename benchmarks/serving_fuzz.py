"""Serving fuzz: recurring-query templates with real-log literal syntax, served from a
plan book through the public path, checked against DuckDB's native result.

Usage: python benchmarks/serving_fuzz.py [--instances 10000] [--seed 1] [--json OUT]
       [--data DIR] [--families a,b] [--kinds tpch,tpcds] [--timeout 20] [--shrink-s 20]

Each *family* is a query template over TPC-H (25 families) or TPC-DS (2: q90's shared
join, three IN lists) at sf 0.01 (``DIR/tpch/tpch.duckdb``, ``DIR/tpcds/tpcds.duckdb``,
``--data``, default ``data/serving-fuzz``, generated with ``lqo workload create`` when
absent) joining 2-5 tables on real keys,
written with the literal syntax real logs have: IN lists of 1 to 1,000 items (an
instance's lists have other lengths than the tuned instance's), mixed-type lists,
negative / scientific / underscore numbers, decimals, strings holding quotes, ``--``,
``/*``, keywords and unicode, dollar-quoted and E'' strings, quoted identifiers holding
the same, comments holding literals anywhere (also between a sign and its number, and
at the end of one-line queries), ``INTERVAL 3 DAY`` and ``INTERVAL '3' DAY``, casts,
dates, LIMIT / OFFSET, ORDER BY / GROUP BY positions, NULL, booleans; every instance has
its own whitespace, keyword case and comments (one-line families stay on one line).
Literal values are drawn from the data, so results are mostly non-empty.

Some families also come as *adversarial variants* (``v`` > 0): texts that differ from
the tuned one in something that is not a literal (an operator, a join key, an extra
table, the alias text after a ``--`` inside a quoted identifier, a column between
``"a/*"`` and ``"*/b"``). They must not be served the tuned text's plan: either their
template key differs (run as written) or the served plan gives their native result.

Per family and *mode*, a plan book with one entry is adopted from ONE instance (the
tuned instance) and written to a temporary directory holding only ``book.json``:
- ``tree``: DuckDB's native tree, forced (``prepare(..).native_plan``);
- ``random``: a random tree (``PreparedQuery.random_plans``);
- ``shared``: (families with two blocks joining the same tables with the same filters)
  a tree whose rendering computes that join once as a materialized CTE;
- ``arm``: the text run with one optimizer rule disabled.
Trees carry ``slots=SlotRendering.build(tuned, catalog, plan)`` (``None`` where build
raises ``PlanError``; recorded). The book is loaded with ``lqo.Optimizer.load(dir)`` (no
model) and every instance of the family is served by ``opt.optimize(sql, con)`` and
``res.execute(con)`` on one read-only connection; the rows are compared with
``con.execute(sql).fetchall()`` (exact order where the query has a total ORDER BY, else
as a multiset; floats to 10 significant digits).

Outcomes per served instance: ``served_tree`` (source book, forced; ``served_shared``
when the served text holds a shared CTE), ``served_arm`` (source book, rules disabled),
``as_written`` (with its ``res.fallback`` reason), and ``wrong`` (rows differ from
native) / ``crash`` (an exception the native text does not raise) / ``timeout`` /
``invalid`` (the native text itself fails: a generator bug). ``literal_mismatch`` is a
diagnostic, not a failure: a served tree whose literal values (as a set) differ from
the instance's (only where the book's slot rendering was filled in). The first call of
each optimizer on a connection is recorded apart (``first_call``). ``schema_checks``
probes that a book made for another schema is refused (``SchemaMismatchError``): loaded
with the connection, on a connection's first call, and on a new connection (to another
schema) that got the id of a connection the optimizer checked and that was closed.

``--instances N`` counts served instances: each family draws ``ceil(N / M)`` instances
(M: the number of (family, mode) pairs) and serves each in every mode. The summary
(``--json``) has per family and mode how the entry was built (plan, slot rendering or
the error that refused it), the counts, the first call, up to three failures with the
tuned SQL, the failing instance, the served SQL and native / served row counts; and
``overall`` sums. The first failure of each (family, mode) is shrunk (``--shrink-s``):
plain style (no comments, single spaces), then lists cut to half / two items, while it
still fails. To fuzz another lqo (a commit before a fix), put an exported copy first on
the path: ``git archive REV lqo | tar -x -C /tmp/rev && echo REV > /tmp/rev/COMMIT``,
then ``PYTHONPATH=/tmp/rev python benchmarks/serving_fuzz.py ...`` (``lqo`` in the
summary says which ran). Deterministic per seed: family ``f``'s instance ``j`` is drawn from
``random.Random(f"{seed}:{f}:{j}")``. ``tests/test_serving_fuzz.py`` runs a fixed-seed
sample.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable

import duckdb

import lqo
from lqo.book.book import BOOK_FILE, Candidate, PlanBook
from lqo.book.slots import SlotRendering
from lqo.book.template import template_key
from lqo.engine.db import connect_read_only, connect_writable
from lqo.errors import LqoError, SchemaMismatchError
from lqo.sql.catalog import Catalog
from lqo.trees.enumerate import exhaustive_trees
from lqo.trees.query import prepare
from lqo.trees.shared import SHARED_PREFIX, shared_joins

ARMS = ("join_filter_pushdown", "build_side_probe_side", "compressed_materialization")
MAX_FAILURES_PER_MODE = 3

# --------------------------------------------------------------------------- data pools


@dataclass
class Pools:
    """Values drawn from the database, so that filters keep rows."""

    orderkeys: list[int]
    custkeys: list[int]
    partkeys: list[int]
    nations: list[str]
    regions: list[str]
    segments: list[str]
    priorities: list[str]
    custnames: list[str]
    types: list[str]
    prices: list[Decimal]  # o_totalprice quantiles
    extprices: list[Decimal]  # l_extendedprice quantiles
    dmin: date
    dmax: date

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> "Pools":
        col = lambda q: [r[0] for r in con.execute(q).fetchall()]  # noqa: E731
        qs = "[0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98]"
        dmin, dmax = con.execute("SELECT min(o_orderdate), max(o_orderdate) FROM orders").fetchone()
        return cls(
            orderkeys=col("SELECT o_orderkey FROM orders ORDER BY 1"),
            custkeys=col("SELECT DISTINCT o_custkey FROM orders ORDER BY 1"),
            partkeys=col("SELECT p_partkey FROM part ORDER BY 1"),
            nations=col("SELECT n_name FROM nation ORDER BY 1"),
            regions=col("SELECT r_name FROM region ORDER BY 1"),
            segments=col("SELECT DISTINCT c_mktsegment FROM customer ORDER BY 1"),
            priorities=col("SELECT DISTINCT o_orderpriority FROM orders ORDER BY 1"),
            custnames=col("SELECT c_name FROM customer ORDER BY 1"),
            types=col("SELECT DISTINCT p_type FROM part ORDER BY 1"),
            prices=list(con.execute(f"SELECT quantile_disc(o_totalprice, {qs}) FROM orders").fetchone()[0]),
            extprices=list(con.execute(f"SELECT quantile_disc(l_extendedprice, {qs}) FROM lineitem").fetchone()[0]),
            dmin=dmin, dmax=dmax,
        )

    def day(self, r: random.Random, lo: float = 0.0, hi: float = 1.0) -> date:
        span = (self.dmax - self.dmin).days
        return self.dmin + timedelta(days=int(span * (lo + (hi - lo) * r.random())))


@dataclass
class DsPools:
    """TPC-DS values (sf 0.01)."""

    categories: list[str]
    years: list[int]
    deps: list[int]
    char_counts: list[int]
    hours: list[int]

    @classmethod
    def load(cls, con: duckdb.DuckDBPyConnection) -> "DsPools":
        col = lambda q: [r[0] for r in con.execute(q).fetchall()]  # noqa: E731
        return cls(
            categories=col("SELECT DISTINCT i_category FROM item WHERE i_category IS NOT NULL ORDER BY 1"),
            years=col("SELECT DISTINCT d_year FROM store_sales, date_dim WHERE ss_sold_date_sk = d_date_sk ORDER BY 1"),
            deps=col("SELECT DISTINCT hd_dep_count FROM household_demographics ORDER BY 1"),
            char_counts=col("SELECT DISTINCT wp_char_count FROM web_page WHERE wp_char_count IS NOT NULL ORDER BY 1"),
            hours=col("SELECT DISTINCT t_hour FROM time_dim ORDER BY 1"),
        )


POOL_LOADERS = {"tpch": Pools.load, "tpcds": DsPools.load}


# --------------------------------------------------------------------------- literal forms

NASTY_STRINGS = [  # ASCII: non-ASCII text has its own family (``unicode``)
    "it's", "a -- b", "/* x */", "x /* y", " FROM ", "select", "SELECT * FROM orders WHERE 1 = 1 --",
    "tab\there", "'; DROP TABLE t; --", "a''b", "--", "/*", "*/",
    "$$", "7531000097", "lqoslot0000x", "line\nbreak", "%_\\", "", " ", "NULL", "1, 2, 3",
]


def sq(s: str) -> str:
    """A standard SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def string_lit(r: random.Random, s: str, forms: tuple[str, ...] = ("std", "std", "std", "dollar", "e")) -> str:
    """``s`` as a string literal in one of the forms real logs use."""
    form = r.choice(forms)
    if "--" in s or "/*" in s:  # other forms holding comment markers: the ``dollar_dashdash_oneline`` family
        form = "std"
    if form == "dollar" and "$$" not in s:
        return f"$${s}$$"
    if form == "e" and "\\" not in s and "\n" not in s and "\t" not in s:
        return "E" + sq(s) if r.random() < 0.5 else "e" + sq(s)
    return sq(s)


def int_lit(r: random.Random, n: int, mixed: bool = False) -> str:
    """An integer literal; ``mixed``: sometimes as a string, decimal or scientific."""
    forms = ["plain"] * 4
    if mixed:
        forms += ["str", "dec", "sci"]
    if abs(n) >= 1000:
        forms.append("under")
    form = r.choice(forms)
    if form == "str":
        return f"'{n}'"
    if form == "dec":
        return f"{n}.0"
    if form == "sci" and n != 0:
        k = len(str(abs(n))) - 1
        mant = format(Decimal(n).scaleb(-k).normalize(), "f")
        return f"{mant}{r.choice('eE')}{k}"
    if form == "under":
        return f"{n:_}"
    return str(n)


def num_lit(r: random.Random, x: Decimal | float | int) -> str:
    """A decimal number in plain, scientific or short form (``.5``, ``5.``)."""
    x = Decimal(str(x))
    form = r.choice(["plain", "plain", "sci", "short"])
    if form == "sci" and x != 0:
        k = x.copy_abs().adjusted()
        mant = format(x.scaleb(-k).normalize(), "f")
        return f"{mant}{r.choice('eE')}{k}"
    if form == "short":
        s = format(x.normalize(), "f")
        if s.startswith("0.") and len(s) > 2:
            return s[1:]
        if s.startswith("-0.") and len(s) > 3:
            return "-" + s[2:]
        if "." not in s:
            return s + "."
        return s
    return format(x, "f")


def draw_len(r: random.Random, lo: int = 1, hi: int = 1000) -> int:
    """A list length in [lo, hi]: short lists most often, up to ``hi`` log-uniformly."""
    u = r.random()
    if u < 0.35:
        return r.randint(lo, min(hi, 5))
    if u < 0.75:
        return r.randint(lo, min(hi, 40))
    return max(lo, min(hi, int(math.exp(r.uniform(math.log(max(lo, 1)), math.log(hi))))))


def redistribute(r: random.Random, lengths: list[int], los: list[int], his: list[int]) -> list[int] | None:
    """Other list lengths with the same total (the same literal count as the tuned text)."""
    total = sum(lengths)
    for _ in range(20):
        out = [r.randint(lo, hi) for lo, hi in zip(los, his)]
        diff = total - sum(out)
        for i in r.sample(range(len(out)), len(out)):
            step = max(los[i] - out[i], min(his[i] - out[i], diff))
            out[i] += step
            diff -= step
        if diff == 0 and out != lengths:
            return out
    return None


def lst(items: list[str]) -> str:
    return "(" + ", ".join(items) + ")"


# --------------------------------------------------------------------------- style

_PROTECTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$\$.*?\$\$|--[^\n]*|/\*.*?\*/", re.S)
_KEYWORDS = re.compile(
    r"\b(SELECT|FROM|WHERE|AND|OR|IN|GROUP|BY|ORDER|LIMIT|OFFSET|AS|JOIN|ON|UNION|ALL|BETWEEN|LIKE|NOT|NULL|"
    r"IS|CASE|WHEN|THEN|ELSE|END|INTERVAL|DATE|DAY|MONTH|YEAR|CAST|DESC|ASC|DISTINCT|COUNT|SUM|MIN|MAX|TRUE|"
    r"FALSE|INT|INTEGER|BIGINT|VARCHAR|COALESCE)\b")
# Two-word keywords: no comment inside them (lqo's parser rejects ``ORDER /* c */ BY``).
_PAIRS = re.compile(r"\b(ORDER|GROUP|UNION|NOT|IS) (BY|ALL|IN|LIKE|NOT|NULL)\b", re.I)
COMMENTS = ["/* 'a' */", "/* x = 5 */", "/* IN (1, 2, 3) */", "/*+ hint */", "/* -- */", "/**/", "/* it's */"]
UNICODE_COMMENT = "/* für 5 € */"  # not in the tuned instance
LINE_COMMENTS = ["-- x = 5", "-- 'a'", "-- it's", "-- /* open", "-- IN (1, 2)"]


def restyle(sql: str, r: random.Random | None, oneline: bool, tuned: bool = False) -> str:
    """``sql`` with random whitespace, keyword case and comments between tokens (outside
    strings, quoted identifiers and comments); ``r=None`` keeps it as written."""
    if r is None:
        return sql
    case = r.choice(["upper", "lower", "title", "mixed", "upper"])
    ws = [" ", " ", " ", "  ", "\t"] + ([] if oneline else ["\n", "\n    ", " \n"])
    p_ws, p_comment = r.choice([0.0, 0.2, 0.6]), r.choice([0.0, 0.0, 0.03, 0.1])
    punct = r.random() < 0.5

    def word(m: re.Match) -> str:
        w = m.group(0)
        c = case if case != "mixed" else r.choice(["upper", "lower", "title"])
        return w.upper() if c == "upper" else w.lower() if c == "lower" else w.capitalize()

    def free(seg: str) -> str:
        seg = _PAIRS.sub(lambda m: m.group(1) + "\x02" + m.group(2), _KEYWORDS.sub(word, seg))
        out = []
        for ch in seg:
            if ch == "\x02":  # inside ORDER BY, GROUP BY, NOT IN, ...: whitespace, no comment
                out.append(r.choice(ws) if r.random() < p_ws else " ")
            elif ch == " ":
                if r.random() < p_comment:
                    if not oneline and r.random() < 0.4:
                        out.append(" " + r.choice(LINE_COMMENTS) + "\n")
                    else:
                        out.append(" " + r.choice(COMMENTS if tuned else COMMENTS + [UNICODE_COMMENT]) + " ")
                    continue
                out.append(r.choice(ws) if r.random() < p_ws else " ")
            elif ch in ",(" and punct and r.random() < 0.3:
                out.append(ch + " ")
            else:
                out.append(ch)
        return "".join(out)

    parts, pos = [], 0
    for m in _PROTECTED.finditer(sql):
        parts.append(free(sql[pos:m.start()]))
        parts.append(m.group(0))
        pos = m.end()
    parts.append(free(sql[pos:]))
    text = "".join(parts)
    u = r.random()
    if u < 0.08 and not tuned:
        text += ";"
    elif u < 0.14:
        text += " " + r.choice(LINE_COMMENTS) if oneline else "\n" + r.choice(LINE_COMMENTS)
    elif u < 0.2 and not oneline:
        text = r.choice(LINE_COMMENTS) + "\n" + text
    return text


# --------------------------------------------------------------------------- families


@dataclass
class Family:
    """A query template: ``draw`` picks an instance's literal values (a dict), ``render``
    writes the text for them and a skeleton variant ``v`` (0: the tuned one)."""

    name: str
    draw: Callable[[random.Random, Pools], dict]
    render: Callable[[dict, random.Random], str]
    ordered: bool = True  # a total ORDER BY: compare rows in order
    shared: bool = False  # two blocks join the same tables with the same filters
    oneline: bool = False
    variants: int = 1  # skeleton variants (adversarial pairs) besides v = 0
    adversarial_p: float = 0.3
    lists: tuple[str, ...] = ()  # params that are lists (shrunk by halving)
    note: str = ""
    kind: str = "tpch"  # the schema: tpch or tpcds


def _choice_list(r: random.Random, pool: list, n: int) -> list:
    return [r.choice(pool) for _ in range(n)] if n > len(pool) else r.sample(pool, n)


# 1. one numeric IN list of 1..1000 keys
def _d_in_list(r, P):
    return {"keys": _choice_list(r, P.orderkeys, draw_len(r, 1, 1000)), "tag": r.randint(1, 99)}


def _r_in_list(p, r):
    return (f"SELECT o_orderkey, o_orderdate, c_name, n_name, {p['tag']} AS tag FROM orders "
            f"JOIN customer ON o_custkey = c_custkey JOIN nation ON c_nationkey = n_nationkey "
            f"WHERE o_orderkey IN {lst([str(k) for k in p['keys']])} ORDER BY o_orderkey")


# 2. three IN lists; lengths vary, often redistributed with the tuned total
_L2 = (("names", 1, 25), ("segs", 1, 5), ("prios", 1, 5))


def _d_in_lists(r, P):
    lens = [draw_len(r, lo, hi) for _, lo, hi in _L2]
    return {"lens": lens, "seed": r.random()}


def _r_in_lists(p, r):
    q = random.Random(p["seed"])
    P = _POOLS[0]
    names = _choice_list(q, P.nations, p["lens"][0])
    segs = _choice_list(q, P.segments, p["lens"][1])
    prios = _choice_list(q, P.priorities, p["lens"][2])
    return (f"SELECT c_custkey, c_name, n_name, c_mktsegment, count(*) AS n_orders, sum(o_totalprice) AS total "
            f"FROM customer, nation, orders WHERE c_nationkey = n_nationkey AND o_custkey = c_custkey "
            f"AND n_name IN {lst([sq(x) for x in names])} AND c_mktsegment IN {lst([sq(x) for x in segs])} "
            f"AND o_orderpriority IN {lst([sq(x) for x in prios])} "
            f"GROUP BY c_custkey, c_name, n_name, c_mktsegment ORDER BY c_custkey")


# 3. a long string IN list (customer names), numbers and strings mixed with it
def _d_in_str(r, P):
    return {"names": _choice_list(r, P.custnames, draw_len(r, 1, 1000)), "bal": r.choice([-999.99, -500, 0, 1000.5]),
            "keys": _choice_list(r, list(range(25)), draw_len(r, 1, 25))}


def _r_in_str(p, r):
    return (f"SELECT c_name, c_acctbal, n_name, r_name FROM customer, nation, region "
            f"WHERE c_nationkey = n_nationkey AND n_regionkey = r_regionkey "
            f"AND c_name IN {lst([sq(x) for x in p['names']])} AND c_acctbal > {p['bal']} "
            f"AND n_nationkey IN {lst([str(k) for k in p['keys']])} ORDER BY c_name")


# 4. mixed-type lists
def _d_mixed(r, P):
    qty = [r.randint(-3, 50) for _ in range(draw_len(r, 1, 30))]
    keys = _choice_list(r, P.orderkeys[:3000], draw_len(r, 1, 300))
    return {"qty": qty, "keys": keys, "qs": r.random(), "ks": r.random(), "null": r.random() < 0.08}


def _r_mixed(p, r):
    q = random.Random(p["qs"])
    qty = [int_lit(q, n, mixed=True) for n in p["qty"]]
    k = random.Random(p["ks"])
    keys = [int_lit(k, n, mixed=True) for n in p["keys"]]
    if p["null"]:
        qty.append("NULL")
    return (f"SELECT l_orderkey, l_linenumber, l_quantity, o_orderstatus, p_brand FROM lineitem, orders, part "
            f"WHERE l_orderkey = o_orderkey AND l_partkey = p_partkey AND l_quantity IN {lst(qty)} "
            f"AND o_orderkey IN {lst(keys)} ORDER BY l_orderkey, l_linenumber")


# 5. negative, scientific, decimal, underscore numbers
def _d_numbers(r, P):
    lo = r.choice(P.extprices[:4])
    hi = r.choice(P.extprices[3:])
    return {"k": r.choice([-5, 1500, -0.25, 0.05, 12345, 2.5, -1000000]), "lo": lo, "hi": hi,
            "d": r.choice([-0.25, -1, 0, 0.02, 0.05]), "q": r.choice([-5, 0, 10, 25]),
            "acct": r.choice([-999.99, -500, 0, 2500.5]), "rp": r.choice([1500, 1200, 2100, 950.5]),
            "n": r.randint(1, 300), "seed": r.random()}


def _r_numbers(p, r):
    q = random.Random(p["seed"])
    return (f"SELECT l_orderkey, l_linenumber, l_extendedprice, {num_lit(q, p['k'])} AS k FROM lineitem, part, supplier "
            f"WHERE l_partkey = p_partkey AND l_suppkey = s_suppkey "
            f"AND l_extendedprice BETWEEN {num_lit(q, p['lo'])} AND {num_lit(q, p['hi'])} "
            f"AND l_discount >= {num_lit(q, p['d'])} AND l_quantity > {int_lit(q, p['q'])} "
            f"AND s_acctbal > {num_lit(q, p['acct'])} AND p_retailprice < {num_lit(q, p['rp'])} "
            f"ORDER BY l_orderkey, l_linenumber LIMIT {p['n']}")


# 6. strings holding quotes, comment markers, keywords, unicode; dollar / E forms
def _d_strings(r, P):
    return {"s1": r.choice(NASTY_STRINGS), "s2": r.choice(NASTY_STRINGS), "seg": r.choice(P.segments),
            "pre": r.choice(["A", "C", "G", "K", "P", "U"]), "st": r.choice(["F", "O", "P"]), "seed": r.random(),
            "k": r.choice(P.orderkeys)}


def _r_strings(p, r):
    q = random.Random(p["seed"])
    return (f"SELECT c_custkey, o_orderkey, c_name, {string_lit(q, p['s1'])} AS note, n_name FROM customer "
            f"JOIN nation ON c_nationkey = n_nationkey JOIN orders ON o_custkey = c_custkey "
            f"WHERE c_mktsegment = {string_lit(q, p['seg'])} AND o_comment <> {string_lit(q, p['s2'])} "
            f"AND n_name >= {string_lit(q, p['pre'])} AND o_orderstatus = {string_lit(q, p['st'])} "
            f"AND o_orderkey < {p['k']} ORDER BY c_custkey, o_orderkey")


# 7. quoted aliases holding --, /*, "", keywords, unicode: one-line (adversarial)
def _d_qalias(r, P):
    return {"d": P.day(r, 0.2, 0.9), "reg": r.randint(0, 4), "lit": r.choice(NASTY_STRINGS), "n": r.randint(5, 200)}


def _r_qalias(p, r):
    v = p.get("v", 0)
    op = "<" if v == 1 else ">="
    key = "o_orderkey" if v == 2 else "o_custkey"
    extra = ", supplier" if v == 3 else ""
    extra_where = " AND s_nationkey = n_nationkey" if v == 3 else ""
    return (f'SELECT o_orderkey AS "orders--n", c_name AS "a/*b", o_totalprice AS "x""y", n_name AS "Total", '
            f'{sq(p["lit"])} AS "it\'s", c_custkey AS "Cust Key" FROM orders, customer, nation{extra} '
            f"WHERE {key} = c_custkey AND c_nationkey = n_nationkey{extra_where} AND o_orderdate {op} DATE '{p['d']}' "
            f"AND n_regionkey = {p['reg']} ORDER BY 1, 6 LIMIT {p['n']}")


# 8. the alias text after a -- in a quoted identifier decides the order (adversarial)
def _d_dashref(r, P):
    return {"d": P.day(r, 0.1, 0.9), "n": r.randint(3, 60), "seg": r.choice(P.segments)}


def _r_dashref(p, r):
    order = ['"k--a"', '"k--b" DESC, "k--a"', '"k--c", "k--a"'][p.get("v", 0)]
    return (f'SELECT o_orderkey AS "k--a", o_totalprice AS "k--b", c_name AS "k--c" FROM orders, customer '
            f"WHERE o_custkey = c_custkey AND c_mktsegment = '{p['seg']}' AND o_orderdate >= DATE '{p['d']}' "
            f"ORDER BY {order} LIMIT {p['n']}")


# 9. a column between quoted identifiers "a/*" and "*/b" (adversarial)
def _d_blockid(r, P):
    return {"p": r.choice(P.prices[:5]), "lit": r.randint(1, 9), "n": r.randint(5, 100)}


def _r_blockid(p, r):
    col = ["o_totalprice", "o_custkey", "o_shippriority"][p.get("v", 0)]
    return (f'SELECT o_orderkey AS "a/*", {col} AS v, {p["lit"]} AS w, c_name AS "*/b" FROM orders, customer '
            f"WHERE o_custkey = c_custkey AND o_totalprice > {p['p']} ORDER BY 1 LIMIT {p['n']}")


# 10. comments holding literals, also between a sign and its number
def _d_comments(r, P):
    c = lambda: r.choice(["", "", "/* 'a' */", "/* x = 5 */", "/**/"])  # noqa: E731
    always = lambda: r.choice(["/* 'a' */", "/* x = 5 */", "/**/", "/* -1 */"])  # noqa: E731
    return {"d": r.choice([0.01, 0.02, 0.04, 0.06]), "acct": r.choice([100, 500, 999.99]),
            "a": r.randint(1, 20), "b": r.randint(25, 50), "keys": _choice_list(r, P.orderkeys, r.randint(2, 30)),
            "c": [always(), c(), c(), always(), c(), c()], "neg": True}


def _r_comments(p, r):
    c = p["c"]
    sign = "-" if p["neg"] else ""
    keys = [str(k) for k in p["keys"]]
    keys[len(keys) // 2] = f"{c[4]} {keys[len(keys) // 2]}"
    return (f"SELECT l_orderkey, l_linenumber, l_discount, o_orderdate FROM lineitem JOIN orders ON l_orderkey = o_orderkey "
            f"JOIN customer ON o_custkey = c_custkey WHERE l_discount > {sign}{c[0]}{p['d']} "
            f"AND l_quantity BETWEEN {c[1]}{p['a']} AND {p['b']}{c[2]} AND c_acctbal > -{c[3]}{p['acct']} "
            f"AND o_orderkey NOT IN {lst(keys)} /* 'z' */ ORDER BY l_orderkey, l_linenumber{c[5]} LIMIT 500")


# 11. INTERVAL 3 DAY and INTERVAL '3' DAY
def _d_interval(r, P):
    return {"n1": r.randint(1, 60), "n2": r.randint(1, 6), "d": P.day(r, 0.1, 0.8), "q1": r.random() < 0.5,
            "q2": r.random() < 0.5, "form": r.random()}


def _r_interval(p, r):
    a = f"'{p['n1']}'" if p["q1"] else str(p["n1"])
    b = f"'{p['n2']}'" if p["q2"] else str(p["n2"])
    second = f"INTERVAL {b} MONTH" if p["form"] > 0.1 else f"INTERVAL '{p['n2']} months'"
    return (f"SELECT o_orderkey, o_orderdate, l_linenumber, l_shipdate, c_name FROM orders, lineitem, customer "
            f"WHERE o_orderkey = l_orderkey AND o_custkey = c_custkey AND l_shipdate > o_orderdate + INTERVAL {a} DAY "
            f"AND o_orderdate >= DATE '{p['d']}' AND o_orderdate < DATE '{p['d']}' + {second} "
            f"ORDER BY o_orderkey, l_linenumber")


# 12. casts: '1'::INT, CAST('1' AS INT)
def _d_casts(r, P):
    return {"k": r.choice(P.orderkeys), "d": P.day(r, 0.0, 0.5), "d2": P.day(r, 0.5, 1.0), "n": r.randint(0, 24),
            "c": r.randint(-9, 99), "q": r.random()}


def _r_casts(p, r):
    q = random.Random(p["q"])
    k = f"'{p['k']}'" if q.random() < 0.5 else str(p["k"])  # '123'::INT or 123::INT: the same template
    n = f"'{p['n']}'" if q.random() < 0.5 else str(p["n"])
    return (f"SELECT o_orderkey, o_totalprice::INT AS p, CAST('{p['c']}' AS INT) AS c, c_name FROM orders, customer, nation "
            f"WHERE o_custkey = c_custkey AND c_nationkey = n_nationkey AND o_orderkey < {k}::INT "
            f"AND o_orderdate >= CAST('{p['d']}' AS DATE) AND o_orderdate < '{p['d2']}'::DATE "
            f"AND n_nationkey <> CAST({n} AS BIGINT) ORDER BY o_orderkey")


# 13. dates
def _d_dates(r, P):
    d1 = P.day(r, 0.0, 0.8)
    return {"d1": d1, "d2": d1 + timedelta(days=r.randint(30, 700)), "d3": P.day(r, 0.0, 0.3),
            "d4": P.day(r, 0.6, 1.0), "f": r.random()}


def _r_dates(p, r):
    kw = "DATE" if p["f"] < 0.5 else "date"
    return (f"SELECT o_orderkey, o_orderdate, l_shipdate, s_name FROM orders, lineitem, supplier "
            f"WHERE o_orderkey = l_orderkey AND l_suppkey = s_suppkey "
            f"AND o_orderdate BETWEEN {kw} '{p['d1']}' AND {kw} '{p['d2']}' AND l_shipdate >= DATE '{p['d3']}' "
            f"AND l_receiptdate < '{p['d4']}' ORDER BY o_orderkey, l_linenumber")


# 14. LIMIT / OFFSET with a total ORDER BY
def _d_limit(r, P):
    return {"s": r.randint(5, 50), "n": r.choice([1, 5, 10, 100, 1000, r.randint(1, 500)]),
            "m": r.choice([0, 1, 10, r.randint(0, 2000)])}


def _r_limit(p, r):
    return (f"SELECT l_orderkey, l_linenumber, l_quantity, p_name FROM lineitem, part, partsupp "
            f"WHERE l_partkey = p_partkey AND ps_partkey = l_partkey AND ps_suppkey = l_suppkey AND p_size < {p['s']} "
            f"ORDER BY l_orderkey, l_linenumber LIMIT {p['n']} OFFSET {p['m']}")


# 15. GROUP BY / ORDER BY positions
def _d_positions(r, P):
    return {"d": P.day(r, 0.2, 1.0), "g": r.sample([1, 2], 2), "o": r.choice([[1, 2], [2, 1]]),
            "n": r.choice([3, 10, 30, 200])}


def _r_positions(p, r):
    g, o = p["g"], p["o"]
    return (f"SELECT n_name, c_mktsegment, count(*) AS n, sum(o_totalprice) AS total FROM orders, customer, nation "
            f"WHERE o_custkey = c_custkey AND c_nationkey = n_nationkey AND o_orderdate < DATE '{p['d']}' "
            f"GROUP BY {g[0]}, {g[1]} ORDER BY {o[0]}, {o[1]} LIMIT {p['n']}")


# 16. NULL and booleans (variants: other keywords, so other templates)
def _d_nullbool(r, P):
    return {"k": r.choice(P.orderkeys[1000:]), "p": r.choice(P.prices[:4]), "lit": r.randint(0, 9)}


def _r_nullbool(p, r):
    v = p.get("v", 0)
    b = "FALSE" if v == 1 else "TRUE"
    isnull = "IS NULL" if v == 2 else "IS NOT NULL"
    return (f"SELECT o_orderkey, NULL AS nothing, TRUE AS yes, {p['lit']} AS k, c_name FROM orders, customer "
            f"WHERE o_custkey = c_custkey AND (o_orderkey < {p['k']}) = {b} AND o_comment {isnull} "
            f"AND COALESCE(NULL, o_totalprice) > {p['p']} ORDER BY o_orderkey")


# 17. UNION ALL of two blocks joining orders and customer with the same filters (shared)
def _d_union(r, P):
    seg, d = r.choice(P.segments), P.day(r, 0.3, 1.0)
    same = r.random() < 0.6
    return {"seg1": seg, "d1": d, "seg2": seg if same else r.choice(P.segments),
            "d2": d if same else P.day(r, 0.3, 1.0), "r1": r.randint(0, 4), "r2": r.randint(0, 4)}


def _r_union(p, r):
    block = ("SELECT {tag} AS part, n_name, count(*) AS n FROM orders, customer, nation WHERE o_custkey = c_custkey "
             "AND c_nationkey = n_nationkey AND c_mktsegment = '{seg}' AND o_orderdate < DATE '{d}' "
             "AND n_regionkey {op} {reg} GROUP BY n_name")
    return (block.format(tag="'early'", seg=p["seg1"], d=p["d1"], op="=", reg=p["r1"]) + " UNION ALL "
            + block.format(tag="'late'", seg=p["seg2"], d=p["d2"], op="<>", reg=p["r2"]) + " ORDER BY 1, 2")


# 18. a scalar subquery repeating the join (shared)
def _r_scalar(p, r):
    return (f"SELECT n_name, count(*) AS n, (SELECT count(*) FROM orders, customer WHERE o_custkey = c_custkey "
            f"AND c_mktsegment = '{p['seg2']}' AND o_orderdate < DATE '{p['d2']}') AS total "
            f"FROM orders, customer, nation WHERE o_custkey = c_custkey AND c_nationkey = n_nationkey "
            f"AND c_mktsegment = '{p['seg1']}' AND o_orderdate < DATE '{p['d1']}' AND n_regionkey <> {p['r1']} "
            f"GROUP BY n_name ORDER BY n_name")


# 19. operator pairs (adversarial control)
def _d_op(r, P):
    return {"p": r.choice(P.prices[1:6]), "n": r.choice(P.nations)}


def _r_op(p, r):
    op = [">", "<", ">=", "<>"][p.get("v", 0)]
    return (f"SELECT o_orderkey, c_name FROM orders, customer, nation WHERE o_custkey = c_custkey "
            f"AND c_nationkey = n_nationkey AND o_totalprice {op} {p['p']} AND n_name = '{p['n']}' ORDER BY o_orderkey")


# 20. an extra table (adversarial control)
def _d_extra(r, P):
    return {"p": r.choice(P.prices[3:]), "seg": r.choice(P.segments)}


def _r_extra(p, r):
    if p.get("v", 0) == 1:
        return (f"SELECT o_orderkey, c_custkey FROM orders, customer, supplier WHERE o_custkey = c_custkey "
                f"AND c_nationkey = s_nationkey AND o_totalprice > {p['p']} AND c_mktsegment = '{p['seg']}' "
                f"ORDER BY o_orderkey, c_custkey")
    return (f"SELECT o_orderkey, c_custkey FROM orders, customer WHERE o_custkey = c_custkey "
            f"AND o_totalprice > {p['p']} AND c_mktsegment = '{p['seg']}' ORDER BY o_orderkey, c_custkey")


# 21. a minus after a keyword (END - 1, ::INT - 100)
def _d_minus(r, P):
    return {"a": r.randint(0, 9), "b": r.randint(0, 9), "c": r.randint(1, 9), "d": r.randint(1, 500),
            "k": r.choice(P.orderkeys[200:4000])}


def _r_minus(p, r):
    return (f"SELECT o_orderkey, CASE WHEN o_orderstatus = 'F' THEN {p['a']} ELSE {p['b']} END - {p['c']} AS flag, "
            f"o_totalprice::INT - {p['d']} AS p, c_name FROM orders, customer WHERE o_custkey = c_custkey "
            f"AND o_orderkey < {p['k']} ORDER BY o_orderkey")


# 22. LIKE patterns
def _d_like(r, P):
    t = r.choice(P.types).split()
    return {"p1": r.choice([f"%{t[-1]}", f"{t[0]}%", f"%{t[1]}%"]),
            "p2": r.choice(["%green%", "a%", "%it''s%", "%--%", "%/*%", "_%"]),
            "p3": r.choice(["%", "%the%", "%s%", "%furiously%"])}


def _r_like(p, r):
    return (f"SELECT p_partkey, p_name, p_type, s_name, ps_supplycost FROM part, partsupp, supplier "
            f"WHERE p_partkey = ps_partkey AND ps_suppkey = s_suppkey AND p_type LIKE '{p['p1']}' "
            f"AND p_name NOT LIKE '{p['p2']}' AND s_comment LIKE '{p['p3']}' ORDER BY p_partkey, s_name")


# 23. five tables, two IN lists and a date range (a dashboard query)
def _d_five(r, P):
    return {"regs": _choice_list(r, P.regions, draw_len(r, 1, 5)),
            "prios": _choice_list(r, P.priorities, draw_len(r, 1, 5)),
            "d": P.day(r, 0.0, 0.7), "days": r.randint(30, 700)}


def _r_five(p, r):
    return (f"SELECT n_name, r_name, o_orderpriority, count(*) AS n, sum(l_extendedprice) AS rev "
            f"FROM lineitem, orders, customer, nation, region WHERE l_orderkey = o_orderkey AND o_custkey = c_custkey "
            f"AND c_nationkey = n_nationkey AND n_regionkey = r_regionkey AND r_name IN {lst([sq(x) for x in p['regs']])} "
            f"AND o_orderpriority IN {lst([sq(x) for x in p['prios']])} AND o_orderdate >= DATE '{p['d']}' "
            f"AND o_orderdate < DATE '{p['d']}' + INTERVAL {p['days']} DAY GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")




# 24. a $$..$$ / E'..' string holding -- in a one-line query (adversarial)
def _d_dollar(r, P):
    return {"x": r.choice(["1", "2", "note", "x = 5"]), "d": P.day(r, 0.0, 0.8), "p": r.choice(P.prices[:5]),
            "n": r.randint(5, 100), "form": r.random()}


def _r_dollar(p, r):
    v = p.get("v", 0)
    note = f"$$ref -- {p['x']}$$" if p["form"] < 0.5 else f"E'ref -- {p['x']}'"
    op = "<" if v == 1 else ">="
    extra = ", nation" if v == 2 else ""
    extra_where = " AND c_nationkey = n_nationkey" if v == 2 else ""
    return (f"SELECT o_orderkey, {note} AS note, c_name FROM orders, customer{extra} WHERE o_custkey = c_custkey"
            f"{extra_where} AND o_orderdate {op} DATE '{p['d']}' AND o_totalprice > {p['p']} "
            f"ORDER BY o_orderkey LIMIT {p['n']}")


# 25. non-ASCII text before the literals (strings, aliases)
def _d_unicode(r, P):
    return {"s": r.choice(["Grüße", "日本語", "plain", "ß", "😀 ok", "Ünïcödé"]), "k": r.choice(P.orderkeys[500:]),
            "b": r.choice([-500, 0, 1000, 5000]), "n": r.randint(5, 200)}


def _r_unicode(p, r):
    return (f"SELECT o_orderkey, {sq(p['s'])} AS greeting, c_name AS \"Kundenname ä\" FROM orders, customer "
            f"WHERE o_custkey = c_custkey AND o_orderkey < {p['k']} AND c_acctbal > {p['b']} "
            f"ORDER BY o_orderkey LIMIT {p['n']}")


# TPC-DS 1. q90's shape: two blocks joining web_sales, household_demographics, time_dim,
# web_page with the same filters on all but time_dim (shared)
def _d_ds90(r, P):
    dep, lo = r.choice(P.deps), min(P.char_counts) - r.randint(0, 3000)
    same = r.random() < 0.6
    return {"h1": r.randint(6, 12), "h2": r.randint(13, 21), "dep1": dep, "lo1": lo, "hi1": lo + r.randint(3000, 6000),
            "dep2": dep if same else r.choice(P.deps), "lo2": lo if same else lo - r.randint(0, 500),
            "hi2": None, "same": same}


def _r_ds90(p, r):
    hi2 = p["hi1"] if p["same"] else p["hi1"] + 100
    block = ("(SELECT count(*) AS {name} FROM web_sales, household_demographics, time_dim, web_page "
             "WHERE ws_sold_time_sk = t_time_sk AND ws_ship_hdemo_sk = hd_demo_sk AND ws_web_page_sk = wp_web_page_sk "
             "AND t_hour BETWEEN {h} AND {h} + 1 AND hd_dep_count = {dep} AND wp_char_count BETWEEN {lo} AND {hi})")
    return ("SELECT amc, pmc FROM " + block.format(name="amc", h=p["h1"], dep=p["dep1"], lo=p["lo1"], hi=p["hi1"])
            + " AS am, " + block.format(name="pmc", h=p["h2"], dep=p["dep2"], lo=p["lo2"], hi=hi2) + " AS pm")


# TPC-DS 2. three IN lists over store_sales, item, date_dim, store
def _d_ds_lists(r, P):
    return {"cats": _choice_list(r, P.categories, draw_len(r, 1, 10)), "years": _choice_list(r, P.years, draw_len(r, 1, 6)),
            "moys": _choice_list(r, list(range(1, 13)), draw_len(r, 1, 12))}


def _r_ds_lists(p, r):
    return (f"SELECT i_category, d_year, d_moy, count(*) AS n, sum(ss_ext_sales_price) AS sales "
            f"FROM store_sales, item, date_dim, store WHERE ss_item_sk = i_item_sk AND ss_sold_date_sk = d_date_sk "
            f"AND ss_store_sk = s_store_sk AND i_category IN {lst([sq(x) for x in p['cats']])} "
            f"AND d_year IN {lst([str(x) for x in p['years']])} AND d_moy IN {lst([str(x) for x in p['moys']])} "
            f"GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")


FAMILIES: list[Family] = [
    Family("in_list_num", _d_in_list, _r_in_list, lists=("keys",)),
    Family("in_lists_three", _d_in_lists, _r_in_lists, note="three IN lists, lengths redistributed"),
    Family("in_list_str", _d_in_str, _r_in_str, lists=("names", "keys")),
    Family("mixed_list", _d_mixed, _r_mixed, lists=("qty", "keys")),
    Family("numbers", _d_numbers, _r_numbers),
    Family("strings", _d_strings, _r_strings),
    Family("quoted_alias_oneline", _d_qalias, _r_qalias, oneline=True, variants=4),
    Family("dashdash_alias_ref", _d_dashref, _r_dashref, oneline=True, variants=3),
    Family("blockcomment_idents", _d_blockid, _r_blockid, variants=3),
    Family("comments", _d_comments, _r_comments, lists=("keys",)),
    Family("interval", _d_interval, _r_interval),
    Family("casts", _d_casts, _r_casts),
    Family("dates", _d_dates, _r_dates),
    Family("limit_offset", _d_limit, _r_limit),
    Family("positions", _d_positions, _r_positions),
    Family("null_bool", _d_nullbool, _r_nullbool, variants=3),
    Family("union_shared", _d_union, _r_union, shared=True),
    Family("scalar_shared", _d_union, _r_scalar, shared=True),
    Family("operator_pair", _d_op, _r_op, variants=4),
    Family("extra_table", _d_extra, _r_extra, variants=2),
    Family("minus_keyword", _d_minus, _r_minus),
    Family("like", _d_like, _r_like),
    Family("five_tables", _d_five, _r_five, lists=("regs", "prios")),
    Family("dollar_dashdash_oneline", _d_dollar, _r_dollar, oneline=True, variants=3),
    Family("unicode", _d_unicode, _r_unicode),
    Family("ds_q90_shared", _d_ds90, _r_ds90, ordered=False, shared=True, kind="tpcds"),
    Family("ds_in_lists", _d_ds_lists, _r_ds_lists, lists=("cats", "years", "moys"), kind="tpcds"),
]
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}
_POOLS: list[Pools] = []  # set by Campaign (render functions of list-length families read it)


# --------------------------------------------------------------------------- instances


@dataclass
class Instance:
    family: str
    j: int
    params: dict
    style: int | None  # restyle seed; None: plain

    def sql(self) -> str:
        fam = FAMILY_BY_NAME[self.family]
        text = fam.render(self.params, random.Random(f"render:{self.j}"))
        return restyle(text, None if self.style is None else random.Random(self.style), fam.oneline, self.j == 0)


def draw_instance(fam: Family, seed: int, j: int, pools: Pools, tuned: dict | None) -> Instance:
    """Instance ``j`` of ``fam`` (``j = 0``: the tuned instance, variant 0)."""
    r = random.Random(f"{seed}:{fam.name}:{j}")
    p = fam.draw(r, pools)
    p["v"] = 0
    if j == 0 and fam.shared:  # the tuned instance's blocks share their join
        if "seg1" in p:
            p["seg2"], p["d2"] = p["seg1"], p["d1"]
        else:
            p["dep2"], p["lo2"], p["same"] = p["dep1"], p["lo1"], True
    if j > 0 and fam.variants > 1 and r.random() < fam.adversarial_p:
        p["v"] = r.randint(1, fam.variants - 1)
    if j > 0 and tuned is not None and fam.name == "in_lists_three" and r.random() < 0.5:
        other = redistribute(r, tuned["lens"], [lo for _, lo, _ in _L2], [hi for _, _, hi in _L2])
        if other is not None:
            p["lens"] = other
    if j > 0 and tuned is not None and fam.lists and r.random() < 0.35:
        # lists of other lengths with the same literal count as the tuned text
        names = [n for n in fam.lists if isinstance(p.get(n), list) and isinstance(tuned.get(n), list)]
        total = sum(len(tuned[n]) for n in names)
        if len(names) >= 2 and total >= 2 * len(names):
            lens = redistribute(r, [len(tuned[n]) for n in names], [1] * len(names), [max(1, total)] * len(names))
            if lens is not None:
                for n, k in zip(names, lens):
                    src = p[n] or tuned[n]
                    p[n] = [src[i % len(src)] for i in range(k)]
    if j == 0:  # the tuned instance: lists of two or more (a one-item list is another template)
        for k, v in p.items():
            if isinstance(v, list) and len(v) == 1:
                p[k] = v * 2
        if "lens" in p:
            p["lens"] = [max(2, n) for n in p["lens"]]
    style = None if j == 0 and r.random() < 0.5 else r.getrandbits(32)
    return Instance(fam.name, j, p, style)


# --------------------------------------------------------------------------- judging


def _norm(v):
    if isinstance(v, float):
        return float(f"{v:.10g}") if math.isfinite(v) else v
    if isinstance(v, (list, tuple)):
        return tuple(_norm(x) for x in v)
    return v


def norm_rows(rows: list[tuple], ordered: bool) -> list[str]:
    out = [repr(tuple(_norm(v) for v in row)) for row in rows]
    return out if ordered else sorted(out)


def _lit_value(text: str) -> str:
    t = text.strip()
    if t[:1] in ("E", "e") and t[1:2] == "'":
        t = t[1:]
    if t.startswith("$$") and t.endswith("$$"):
        t = t[2:-2]
    if t.startswith("'") and t.endswith("'"):
        t = t[1:-1].replace("''", "'")
    try:
        return format(Decimal(t.replace("_", "").replace(" ", "")).normalize(), "f")
    except InvalidOperation:
        return t


def literal_values(sql: str) -> set[str]:
    return {_lit_value(x) for x in template_key(sql).literals}


class Timeout:
    """Interrupts ``con`` after ``seconds``; ``fired`` tells whether it did."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float):
        self.con, self.seconds, self.fired = con, seconds, False
        self._timer: threading.Timer | None = None

    def __enter__(self):
        def fire():
            self.fired = True
            self.con.interrupt()
        self._timer = threading.Timer(self.seconds, fire)
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False


@dataclass
class Outcome:
    status: str  # served_tree | served_arm | as_written | wrong | crash | timeout | invalid
    reason: str | None = None
    shared: bool = False
    served_sql: str | None = None
    native_rows: int | None = None
    served_rows: int | None = None
    detail: str | None = None
    literal_mismatch: bool = False
    path: str | None = None  # how it was served, for wrong/crash: tree / arm / as_written


def normalize_reason(reason: str | None) -> str:
    if not reason:
        return "(none)"
    reason = re.sub(r"template (?!not\b)\S+", "template T", reason)
    reason = re.sub(r"\(.*\)", "(...)", reason)
    return reason[:160]


def path_of(res) -> tuple[str, str | None]:
    if res.source == "book" and res.forced:
        return "tree", None
    if res.source == "book" and res.disabled:
        return "arm", None
    return "as_written", res.fallback or f"source={res.source}"


def judge(opt, sql: str, con: duckdb.DuckDBPyConnection, ordered: bool, native_cache: dict,
          timeout_s: float, n_slots: int | None = None) -> Outcome:
    """Serve ``sql`` through ``opt`` and compare with its native result."""
    if sql not in native_cache:
        try:
            with Timeout(con, timeout_s) as t:
                native_cache[sql] = ("ok", con.execute(sql).fetchall())
        except Exception as err:  # noqa: BLE001
            native_cache[sql] = ("timeout" if t.fired else "error", f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
    nstat, native = native_cache[sql]
    if nstat == "timeout":
        return Outcome("timeout", detail="native timed out")
    res = None
    try:
        with Timeout(con, timeout_s) as t:
            res = opt.optimize(sql, con)
            rows = res.execute(con)
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001
        if t.fired:
            return Outcome("timeout", served_sql=res.sql if res else None, detail="served plan timed out")
        if isinstance(err, KeyboardInterrupt):
            raise
        msg = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        if nstat == "error":
            return Outcome("invalid", detail=f"native: {native}; served: {msg}")
        path = path_of(res)[0] if res is not None else "optimize"
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "/lqo/" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else None
        return Outcome("crash", served_sql=res.sql if res else None, native_rows=len(native), detail=msg, path=path,
                       reason=where)
    path, reason = path_of(res)
    if nstat == "error":
        return Outcome("invalid", served_sql=res.sql, served_rows=len(rows),
                       detail=f"native raised {native}, served returned {len(rows)} rows", path=path)
    if norm_rows(rows, ordered) != norm_rows(native, ordered):
        same_multiset = ordered and norm_rows(rows, False) == norm_rows(native, False)
        return Outcome("wrong", served_sql=res.sql, native_rows=len(native), served_rows=len(rows), path=path,
                       reason=reason, detail="same rows, other order" if same_multiset else "rows differ")
    status = {"tree": "served_tree", "arm": "served_arm"}.get(path, "as_written")
    # Filled from the slot rendering (the literal counts fit): the served text must hold
    # exactly the instance's literals (a shared rendering drops twins, equal to their pairs).
    mismatch = (path == "tree" and n_slots is not None and n_slots == len(template_key(sql).literals)
                and literal_values(res.sql) != literal_values(sql))
    return Outcome(status, reason=reason, shared=path == "tree" and SHARED_PREFIX in res.sql, served_sql=res.sql,
                   literal_mismatch=mismatch)


# --------------------------------------------------------------------------- books


def shared_plan(pq, rng: random.Random):
    """A plan whose rendering shares a join between blocks, or None: the same tree
    for every block with the same relations (aliases are table names here)."""
    base = pq.native_plan
    blocks = pq.free_blocks
    options = []
    for b in blocks:
        for t in exhaustive_trees(b):
            plan = base
            for other in blocks:
                if other is b:
                    continue
                if frozenset(other.aliases) == frozenset(b.aliases):
                    plan = plan.replace(other.index, t)
            plan = plan.replace(b.index, t)
            try:
                if shared_joins(pq.graph, plan):
                    options.append(plan)
            except Exception:  # noqa: BLE001
                continue
    # Also subtrees: a block's tree sharing a smaller join with another block's tree.
    if not options:
        for b in blocks:
            for t in exhaustive_trees(b):
                for other in blocks:
                    if other is b:
                        continue
                    for u in exhaustive_trees(other):
                        plan = base.replace(b.index, t).replace(other.index, u)
                        try:
                            if shared_joins(pq.graph, plan):
                                options.append(plan)
                        except Exception:  # noqa: BLE001
                            continue
                    if len(options) > 50:
                        break
    others = [p for p in options if p != base]  # the native tree is the ``tree`` mode already
    if others:
        return rng.choice(others)
    return base if base in options else None


def make_candidate(fam: Family, mode: str, tuned_sql: str, con, catalog: Catalog, rng: random.Random,
                   fam_index: int) -> tuple[Candidate | None, dict]:
    """The adopted candidate for ``mode`` and how it was built."""
    info: dict = {"mode": mode}
    if mode == "arm":
        rule = ARMS[fam_index % len(ARMS)]
        info["rule"] = rule
        return Candidate(f"arm:{rule}", "arm", (rule,), origin=f"arm:{rule}"), info
    try:
        pq = prepare(tuned_sql, con, catalog)
    except LqoError as err:
        info["refused"] = f"prepare: {type(err).__name__}: {err}"
        return None, info
    except Exception as err:  # noqa: BLE001
        info["crash"] = f"prepare: {type(err).__name__}: {err}"
        return None, info
    if not pq.forceable:
        info["refused"] = f"not forceable: {pq.reason}"
        return None, info
    if mode == "tree":
        plan, origin = pq.native_plan, "native tree"
    elif mode == "random":
        plans = pq.random_plans(1, rng)
        if not plans:
            info["refused"] = "no random tree differs from native"
            return None, info
        plan, origin = plans[0], "random tree"
    else:
        plan, origin = shared_plan(pq, rng), "shared tree"
        if plan is None:
            info["refused"] = "no tree shares a join between blocks"
            return None, info
        info["shared_joins"] = [s.name for s in shared_joins(pq.graph, plan)]
    info["origin"], info["plan"] = origin, str(plan)
    try:
        slots = SlotRendering.build(tuned_sql, catalog, plan).to_json()
        info["slots"] = "built"
    except LqoError as err:
        slots = None
        info["slots"] = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001
        slots = None
        info["slots"] = f"CRASH {type(err).__name__}: {err}"
    return Candidate(f"tree:{plan.key[:12]}", "tree", (), plan.to_json(), slots, origin=origin), info


def write_book(root: Path, schema: str, tuned_sql: str, name: str, cand: Candidate) -> Path:
    book = PlanBook(schema=schema)
    e = book.entry(template_key(tuned_sql).key, name, tuned_sql)
    e.candidates[cand.id] = cand
    e.adopt(cand.id)
    root.mkdir(parents=True, exist_ok=True)
    book.save(root / BOOK_FILE)
    return root


# --------------------------------------------------------------------------- campaign


def modes_of(fam: Family) -> list[str]:
    return ["tree", "random", "arm"] + (["shared"] if fam.shared else [])


def new_counts() -> dict:
    return {"instances": 0, "served_tree": 0, "served_shared": 0, "served_arm": 0, "as_written": 0,
            "as_written_reasons": Counter(), "wrong": 0, "crashes": 0, "timeouts": 0, "invalid": 0,
            "literal_mismatch": 0, "adversarial": 0, "adversarial_served": 0}


def add(counts: dict, out: Outcome, adversarial: bool) -> None:
    counts["instances"] += 1
    key = {"crash": "crashes", "timeout": "timeouts", "wrong": "wrong", "invalid": "invalid",
           "served_tree": "served_tree", "served_arm": "served_arm", "as_written": "as_written"}[out.status]
    counts[key] += 1
    counts["served_shared"] += out.shared
    counts["literal_mismatch"] += out.literal_mismatch
    if out.status == "as_written":
        counts["as_written_reasons"][normalize_reason(out.reason)] += 1
    if adversarial:
        counts["adversarial"] += 1
        counts["adversarial_served"] += out.status in ("served_tree", "served_arm") or out.path in ("tree", "arm")


@dataclass
class Env:
    con: duckdb.DuckDBPyConnection
    catalog: Catalog
    pools: object
    db: Path


class Campaign:
    """``dbs``: the TPC-H database (a path) or {kind: path} (tpch is required)."""

    def __init__(self, dbs: Path | dict[str, Path], seed: int, timeout_s: float = 20.0, shrink_s: float = 20.0,
                 threads: int = 1, log=print):
        dbs = {"tpch": Path(dbs)} if not isinstance(dbs, dict) else {k: Path(v) for k, v in dbs.items()}
        self.envs: dict[str, Env] = {}
        for kind, db in dbs.items():
            con = connect_read_only(db, threads=threads)
            con.execute("SET memory_limit = '2GB'")
            self.envs[kind] = Env(con, Catalog.from_connection(con), POOL_LOADERS[kind](con), db)
        tpch = self.envs["tpch"]
        self.con, self.catalog, self.pools, self.db = tpch.con, tpch.catalog, tpch.pools, tpch.db
        _POOLS[:] = [self.pools]
        self.seed, self.timeout_s, self.shrink_s = seed, timeout_s, shrink_s
        self.log = log
        self._tmp = tempfile.TemporaryDirectory(prefix="serving-fuzz-")  # removed at close() or exit
        self.tmp = Path(self._tmp.name)

    def close(self) -> None:
        for env in self.envs.values():
            env.con.close()
        self._tmp.cleanup()

    def run_family(self, fam: Family, n_instances: int, fam_index: int, modes: list[str] | None = None) -> dict:
        """Tune one book entry per mode from instance 0 and serve instances 0..n-1."""
        env = self.envs[fam.kind]
        tuned = draw_instance(fam, self.seed, 0, env.pools, None)
        tuned_sql = tuned.sql()
        instances = [tuned] + [draw_instance(fam, self.seed, j, env.pools, tuned.params) for j in range(1, n_instances)]
        texts = [i.sql() for i in instances]
        native: dict = {}
        report: dict = {"kind": fam.kind, "tuned_sql": tuned_sql, "template_key": template_key(tuned_sql).key, "modes": {},
                        "note": fam.note, "oneline": fam.oneline, "variants": fam.variants}
        failures: list[dict] = []
        for mode in modes or modes_of(fam):
            rng = random.Random(f"{self.seed}:{fam.name}:{mode}")
            cand, info = make_candidate(fam, mode, tuned_sql, env.con, env.catalog, rng, fam_index)
            counts = new_counts()
            entry = {"book": info, "counts": counts}
            report["modes"][mode] = entry
            if cand is None:
                continue
            root = write_book(self.tmp / f"{fam.name}-{mode}", env.catalog.fingerprint, tuned_sql,
                              f"{fam.name}/{mode}", cand)
            opt = lqo.Optimizer.load(root)
            n_slots = SlotRendering.from_json(cand.slots).n_literals if cand.slots else None
            first = judge(opt, tuned_sql, env.con, fam.ordered, native, self.timeout_s)
            entry["first_call"] = {"status": first.status, "reason": first.reason}
            shrunk = False
            mismatches = entry["literal_mismatch_examples"] = []
            for inst, sql in zip(instances, texts):
                out = judge(opt, sql, env.con, fam.ordered, native, self.timeout_s, n_slots)
                add(counts, out, inst.params.get("v", 0) != 0)
                if out.literal_mismatch and len(mismatches) < 2:
                    mismatches.append({"instance_sql": sql, "served_sql": out.served_sql,
                                       "instance_literals": sorted(literal_values(sql)),
                                       "served_literals": sorted(literal_values(out.served_sql))})
                if out.status in ("wrong", "crash") and sum(
                        f["mode"] == mode for f in failures) < MAX_FAILURES_PER_MODE:
                    fail = self._failure(fam, mode, tuned_sql, inst, sql, out)
                    if not shrunk and self.shrink_s > 0:
                        shrunk = True
                        fail["shrunk"] = self.shrink(fam, opt, inst, out, native)
                    failures.append(fail)
                    self.log(f"[{fam.name}/{mode}] {out.status.upper()} j={inst.j}: {out.detail}\n"
                             f"  tuned:    {_one(tuned_sql)}\n  instance: {_one(sql)}\n  served:   {_one(out.served_sql)}")
            counts["as_written_reasons"] = dict(counts["as_written_reasons"].most_common())
        report["failures"] = failures
        return report

    def _failure(self, fam, mode, tuned_sql, inst, sql, out: Outcome) -> dict:
        return {"family": fam.name, "mode": mode, "status": out.status, "j": inst.j, "variant": inst.params.get("v", 0),
                "tuned_sql": tuned_sql, "instance_sql": sql, "served_sql": out.served_sql, "path": out.path,
                "native_rows": out.native_rows, "served_rows": out.served_rows, "detail": out.detail,
                "where": out.reason if out.status == "crash" else None}

    def shrink(self, fam: Family, opt, inst: Instance, out: Outcome, native: dict) -> dict | None:
        """A smaller instance with the same failure: plain style, then shorter lists."""
        deadline = time.perf_counter() + self.shrink_s
        best = inst

        def fails(cand: Instance) -> Outcome | None:
            o = judge(opt, cand.sql(), self.envs[fam.kind].con, fam.ordered, native, self.timeout_s)
            return o if o.status in ("wrong", "crash") else None

        tries: list[Callable[[Instance], Instance | None]] = [lambda i: Instance(i.family, i.j, i.params, None)]
        for name in fam.lists:
            for cut in (lambda n: max(2, n // 2), lambda n: 2):
                def t(i, name=name, cut=cut):
                    v = i.params.get(name)
                    if not isinstance(v, list) or len(v) <= 2 or cut(len(v)) >= len(v):
                        return None
                    p = dict(i.params)
                    p[name] = v[:cut(len(v))]
                    return Instance(i.family, i.j, p, i.style)
                tries.append(t)
        best_out = out
        improved = True
        while improved and time.perf_counter() < deadline:
            improved = False
            for t in tries:
                cand = t(best)
                if cand is None or cand.sql() == best.sql():
                    continue
                o = fails(cand)
                if o is not None:
                    best, best_out, improved = cand, o, True
                if time.perf_counter() > deadline:
                    break
        if best is inst:
            return None
        return {"status": best_out.status, "instance_sql": best.sql(), "served_sql": best_out.served_sql,
                "native_rows": best_out.native_rows, "served_rows": best_out.served_rows, "detail": best_out.detail}

    # ----- schema probes -----------------------------------------------------------------
    def schema_checks(self) -> list[dict]:
        """A book must be refused on a connection whose schema it was not made for, on
        that connection's first call too."""
        fam = FAMILY_BY_NAME["operator_pair"]
        sql = draw_instance(fam, self.seed, 0, self.pools, None).sql()
        cand, _ = make_candidate(fam, "tree", sql, self.con, self.catalog, random.Random(0), 0)
        out = []

        def probe(name: str, fn) -> None:
            try:
                res = fn()
                got = f"no error: source={getattr(res, 'source', None)} forced={getattr(res, 'forced', None)}"
                ok = False
            except SchemaMismatchError as err:
                got, ok = f"SchemaMismatchError: {str(err)[:120]}", True
            except Exception as err:  # noqa: BLE001
                got, ok = f"{type(err).__name__}: {str(err)[:160]}", False
            out.append({"check": name, "ok": ok, "got": got})

        wrong_root = write_book(self.tmp / "schema-wrong", "sha1:0000000000000000000000000000000000000000", sql,
                                "schema/wrong", cand)
        probe("load(dir, con) with another schema's book", lambda: lqo.Optimizer.load(wrong_root, self.con))
        probe("load(dir); first optimize() on a connection, another schema's book",
              lambda: lqo.Optimizer.load(wrong_root).optimize(sql, self.con))

        def second_call():
            opt = lqo.Optimizer.load(wrong_root)
            try:
                opt.optimize(sql, self.con)
            except SchemaMismatchError:
                pass
            return opt.optimize(sql, self.con)
        probe("load(dir); second optimize() after a refused first, another schema's book", second_call)

        # A second database with another schema, opened after the first was served and closed.
        other = self.tmp / "other.duckdb"
        if not other.exists():
            w = connect_writable(other)
            w.execute(f"ATTACH '{self.db}' AS src (READ_ONLY)")
            for t in ("orders", "customer", "nation"):
                w.execute(f"CREATE TABLE {t} AS SELECT * FROM src.{t}")
            w.execute("ALTER TABLE orders ADD COLUMN o_extra INTEGER")
            w.close()
        right_root = write_book(self.tmp / "schema-right", self.catalog.fingerprint, sql, "schema/right", cand)

        def other_db_same_optimizer():
            # The optimizer remembers checked connections by id(); a new connection often
            # gets the id of one closed just before (CPython reuses the memory): tried
            # until it does (or 30 times).
            opt = lqo.Optimizer.load(right_root)
            b = None
            for _ in range(30):
                a = connect_read_only(self.db, threads=1)
                opt.optimize(sql, a)
                opt.optimize(sql, a)
                ida = id(a)
                a.close()
                del a
                b = connect_read_only(other, threads=1)
                if id(b) == ida:
                    break
                b.close()
                b = None
            out.append({"check": "(info: a new connection got the closed one's id)", "ok": None, "got": str(b is not None)})
            if b is None:
                b = connect_read_only(other, threads=1)
            try:
                return opt.optimize(sql, b)
            finally:
                b.close()
        probe("one optimizer; a connection to another schema after one to the book's schema (closed)",
              other_db_same_optimizer)

        def other_db_open():
            opt = lqo.Optimizer.load(right_root)
            opt.optimize(sql, self.con)
            opt.optimize(sql, self.con)
            b = connect_read_only(other, threads=1)
            try:
                return opt.optimize(sql, b)
            finally:
                b.close()
        probe("one optimizer; first call on a second connection with another schema", other_db_open)
        return out


MAX_SQL_CHARS = 5000


def _cap(v):
    """Long texts (1,000-item IN lists) cut in the JSON summary."""
    if isinstance(v, str) and len(v) > MAX_SQL_CHARS:
        return v[:MAX_SQL_CHARS] + f"... [{len(v) - MAX_SQL_CHARS} more characters]"
    if isinstance(v, dict):
        return {k: _cap(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_cap(x) for x in v]
    return v


def _one(sql: str | None) -> str:
    return "" if sql is None else sql.replace("\n", "\\n")[:600]


def summarize(reports: dict, schema: list[dict], elapsed: float, args: dict) -> dict:
    overall = new_counts()
    overall["as_written_reasons"] = Counter()
    per_family = {}
    failures = []
    for name, rep in reports.items():
        fam_tot = new_counts()
        fam_tot["as_written_reasons"] = Counter()
        for mode, m in rep["modes"].items():
            for tot in (fam_tot, overall):
                for k, v in m["counts"].items():
                    if k == "as_written_reasons":
                        tot[k].update(v)
                    else:
                        tot[k] += v
        fam_tot["as_written_reasons"] = dict(fam_tot["as_written_reasons"].most_common())
        per_family[name] = {"total": fam_tot, **rep}
        failures += rep["failures"]
    overall["as_written_reasons"] = dict(overall["as_written_reasons"].most_common())
    firsts = [m["first_call"] for rep in reports.values() for m in rep["modes"].values() if "first_call" in m]
    overall["first_calls"] = len(firsts)
    overall["first_calls_served_from_book"] = sum(f["status"] in ("served_tree", "served_arm") for f in firsts)
    overall["first_call_reasons"] = dict(Counter(normalize_reason(f["reason"]) for f in firsts
                                                 if f["status"] not in ("served_tree", "served_arm")))
    return {
        "campaign": "serving-fuzz", **args, "elapsed_s": round(elapsed, 1), "duckdb": duckdb.__version__,
        "generator_checkout": _commit(), "lqo": _lqo_source(),
        "overall": overall,
        "failing_families": sorted(n for n, f in per_family.items() if f["total"]["wrong"] or f["total"]["crashes"]),
        "schema_checks": schema,
        "families": per_family,
        "failures": failures,
    }


def _lqo_source() -> dict:
    """Which lqo ran: its path, and the commit it was exported from (a ``COMMIT`` file
    next to a ``git archive`` copy) or the checkout's HEAD plus whether lqo/ is edited."""
    root = Path(lqo.__file__).resolve().parents[1]
    out: dict = {"path": str(Path(lqo.__file__).resolve().parent)}
    if (root / "COMMIT").is_file():
        out["commit"] = (root / "COMMIT").read_text().strip()
        out["edited"] = False
        return out
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=root, timeout=10).stdout  # noqa: E731
        out["commit"] = run("rev-parse", "HEAD").strip() or None
        out["edited"] = bool(run("status", "--porcelain", "--", "lqo").strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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


def run_campaign(dbs: Path | dict[str, Path], instances: int, seed: int, families: list[str] | None = None,
                 timeout_s: float = 20.0, shrink_s: float = 20.0, log=print, schema: bool = True) -> dict:
    kinds = set(dbs) if isinstance(dbs, dict) else {"tpch"}
    fams = [f for f in FAMILIES if (families is None or f.name in families) and f.kind in kinds]
    per_instance_serves = sum(len(modes_of(f)) for f in fams)
    k = max(2, -(-instances // per_instance_serves))  # instances per family (each served in every mode)
    camp = Campaign(dbs, seed, timeout_s, shrink_s, log=log)
    t0 = time.perf_counter()
    reports = {}
    try:
        keys: dict[str, list[str]] = {}
        for i, fam in enumerate(FAMILIES):
            if fam not in fams:
                continue
            rep = camp.run_family(fam, k, i)
            reports[fam.name] = rep
            keys.setdefault(rep["template_key"], []).append(fam.name)
            c = Counter()
            for m in rep["modes"].values():
                c.update({x: y for x, y in m["counts"].items() if isinstance(y, int)})
            log(f"{fam.name}: {c['instances']} served, tree {c['served_tree']} (shared {c['served_shared']}), "
                f"arm {c['served_arm']}, as written {c['as_written']}, wrong {c['wrong']}, crashes {c['crashes']} "
                f"[{time.perf_counter() - t0:.0f} s]")
        checks = camp.schema_checks() if schema else []
        collisions = {k2: v for k2, v in keys.items() if len(v) > 1}
    finally:
        camp.close()
    out = summarize(reports, checks, time.perf_counter() - t0,
                    {"seed": seed, "instances_per_family": k, "families_run": [f.name for f in fams]})
    out["key_collisions_between_families"] = collisions
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=10_000, help="served instances in all (over families x modes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=Path("data/serving-fuzz"))
    ap.add_argument("--families", default=None, help="comma-separated family names (default: all)")
    ap.add_argument("--kinds", default="tpch,tpcds", help="schemas to fuzz (tpch is always opened)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per query run")
    ap.add_argument("--shrink-s", type=float, default=20.0, help="seconds to shrink a (family, mode)'s first failure")
    args = ap.parse_args(argv)
    kinds = sorted(set(args.kinds.split(",")) | {"tpch"})
    dbs = ensure_databases(args.data, kinds)
    fams = args.families.split(",") if args.families else None
    if fams:
        unknown = [f for f in fams if f not in FAMILY_BY_NAME]
        if unknown:
            ap.error(f"unknown families {unknown}; known: {', '.join(FAMILY_BY_NAME)}")
    summary = run_campaign(dbs, args.instances, args.seed, fams, args.timeout, args.shrink_s,
                           log=lambda s: print(s, file=sys.stderr, flush=True))
    text = json.dumps(_cap(summary), indent=1, default=str, ensure_ascii=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    short = {k: v for k, v in summary.items() if k in ("overall", "failing_families", "schema_checks", "elapsed_s",
                                                         "key_collisions_between_families")}
    print(json.dumps(short, indent=1, default=str))
    return 1 if summary["overall"]["wrong"] or summary["overall"]["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
