"""Query rewrites DuckDB's optimizer does not make, written with sqlglot.

Three families, each a text that must return the same bag of rows as the original
(duplicates and NULL keys included); a shape the generator cannot prove equivalent is
refused (no rewrite), never guessed:

- ``cte``: one common table expression marked ``AS MATERIALIZED`` (DuckDB 1.5.5 inlines a
  CTE referenced once) or ``AS NOT MATERIALIZED`` (it materializes one referenced more
  than once). Refused where the CTE's body could give different rows on two evaluations
  (a volatile function, ``LIMIT``/``OFFSET``/``SAMPLE``, ``WITH RECURSIVE``).
- ``decorrelate``: a correlated scalar subquery ``outer <cmp> f((SELECT agg(..) FROM ..
  WHERE inner_k = outer_k AND ..))`` in a top-level ``WHERE`` conjunct becomes a join with
  the subquery pre-aggregated per ``inner_k`` (DuckDB decorrelates with a delim join that
  aggregates only the outer keys' groups). Equivalent because the subquery's value on an
  empty group is NULL (only ``avg/sum/min/max`` under NULL-strict arithmetic) and a
  NULL-strict comparison in a ``WHERE`` conjunct drops the row, as the inner join does
  where no group matches; NULL keys match nothing either way; one row per key keeps the
  outer rows' multiplicity. ``count`` (0 on an empty group) is refused.
- ``eager_agg``: in a grouped query whose aggregates all read one table F, F is
  pre-aggregated on every F column the rest of the query reads (its join keys, grouping
  columns), under F's own name, with F's own filters. Every F row of a pre-aggregated
  group joins exactly the rows the group joins, so ``sum`` of the group sums, ``min`` of
  the minimums and the count sums equal the original aggregates with any join
  multiplicity (no uniqueness needed). Refused: ``DISTINCT`` or ``FILTER`` aggregates,
  grouping sets, outer joins, subqueries, a query without ``GROUP BY``.

>>> cat = {"t": {"a": "INTEGER", "b": "INTEGER"}, "u": {"k": "INTEGER", "v": "INTEGER"}}
>>> q = "SELECT a FROM t WHERE b > (SELECT avg(v) FROM u WHERE u.k = t.a)"
>>> [r.label for r in rewrites(q, cat)]
['decorrelate:1']
>>> rewrites("SELECT a FROM t WHERE b > (SELECT count(*) FROM u WHERE u.k = t.a)", cat)
[]
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping

import duckdb
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

# Lower-cased table -> lower-cased column -> type name (lqo.sql.catalog.Catalog.tables).
Columns = Mapping[str, Mapping[str, str]]

FAMILIES = ("cte", "decorrelate", "eager_agg")
_VOLATILE = frozenset({"random", "rand", "uuid", "gen_random_uuid", "nextval", "setseed", "currval"})
_STRICT_AGGS = (exp.Avg, exp.Sum, exp.Min, exp.Max)
_ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Paren, exp.Neg)
_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
# Key types whose GROUP BY groups exactly the values ``=`` equates (no floats: -0.0 and
# 0.0; no collation; no TIME WITH TIME ZONE or INTERVAL, equal across representations).
_KEY_TYPES = frozenset({"BOOLEAN", "VARCHAR", "BLOB", "UUID", "DATE", "TIME", "TIMESTAMP", "TIMESTAMP_S",
                        "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"})
# Exact numeric types: a cast among them keeps every value distinct, so keys of two of them compare as they group.
_EXACT_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                  "UBIGINT", "UHUGEINT", "DECIMAL")
_RESERVED_PREFIX = "lqo_"  # names the rewrites add: a query already using one is refused


class Refused(Exception):
    """A shape the generator cannot prove equivalent: no rewrite of it."""


@dataclass(frozen=True)
class Rewrite:
    """One rewritten text: ``family`` (of ``FAMILIES``), ``label`` (family and site, the
    same for every instance of a template) and the ``sql``."""

    family: str
    label: str
    sql: str


def parse(sql: str) -> exp.Expr | None:
    """The one statement of ``sql`` as sqlglot reads DuckDB, or None."""
    try:
        stmts = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError, ValueError):
        return None
    return stmts[0] if len(stmts) == 1 else None


def rewrites(sql: str, columns: Columns, families: tuple[str, ...] = FAMILIES) -> list[Rewrite]:
    """Every rewrite of ``sql`` of the given families that the generator can prove."""
    out: list[Rewrite] = []
    tree = parse(sql)
    if tree is None or not _faithful(sql, tree) or _uses_reserved_names(tree):
        return out
    if sum(1 for _ in tree.find_all(exp.With)) > 1:  # a nested WITH: names this scope reading does not track
        families = tuple(f for f in families if f == "cte")
    gens = {"cte": _cte_rewrites, "decorrelate": _decorrelate_rewrites, "eager_agg": _eager_rewrites}
    for fam in families:
        out.extend(gens[fam](sql, columns))
    return out


def _render(tree: exp.Expr) -> str:
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


def _faithful(sql: str, tree: exp.Expr) -> bool:
    """Whether sqlglot writes ``tree`` back as the very statement DuckDB reads in ``sql``
    (every rewrite re-renders the whole text: a function sqlglot maps to another, such
    as ``~`` (a full regular-expression match) to ``regexp_matches`` (a partial one),
    would change the rows)."""
    want = _duckdb_ast(sql)
    return want is not None and want == _duckdb_ast(_render(tree))


def _uses_reserved_names(tree: exp.Expr) -> bool:
    """Whether a name of the query starts like the names a rewrite adds (a column of the
    added table could capture a reference to a column of the user's)."""
    return any(i.name.lower().startswith(_RESERVED_PREFIX) for i in tree.find_all(exp.Identifier))


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.And):
        return _conjuncts(node.this)
    return [node]


