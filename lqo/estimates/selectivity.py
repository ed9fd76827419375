"""Selectivity of single-relation filters, from ``lqo.estimates.stats``.

Comparisons with constants (=, <>, <, <=, >, >=, BETWEEN, IN, IS [NOT] NULL, [NOT]
LIKE/ILIKE), AND/OR/NOT, casts and date +- interval arithmetic are estimated from
most-common values, equi-depth histograms and null fractions; a lower and an upper bound
on one column are combined as a range. Anything else gets a documented default.

>>> selectivity(stats, relation, block.filters["orders"])  # doctest: +SKIP
0.152
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable

from sqlglot import exp

from lqo.estimates.stats import ColumnStats, DatabaseStats
from lqo.sql.join_graph import Relation

DEFAULT_EQ = 0.1  # equality the stats cannot see into (functions of columns, CTE columns)
DEFAULT_RANGE = 0.33
DEFAULT_LIKE = 0.1
DEFAULT_OTHER = 0.33
DEFAULT_QUERY_ROWS = 1000.0  # a subquery lqo cannot estimate at all
_EPOCH = datetime(1970, 1, 1)
_UNIT_DAYS = {"DAY": 1.0, "WEEK": 7.0, "MONTH": 30.4375, "QUARTER": 91.3125, "YEAR": 365.25,
              "HOUR": 1 / 24, "MINUTE": 1 / 1440, "SECOND": 1 / 86400}
_FLIP: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.LT: exp.GT, exp.GT: exp.LT, exp.LTE: exp.GTE, exp.GTE: exp.LTE, exp.EQ: exp.EQ, exp.NEQ: exp.NEQ}


def selectivity(stats: DatabaseStats, relation: Relation, filters: list[exp.Expr],
                derived: Callable[[Relation, str], ColumnStats | None] | None = None) -> float:
    """Fraction of ``relation``'s rows passing all ``filters`` (assumed independent).

    ``derived`` maps a CTE or derived table's column to the stats of the base column it
    projects, if any (the ``Estimator`` traces them); without it their filters get defaults.

    >>> selectivity(stats, block.relation("orders"), block.filters["orders"])  # doctest: +SKIP
    0.042
    """
    return min(1.0, max(0.0, _conjunction(Scope(stats, [relation], derived), filters)))


def _conjunction(scope: Scope, conds: list[exp.Expr]) -> float:
    """Product of the conjuncts, except that a lower and an upper bound on one column
    combine as ``P(x >= lo) + P(x <= hi) - P(x not null)``: independence would square
    a date window's selectivity."""
    sel = 1.0
    bounds: dict[tuple[str, str], list] = {}  # (alias, column) -> [lowest-selectivity lower, upper, ColumnStats]
    for c in conds:
        while isinstance(c, exp.Paren):
            c = c.this
        if isinstance(c, exp.And):
            flat = list(c.flatten())
            if len(flat) > 1:
                sel *= _conjunction(scope, flat)
                continue
        side = _bound_side(scope, c)
        if side is None:
            sel *= predicate_selectivity(scope, c)
            continue
        col, name, is_lower = side
        slot = bounds.setdefault(name, [None, None, col])
        s = predicate_selectivity(scope, c)
        i = 0 if is_lower else 1
        slot[i] = s if slot[i] is None else min(slot[i], s)
    for lo, hi, col in bounds.values():
        if lo is not None and hi is not None:
            sel *= max(0.0, lo + hi - (1.0 - col.null_frac))
        else:
            sel *= lo if lo is not None else hi
    return sel


def _bound_side(scope: Scope, e: exp.Expr):
    """``(column stats, (alias, column), is lower bound)`` for ``col <op> constant``, else None."""
    if type(e) not in (exp.LT, exp.LTE, exp.GT, exp.GTE):
        return None
    op = type(e)
    col_e, other = e.this, e.expression
    hit = scope.lookup(col_e)
    if hit is None:
        other, op = col_e, _FLIP[op]
        hit = scope.lookup(e.expression)
    if hit is None or _to_domain(fold_constant(other), hit[1].kind) is None:
        return None
    return hit[1], hit[0], op in (exp.GT, exp.GTE)


