r"""Joins that two blocks compute identically, rendered once as a materialized CTE.

DuckDB computes a join shared by two blocks once (its ``common_subplan`` rule), but only
for a join with a cardinality estimate, and estimates for joins come from its join-order
optimizer: with ``join_order`` disabled, as a forced plan needs, nothing is shared, and
TPC-DS q61 and q90 ran 1.4-1.7x their native time with DuckDB's own trees forced. So
lqo shares such a join itself: where the subtrees of two or more blocks join the same
base tables, in the same shape, with the same filters and join predicates, the subtree
is rendered once as ``WITH __lqo_shared_N AS MATERIALIZED (SELECT ...)`` and each block
reads that instead (``lqo.trees.render``). A subtree is shared only when nothing else
depends on its relations' names: no ``SELECT *``, no subquery referring to them, no
filter lqo places inside a relation, and column names unique across its relations.

>>> from lqo.sql.catalog import Catalog
>>> from lqo.sql.join_graph import build_query_graph
>>> from lqo.trees.plan import Join, Leaf, Plan
>>> cat = Catalog({"f": {"k": "INT", "v": "INT"}, "d": {"dk": "INT", "y": "INT"}, "t": {"tk": "INT", "h": "INT"}})
>>> sql = ("SELECT a.n, b.n FROM (SELECT count(*) AS n FROM f, d, t WHERE k = dk AND v = tk AND y = 1 AND h = 8) a, "
...        "(SELECT count(*) AS n FROM f, d, t WHERE k = dk AND v = tk AND y = 1 AND h = 9) b")
>>> g = build_query_graph(sql, cat)
>>> tree = lambda: Join(Leaf("t"), Join(Leaf("f"), Leaf("d")))
>>> plan = Plan.of({1: tree(), 2: tree()})
>>> [(s.name, s.blocks, s.columns) for s in shared_joins(g, plan)]
[('__lqo_shared_1', (1, 2), ('k', 'v', 'dk', 'y'))]
>>> from lqo.trees.render import render
>>> print(render(g, plan).replace(" (SELECT", "\n(SELECT"))  # passes on only what the blocks read
WITH __lqo_shared_1 AS MATERIALIZED
(SELECT f.v FROM f JOIN d ON f.k = d.dk WHERE y = 1) SELECT a.n, b.n FROM
(SELECT COUNT(*) AS n FROM t JOIN __lqo_shared_1 AS f ON t.tk = f.v WHERE h = 8) AS a,
(SELECT COUNT(*) AS n FROM t JOIN __lqo_shared_1 AS f ON t.tk = f.v WHERE h = 9) AS b
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from lqo.sql.join_graph import JoinBlock, QueryGraph, select_nodes
from lqo.trees.plan import Join, Leaf, Plan, Tree, joins, leaves

__all__ = ["SHARED_PREFIX", "SharedJoin", "canonical_sql", "shared_joins"]

SHARED_PREFIX = "__lqo_shared_"


@dataclass(frozen=True)
class SharedJoin:
    """One join rendered once: ``sites`` are the (block index, subtree) pairs reading it;
    the first site's block defines it. ``columns``: those of its relations' columns the
    query names anywhere (render passes on the ones read outside the join)."""

    name: str
    sites: tuple[tuple[int, Join], ...]
    columns: tuple[str, ...]

    @property
    def blocks(self) -> tuple[int, ...]:
        """The blocks that compute the shared join."""
        return tuple(index for index, _ in self.sites)


def shared_joins(graph: QueryGraph, plan: Plan) -> list[SharedJoin]:
    """The joins of ``plan`` that two or more of its blocks compute identically: the
    largest first, none overlapping another, none inside one block twice."""
    blocks = {b.index: b for b in graph.blocks}
    # Rendering runs this for every plan: first, cheaply, the subtrees whose tables
    # another block joins too; most queries have none.
    by_tables: dict[tuple[str, ...], list[tuple[int, Join]]] = {}
    for index, tree in plan.trees:
        block = blocks.get(index)
        if block is None or block.unsafe:
            continue
        for sub in joins(tree):
            names = tuple(sorted(block.relation(a).name or "" for a in sub.rels))
            by_tables.setdefault(names, []).append((index, sub))
    candidates = [s for s in by_tables.values() if len({index for index, _ in s}) > 1]
    if not candidates:
        return []
    selects = select_nodes(graph.ast)
    used_names = _column_names(graph.ast)
    by_signature: dict[tuple, list[tuple[int, Join]]] = {}
    for index, sub in (site for sites in candidates for site in sites):
        if _has_star(selects[index]):
            continue
        sig = _signature(blocks[index], sub)
        if sig is not None:
            by_signature.setdefault(sig, []).append((index, sub))
    out: list[SharedJoin] = []
    taken: dict[int, set[str]] = {}
    for _sig, sites in sorted(by_signature.items(), key=lambda kv: -len(kv[0][0])):
        sites = _one_per_block(sites, taken)
        if len(sites) < 2:
            continue
        first_index, first = sites[0]
        columns = _passed_columns(blocks[first_index], first, used_names)
        if columns is None or any(_referenced_from_nested(selects[i], sub) for i, sub in sites):
            continue
        if _same_blocks(selects, blocks, sites):
            continue  # DuckDB shares the whole blocks, aggregate included: better than the join
        for index, sub in sites:
            taken.setdefault(index, set()).update(sub.rels)
        out.append(SharedJoin(f"{SHARED_PREFIX}{len(out) + 1}", tuple(sites), columns))
    return out


def _signature(block: JoinBlock, sub: Join) -> tuple | None:
    """What the subtree computes, with its aliases replaced by leaf positions: shape and
    tables, each relation's filters, the key classes and residuals inside it."""
    order = leaves(sub)
    pos = {alias: i for i, alias in enumerate(order)}
    tables = []
    for alias in order:
        rel = block.relation(alias)
        if rel.kind != "table" or rel.columns is None or alias in block.placed or alias in block.correlated:
            return None
        filters = sorted(canonical_sql(f, pos, alias) for f in block.filters.get(alias, []))
        tables.append((rel.name, tuple(filters)))
    classes = sorted(tuple(sorted((pos[c.rel], c.name) for c in cls if c.rel in pos))
                     for cls in block.classes if sum(c.rel in pos for c in cls) >= 2)
    residuals = sorted(canonical_sql(r.expr, pos) for r in block.residuals if r.rels <= sub.rels)
    return (tuple(tables), _shape(sub), tuple(classes), tuple(residuals))


