"""What every rewrite family keeps to: its result type, and the checks that keep a text
it writes DuckDB's own query.

A family (``cte``, ``decorrelate``, ``eager_agg``) returns :class:`Rewrite` s, each a
text that must return the same bag of rows as the original (duplicates and NULL keys
included), or raises :class:`Refused` for a shape it cannot prove equivalent (no rewrite,
never a guess). The registry (:mod:`lqo.sql.rewrites`) reads each text once with
:func:`parse` and hands a family only a text that sqlglot writes back as DuckDB reads it
(:func:`faithful`) and that names nothing starting like the names a family adds
(:data:`RESERVED_PREFIX`). Families write with :func:`to_duckdb_sql`, and compare keys only
where :func:`key_types_compare_as_they_group`.

>>> tree = parse("SELECT a FROM t WHERE a ~ 'p'")
>>> to_duckdb_sql(tree)           # sqlglot writes DuckDB's full match as a partial one
"SELECT a FROM t WHERE REGEXP_MATCHES(a, 'p')"
>>> faithful("SELECT a FROM t WHERE a ~ 'p'", tree)
False
>>> faithful("SELECT a FROM t WHERE a > 1", parse("SELECT a FROM t WHERE a > 1"))
True
>>> key_types_compare_as_they_group("INTEGER", "BIGINT"), key_types_compare_as_they_group("DOUBLE", "DOUBLE")
(True, False)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Callable, Mapping

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

# Lower-cased table -> lower-cased column -> type name (lqo.sql.catalog.Catalog.tables).
Columns = Mapping[str, Mapping[str, str]]

RESERVED_PREFIX = "lqo_"  # names the rewrites add: a query already using one is refused
# Functions whose value differs between two calls on the same row.
VOLATILE_FUNCTIONS = frozenset({"random", "rand", "uuid", "gen_random_uuid", "nextval", "setseed", "currval"})
# Key types whose GROUP BY groups exactly the values ``=`` equates (no floats: -0.0 and
# 0.0; no collation; no TIME WITH TIME ZONE or INTERVAL, equal across representations).
KEY_TYPES = frozenset({"BOOLEAN", "VARCHAR", "BLOB", "UUID", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S",
                       "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"})
# Exact numeric types: a cast among them keeps every value distinct, so keys of two of them compare as they group.
EXACT_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT", "DECIMAL")


class Refused(Exception):
    """A shape the generator cannot prove equivalent: no rewrite of it."""


@dataclass(frozen=True)
class Rewrite:
    """One rewritten text: ``family`` (of ``FAMILIES``), ``label`` (family and site, the
    same for every instance of a template) and the ``sql``.

    >>> Rewrite("cte", "cte:x=materialized", "WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x").label
    'cte:x=materialized'
    """

    family: str
    label: str
    sql: str


def site_rewrites(tree: exp.Expr, family: str, sites: int,
                  rewrite_site: Callable[[exp.Expr, int], None]) -> list[Rewrite]:
    """One rewrite per site of ``tree`` (left untouched) that ``rewrite_site`` proves:
    it rewrites site ``i`` of a copy in place, or raises ``Refused``. Labels are
    ``family:i+1``."""
    out: list[Rewrite] = []
    for site in range(sites):
        copy = tree.copy()
        try:
            rewrite_site(copy, site)
        except Refused:
            continue
        out.append(Rewrite(family, f"{family}:{site + 1}", to_duckdb_sql(copy)))
    return out


def parse(sql: str) -> exp.Expr | None:
    """The one statement of ``sql`` as sqlglot reads DuckDB, or None.

    >>> parse("SELECT 1; SELECT 2") is None, parse("SELECT (") is None
    (True, True)
    """
    try:
        stmts = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError, ValueError):
        return None
    return stmts[0] if len(stmts) == 1 else None


def to_duckdb_sql(tree: exp.Expr) -> str:
    """``tree`` written as DuckDB SQL (the text a rewrite runs)."""
    return tree.sql(dialect="duckdb")


_ast_lock = threading.Lock()
_ast_con: duckdb.DuckDBPyConnection | None = None


def _duckdb_ast(sql: str) -> object:
    """DuckDB's own parse of ``sql`` (``json_serialize_sql``, positions dropped), or None."""
    global _ast_con

    def strip(node: object, named: bool = False) -> object:  # named: in a select list, where text names columns
        if isinstance(node, dict):
            node = node if named else _is_not_null(node)
            return {k: strip(v, named or k == "select_list") for k, v in node.items() if k != "query_location"}
        return [strip(v, named) for v in node] if isinstance(node, list) else node

    with _ast_lock:  # one in-memory connection, made on first need; parsing touches no data
        if _ast_con is None:
            _ast_con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                          "autoload_known_extensions": False})
        try:
            row = _ast_con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
        except duckdb.Error:
            return None
    tree = json.loads(row[0]) if row is not None else None
    return None if not isinstance(tree, dict) or tree.get("error") else strip(tree)


