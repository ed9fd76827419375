"""The ``decorrelate`` family: a correlated scalar subquery joined pre-aggregated.

``outer <cmp> f((SELECT agg(..) FROM .. WHERE inner_k = outer_k AND ..))`` in a top-level
``WHERE`` conjunct becomes a join with the subquery pre-aggregated per ``inner_k`` (DuckDB
decorrelates with a delim join that aggregates only the outer keys' groups). Equivalent
because the subquery's value on an empty group is NULL (only ``avg/sum/min/max`` under
NULL-strict arithmetic) and a NULL-strict comparison in a ``WHERE`` conjunct drops the
row, as the inner join does where no group matches; NULL keys match nothing either way;
one row per key keeps the outer rows' multiplicity. ``count`` (0 on an empty group) is
refused, and so is a key whose grouping may differ from its ``=``
(:func:`~lqo.sql.rewrites.contract.key_types_compare_as_they_group`).

>>> from lqo.sql.rewrites.contract import parse
>>> cat = {"t": {"a": "INTEGER", "b": "INTEGER"}, "u": {"k": "INTEGER", "v": "INTEGER"}}
>>> [r.sql for r in decorrelate_rewrites(parse("SELECT a FROM t WHERE b > (SELECT sum(v) FROM u WHERE u.k = t.a)"),
...                                      cat)]                                 # doctest: +NORMALIZE_WHITESPACE
['SELECT a FROM t, (SELECT u.k AS lqo_sq1_k0, SUM(v) AS lqo_sq1_v FROM u GROUP BY u.k) AS lqo_sq1
  WHERE b > lqo_sq1.lqo_sq1_v AND t.a = lqo_sq1.lqo_sq1_k0']
>>> decorrelate_rewrites(parse("SELECT a FROM t WHERE b > (SELECT count(*) FROM u WHERE u.k = t.a)"), cat)
[]
"""

from __future__ import annotations

from typing import Iterator

from sqlglot import exp

from lqo.sql.rewrites.contract import (
    RESERVED_PREFIX,
    Columns,
    Refused,
    Rewrite,
    key_types_compare_as_they_group,
    site_rewrites,
    volatile,
)
from lqo.sql.rewrites.scopes import and_all, conjuncts, cte_columns, from_key, owner, sources, with_clause

_STRICT_AGGS = (exp.Avg, exp.Sum, exp.Min, exp.Max)
_ARITH = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Paren, exp.Neg)
_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def decorrelate_rewrites(tree: exp.Expr, columns: Columns) -> list[Rewrite]:
    """Every site of ``tree`` (left untouched) the family proves, one rewrite each."""
    return site_rewrites(tree, "decorrelate", sum(1 for _ in _sites(tree)),
                         lambda copy, site: _decorrelate_site(copy, site, columns))


def _sites(tree: exp.Expr) -> Iterator[tuple[exp.Select, exp.Expr, exp.Subquery]]:
    """(select, WHERE conjunct, scalar subquery) for each comparison conjunct holding one
    subquery under arithmetic only, in a stable order."""
    for sel in tree.find_all(exp.Select):
        where = sel.args.get("where")
        for c in conjuncts(where.this if where is not None else None):
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


def _check_subquery(inner: exp.Expr) -> exp.Select:
    """``inner`` as a one-column SELECT of a shape the family handles, else ``Refused``."""
    if not isinstance(inner, exp.Select) or len(inner.expressions) != 1:
        raise Refused("not a one-column SELECT")
    for key in ("group", "having", "distinct", "limit", "offset", "order", "qualify", "windows"):
        if inner.args.get(key):
            raise Refused(key)
    if inner.find(exp.Window) or volatile(inner) or with_clause(inner) is not None:
        raise Refused("window or volatile")
    for j in inner.args.get("joins") or []:
        if j.args.get("on") is not None or j.args.get("using") or j.side or j.kind not in ("", None, "CROSS"):
            raise Refused("explicit join in the subquery")
    return inner