def _shape(tree: Tree) -> object:
    return "." if isinstance(tree, Leaf) else (_shape(tree.probe), _shape(tree.build))


def canonical_sql(e: exp.Expr, pos: dict[str, int], own: str | None = None) -> str:
    """``e``'s SQL with the aliases in ``pos`` written as their positions (``#0.x``); for
    a filter of relation ``own``, its unqualified columns too (``x`` and ``d1.x`` are
    one column there: lqo resolved the filter to that relation)."""
    e = e.copy()
    for col in list(e.find_all(exp.Column)):
        if col.table in pos:
            col.set("table", exp.to_identifier(f"#{pos[col.table]}"))
        elif own is not None and not col.table and col.find_ancestor(exp.Select) is None:
            col.set("table", exp.to_identifier(f"#{pos[own]}"))
    return e.sql(dialect="duckdb")


def _one_per_block(sites: list[tuple[int, Join]], taken: dict[int, set[str]]) -> list[tuple[int, Join]]:
    out, seen = [], set()
    for index, sub in sites:
        if index not in seen and not (taken.get(index, set()) & sub.rels):
            out.append((index, sub))
            seen.add(index)
    return out


def _passed_columns(block: JoinBlock, sub: Join, used_names: set[str]) -> tuple[str, ...] | None:
    """Every column of the subtree's relations whose name the query uses anywhere, or
    None when two of its relations have a column of the same name (a name would be
    ambiguous once the relations are one)."""
    out: list[str] = []
    for alias in leaves(sub):
        names = [n for n in block.relation(alias).columns or {} if n.lower() in used_names]
        if set(names) & set(out):
            return None
        out += names
    return tuple(out)


def _column_names(ast: exp.Expr) -> set[str]:
    return {c.name.lower() for c in ast.find_all(exp.Column) if c.name}


def _same_blocks(selects: list[exp.Select], blocks: dict[int, JoinBlock], sites: list[tuple[int, Join]]) -> bool:
    """Whether the subtree is all of each block and the blocks are the same SELECT: then
    DuckDB's own rule shares them whole where they end in an aggregate, estimates or not
    (TPC-DS q65: sharing only the join below the aggregates ran 1.25x native)."""
    texts = set()
    for index, sub in sites:
        if sub.rels != frozenset(blocks[index].aliases):
            return False
        texts.add(canonical_sql(selects[index], {a: i for i, a in enumerate(leaves(sub))}))
    return len(texts) == 1


def _has_star(select: exp.Select) -> bool:
    return any(isinstance(e, exp.Star) or isinstance(e, exp.Column) and isinstance(e.this, exp.Star)
               for e in select.expressions)


def _referenced_from_nested(select: exp.Select, sub: Join) -> bool:
    """Whether a subquery inside the block names one of the subtree's aliases (such a
    reference would lose its relation once the subtree is one CTE)."""
    for inner in select.find_all(exp.Select):
        if inner is not select and any(c.table in sub.rels for c in inner.find_all(exp.Column)):
            return True
    return False