# ------------------------------------------------------------------ constant folding
def fold_constant(e: exp.Expr) -> Any:
    """A constant as ("num", float) | ("str", str) | ("date", days) | ("ival", days), or None."""
    if isinstance(e, (exp.Paren, exp.Collate)):
        return fold_constant(e.this)
    if isinstance(e, exp.Literal):
        if e.is_string:
            return ("str", e.this)
        try:
            return ("num", float(e.this))
        except ValueError:
            return None
    if isinstance(e, exp.Boolean):
        return ("num", 1.0 if e.this else 0.0)
    if isinstance(e, exp.Neg):
        v = fold_constant(e.this)
        return (v[0], -v[1]) if v and v[0] in ("num", "ival") else None
    if isinstance(e, exp.Cast):
        v = fold_constant(e.this)
        target = e.to.this.name if isinstance(e.to, exp.DataType) else ""
        if v is None:
            return None
        if target.startswith(("DATE", "TIMESTAMP")):
            return ("date", _days(v[1])) if v[0] == "str" and _days(v[1]) is not None else (v if v[0] == "date" else None)
        if target in ("VARCHAR", "TEXT", "CHAR", "NCHAR", "NVARCHAR"):
            return ("str", v[1]) if v[0] == "str" else None
        return _as_num(v)
    if isinstance(e, exp.Interval):
        v = fold_constant(e.this)
        unit_e = e.unit
        unit = unit_e.name.upper() if unit_e else ""
        if v and v[0] == "str" and not unit:  # INTERVAL '90 days'
            parts = v[1].split()
            v, unit = (("str", parts[0]), parts[1].upper()) if len(parts) == 2 else (None, "")
        n = _as_num(v) if v else None
        per = _UNIT_DAYS.get(unit.rstrip("S"))
        return ("ival", n[1] * per) if n and per else None
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        a, b = fold_constant(e.this), fold_constant(e.expression)
        if a is None or b is None:
            return None
        if isinstance(e, (exp.Add, exp.Sub)) and "date" in (a[0], b[0]):
            d, o = (a, b) if a[0] == "date" else (b, a)
            off = o[1] if o[0] in ("ival", "num") else None
            if off is None or (isinstance(e, exp.Sub) and d is b):
                return None
            return ("date", d[1] + (off if isinstance(e, exp.Add) else -off))
        a, b = _as_num(a), _as_num(b)
        if a is None or b is None:
            return None
        if isinstance(e, exp.Add):
            return ("num", a[1] + b[1])
        if isinstance(e, exp.Sub):
            return ("num", a[1] - b[1])
        if isinstance(e, exp.Mul):
            return ("num", a[1] * b[1])
        return ("num", a[1] / b[1]) if b[1] else None
    return None


def _as_num(v: Any):
    if v[0] in ("num", "ival"):
        return ("num", v[1])
    if v[0] == "str":
        try:
            return ("num", float(v[1]))
        except ValueError:
            return None
    return None


def _days(text: str) -> float | None:
    try:
        return (datetime.fromisoformat(text.strip()) - _EPOCH).total_seconds() / 86400.0
    except ValueError:
        return None


def _to_domain(v: Any, kind: str):
    """A folded constant as a value comparable with the column's stored values."""
    if v is None:
        return None
    if kind == "num":
        n = _as_num(v)
        return n[1] if n else None
    if kind == "date":
        if v[0] == "date":
            return v[1]
        return _days(v[1]) if v[0] == "str" else None
    if kind == "str":
        if v[0] == "str":
            return v[1]
        return (str(int(v[1])) if float(v[1]).is_integer() else str(v[1])) if v[0] == "num" else None
    return None


# ------------------------------------------------------------------ predicates
class Scope:
    """Resolves column references to stats: in one relation, or in any table of a block."""

    def __init__(self, stats: DatabaseStats, rels: list[Relation], derived: Any = None) -> None:
        self.stats = stats
        self.rels = rels
        self.derived = derived

    def lookup(self, e: exp.Expr) -> tuple[tuple[str, str], ColumnStats] | None:
        """The (table, column) and statistics of a column reference, through parentheses and casts; None otherwise."""
        while isinstance(e, (exp.Paren, exp.Cast)):
            e = e.this
        if not isinstance(e, exp.Column):
            return None
        name = e.name.lower()
        if e.table:
            rel = next((r for r in self.rels if r.alias == e.table.lower()), None)
        elif len(self.rels) == 1:
            rel = self.rels[0]
        else:
            owners = [r for r in self.rels if r.columns is not None and name in r.columns]
            rel = owners[0] if len(owners) == 1 else None
        if rel is None:
            return None
        if rel.kind != "table" or rel.name is None:
            col = self.derived(rel, name) if self.derived is not None else None
        else:
            col = self.stats.column(rel.name, name)
        return None if col is None else ((rel.alias, name), col)


