"""lqo's own cardinality estimates: filter selectivity and System-R join sizes.

DuckDB shows no estimates for a forced tree, so lqo estimates every subplan itself:
single-relation filters from ``lqo.stats`` (MCVs, histograms, null fractions), and joins
with the independence formula over the block's key equivalence classes.

CTE and derived-table relations have no stats. Their output is estimated from their
defining query: a join block is estimated like any block (all its relations joined),
a single-table SELECT as table rows x WHERE selectivity; then GROUP BY caps it at the
product of the grouping columns' distinct counts (rows / 10 where unknown), a plain
aggregate gives 1 row, LIMIT caps it. A column that projects a plain column of a FROM
table borrows that column's stats (distinct count, and the distribution for filters);
any other column is key-like (as many values as rows) and its filters get the defaults.

Joins add relations in written order (connected ones first) and divide by the larger
key domain of each shared key class (containment); see ``Estimator.key_domain``.

>>> est = Estimator(stats, graph)  # doctest: +SKIP
>>> est.join_rows(graph.blocks[0], frozenset({"orders", "customer"}))  # doctest: +SKIP
15000.0
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from typing import Callable

from sqlglot import exp

from .join_graph import JoinBlock, QueryGraph, Relation, from_items, select_nodes
from .stats import ColumnStats, DatabaseStats

DEFAULT_EQ = 0.1  # equality the stats cannot see into (functions of columns, CTE columns)
DEFAULT_RANGE = 0.33
DEFAULT_LIKE = 0.1
DEFAULT_OTHER = 0.33
DEFAULT_QUERY_ROWS = 1000.0  # a subquery lqo cannot estimate at all
_EPOCH = datetime(1970, 1, 1)
_UNIT_DAYS = {"DAY": 1.0, "WEEK": 7.0, "MONTH": 30.4375, "QUARTER": 91.3125, "YEAR": 365.25,
              "HOUR": 1 / 24, "MINUTE": 1 / 1440, "SECOND": 1 / 86400}
_FLIP = {exp.LT: exp.GT, exp.GT: exp.LT, exp.LTE: exp.GTE, exp.GTE: exp.LTE, exp.EQ: exp.EQ, exp.NEQ: exp.NEQ}


def selectivity(stats: DatabaseStats, relation: Relation, filters: list[exp.Expression],
                derived: Callable[[Relation, str], ColumnStats | None] | None = None) -> float:
    """Fraction of ``relation``'s rows passing all ``filters`` (assumed independent).

    ``derived`` maps a CTE or derived table's column to the stats of the base column it
    projects, if any (the ``Estimator`` traces them); without it their filters get defaults.

    >>> selectivity(stats, block.relation("orders"), block.filters["orders"])  # doctest: +SKIP
    0.042
    """
    return min(1.0, max(0.0, _conjunction(_Scope(stats, [relation], derived), filters)))


def _conjunction(scope: _Scope, conds: list[exp.Expression]) -> float:
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
            sel *= _sel(scope, c)
            continue
        col, name, is_lower = side
        slot = bounds.setdefault(name, [None, None, col])
        s = _sel(scope, c)
        i = 0 if is_lower else 1
        slot[i] = s if slot[i] is None else min(slot[i], s)
    for lo, hi, col in bounds.values():
        if lo is not None and hi is not None:
            sel *= max(0.0, lo + hi - (1.0 - col.null_frac))
        else:
            sel *= lo if lo is not None else hi
    return sel


def _bound_side(scope: _Scope, e: exp.Expression):
    """``(column stats, (alias, column), is lower bound)`` for ``col <op> constant``, else None."""
    if type(e) not in (exp.LT, exp.LTE, exp.GT, exp.GTE):
        return None
    op = type(e)
    col_e, other = e.this, e.expression
    hit = scope.lookup(col_e)
    if hit is None:
        other, op = col_e, _FLIP[op]
        hit = scope.lookup(e.expression)
    if hit is None or _to_domain(_fold(other), hit[1].kind) is None:
        return None
    return hit[1], hit[0], op in (exp.GT, exp.GTE)


# ------------------------------------------------------------------ constant folding
def _fold(e: exp.Expression):
    """A constant as ("num", float) | ("str", str) | ("date", days) | ("ival", days), or None."""
    if isinstance(e, (exp.Paren, exp.Collate)):
        return _fold(e.this)
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
        v = _fold(e.this)
        return (v[0], -v[1]) if v and v[0] in ("num", "ival") else None
    if isinstance(e, exp.Cast):
        v = _fold(e.this)
        target = e.to.this.name if isinstance(e.to, exp.DataType) else ""
        if v is None:
            return None
        if target.startswith(("DATE", "TIMESTAMP")):
            return ("date", _days(v[1])) if v[0] == "str" and _days(v[1]) is not None else (v if v[0] == "date" else None)
        if target in ("VARCHAR", "TEXT", "CHAR", "NCHAR", "NVARCHAR"):
            return ("str", v[1]) if v[0] == "str" else None
        return _as_num(v)
    if isinstance(e, exp.Interval):
        v = _fold(e.this)
        unit = e.unit.name.upper() if e.args.get("unit") else ""
        if v and v[0] == "str" and not unit:  # INTERVAL '90 days'
            parts = v[1].split()
            v, unit = (("str", parts[0]), parts[1].upper()) if len(parts) == 2 else (None, "")
        n = _as_num(v) if v else None
        per = _UNIT_DAYS.get(unit.rstrip("S"))
        return ("ival", n[1] * per) if n and per else None
    if isinstance(e, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        a, b = _fold(e.this), _fold(e.expression)
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


def _as_num(v):
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


def _to_domain(v, kind: str):
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
class _Scope:
    """Resolves column references to stats: in one relation, or in any table of a block."""

    def __init__(self, stats: DatabaseStats, rels: list[Relation], derived=None):
        self.stats = stats
        self.rels = rels
        self.derived = derived

    def lookup(self, e: exp.Expression) -> tuple[tuple[str, str], ColumnStats] | None:
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


def _column(scope: _Scope, e: exp.Expression) -> ColumnStats | None:
    hit = scope.lookup(e)
    return None if hit is None else hit[1]


@lru_cache(maxsize=1024)
def _like_regex(pattern: str, ilike: bool) -> re.Pattern:
    body = "".join(".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.compile(body + r"\Z", re.DOTALL | (re.IGNORECASE if ilike else 0))


def _sel(scope: _Scope, e: exp.Expression) -> float:
    if isinstance(e, exp.Paren):
        return _sel(scope, e.this)
    if isinstance(e, exp.And):
        return _conjunction(scope, list(e.flatten()))
    if isinstance(e, exp.Or):
        miss = 1.0
        for part in e.flatten():
            miss *= 1.0 - min(1.0, _sel(scope, part))
        return 1.0 - miss
    if isinstance(e, exp.Not):
        return 1.0 - min(1.0, _sel(scope, e.this))
    if isinstance(e, exp.Boolean):
        return 1.0 if e.this else 0.0
    if type(e) in _FLIP:
        return _compare(scope, e)
    if isinstance(e, exp.Between):
        col = _column(scope, e.this)
        if col is None:
            return DEFAULT_RANGE * 0.5
        lo, hi = _to_domain(_fold(e.args["low"]), col.kind), _to_domain(_fold(e.args["high"]), col.kind)
        if lo is None or hi is None:
            return DEFAULT_RANGE * 0.5
        return max(0.0, col.le_frac(hi) - col.lt_frac(lo))
    if isinstance(e, exp.In):
        items = e.expressions
        col = _column(scope, e.this)
        if col is None or not items or e.args.get("query") is not None:
            return min(0.5, DEFAULT_EQ * max(1, len(items)))
        vals = {_to_domain(_fold(i), col.kind) for i in items}
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
        pat = _fold(e.expression)
        if col is None or col.kind != "str" or pat is None or pat[0] != "str":
            s = DEFAULT_LIKE
        else:
            rx = _like_regex(pat[1], isinstance(e, exp.ILike))
            s = col.match_frac(lambda v: rx.match(v) is not None)
        if e.args.get("negate"):
            return max(0.0, 1.0 - (col.null_frac if col else 0.0) - s)
        return s
    return DEFAULT_OTHER


def _compare(scope: _Scope, e: exp.Expression) -> float:
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
    v = _to_domain(_fold(other), col.kind) if col is not None else None
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
class Estimator:
    """Row estimates for relations and connected subsets of a query's blocks, memoized.

    >>> est = Estimator(stats, graph)  # doctest: +SKIP
    >>> est.relation_rows(block, "customer"), est.join_rows(block, frozenset({"orders", "customer"}))  # doctest: +SKIP
    (1500.0, 15000.0)
    """

    def __init__(self, stats: DatabaseStats, graph: QueryGraph):
        self.stats = stats
        self.graph = graph
        self._scan: dict[tuple[int, str], tuple[float, float, float]] = {}
        self._join: dict[tuple[int, frozenset[str]], float] = {}
        self._classes: dict[int, list[dict[str, float]]] = {}
        self._models: dict[int, tuple] = {}
        self._residuals: dict[int, list[tuple[frozenset[str], float]]] = {}
        self._selects: list[exp.Select] | None = None
        self._select_index: dict[int, int] | None = None
        self._ctes: dict[str, exp.Expression] | None = None
        self._blocks = {b.index: b for b in graph.blocks}
        self._query_rows: dict[int, float] = {}
        self._active: set[int] = set()  # queries being estimated: recursive CTEs stop here

    def scan(self, block: JoinBlock, alias: str) -> tuple[float, float, float]:
        """``(base rows, filter selectivity, estimated rows)`` of one relation."""
        key = (block.index, alias)
        hit = self._scan.get(key)
        if hit is None:
            rel = block.relation(alias)
            filters = block.filters.get(alias, [])
            if rel.kind == "table":
                base = float(self.stats.rows(rel.name) or DEFAULT_QUERY_ROWS)
            else:
                base = self._derived_rows(block, rel)
            sel = selectivity(self.stats, rel, filters, lambda r, name: self._derived_column(block, r, name))
            hit = (base, sel, max(1.0, base * sel))
            self._scan[key] = hit
        return hit

    def relation_rows(self, block: JoinBlock, alias: str) -> float:
        """Rows of ``alias`` after its single-relation filters."""
        return self.scan(block, alias)[2]

    def join_rows(self, block: JoinBlock, rels: frozenset[str]) -> float:
        """Rows of joining ``rels`` (with every predicate they cover); any subset works,
        a disconnected one is a cross product."""
        key = (block.index, rels)
        hit = self._join.get(key)
        if hit is not None:
            return hit
        bits, rows_of, classes, adj, res = self._model(block)
        todo = 0
        for a in rels:
            todo |= bits[a]
        low = todo & -todo
        todo ^= low
        done = low
        i = low.bit_length() - 1
        rows = rows_of[i]
        near = adj[i]
        dom = dict(classes[i])  # key class -> its domain so far
        while todo:
            # Add relations in written order, preferring one that joins what is there:
            # a deterministic order, so the estimate is a function of the subset alone.
            cand = todo & near or todo
            pick = cand & -cand
            todo ^= pick
            done |= pick
            i = pick.bit_length() - 1
            near |= adj[i]
            xrows = rows_of[i]
            comp_x = comp_t = 1.0
            shared = 0
            for ci, d in classes[i]:
                t = dom.get(ci)
                if t is None:
                    dom[ci] = d
                    continue
                comp_x *= d
                comp_t *= t
                shared += 1
                dom[ci] = min(t, d)  # containment: the smaller domain survives
            if shared > 1:
                # Several keys form a composite key: independence would multiply their
                # domains far past the rows that can hold distinct combinations.
                comp_x, comp_t = min(comp_x, xrows), min(comp_t, rows)
            rows = rows * xrows / max(1.0, comp_x, comp_t)
            for mask, sel in res[i]:
                if mask & done == mask:
                    rows *= sel
        rows = max(1.0, rows)
        self._join[key] = rows
        return rows

    def block_rows(self, block: JoinBlock) -> float:
        """Rows of the whole block's join (before any aggregation)."""
        return self.join_rows(block, frozenset(block.aliases))

    def key_domain(self, block: JoinBlock, rel: str, name: str, keys: list[ColumnStats] = ()) -> float:
        """How many key values a join column can match, after its relation's filters.

        A unique (key-like) column keeps exactly the values its filtered rows hold: a
        filter on a dimension picks its keys. Any other column keeps its whole value
        space, as a filter independent of it does not narrow it: its distinct count, or
        the number of values of a unique partner column ``keys`` that fall in its range
        (a fact table's dates cover 5 years of a 200-year date dimension; a filtered
        dimension is not assumed to pick only dates that have facts, nor all of them).
        """
        r = block.relation(rel)
        base, _, rows = self.scan(block, rel)
        if r.kind != "table":
            col = self._derived_column(block, r, name)
            return max(1.0, min(col.ndv if col is not None else rows, rows))
        col = self.stats.column(r.name, name)
        if col is None or col.ndv <= 0:
            return rows
        if self._unique(col, base):
            return max(1.0, min(col.ndv, rows))
        dom = col.ndv
        for k in keys:
            if col.lo is not None and k.lo is not None and k.hi > k.lo:
                overlap = max(0.0, min(col.hi, k.hi) - max(col.lo, k.lo) + 1.0)
                dom = max(dom, k.ndv * min(1.0, overlap / (k.hi - k.lo + 1.0)))
        return max(1.0, dom)

    @staticmethod
    def _unique(col: ColumnStats, rows: float) -> bool:
        return col.ndv >= 0.8 * rows * (1.0 - col.null_frac)  # HLL errs by up to ~10%

    def _model(self, block: JoinBlock):
        """Per block, indexed by relation position: bit masks, filtered rows, (key class,
        domain) pairs, neighbours sharing a key class, and residuals completed by each."""
        hit = self._models.get(block.index)
        if hit is None:
            aliases = block.aliases
            bits = {a: 1 << i for i, a in enumerate(aliases)}
            rows_of = [self.scan(block, a)[2] for a in aliases]
            classes: list[list[tuple[int, float]]] = [[] for _ in aliases]
            adj = [0] * len(aliases)
            for ci, cls in enumerate(self._block_classes(block)):
                mask = sum(bits[a] for a in cls)
                for a, d in cls.items():
                    classes[aliases.index(a)].append((ci, d))
                    adj[aliases.index(a)] |= mask
            res: list[list[tuple[int, float]]] = [[] for _ in aliases]
            for rels, sel in self._block_residuals(block):
                mask = sum(bits[a] for a in rels if a in bits)
                for a in rels:
                    if a in bits:
                        res[aliases.index(a)].append((mask, sel))
            hit = (bits, rows_of, classes, adj, res)
            self._models[block.index] = hit
        return hit

    def _block_classes(self, block: JoinBlock) -> list[dict[str, float]]:
        hit = self._classes.get(block.index)
        if hit is None:
            hit = []
            for cls in block.classes:
                keys = []
                for c in cls:
                    r = block.relation(c.rel)
                    col = self.stats.column(r.name, c.name) if r.kind == "table" else None
                    if col is not None and self._unique(col, self.scan(block, c.rel)[0]):
                        keys.append(col)
                per: dict[str, float] = {}
                for c in cls:  # two keys of one relation: its smaller domain survives
                    d = self.key_domain(block, c.rel, c.name, keys)
                    per[c.rel] = min(per.get(c.rel, d), d)
                hit.append(per)
            self._classes[block.index] = hit
        return hit

    def _block_residuals(self, block: JoinBlock) -> list[tuple[frozenset[str], float]]:
        hit = self._residuals.get(block.index)
        if hit is None:
            hit = []
            for res in block.residuals:
                e = res.expr
                if isinstance(e, exp.EQ) and isinstance(e.this, exp.Column) and isinstance(e.expression, exp.Column):
                    ds = [self._residual_ndv(block, c) for c in (e.this, e.expression)]
                    sel = 1.0 / max(ds)
                else:  # e.g. an OR of per-relation conditions: each atom has its stats
                    sel = min(1.0, _sel(_Scope(self.stats, block.relations), e))
                hit.append((res.rels, sel))
            self._residuals[block.index] = hit
        return hit

    def _residual_ndv(self, block: JoinBlock, col: exp.Column) -> float:
        alias = col.table.lower() if col.table else None
        for r in block.relations:
            if (alias is None and r.columns and col.name.lower() in r.columns) or r.alias == alias:
                return self.key_domain(block, r.alias, col.name.lower())
        return 1.0 / DEFAULT_EQ

    # -------------------------------------------------------- CTEs and derived tables
    def _definition(self, block: JoinBlock, rel: Relation) -> exp.Expression | None:
        if rel.kind == "cte":
            return self._cte_query(rel.name or "")
        for item in from_items(self._select_nodes()[block.index]):
            if item.alias_or_name.lower() == rel.alias and isinstance(item, exp.Subquery):
                return item.this
        return None

    def _select_nodes(self) -> list[exp.Select]:
        if self._selects is None:
            self._selects = select_nodes(self.graph.ast)
        return self._selects

    def _derived_rows(self, block: JoinBlock, rel: Relation) -> float:
        q = self._definition(block, rel)
        return DEFAULT_QUERY_ROWS if q is None else self.query_rows(q)

    def query_rows(self, q: exp.Expression) -> float:
        """Estimated output rows of a (sub)query of this graph's AST."""
        key = id(q)
        if key in self._query_rows:
            return self._query_rows[key]
        if key in self._active or len(self._active) > 16:
            return DEFAULT_QUERY_ROWS
        self._active.add(key)
        try:
            rows = max(1.0, self._estimate_query(q))
        finally:
            self._active.discard(key)
        self._query_rows[key] = rows
        return rows

    def _estimate_query(self, q: exp.Expression) -> float:
        while isinstance(q, exp.Subquery):
            q = q.this
        if isinstance(q, exp.Union):
            return self.query_rows(q.this) + self.query_rows(q.expression)
        if isinstance(q, exp.SetOperation):  # INTERSECT / EXCEPT: at most the left side
            return self.query_rows(q.this)
        if not isinstance(q, exp.Select):
            return DEFAULT_QUERY_ROWS
        items = from_items(q)
        if self._select_index is None:
            self._select_index = {id(s): i for i, s in enumerate(self._select_nodes())}
        block = self._blocks.get(self._select_index.get(id(q), -1))
        if block is not None and block.relations and len(block.relations) == len(items):
            rows = self.block_rows(block)
        elif len(items) == 1:
            rows = self._item_rows(q, items[0])
        elif not items:
            rows = 1.0
        else:
            rows = DEFAULT_QUERY_ROWS
        if q.args.get("group"):
            keys = q.args["group"].expressions
            cap = 1.0 if keys else rows / 10  # ROLLUP / CUBE / GROUPING SETS: no plain keys
            for g in keys:
                col = self._base_column(q, g)
                cap *= max(col.ndv, 1.0) if col is not None else max(1.0, rows / 10)
            rows = min(rows, cap)
        elif any(not isinstance(a.parent, exp.Window) for e in q.expressions for a in e.find_all(exp.AggFunc)):
            rows = 1.0
        if q.args.get("having"):
            rows *= DEFAULT_OTHER
        limit = q.args.get("limit")
        if limit is not None:
            n = _fold(limit.expression) if limit.expression is not None else None
            if n and n[0] == "num":
                rows = min(rows, n[1])
        return rows

    def _item_rows(self, q: exp.Select, item: exp.Expression) -> float:
        where = q.args.get("where")
        conds = list(where.this.flatten()) if where is not None and isinstance(where.this, exp.And) else (
            [where.this] if where is not None else [])
        if isinstance(item, exp.Table) and self.stats.rows(item.name) is not None and not self._is_cte(item.name):
            name = item.name.lower()
            rel = Relation(item.alias_or_name.lower(), "table", name, None, (name,))
            return self.stats.rows(name) * selectivity(self.stats, rel, conds)
        inner = item.this if isinstance(item, exp.Subquery) else self._cte_query(item.name)
        base = self.query_rows(inner) if inner is not None else DEFAULT_QUERY_ROWS
        return base * DEFAULT_RANGE ** min(len(conds), 3)

    def _is_cte(self, name: str) -> bool:
        return self._cte_query(name) is not None

    def _cte_query(self, name: str) -> exp.Expression | None:
        if self._ctes is None:
            self._ctes = {}
            for cte in self.graph.ast.find_all(exp.CTE):
                self._ctes.setdefault(cte.alias_or_name.lower(), cte.this)
        return self._ctes.get(name.lower())

    def _base_column(self, q: exp.Select, e: exp.Expression) -> ColumnStats | None:
        """Stats of ``e`` if it is a plain column of one of ``q``'s FROM tables."""
        while isinstance(e, (exp.Alias, exp.Paren)):
            e = e.this
        if not isinstance(e, exp.Column):
            return None
        for item in from_items(q):
            if not isinstance(item, exp.Table) or self._is_cte(item.name):
                continue
            if e.table and e.table.lower() != item.alias_or_name.lower():
                continue
            col = self.stats.column(item.name, e.name)
            if col is not None:
                return col
        return None

    def _derived_column(self, block: JoinBlock, rel: Relation, name: str) -> ColumnStats | None:
        q = self._definition(block, rel)
        while isinstance(q, (exp.Subquery, exp.SetOperation)):
            q = q.this
        if not isinstance(q, exp.Select):
            return None
        for e in q.expressions:
            if e.alias_or_name.lower() == name:
                return self._base_column(q, e)
        return None
