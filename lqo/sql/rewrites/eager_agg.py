"""The ``eager_agg`` family: eager aggregation, probed only (no tuning candidate).

In a grouped query whose aggregates all read one table F, F is pre-aggregated on every F
column the rest of the query reads (its join keys, grouping columns), under F's own name,
with F's own filters. Every F row of a pre-aggregated group joins exactly the rows the
group joins, so ``sum`` of the group sums, ``min`` of the minimums and the count sums
equal the original aggregates with any join multiplicity (no uniqueness needed).

Only aggregates whose two-step value is DuckDB's own, digit for digit: ``count``,
``min``/``max`` of a column, and ``sum`` of a column of an integer type (not UHUGEINT or
HUGEINT, whose partial sums could overflow where the whole does not) or a DECIMAL of at
most 18 digits; a ``sum`` of a float adds in another order (other last digits), and
``avg`` divides differently (DuckDB's own division is not written in SQL). An aggregate
argument other than a column (or ``*``) is refused: computed on F rows the joins would
drop, a cast or an overflow could raise where native does not. Refused too:
``DISTINCT`` or ``FILTER`` aggregates, grouping sets, outer joins, subqueries, a query
without ``GROUP BY``.

>>> from lqo.sql.rewrites.contract import parse
>>> cat = {"f": {"k": "INTEGER", "x": "DECIMAL(15,2)", "d": "DOUBLE"}, "g": {"k": "INTEGER", "n": "VARCHAR"}}
>>> q = "SELECT g.n, sum(f.x) FROM f, g WHERE f.k = g.k GROUP BY g.n"
>>> [r.label for r in eager_rewrites(parse(q), cat)]
['eager_agg:1']
>>> eager_rewrites(parse(q.replace("sum(f.x)", "sum(f.d)")), cat), eager_rewrites(parse(q.replace("sum", "avg")), cat)
([], [])
"""

from __future__ import annotations

from sqlglot import exp

from lqo.sql.rewrites.contract import Columns, Refused, Rewrite, site_rewrites, volatile
from lqo.sql.rewrites.scopes import and_all, conjuncts, cte_columns, from_key, owner, sources, with_clause

# Types whose sum of partial sums is DuckDB's sum, type and digits (int64 values into an int128 sum).
_EXACT_SUM_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
_MAX_DECIMAL_WIDTH = 18  # DECIMAL stored in 64 bits: the int128 partial sums cannot overflow


def eager_rewrites(tree: exp.Expr, columns: Columns) -> list[Rewrite]:
    """Every grouped SELECT of ``tree`` (left untouched) the family proves, one rewrite each."""
    return site_rewrites(tree, "eager_agg", sum(1 for s in tree.find_all(exp.Select) if s.args.get("group")),
                         lambda copy, site: _eager_site(copy, site, columns))


def exact_sum_type(type_name: str) -> bool:
    """Whether summing partial sums of a column of ``type_name`` gives DuckDB's sum exactly.

    >>> [exact_sum_type(t) for t in ("INTEGER", "DECIMAL(15,2)", "DECIMAL(38,2)", "DOUBLE", "HUGEINT", "")]
    [True, True, False, False, False, False]
    """
    t = type_name.upper().strip()
    if t in _EXACT_SUM_TYPES:
        return True
    if t.startswith("DECIMAL(") and t.endswith(")"):
        width = t[len("DECIMAL("):-1].partition(",")[0].strip()
        return width.isdigit() and int(width) <= _MAX_DECIMAL_WIDTH
    return False


def _plain_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc) and not (isinstance(node.parent, exp.Window) and node.parent.this is node)


def _in_aggregate(node: exp.Expr, stop: exp.Expr) -> exp.AggFunc | None:
    p = node.parent
    while p is not None and p is not stop:
        if _plain_aggregate(p):
            return p  # type: ignore[return-value]
        p = p.parent
    return None