def _column(scope: Scope, e: exp.Expr) -> ColumnStats | None:
    hit = scope.lookup(e)
    return None if hit is None else hit[1]


@lru_cache(maxsize=1024)
def _like_regex(pattern: str, ilike: bool) -> re.Pattern:
    body = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(body + r"\Z", re.DOTALL | (re.IGNORECASE if ilike else 0))


def predicate_selectivity(scope: Scope, e: exp.Expr) -> float:
    """The estimated fraction of rows predicate ``e`` keeps (AND, OR, NOT, comparisons, IN, LIKE, ...)."""
    if isinstance(e, exp.Paren):
        return predicate_selectivity(scope, e.this)
    if isinstance(e, exp.And):
        return _conjunction(scope, list(e.flatten()))
    if isinstance(e, exp.Or):
        miss = 1.0
        for part in e.flatten():
            miss *= 1.0 - min(1.0, predicate_selectivity(scope, part))
        return 1.0 - miss
    if isinstance(e, exp.Not):
        return 1.0 - min(1.0, predicate_selectivity(scope, e.this))
    if isinstance(e, exp.Boolean):
        return 1.0 if e.this else 0.0
    if type(e) in _FLIP:
        return _compare(scope, e)
    if isinstance(e, exp.Between):
        col = _column(scope, e.this)
        if col is None:
            return DEFAULT_RANGE * 0.5
        lo, hi = _to_domain(fold_constant(e.args["low"]), col.kind), _to_domain(fold_constant(e.args["high"]), col.kind)
        if lo is None or hi is None:
            return DEFAULT_RANGE * 0.5
        return max(0.0, col.le_frac(hi) - col.lt_frac(lo))
    if isinstance(e, exp.In):
        items = e.expressions
        col = _column(scope, e.this)
        if col is None or not items or e.args.get("query") is not None:
            return min(0.5, DEFAULT_EQ * max(1, len(items)))
        vals = {_to_domain(fold_constant(i), col.kind) for i in items}
        if None in vals:
            return min(0.5, DEFAULT_EQ * len(items))
        return min(1.0 - col.null_frac, sum(col.eq_frac(v) for v in vals))
    if isinstance(e, exp.Is):
        col = _column(scope, e.this)
        if isinstance(e.expression, exp.Null):
            return col.null_frac if col is not None else 0.05
        return DEFAULT_OTHER
    if isinstance(e, (exp.Like, exp.ILike)):
        col = _column(scope, e.this)
        pat = fold_constant(e.expression)
        if col is None or col.kind != "str" or pat is None or pat[0] != "str":
            s = DEFAULT_LIKE
        else:
            rx = _like_regex(pat[1], isinstance(e, exp.ILike))
            s = col.match_frac(lambda v: rx.match(v) is not None)
        if e.args.get("negate"):
            return max(0.0, 1.0 - (col.null_frac if col else 0.0) - s)
        return s
    return DEFAULT_OTHER


def _compare(scope: Scope, e: exp.Expr) -> float:
    op = type(e)
    left, right = e.this, e.expression
    lcol, rcol = _column(scope, left), _column(scope, right)
    if lcol is not None and rcol is not None:  # two columns of one relation
        if op is exp.EQ:
            return 1.0 / max(lcol.ndv, rcol.ndv, 1.0)
        return 1.0 - 1.0 / max(lcol.ndv, rcol.ndv, 1.0) if op is exp.NEQ else DEFAULT_RANGE
    col, other = lcol, right
    if col is None:
        col, other, op = rcol, left, _FLIP[op]
    if col is not None and op is exp.EQ and isinstance(other, exp.Column):
        return 1.0 / max(col.ndv, 1.0)  # an outer (correlated) column: one value per call
    v = _to_domain(fold_constant(other), col.kind) if col is not None else None
    if col is None or v is None:
        return DEFAULT_EQ if op is exp.EQ else 1.0 - DEFAULT_EQ if op is exp.NEQ else DEFAULT_RANGE
    if op is exp.EQ:
        return col.eq_frac(v)
    if op is exp.NEQ:
        return max(0.0, 1.0 - col.null_frac - col.eq_frac(v))
    if op is exp.LT:
        return col.lt_frac(v)
    if op is exp.LTE:
        return col.le_frac(v)
    nonnull = 1.0 - col.null_frac
    return max(0.0, nonnull - (col.le_frac(v) if op is exp.GT else col.lt_frac(v)))


# ------------------------------------------------------------------ joins
