"""lqo's own cardinality estimates: filter selectivity and System-R join sizes.

DuckDB shows no estimates for a forced tree, so lqo estimates every subplan itself:
single-relation filters from ``lqo.estimates.stats`` (MCVs, histograms, null fractions), and joins
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

from collections.abc import Sequence

from sqlglot import exp

from lqo.estimates.selectivity import (
    DEFAULT_EQ,
    DEFAULT_OTHER,
    DEFAULT_QUERY_ROWS,
    DEFAULT_RANGE,
    Scope,
    fold_constant,
    predicate_selectivity,
    selectivity,
)
from lqo.estimates.stats import ColumnStats, DatabaseStats
from lqo.sql.join_graph import JoinBlock, QueryGraph, Relation, from_items, select_nodes


class Estimator:
    """Row estimates for relations and connected subsets of a query's blocks, memoized.

    >>> est = Estimator(stats, graph)  # doctest: +SKIP
    >>> est.relation_rows(block, "customer"), est.join_rows(block, frozenset({"orders", "customer"}))  # doctest: +SKIP
    (1500.0, 15000.0)
    """

    def __init__(self, stats: DatabaseStats, graph: QueryGraph) -> None:
        self.stats = stats
        self.graph = graph
        self._scan: dict[tuple[int, str], tuple[float, float, float]] = {}
        self._join: dict[tuple[int, frozenset[str]], float] = {}
        self._classes: dict[int, list[dict[str, float]]] = {}
        self._models: dict[int, tuple] = {}
        self._residuals: dict[int, list[tuple[frozenset[str], float]]] = {}
        self._selects: list[exp.Select] | None = None
        self._select_index: dict[int, int] | None = None
        self._ctes: dict[str, exp.Expr] | None = None
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
            if rel.kind == "table" and rel.name is not None:
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

    def key_domain(self, block: JoinBlock, rel: str, name: str, keys: Sequence[ColumnStats] = ()) -> float:
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
        if r.kind != "table" or r.name is None:
            col = self._derived_column(block, r, name)
            return max(1.0, min(col.ndv if col is not None else rows, rows))
        col = self.stats.column(r.name, name)
        if col is None or col.ndv <= 0:
            return rows
        if self._unique(col, base):
            return max(1.0, min(col.ndv, rows))
        dom = col.ndv
        for k in keys:
            if col.lo is not None and col.hi is not None and k.lo is not None and k.hi is not None and k.hi > k.lo:
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
                    col = self.stats.column(r.name, c.name) if r.kind == "table" and r.name is not None else None
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
                    sel = min(1.0, predicate_selectivity(Scope(self.stats, block.relations), e))
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
    def _definition(self, block: JoinBlock, rel: Relation) -> exp.Expr | None:
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

    def query_rows(self, q: exp.Expr) -> float:
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

    def _estimate_query(self, q: exp.Expr) -> float:
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
            n = fold_constant(limit.expression) if limit.expression is not None else None
            if n and n[0] == "num":
                rows = min(rows, n[1])
        return rows

    def _item_rows(self, q: exp.Select, item: exp.Expr) -> float:
        where = q.args.get("where")
        conds = list(where.this.flatten()) if where is not None and isinstance(where.this, exp.And) else (
            [where.this] if where is not None else [])
        table_rows = self.stats.rows(item.name) if isinstance(item, exp.Table) else None
        if table_rows is not None and not self._is_cte(item.name):
            name = item.name.lower()
            rel = Relation(item.alias_or_name.lower(), "table", name, None, (name,))
            return table_rows * selectivity(self.stats, rel, conds)
        inner = item.this if isinstance(item, exp.Subquery) else self._cte_query(item.name)
        base = self.query_rows(inner) if inner is not None else DEFAULT_QUERY_ROWS
        return base * DEFAULT_RANGE ** min(len(conds), 3)

    def _is_cte(self, name: str) -> bool:
        return self._cte_query(name) is not None

    def _cte_query(self, name: str) -> exp.Expr | None:
        if self._ctes is None:
            self._ctes = {}
            for cte in self.graph.ast.find_all(exp.CTE):
                self._ctes.setdefault(cte.alias_or_name.lower(), cte.this)
        return self._ctes.get(name.lower())

    def _base_column(self, q: exp.Select, e: exp.Expr) -> ColumnStats | None:
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