def _check_select(sel: exp.Select) -> None:
    """``Refused`` unless ``sel`` is a plain grouped inner-join SELECT."""
    group = sel.args["group"]
    if any(v for k, v in group.args.items() if k != "expressions") or \
            group.find(exp.Rollup, exp.Cube, exp.GroupingSets) is not None or sel.find(exp.Grouping) is not None:
        raise Refused("grouping sets, GROUP BY ALL")
    if sel.find(exp.Subquery, exp.Exists) is not None or with_clause(sel) is not None or sel.args.get("distinct"):
        raise Refused("subquery, WITH or DISTINCT")
    if volatile(sel) or sel.find(exp.Unnest) is not None:
        raise Refused("volatile")
    for j in sel.args.get("joins") or []:
        if j.side or j.args.get("using") or j.kind not in ("", None, "INNER", "CROSS"):
            raise Refused("outer or other join")


def _check_aggregate(a: exp.AggFunc, sources_: dict, columns: Columns) -> str:
    """The FROM alias whose column ``a`` aggregates (``count(*)``: ""), ``Refused`` unless
    its two-step value is exactly DuckDB's."""
    if not isinstance(a, (exp.Sum, exp.Count, exp.Min, exp.Max)) or a.find(exp.Distinct) \
            or isinstance(a.parent, exp.Filter):
        raise Refused(f"aggregate {a.sql()}")
    arg = a.this
    if isinstance(a, exp.Count) and (arg is None or isinstance(arg, exp.Star)):
        return ""
    if not isinstance(arg, exp.Column):
        raise Refused(f"an argument other than a column: {a.sql()}")
    o = owner(arg, sources_)
    if o is None:
        raise Refused(f"unresolved {arg.sql()}")
    if isinstance(a, exp.Sum) and not exact_sum_type(sources_[o].get(arg.name.lower(), "")):
        raise Refused(f"a sum whose partial sums may differ in digits or overflow: {a.sql()}")
    return o


def _eager_site(tree: exp.Expr, site: int, columns: Columns) -> None:
    sel = [s for s in tree.find_all(exp.Select) if s.args.get("group")][site]
    _check_select(sel)
    src = sources(sel, columns, cte_columns(tree, columns))
    if not src:
        raise Refused("unknown FROM item")
    from_items = [sel.args[from_key(sel)].this] + [j.this for j in sel.args.get("joins") or []]
    aggs = [a for a in sel.find_all(exp.AggFunc) if _plain_aggregate(a) and _in_aggregate(a, sel) is None]
    if not aggs:
        raise Refused("no aggregate")
    owners = {_check_aggregate(a, src, columns) for a in aggs} - {""}
    if len(owners) != 1:
        raise Refused("aggregates over several tables or none")
    fact = owners.pop()
    fact_items = [it for it in from_items if isinstance(it, exp.Table) and (it.alias or it.name).lower() == fact]
    if len(fact_items) != 1 or fact_items[0].name.lower() not in columns or len(src) < 2:
        raise Refused("the aggregated table is not a catalog table joined to others")
    if sel.find(exp.Star) is not None and not any(isinstance(a.this, exp.Star) for a in aggs if isinstance(a, exp.Count)):
        raise Refused("star")
    # F columns read outside the aggregates: the pre-aggregate's keys; F-only WHERE conjuncts move into it.
    where = sel.args.get("where")
    pushed: list[exp.Expr] = []
    kept: list[exp.Expr] = []
    for cj in conjuncts(where.this if where is not None else None):
        owners_c = {owner(cc, src) for cc in cj.find_all(exp.Column)}
        if None in owners_c:
            raise Refused("unresolved column")
        (pushed if owners_c == {fact} else kept).append(cj)
    keys: dict[str, exp.Column] = {}
    in_pushed = {id(col) for x in pushed for col in x.find_all(exp.Column)}
    for col in sel.find_all(exp.Column):
        if id(col) not in in_pushed and owner(col, src) == fact and _in_aggregate(col, sel) is None:
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
        else:  # min of minimums, max of maximums, sum of sums
            inner_cols.append(type(a)(this=local(arg)).as_(f"lqo_a{i}"))
            new = type(a)(this=exp.column(f"lqo_a{i}", table=fact))
        a.replace(new)
    pre = exp.Select(expressions=inner_cols).from_(exp.Table(this=exp.to_identifier(item.name)))
    if pushed:
        pre = pre.where(and_all([local(c) for c in pushed]), copy=False)
    pre = pre.group_by(*[exp.column(k) for k in keys], copy=False)
    item.replace(exp.Subquery(this=pre, alias=exp.TableAlias(this=exp.to_identifier(fact))))
    sel.set("where", exp.Where(this=and_all(kept)) if kept else None)