def _and(parts: list[exp.Expr]) -> exp.Expr | None:
    if not parts:
        return None
    node = parts[0]
    for p in parts[1:]:
        node = exp.and_(node, p, copy=False)
    return node


# ----------------------------------------------------------------- cte


def _volatile(node: exp.Expr) -> bool:
    for f in node.find_all(exp.Func):
        name = (f.sql_name() if not isinstance(f, exp.Anonymous) else str(f.this)).lower()
        if name in _VOLATILE or isinstance(f, exp.Rand):
            return True
    return node.find(exp.Limit, exp.Offset, exp.TableSample, exp.Fetch) is not None


def _cte_refs(tree: exp.Expr, name: str) -> int:
    return sum(1 for t in tree.find_all(exp.Table) if not t.db and t.name.lower() == name)


def _cte_rewrites(sql: str, columns: Columns) -> list[Rewrite]:
    tree = parse(sql)
    if tree is None:
        return []
    with_ = _with(tree)
    if with_ is None or with_.args.get("recursive"):
        return []
    out = []
    for i, cte in enumerate(with_.expressions):
        name = cte.alias.lower()
        if cte.args.get("materialized") is not None or _volatile(cte.this):
            continue
        refs = _cte_refs(tree, name)
        if refs == 0:
            continue
        want = refs == 1  # DuckDB inlines a CTE read once: materialize it; else inline it
        copy = parse(sql)
        copy_with = _with(copy) if copy is not None else None
        assert copy is not None and copy_with is not None
        copy_with.expressions[i].set("materialized", want)
        kind = "materialized" if want else "not_materialized"
        out.append(Rewrite("cte", f"cte:{name}={kind}", _render(copy)))
    return out


# ----------------------------------------------------------------- scopes


def _cte_columns(tree: exp.Expr, columns: Columns) -> dict[str, dict[str, str] | None]:
    """CTE name -> output column -> type (the catalog type where the output is a plain
    catalog column, else ""); None where the columns are not known (a ``*``)."""
    out: dict[str, dict[str, str] | None] = {}
    with_ = _with(tree)
    for cte in (with_.expressions if with_ is not None else []):
        body = cte.this
        cols: dict[str, str] | None = _names(body)
        if cols is not None and isinstance(body, exp.Select):
            sources = _sources(body, columns, out)
            for sel in body.expressions:
                inner = sel.this if isinstance(sel, exp.Alias) else sel
                if isinstance(inner, exp.Column) and sources is not None:
                    owner = _owner(inner, sources)
                    cols[sel.alias_or_name.lower()] = sources[owner].get(inner.name.lower(), "") if owner else ""
        out[cte.alias.lower()] = cols
    return out


def _names(body: exp.Expr) -> dict[str, str] | None:
    """The output columns of a query (types unknown: ""), None where a ``*`` hides them."""
    if not isinstance(body, (exp.Select, exp.Union)):
        return None
    names = [n.lower() for n in body.named_selects]
    if any(n == "*" or not n for n in names) or body.find(exp.Star) is not None and isinstance(body, exp.Union):
        return None
    if isinstance(body, exp.Select) and any(isinstance(p, exp.Star) or p.find(exp.Star) is not None
                                            and not isinstance(p, exp.Alias) for p in body.expressions):
        return None
    return {n: "" for n in names}