def _is_not_null(node: dict) -> dict:
    """``NOT x IS NULL`` (sqlglot's writing) as ``x IS NOT NULL``: the same operator
    (outside a select list, where the text would name the column)."""
    kids = node.get("children")
    if node.get("type") == "OPERATOR_NOT" and isinstance(kids, list) and len(kids) == 1 and \
            isinstance(kids[0], dict) and kids[0].get("type") == "OPERATOR_IS_NULL" and not kids[0].get("alias"):
        return {**node, "type": "OPERATOR_IS_NOT_NULL", "children": kids[0]["children"]}
    return node


def faithful(sql: str, tree: exp.Expr) -> bool:
    """Whether sqlglot writes ``tree`` back as the very statement DuckDB reads in ``sql``
    (every rewrite re-renders the whole text: a function sqlglot maps to another, such
    as ``~`` (a full regular-expression match) to ``regexp_matches`` (a partial one),
    would change the rows)."""
    want = _duckdb_ast(sql)
    return want is not None and want == _duckdb_ast(to_duckdb_sql(tree))


def uses_reserved_names(tree: exp.Expr) -> bool:
    """Whether a name of the query starts like the names a rewrite adds (a column of the
    added table could capture a reference to a column of the user's).

    >>> uses_reserved_names(parse("SELECT lqo_sq1_v FROM t")), uses_reserved_names(parse("SELECT v FROM t"))
    (True, False)
    """
    return any(i.name.lower().startswith(RESERVED_PREFIX) for i in tree.find_all(exp.Identifier))


def volatile(node: exp.Expr) -> bool:
    """Whether ``node`` calls a function whose value differs between calls, or cuts its
    rows (``LIMIT``/``OFFSET``/``FETCH``/``SAMPLE``): evaluated over other rows, or twice,
    it may give other rows.

    >>> volatile(parse("SELECT a FROM t LIMIT 1")), volatile(parse("SELECT random() FROM t"))
    (True, True)
    """
    for f in node.find_all(exp.Func):
        name = (f.sql_name() if not isinstance(f, exp.Anonymous) else str(f.this)).lower()
        if name in VOLATILE_FUNCTIONS or isinstance(f, (exp.Rand, exp.Uuid)):
            return True
    return node.find(exp.Limit, exp.Offset, exp.TableSample, exp.Fetch) is not None


def key_types_compare_as_they_group(inner: str, outer: str) -> bool:
    """Whether grouping keys of type ``inner`` and joining them with ``=`` to a key of
    type ``outer`` equates exactly what ``=`` equates between the two: the same type of
    ``KEY_TYPES`` (no collation), or two exact numeric types. A float key groups -0.0
    apart from 0.0; a collated or cast key (VARCHAR = INTEGER) equates values it groups
    apart; an unknown type ("") is refused."""
    a, b = inner.upper(), outer.upper()
    if a.startswith(EXACT_NUMERIC) and b.startswith(EXACT_NUMERIC):
        return "[" not in a + b and "(" not in a.replace("DECIMAL(", "") + b.replace("DECIMAL(", "")
    return a == b and a in KEY_TYPES
