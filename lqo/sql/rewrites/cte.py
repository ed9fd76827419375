"""The ``cte`` family: one common table expression marked ``AS MATERIALIZED`` (DuckDB 1.5.5
inlines a CTE referenced once) or ``AS NOT MATERIALIZED`` (it materializes one referenced
more than once).

Materializing evaluates the body once, as inlining a CTE read once does. Inlining a CTE
read twice evaluates its body twice, so it is refused where two evaluations could give
different rows (:func:`order_dependent`): a volatile function, ``LIMIT``/``OFFSET``/
``SAMPLE``, a window, an aggregate whose value depends on the order of its rows or on
the order it adds them in (all but ``count``/``min``/``max``/bit and boolean ones, and
``sum``/``avg`` of an exact numeric column), ``DISTINCT ON``, a function sqlglot does not
know, or a CTE it reads that is any of these. ``WITH RECURSIVE`` is refused.

>>> from lqo.sql.rewrites.contract import parse
>>> cat = {"t": {"a": "INTEGER", "d": "DOUBLE"}}
>>> q = "WITH c AS (SELECT a, sum(a) AS s FROM t GROUP BY a) SELECT * FROM c AS x, c AS y WHERE x.a = y.a"
>>> [r.label for r in cte_rewrites(parse(q), cat)]
['cte:c=not_materialized']
>>> cte_rewrites(parse(q.replace("sum(a)", "sum(d)")), cat)       # a float sum's last digits vary
[]
"""

from __future__ import annotations

from sqlglot import exp

from lqo.sql.rewrites.contract import EXACT_NUMERIC, Columns, Rewrite, to_duckdb_sql, volatile
from lqo.sql.rewrites.scopes import cte_columns, owner, sources, with_clause

# Aggregates whose value is the same whatever order their rows come in (sum/avg: only of
# an exact numeric column; of a float their last digits follow the order of the additions).
_ORDER_FREE_AGGS = (exp.Count, exp.Min, exp.Max, exp.Sum, exp.Avg, exp.LogicalAnd, exp.LogicalOr,
                    exp.BitwiseAndAgg, exp.BitwiseOrAgg, exp.BitwiseXorAgg)
# Functions whose value sqlglot may not know to be an aggregate, or that read the clock.
_CLOCK = (exp.CurrentTimestamp, exp.CurrentDate, exp.CurrentTime, exp.CurrentDatetime)


def cte_rewrites(tree: exp.Expr, columns: Columns) -> list[Rewrite]:
    """Each CTE of ``tree`` (left untouched) marked against DuckDB's default, where that is proved."""
    w = with_clause(tree)
    if w is None or w.args.get("recursive"):
        return []
    out = []
    for i, cte in enumerate(w.expressions):
        name = cte.alias.lower()
        if cte.args.get("materialized") is not None or volatile(cte.this):
            continue
        refs = sum(1 for t in tree.find_all(exp.Table) if not t.db and t.name.lower() == name)
        if refs == 0:
            continue
        want = refs == 1  # DuckDB inlines a CTE read once: materialize it; else inline it
        if not want and _reads_order_dependent(tree, w, i, columns):
            continue  # inlined, the body runs once per reference
        copy = tree.copy()
        copy_with = with_clause(copy)
        assert copy_with is not None
        copy_with.expressions[i].set("materialized", want)
        kind = "materialized" if want else "not_materialized"
        out.append(Rewrite("cte", f"cte:{name}={kind}", to_duckdb_sql(copy)))
    return out


def _reads_order_dependent(tree: exp.Expr, w: exp.With, i: int, columns: Columns) -> bool:
    """Whether CTE ``i``'s body, or the body of a CTE of ``w`` it reads (transitively),
    could give other rows on a second evaluation."""
    bodies = {c.alias.lower(): c.this for c in w.expressions}
    seen: set[str] = set()
    todo = [w.expressions[i].alias.lower()]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        body = bodies[name]
        if volatile(body) or order_dependent(body, tree, columns):
            return True
        todo += [t.name.lower() for t in body.find_all(exp.Table) if not t.db and t.name.lower() in bodies]
    return False


def order_dependent(body: exp.Expr, tree: exp.Expr, columns: Columns) -> bool:
    """Whether ``body`` (a query within ``tree``) could give other rows on another
    evaluation over the same data: a window, ``DISTINCT ON``, a function sqlglot does not
    know (possibly an order-dependent aggregate such as ``arbitrary``) or one reading the
    clock or a random source, an aggregate outside ``_ORDER_FREE_AGGS``, or a ``sum``/
    ``avg`` whose argument is not a column of an exact numeric type.

    >>> from lqo.sql.rewrites.contract import parse
    >>> q = parse("SELECT a, row_number() OVER () FROM t")
    >>> order_dependent(q, q, {"t": {"a": "INTEGER"}})
    True
    """
    if body.find(exp.Window, exp.Anonymous, exp.Rand, exp.Uuid, *_CLOCK) is not None:
        return True
    if any(isinstance(s.args.get("distinct"), exp.Distinct) and s.args["distinct"].args.get("on") is not None
           for s in body.find_all(exp.Select)):
        return True
    ctes = cte_columns(tree, columns)
    for agg in body.find_all(exp.AggFunc):
        if not isinstance(agg, _ORDER_FREE_AGGS):
            return True
        if isinstance(agg, (exp.Sum, exp.Avg)) and not _exact_column(agg.this, agg, columns, ctes):
            return True
    return False


def _exact_column(arg: exp.Expr, agg: exp.AggFunc, columns: Columns,
                  ctes: dict[str, dict[str, str] | None]) -> bool:
    """Whether ``arg`` (of ``agg``) is a column of its SELECT's FROM items typed an exact numeric type."""
    if isinstance(arg, exp.Distinct) and len(arg.expressions) == 1:
        arg = arg.expressions[0]
    sel = agg.find_ancestor(exp.Select)
    if not isinstance(arg, exp.Column) or sel is None:
        return False
    src = sources(sel, columns, ctes)
    o = owner(arg, src) if src is not None else None
    ty = src[o].get(arg.name.lower(), "").upper() if src is not None and o is not None else ""
    return ty.startswith(EXACT_NUMERIC) and "[" not in ty