def _decorrelate_site(tree: exp.Expr, site: int, columns: Columns) -> None:
    sel, _conj, sub = list(_sites(tree))[site]
    inner = _check_subquery(sub.this)
    ctes = cte_columns(tree, columns)
    inner_src = sources(inner, columns, ctes)
    outer_src = sources(sel, columns, ctes)
    if not inner_src or not outer_src:
        raise Refused("unknown FROM item")
    if _reads_all_columns(sel):
        raise Refused("SELECT * or COLUMNS(..) would read the added table")
    value = inner.expressions[0]
    value = value.this if isinstance(value, exp.Alias) else value
    if not _strict_value(value):
        raise Refused("the value is not NULL on an empty group")

    def side(col: exp.Column) -> str:
        if owner(col, inner_src) is not None:
            return "inner"
        if col.table and col.table.lower() in inner_src:
            raise Refused(f"unknown column {col.sql()}")
        if owner(col, outer_src) is not None:
            return "outer"
        raise Refused(f"column {col.sql()} is neither the subquery's nor its query's")

    if any(side(c) != "inner" for c in value.find_all(exp.Column)):
        raise Refused("outer column in the value")
    where = inner.args.get("where")
    keys: list[tuple[exp.Column, exp.Column]] = []
    local: list[exp.Expr] = []
    for c in conjuncts(where.this if where is not None else None):
        if c.find(exp.Subquery, exp.Exists) is not None:
            raise Refused("nested subquery")
        if "outer" not in {side(col) for col in c.find_all(exp.Column)}:
            local.append(c)
            continue
        lhs, rhs = (c.left, c.right) if isinstance(c, exp.EQ) else (None, None)
        if not (isinstance(lhs, exp.Column) and isinstance(rhs, exp.Column)) or \
                {side(lhs), side(rhs)} != {"inner", "outer"}:
            raise Refused("a correlation other than inner = outer")
        ic, oc = (lhs, rhs) if side(lhs) == "inner" else (rhs, lhs)
        inner_owner, outer_owner = owner(ic, inner_src), owner(oc, outer_src)
        assert inner_owner is not None and outer_owner is not None
        if not key_types_compare_as_they_group(inner_src[inner_owner].get(ic.name.lower(), ""),
                                               outer_src[outer_owner].get(oc.name.lower(), "")):
            raise Refused("a key whose grouping may differ from = (float, collation, cast, or of unknown type)")
        keys.append((ic, oc))
    if not keys:
        raise Refused("not correlated")
    _join_pre_aggregated(sel, sub, inner, value, keys, local, site)


def _join_pre_aggregated(sel: exp.Select, sub: exp.Subquery, inner: exp.Select, value: exp.Expr,
                         keys: list[tuple[exp.Column, exp.Column]], local: list[exp.Expr], site: int) -> None:
    """Replace ``sub`` by the value column of the subquery pre-aggregated per key, joined
    to ``sel`` on its keys."""
    alias = f"{RESERVED_PREFIX}sq{site + 1}"  # its columns too: no reference of the query can bind to them
    derived = exp.Select(expressions=[ic.copy().as_(f"{alias}_k{i}") for i, (ic, _) in enumerate(keys)]
                         + [value.copy().as_(f"{alias}_v")])
    derived = derived.from_(inner.args[from_key(inner)].this.copy(), copy=False)
    if inner.args.get("joins"):
        derived.set("joins", [j.copy() for j in inner.args["joins"]])
    if local:
        derived = derived.where(and_all([c.copy() for c in local]), copy=False)
    derived = derived.group_by(*[ic.copy() for ic, _ in keys], copy=False)
    sub.replace(exp.column(f"{alias}_v", table=alias))
    sel.append("joins", exp.Join(this=exp.Subquery(this=derived, alias=exp.TableAlias(this=exp.to_identifier(alias)))))
    extra = [exp.EQ(this=oc.copy(), expression=exp.column(f"{alias}_k{i}", table=alias))
             for i, (_, oc) in enumerate(keys)]
    sel.set("where", exp.Where(this=and_all([sel.args["where"].this] + extra)))