def _sources(select: exp.Select, columns: Columns, ctes: Mapping[str, Mapping[str, str] | None]
             ) -> dict[str, Mapping[str, str]] | None:
    """Alias -> columns of each FROM item of ``select`` (tables, CTEs, derived tables);
    None where one is of another kind (a table function, VALUES, UNNEST)."""
    items = []
    from_ = select.args.get("from") or select.args.get("from_")
    if from_ is not None:
        items.append(from_.this)
    items += [j.this for j in select.args.get("joins") or []]
    out: dict[str, Mapping[str, str]] = {}
    for it in items:
        if isinstance(it, exp.Table) and not isinstance(it.this, exp.Func) and not it.db and not it.catalog \
                and not (it.args.get("alias") or exp.TableAlias()).columns:
            name = it.name.lower()
            cols = ctes[name] if name in ctes else columns.get(name)  # a CTE shadows a table
        elif isinstance(it, exp.Subquery) and it.alias and not it.args["alias"].columns:
            cols = _names(it.this)
        else:
            return None
        if cols is None:
            return None
        out[(it.alias or it.name).lower()] = cols
    return out


def _owner(col: exp.Column, sources: Mapping[str, Mapping[str, str]]) -> str | None:
    """The FROM alias ``col`` belongs to among ``sources``, or None (not there, or ambiguous)."""
    if col.table:
        t = col.table.lower()
        return t if t in sources and col.name.lower() in sources[t] else None
    hits = [a for a, cols in sources.items() if col.name.lower() in cols]
    return hits[0] if len(hits) == 1 else None


def _with(node: exp.Expr) -> exp.With | None:
    w = node.args.get("with_") or node.args.get("with")
    return w if isinstance(w, exp.With) else None


def _from_key(select: exp.Select) -> str:
    return "from_" if "from_" in select.args else "from"


# ----------------------------------------------------------------- decorrelate


def _decorrelate_rewrites(sql: str, columns: Columns) -> list[Rewrite]:
    out: list[Rewrite] = []
    tree = parse(sql)
    if tree is None:
        return out
    n_sites = sum(1 for _ in _sites(tree))
    for site in range(n_sites):
        copy = parse(sql)
        assert copy is not None
        try:
            _decorrelate_site(copy, site, columns)
        except Refused:
            continue
        out.append(Rewrite("decorrelate", f"decorrelate:{site + 1}", _render(copy)))
    return out


def _sites(tree: exp.Expr) -> Iterator[tuple[exp.Select, exp.Expr, exp.Subquery]]:
    """(select, WHERE conjunct, scalar subquery) for each comparison conjunct holding one
    subquery under arithmetic only, in a stable order."""
    for sel in tree.find_all(exp.Select):
        where = sel.args.get("where")
        for c in _conjuncts(where.this if where is not None else None):
            if not isinstance(c, _CMP):
                continue
            subs = [s for s in c.find_all(exp.Subquery)]
            if len(subs) != 1 or c.find(exp.Exists, exp.In) is not None:
                continue
            node: exp.Expr | None = subs[0].parent
            while node is not None and node is not c and isinstance(node, _ARITH):
                node = node.parent
            if node is c:
                yield sel, c, subs[0]


def _strict_value(node: exp.Expr) -> bool:
    """Whether ``node`` is NULL whenever its aggregates see no row: avg/sum/min/max, or
    avg/sum under arithmetic and literals, no column outside an aggregate. (min/max keep
    their column's type, whose arithmetic can overflow: the pre-aggregate computes every
    group, native only some, so one could raise an error where the other does not.)"""
    if isinstance(node, _STRICT_AGGS):
        if isinstance(node, (exp.Min, exp.Max)) and isinstance(node.parent, _ARITH):
            return False
        return not node.find(exp.Distinct) and not isinstance(node.parent, exp.Window)
    if isinstance(node, exp.Literal):
        return False  # alone a literal is never NULL; within arithmetic, see below
    if isinstance(node, _ARITH):
        kids = [k for k in node.iter_expressions()]
        return any(_strict_value(k) for k in kids) and all(_strict_value(k) or isinstance(k, exp.Literal)
                                                            for k in kids)
    return False


