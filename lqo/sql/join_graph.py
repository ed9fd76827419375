"""SQL -> ``QueryGraph``: the join blocks of a query, parsed with sqlglot.

A *block* is one SELECT with two or more FROM items. For each block lqo records its
relations (tables, CTE references, derived tables), equivalence classes of join keys,
single-relation filters and residual predicates. A block it cannot reorder safely
(outer/semi/anti/lateral joins, table functions, USING, anything unclear) carries an
``unsafe`` reason and is left exactly as written.

Column resolution is lqo's own, scoped to one block: sqlglot's ``qualify`` costs
10-30 ms on TPC-DS queries, too slow for the planning path. Anything that cannot be
resolved with certainty stays in WHERE, where it is always correct.

>>> g = build_query_graph("SELECT * FROM a, b WHERE a.x = b.y", Catalog({"a": {"x": "INT"}, "b": {"y": "INT"}}))
>>> [r.alias for r in g.blocks[0].relations]
['a', 'b']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from lqo.errors import InvalidSQLError, NotSelectError
from lqo.sql.catalog import Catalog
from lqo.sql.placement import has_subquery, subquery_relations
from lqo.sql.relations import (
    Relation,
    check_tables,
    from_items,
    lateral_reference,
    relation,
    star_expansion,
    unsafe_join,
)
from lqo.sql.syntax import syntax_error

__all__ = ["Column", "JoinBlock", "QueryGraph", "Relation", "Residual", "block_conjuncts",
           "build_query_graph", "from_items", "parse_select", "select_nodes"]


@dataclass(frozen=True, order=True)
class Column:
    """A column of one relation of a block: ``rel`` is the relation's alias."""

    rel: str
    name: str

    def __str__(self) -> str:
        return f"{self.rel}.{self.name}"


@dataclass
class Residual:
    """A predicate over two or more relations that is not a plain key equality."""

    expr: exp.Expr
    rels: frozenset[str]


@dataclass
class JoinBlock:
    """One SELECT whose FROM items lqo may reorder (unless ``unsafe`` says why not)."""

    index: int  # position of the SELECT among all SELECT nodes of the query (DFS order)
    relations: list[Relation]
    classes: list[tuple[Column, ...]] = field(default_factory=list)
    filters: dict[str, list[exp.Expr]] = field(default_factory=dict)
    residuals: list[Residual] = field(default_factory=list)
    # Positions (in ``block_conjuncts`` order) of predicates that stay in WHERE as
    # written: positions, because they may hold subqueries that are blocks themselves.
    kept: list[int] = field(default_factory=list)
    # Predicates DuckDB plans as joins and places itself, which a forced tree would leave
    # above every join (``lqo.sql.placement``): kept predicates with subqueries over one
    # relation (alias -> positions), and relations with a filter that references an
    # enclosing query (decorrelated into a join). Render puts them inside the relation.
    placed: dict[str, list[int]] = field(default_factory=dict)
    correlated: set[str] = field(default_factory=set)
    unsafe: str | None = None
    # Why lqo keeps DuckDB's native tree for this block (it is still rendered with it):
    # a correlated subquery is rewritten by DuckDB's decorrelation, whatever its tree.
    fixed: str | None = None
    _link_sets: list[frozenset[str]] | None = field(default=None, repr=False, compare=False)

    @property
    def aliases(self) -> list[str]:
        """The block's relations' aliases, in order."""
        return [r.alias for r in self.relations]

    def relation(self, alias: str) -> Relation:
        """The relation named ``alias``."""
        return next(r for r in self.relations if r.alias == alias)

    def connects(self, left: frozenset[str], right: frozenset[str]) -> bool:
        """Whether joining ``left`` and ``right`` has a predicate (is no cross product)."""
        # On the search's hot path: set tests only, no expressions built.
        if self._link_sets is None:
            self._link_sets = [frozenset(c.rel for c in cls) for cls in self.classes]
        for rels in self._link_sets:
            if not rels.isdisjoint(left) and not rels.isdisjoint(right):
                return True
        both = left | right
        return any(
            r.rels <= both and not r.rels <= left and not r.rels <= right for r in self.residuals
        )

    def join_conditions(self, left: frozenset[str], right: frozenset[str]) -> list[exp.Expr]:
        """Predicates that belong at the join of ``left`` and ``right``: one equality per
        key class spanning both sides, plus residuals first covered by the union."""
        conds: list[exp.Expr] = []
        for cls in self.classes:
            lcol = next((c for c in cls if c.rel in left), None)
            rcol = next((c for c in cls if c.rel in right), None)
            if lcol and rcol:
                conds.append(exp.EQ(this=_column_expr(lcol), expression=_column_expr(rcol)))
        both = left | right
        for res in self.residuals:
            if res.rels <= both and not res.rels <= left and not res.rels <= right:
                conds.append(exp.Paren(this=res.expr.copy()))
        return conds


