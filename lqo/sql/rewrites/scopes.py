"""Reading a statement's scopes for the rewrite families: the FROM items of a SELECT and
their columns (tables, CTEs, derived tables), which one a column belongs to, WHERE
conjuncts. Where a name cannot be resolved for certain the answer is None, and the
family refuses.

>>> from lqo.sql.rewrites.contract import parse
>>> sel = parse("SELECT x.a FROM t AS x, (SELECT b FROM u) AS y WHERE x.a > 1 AND b < 2")
>>> src = sources(sel, {"t": {"a": "INTEGER"}}, {})
>>> {k: dict(v) for k, v in src.items()}
{'x': {'a': 'INTEGER'}, 'y': {'b': ''}}
>>> [c.sql() for c in conjuncts(sel.args["where"].this)]
['x.a > 1', 'b < 2']
"""

from __future__ import annotations

from typing import Mapping

from sqlglot import exp

from lqo.sql.rewrites.contract import Columns


def conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    """The AND-ed parts of ``node`` (parenthesized ANDs opened), [] for None."""
    if node is None:
        return []
    if isinstance(node, exp.And):
        return conjuncts(node.left) + conjuncts(node.right)
    if isinstance(node, exp.Paren) and isinstance(node.this, exp.And):
        return conjuncts(node.this)
    return [node]


def and_all(parts: list[exp.Expr]) -> exp.Expr | None:
    """``parts`` AND-ed (in place: no copies), None for none."""
    if not parts:
        return None
    node = parts[0]
    for p in parts[1:]:
        node = exp.and_(node, p, copy=False)
    return node


def with_clause(node: exp.Expr) -> exp.With | None:
    """The ``WITH`` of ``node``, if it has one."""
    w = node.args.get("with_") or node.args.get("with")
    return w if isinstance(w, exp.With) else None


def from_key(select: exp.Select) -> str:
    """The argument name sqlglot keeps a SELECT's FROM under (it differs by version)."""
    return "from_" if "from_" in select.args else "from"


def cte_columns(tree: exp.Expr, columns: Columns) -> dict[str, dict[str, str] | None]:
    """CTE name -> output column -> type (the catalog type where the output is a plain
    catalog column, else ""); None where the columns are not known (a ``*``)."""
    out: dict[str, dict[str, str] | None] = {}
    w = with_clause(tree)
    for cte in (w.expressions if w is not None else []):
        body = cte.this
        cols: dict[str, str] | None = output_names(body)
        if cols is not None and isinstance(body, exp.Select):
            src = sources(body, columns, out)
            for sel in body.expressions:
                inner = sel.this if isinstance(sel, exp.Alias) else sel
                if isinstance(inner, exp.Column) and src is not None:
                    o = owner(inner, src)
                    cols[sel.alias_or_name.lower()] = src[o].get(inner.name.lower(), "") if o else ""
        out[cte.alias.lower()] = cols
    return out


def output_names(body: exp.Expr) -> dict[str, str] | None:
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


def sources(select: exp.Select, columns: Columns, ctes: Mapping[str, Mapping[str, str] | None]
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
            cols = output_names(it.this)
        else:
            return None
        if cols is None:
            return None
        out[(it.alias or it.name).lower()] = cols
    return out


def owner(col: exp.Column, sources: Mapping[str, Mapping[str, str]]) -> str | None:
    """The FROM alias ``col`` belongs to among ``sources``, or None (not there, or ambiguous)."""
    if col.table:
        t = col.table.lower()
        return t if t in sources and col.name.lower() in sources[t] else None
    hits = [a for a, cols in sources.items() if col.name.lower() in cols]
    return hits[0] if len(hits) == 1 else None