def _reads_all_columns(sel: exp.Select) -> bool:
    """Whether ``sel`` reads columns by pattern (``*``, ``COLUMNS(..)``) other than
    ``count(*)`` and a qualified ``t.*``: they would read the added derived table too."""
    for node in sel.find_all(exp.Star, exp.Columns):
        if isinstance(node, exp.Columns):
            return True
        parent = node.parent
        if isinstance(parent, exp.Count):
            continue
        if isinstance(parent, exp.Column) and parent.table:
            continue
        return True
    return False


def _key_types_compare_as_they_group(inner: str, outer: str) -> bool:
    """Whether grouping inner keys of type ``inner`` and joining them with ``=`` to an
    outer key of type ``outer`` equates exactly what the subquery's ``=`` equates: the
    same type of ``_KEY_TYPES`` (no collation), or two exact numeric types. A float key
    groups -0.0 apart from 0.0; a collated or cast key (VARCHAR = INTEGER) equates
    values it groups apart; an unknown type ("") is refused."""
    a, b = inner.upper(), outer.upper()
    if a.startswith(_EXACT_NUMERIC) and b.startswith(_EXACT_NUMERIC):
        return "[" not in a + b and "(" not in a.replace("DECIMAL(", "") + b.replace("DECIMAL(", "")
    return a == b and a in _KEY_TYPES


def _decorrelate_site(tree: exp.Expr, site: int, columns: Columns) -> None:
    sel, conj, sub = list(_sites(tree))[site]
    inner = sub.this
    if not isinstance(inner, exp.Select) or len(inner.expressions) != 1:
        raise Refused("not a one-column SELECT")
    for key in ("group", "having", "distinct", "limit", "offset", "order", "qualify", "windows"):
        if inner.args.get(key):
            raise Refused(key)
    if inner.find(exp.Window) or _volatile(inner) or _with(inner) is not None:
        raise Refused("window or volatile")
    for j in inner.args.get("joins") or []:
        if j.args.get("on") is not None or j.args.get("using") or j.side or j.kind not in ("", None, "CROSS"):
            raise Refused("explicit join in the subquery")
    ctes = _cte_columns(tree, columns)
    inner_src = _sources(inner, columns, ctes)
    outer_src = _sources(sel, columns, ctes)
    if not inner_src or not outer_src:
        raise Refused("unknown FROM item")
    if _reads_all_columns(sel):
        raise Refused("SELECT * or COLUMNS(..) would read the added table")
    value = inner.expressions[0]
    value = value.this if isinstance(value, exp.Alias) else value
    if not _strict_value(value):
        raise Refused("the value is not NULL on an empty group")

    def side(col: exp.Column) -> str:
        if _owner(col, inner_src) is not None:
            return "inner"
        if col.table and col.table.lower() in inner_src:
            raise Refused(f"unknown column {col.sql()}")
        if _owner(col, outer_src) is not None:
            return "outer"
        raise Refused(f"column {col.sql()} is neither the subquery's nor its query's")

    if any(side(c) != "inner" for c in value.find_all(exp.Column)):
        raise Refused("outer column in the value")
    where = inner.args.get("where")
    keys: list[tuple[exp.Column, exp.Column]] = []
    local: list[exp.Expr] = []
    for c in _conjuncts(where.this if where is not None else None):
        if c.find(exp.Subquery, exp.Exists) is not None:
            raise Refused("nested subquery")
        sides = {side(col) for col in c.find_all(exp.Column)}
        if "outer" not in sides:
            local.append(c)
            continue
        lhs, rhs = (c.left, c.right) if isinstance(c, exp.EQ) else (None, None)
        if not (isinstance(lhs, exp.Column) and isinstance(rhs, exp.Column)) or \
                {side(lhs), side(rhs)} != {"inner", "outer"}:
            raise Refused("a correlation other than inner = outer")
        ic, oc = (lhs, rhs) if side(lhs) == "inner" else (rhs, lhs)
        owner, outer_owner = _owner(ic, inner_src), _owner(oc, outer_src)
        assert owner is not None and outer_owner is not None
        if not _key_types_compare_as_they_group(inner_src[owner].get(ic.name.lower(), ""),
                                                outer_src[outer_owner].get(oc.name.lower(), "")):
            raise Refused("a key whose grouping may differ from = (float, collation, cast, or of unknown type)")
        keys.append((ic, oc))
    if not keys:
        raise Refused("not correlated")
    alias = f"{_RESERVED_PREFIX}sq{site + 1}"  # its columns too: no reference of the query can bind to them
    derived = exp.Select(expressions=[ic.copy().as_(f"{alias}_k{i}") for i, (ic, _) in enumerate(keys)]
                         + [value.copy().as_(f"{alias}_v")])
    derived = derived.from_(inner.args[_from_key(inner)].this.copy(), copy=False)
    if inner.args.get("joins"):
        derived.set("joins", [j.copy() for j in inner.args["joins"]])
    if local:
        derived = derived.where(_and([c.copy() for c in local]), copy=False)
    derived = derived.group_by(*[ic.copy() for ic, _ in keys], copy=False)
    sub.replace(exp.column(f"{alias}_v", table=alias))
    sel.append("joins", exp.Join(this=exp.Subquery(this=derived, alias=exp.TableAlias(this=exp.to_identifier(alias)))))
    extra = [exp.EQ(this=oc.copy(), expression=exp.column(f"{alias}_k{i}", table=alias))
             for i, (_, oc) in enumerate(keys)]
    sel.set("where", exp.Where(this=_and([sel.args["where"].this] + extra)))