@dataclass
class QueryGraph:
    """A parsed query and its join blocks. ``ast`` is never mutated after building."""

    sql: str
    ast: exp.Expr
    blocks: list[JoinBlock]
    n_selects: int

    @property
    def reorderable(self) -> list[JoinBlock]:
        """The blocks lqo may reorder."""
        return [b for b in self.blocks if b.unsafe is None]

    @property
    def unsafe_reason(self) -> str | None:
        """Why forcing any tree on this query is unsafe, or None.

        The forcing settings are global to a query, so one block lqo cannot render with an
        explicit tree would lose DuckDB's ordering: the whole query then stays native.
        """
        for b in self.blocks:
            if b.unsafe:
                return f"block {b.index}: {b.unsafe}"
        return None


def _column_expr(col: Column) -> exp.Column:
    return exp.column(col.name, table=col.rel)


def parse_select(sql: str) -> exp.Expr:
    """Parse one read-only query; typed errors for anything else.

    A syntax error says so, with DuckDB's message and position: sqlglot reads some
    broken texts as a bare expression (``SELEC x`` is an aliased column to it), which is
    no statement at all, so where sqlglot fails or finds no statement DuckDB's parser
    judges the text (only on this error path).
    """
    try:
        stmts = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as err:
        syntax = syntax_error(sql)
        if syntax is not None:
            raise InvalidSQLError(f"invalid SQL: {syntax}") from None
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidSQLError(f"invalid SQL: DuckDB parses it, lqo's SQL parser (sqlglot) cannot: {first}") from None
    if len(stmts) != 1:
        raise InvalidSQLError(f"expected one SQL statement, got {len(stmts)}")
    stmt = stmts[0]
    if not isinstance(stmt, exp.Query):
        syntax = syntax_error(sql)
        if syntax is not None:
            raise InvalidSQLError(f"invalid SQL: {syntax}")
        kind = stmt.this if isinstance(stmt, exp.Command) and isinstance(stmt.this, str) else stmt.key
        raise NotSelectError(f"not a SELECT query: {kind.upper()} statement")
    return stmt


def select_nodes(ast: exp.Expr) -> list[exp.Select]:
    """All SELECT nodes in DFS pre-order: the stable numbering blocks use."""
    return [n for n in ast.walk(bfs=False) if isinstance(n, exp.Select)]


def build_query_graph(sql: str | exp.Expr, catalog: Catalog) -> QueryGraph:
    """Parse ``sql`` and extract every join block.

    Raises ``InvalidSQLError``, ``NotSelectError`` or ``UnknownTableError``.
    """
    ast = parse_select(sql) if isinstance(sql, str) else sql
    ctes = {c.alias_or_name.lower(): c for c in ast.find_all(exp.CTE)}
    selects = select_nodes(ast)
    blocks = []
    for index, select in enumerate(selects):
        items = from_items(select)
        check_tables(items, ctes, catalog)
        if len(items) >= 2:
            blocks.append(_build_block(index, select, items, ctes, catalog))
    text = sql if isinstance(sql, str) else ast.sql(dialect="duckdb")
    return QueryGraph(sql=text, ast=ast, blocks=blocks, n_selects=len(selects))