# ----------------------------------------------------------------- eager aggregation


def _eager_rewrites(sql: str, columns: Columns) -> list[Rewrite]:
    tree = parse(sql)
    if tree is None:
        return []
    out = []
    n = sum(1 for s in tree.find_all(exp.Select) if s.args.get("group"))
    for site in range(n):
        copy = parse(sql)
        assert copy is not None
        try:
            _eager_site(copy, site, columns)
        except Refused:
            continue
        out.append(Rewrite("eager_agg", f"eager_agg:{site + 1}", _render(copy)))
    return out


def _plain_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc) and not (isinstance(node.parent, exp.Window) and node.parent.this is node)


def _in_aggregate(node: exp.Expr, stop: exp.Expr) -> exp.AggFunc | None:
    p = node.parent
    while p is not None and p is not stop:
        if _plain_aggregate(p):
            return p  # type: ignore[return-value]
        p = p.parent
    return None


def _eager_site(tree: exp.Expr, site: int, columns: Columns) -> None:
    sel = [s for s in tree.find_all(exp.Select) if s.args.get("group")][site]
    group = sel.args["group"]
    if any(v for k, v in group.args.items() if k != "expressions") or \
            group.find(exp.Rollup, exp.Cube, exp.GroupingSets) is not None or sel.find(exp.Grouping) is not None:
        raise Refused("grouping sets, GROUP BY ALL")
    if sel.find(exp.Subquery, exp.Exists) is not None or _with(sel) is not None or sel.args.get("distinct"):
        raise Refused("subquery, WITH or DISTINCT")
    if _volatile(sel) or sel.find(exp.Unnest) is not None:
        raise Refused("volatile")
    for j in sel.args.get("joins") or []:
        if j.side or j.args.get("using") or j.kind not in ("", None, "INNER", "CROSS"):
            raise Refused("outer or other join")
    sources = _sources(sel, columns, _cte_columns(tree, columns))
    if not sources:
        raise Refused("unknown FROM item")
    from_items = [sel.args[_from_key(sel)].this] + [j.this for j in sel.args.get("joins") or []]
    aggs = [a for a in sel.find_all(exp.AggFunc) if _plain_aggregate(a) and _in_aggregate(a, sel) is None]
    if not aggs:
        raise Refused("no aggregate")
    owners: set[str] = set()
    for a in aggs:
        if not isinstance(a, (exp.Sum, exp.Count, exp.Min, exp.Max, exp.Avg)) or a.find(exp.Distinct) \
                or isinstance(a.parent, exp.Filter):
            raise Refused(f"aggregate {a.sql()}")
        for c in a.find_all(exp.Column):
            o = _owner(c, sources)
            if o is None:
                raise Refused(f"unresolved {c.sql()}")
            owners.add(o)
    if len(owners) != 1:
        raise Refused("aggregates over several tables or none")
    fact = owners.pop()
    fact_items = [it for it in from_items if isinstance(it, exp.Table) and (it.alias or it.name).lower() == fact]
    if len(fact_items) != 1 or fact_items[0].name.lower() not in columns or len(sources) < 2:
        raise Refused("the aggregated table is not a catalog table joined to others")
    if sel.find(exp.Star) is not None and not any(isinstance(a.this, exp.Star) for a in aggs if isinstance(a, exp.Count)):
        raise Refused("star")
    # F columns read outside the aggregates: the pre-aggregate's keys; F-only WHERE conjuncts move into it.
    where = sel.args.get("where")
    conj = _conjuncts(where.this if where is not None else None)
    pushed: list[exp.Expr] = []
    kept: list[exp.Expr] = []
    for cj in conj:
        owners_c = {_owner(cc, sources) for cc in cj.find_all(exp.Column)}
        if None in owners_c:
            raise Refused("unresolved column")
        (pushed if owners_c == {fact} else kept).append(cj)
    keys: dict[str, exp.Column] = {}
    in_pushed = {id(col) for x in pushed for col in x.find_all(exp.Column)}
    for col in sel.find_all(exp.Column):
        if id(col) in in_pushed:
            continue
        if _owner(col, sources) == fact and _in_aggregate(col, sel) is None:
            keys.setdefault(col.name.lower(), col)
    if not keys:
        raise Refused("no join key")
    _build_eager(sel, fact_items[0], fact, keys, aggs, pushed, kept)