def _build_block(index: int, select: exp.Select, items: Any, ctes: Any, catalog: Catalog) -> JoinBlock:
    block = JoinBlock(index=index, relations=[])
    for join in select.args.get("joins") or []:
        reason = unsafe_join(join)
        if reason:
            block.unsafe = reason
            return block
    for item in items:
        rel = relation(item, ctes, catalog)
        if isinstance(rel, str):
            block.unsafe = rel
            return block
        if any(r.alias == rel.alias for r in block.relations):
            block.unsafe = f"duplicate alias {rel.alias}"
            return block
        block.relations.append(rel)
    reason = star_expansion(select) or lateral_reference(items, block.relations, ctes, catalog)
    if reason:
        block.unsafe = reason
        return block
    conjuncts = block_conjuncts(select)
    _classify(block, conjuncts)
    _place(block, select, conjuncts, ctes, catalog)
    outer = _outer_reference(block, select)
    if outer:
        block.fixed = f"correlated subquery (references {outer})"
    return block


def block_conjuncts(select: exp.Select) -> list[exp.Expr]:
    """WHERE conjuncts, then inner-join ON conjuncts, in written order."""
    conjuncts: list[exp.Expr] = []
    where = select.args.get("where")
    if where is not None:
        conjuncts += list(where.this.flatten()) if isinstance(where.this, exp.And) else [where.this]
    for join in select.args.get("joins") or []:
        on = join.args.get("on")
        if on is not None:
            conjuncts += list(on.flatten()) if isinstance(on, exp.And) else [on]
    return conjuncts


_UNKNOWN = object()


def _outer_reference(block: JoinBlock, select: exp.Select) -> str | None:
    """A column of ``select`` (outside nested SELECTs) that no relation of the block has."""
    for col in select.find_all(exp.Column):
        if isinstance(col.this, exp.Star) or _nested_in(col, select):
            continue
        if col.table:
            if col.table.lower() not in {r.alias for r in block.relations}:
                return col.sql(dialect="duckdb")
        elif all(r.columns is not None for r in block.relations):
            name = col.name.lower()
            if not any(r.columns is not None and name in r.columns for r in block.relations):
                aliases = {e.alias.lower() for e in select.expressions if e.alias}
                if name not in aliases:
                    return col.sql(dialect="duckdb")
    return None


def _nested_in(node: exp.Expr, select: exp.Select) -> bool:
    parent = node.parent
    while parent is not None and parent is not select:
        if isinstance(parent, exp.Select):
            return True
        parent = parent.parent
    return False


def _refs(block: JoinBlock, expr: exp.Expr):
    """Relations of ``block`` that ``expr`` references, or _UNKNOWN if unsure."""
    if any(isinstance(n, (exp.Subquery, exp.Select, exp.Exists)) for n in expr.walk()):
        return _UNKNOWN  # nested scopes: leave it in WHERE as written
    rels: set[str] = set()
    for col in expr.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            return _UNKNOWN
        resolved = _resolve(block, col)
        if resolved is _UNKNOWN:
            return _UNKNOWN
        if resolved is not None:
            rels.add(resolved.rel)
    return frozenset(rels)


def _resolve(block: JoinBlock, col: exp.Column):
    """The block's Column for ``col``; None for an outer reference; _UNKNOWN if unsure."""
    name = col.name.lower()
    if col.table:
        if col.args.get("db"):
            return _UNKNOWN
        alias = col.table.lower()
        for r in block.relations:
            if r.alias == alias:
                return Column(alias, name) if r.columns is None or name in r.columns else _UNKNOWN
        return None  # qualified by an alias of an enclosing block: correlated reference
    owners = [r for r in block.relations if r.columns is not None and name in r.columns]
    if len(owners) == 1 and all(r.columns is not None for r in block.relations):
        return Column(owners[0].alias, name)
    return _UNKNOWN  # ambiguous, a SELECT-list alias, or a relation with unknown columns