def _build_eager(sel: exp.Select, item: exp.Table, fact: str, keys: dict[str, exp.Column],
                 aggs: list[exp.AggFunc], pushed: list[exp.Expr], kept: list[exp.Expr]) -> None:
    def local(node: exp.Expr) -> exp.Expr:
        c = node.copy()
        for col in list(c.find_all(exp.Column)):
            col.set("table", None)
        return c

    inner_cols: list[exp.Expr] = [exp.column(k).as_(k) for k in keys]
    for i, a in enumerate(aggs):
        arg = a.this
        if isinstance(a, exp.Count):
            star = arg is None or isinstance(arg, exp.Star)
            inner_cols.append((exp.Count(this=exp.Star()) if star else exp.Count(this=local(arg))).as_(f"lqo_c{i}"))
            new: exp.Expr = exp.cast(exp.Sum(this=exp.column(f"lqo_c{i}", table=fact)), "BIGINT")
        elif isinstance(a, (exp.Min, exp.Max)):
            inner_cols.append(type(a)(this=local(arg)).as_(f"lqo_a{i}"))
            new = type(a)(this=exp.column(f"lqo_a{i}", table=fact))
        elif isinstance(a, exp.Sum):
            inner_cols.append(exp.Sum(this=local(arg)).as_(f"lqo_a{i}"))
            new = exp.Sum(this=exp.column(f"lqo_a{i}", table=fact))
        else:  # avg = sum of sums / sum of counts, as DOUBLE like DuckDB's avg
            inner_cols.append(exp.Sum(this=local(arg)).as_(f"lqo_a{i}"))
            inner_cols.append(exp.Count(this=local(arg)).as_(f"lqo_c{i}"))
            new = exp.Div(this=exp.cast(exp.Sum(this=exp.column(f"lqo_a{i}", table=fact)), "DOUBLE"),
                          expression=exp.Sum(this=exp.column(f"lqo_c{i}", table=fact)))
        a.replace(new)
    pre = exp.Select(expressions=inner_cols).from_(exp.Table(this=exp.to_identifier(item.name)))
    if pushed:
        pre = pre.where(_and([local(c) for c in pushed]), copy=False)
    pre = pre.group_by(*[exp.column(k) for k in keys], copy=False)
    item.replace(exp.Subquery(this=pre, alias=exp.TableAlias(this=exp.to_identifier(fact))))
    sel.set("where", exp.Where(this=_and(kept)) if kept else None)


def apply_rewrite(sql: str, label: str, columns: Columns) -> str | None:
    """The rewrite of ``sql`` named ``label`` (``family:site``), or None where the
    generator does not prove it for this text.

    >>> cat = {"t": {"a": "INTEGER", "b": "INTEGER"}, "u": {"k": "INTEGER", "v": "INTEGER"}}
    >>> out = apply_rewrite("SELECT a FROM t WHERE b > (SELECT max(v) FROM u WHERE u.k = t.a)", "decorrelate:1", cat)
    >>> head, _, tail = out.partition(" WHERE ")
    >>> head
    'SELECT a FROM t, (SELECT u.k AS lqo_sq1_k0, MAX(v) AS lqo_sq1_v FROM u GROUP BY u.k) AS lqo_sq1'
    >>> tail
    'b > lqo_sq1.lqo_sq1_v AND t.a = lqo_sq1.lqo_sq1_k0'
    """
    family = label.partition(":")[0]
    if family not in FAMILIES:
        return None
    return next((r.sql for r in rewrites(sql, columns, (family,)) if r.label == label), None)