def _place(block: JoinBlock, select: exp.Select, conjuncts: list[exp.Expr], ctes: Any, catalog: Catalog) -> None:
    """Record the predicates a forced tree must render inside their relation."""
    aliases = set(block.aliases)
    outputs = {e.alias.lower() for e in select.expressions if e.alias}

    def owner_of(col: exp.Column) -> str | None:
        resolved = _resolve(block, col)
        return resolved.rel if isinstance(resolved, Column) else None

    for pos in list(block.kept):
        conj = conjuncts[pos]
        if has_subquery(conj):
            rels = subquery_relations(conj, aliases, owner_of, ctes, catalog)
        else:
            rels = _correlated_relations(block, conj, outputs)
        if rels is not None and len(rels) == 1:
            block.kept.remove(pos)
            block.placed.setdefault(next(iter(rels)), []).append(pos)
    for rel, filters in block.filters.items():
        if any(_resolve(block, c) is None for f in filters for c in f.find_all(exp.Column)):
            block.correlated.add(rel)


def _correlated_relations(block: JoinBlock, conj: exp.Expr, outputs: set[str]) -> frozenset[str] | None:
    """The block relations of a predicate that also references an enclosing query by an
    unqualified name no relation of the block has; None if it does not or if unsure."""
    if not all(r.columns is not None for r in block.relations):
        return None
    rels, outer = set(), False
    for col in conj.find_all(exp.Column):
        resolved = _resolve(block, col)
        if isinstance(resolved, Column):
            rels.add(resolved.rel)
        elif resolved is None or (not col.table and col.name.lower() not in outputs
                                  and not any(r.columns is not None and col.name.lower() in r.columns
                                              for r in block.relations)):
            outer = True
        else:
            return None
    return frozenset(rels) if outer else None


def _col_type(block: JoinBlock, col: Column) -> str:
    cols = block.relation(col.rel).columns or {}
    return cols.get(col.name, "")


def _classify(block: JoinBlock, conjuncts: list[exp.Expr]) -> None:
    parent: dict[Column, Column] = {}

    def find(c: Column) -> Column:
        while parent.setdefault(c, c) != c:
            c = parent[c]
        return c

    for pos, conj in enumerate(conjuncts):
        refs = _refs(block, conj)
        if refs is _UNKNOWN or not refs:
            block.kept.append(pos)
            continue
        if len(refs) == 1:
            block.filters.setdefault(next(iter(refs)), []).append(conj)
            continue
        if isinstance(conj, exp.EQ) and isinstance(conj.this, exp.Column) and isinstance(conj.expression, exp.Column):
            a, b = _resolve(block, conj.this), _resolve(block, conj.expression)
            # Transitivity across differing types could change casts: keep those pairwise.
            # So are columns of unknown type (""): a derived table's expression may carry a
            # collation (x COLLATE NOCASE = y and x = z do not make y = z).
            ta, tb = _col_type(block, a), _col_type(block, b)
            if ta and ta == tb:
                parent[find(a)] = find(b)
                continue
        block.residuals.append(Residual(conj, refs))
    groups: dict[Column, list[Column]] = {}
    for c in list(parent):
        groups.setdefault(find(c), []).append(c)
    order = {a: i for i, a in enumerate(block.aliases)}
    block.classes = [
        tuple(sorted(g, key=lambda c: (order[c.rel], c.name))) for g in groups.values() if len(g) > 1
    ]
    # Join conditions use one member per side, so equal keys within one relation
    # (a.x = b.k AND a.y = b.k) must still be stated: as that relation's filter.
    for cls in block.classes:
        first: dict[str, Column] = {}
        for c in cls:
            if c.rel in first:
                eq = exp.EQ(this=_column_expr(first[c.rel]), expression=_column_expr(c))
                block.filters.setdefault(c.rel, []).append(eq)
            else:
                first[c.rel] = c
