"""Plan -> SQL that DuckDB executes exactly as the plan's trees.

With ``join_order`` and ``build_side_probe_side`` disabled, DuckDB runs joins as
written: a left-deep chain ``a JOIN b ON .. JOIN c ON ..`` and parenthesized bushy
parts, the right child of each join being the hash-table build side. Key equalities
go into the ON clause of the lowest join that spans them; single-relation filters and
everything lqo does not move stay in WHERE (filter pushdown places them), except that a
relation restricted by a subquery predicate, or by a filter that references an enclosing
query, is rendered with its filters inside it (``lqo.sql.placement``: DuckDB plans those
as joins it would not push down). A ``SELECT *``
becomes each relation's star in written order, so its columns keep their order.

>>> from lqo.sql.catalog import Catalog
>>> from lqo.sql.join_graph import build_query_graph
>>> from lqo.trees.plan import Join, Leaf, Plan
>>> g = build_query_graph("SELECT * FROM a, b WHERE a.x = b.y AND a.z > 1",
...                       Catalog({"a": {"x": "INT", "z": "INT"}, "b": {"y": "INT"}}))
>>> render(g, Plan.of({0: Join(Leaf("b"), Leaf("a"))}))
'SELECT a.*, b.* FROM b JOIN a ON b.y = a.x WHERE a.z > 1'
>>> g = build_query_graph("SELECT 1 FROM a, b WHERE a.x = b.y AND a.z = (SELECT max(y) FROM b)",
...                       Catalog({"a": {"x": "INT", "z": "INT"}, "b": {"y": "INT"}}))
>>> render(g, Plan.of({0: Join(Leaf("b"), Leaf("a"))}))
'SELECT 1 FROM b JOIN (SELECT * FROM a WHERE a.z = (SELECT MAX(y) FROM b)) AS a ON b.y = a.x'
"""

from __future__ import annotations

from sqlglot import exp

from lqo.errors import PlanError
from lqo.sql.join_graph import JoinBlock, QueryGraph, block_conjuncts, from_items, select_nodes
from lqo.trees.plan import Join, Leaf, Plan, Tree, joins, leaves
from lqo.trees.shared import SharedJoin, shared_joins


def render(graph: QueryGraph, plan: Plan, shared: list[SharedJoin] | None = None) -> str:
    """SQL for ``graph``'s query with each block in ``plan`` rendered as its tree.

    Blocks absent from ``plan`` are left as written. Joins several blocks compute
    identically are rendered once (``shared``: by default ``shared_joins(graph, plan)``).
    Raises ``PlanError`` if a tree does not fit its block or a block is unsafe to reorder.
    """
    ast = graph.ast.copy()
    selects = select_nodes(ast)
    by_index = {b.index: b for b in graph.blocks}
    if shared is None:
        shared = shared_joins(graph, plan)
    sites = {id(sub): s for s in shared for _, sub in s.sites}
    bodies: dict[str, exp.Select] = {}
    for index, tree in plan.trees:
        block = by_index.get(index)
        if block is None:
            raise PlanError(f"plan names block {index}, which the query does not have")
        if block.unsafe:
            raise PlanError(f"block {index} cannot be reordered: {block.unsafe}")
        if sorted(leaves(tree)) != sorted(block.aliases):
            raise PlanError(f"tree {tree} does not cover block {index} ({', '.join(block.aliases)})")
        _render_block(selects[index], block, tree, sites, bodies)
    if bodies:
        read = {c.name.lower() for c in ast.find_all(exp.Column)}  # outside the shared joins
        for body in bodies.values():
            kept = [c for c in body.expressions if c.name.lower() in read]
            body.set("expressions", kept or body.expressions[:1])
        _with_shared(ast, [(s.name, bodies[s.name]) for s in shared])
    return ast.sql(dialect="duckdb")


def _render_block(select: exp.Select, block: JoinBlock, tree: Tree, sites: dict[int, SharedJoin],
                  bodies: dict[str, exp.Select]) -> None:
    conjuncts = block_conjuncts(select)  # this copy's nodes: they may hold rendered blocks
    _name_stars(select, from_items(select))
    nodes = dict(zip(block.aliases, from_items(select)))
    for node in nodes.values():
        node.pop()
    wrapped = set(block.placed) | block.correlated
    for rel in wrapped:
        own = [c.copy() for c in block.filters.get(rel, [])] + [conjuncts[i] for i in block.placed.get(rel, [])]
        nodes[rel] = _restricted(nodes[rel], own)
    # Joins computed once for several blocks: read as one relation under the alias of
    # their first leaf; their filters go into the shared definition.
    reads: dict[int, exp.Table] = {}
    inside: dict[str, str] = {}
    for sub in joins(tree):
        shared = sites.get(id(sub))
        if shared is None:
            continue
        order = leaves(sub)
        if shared.sites[0][1] is sub:
            bodies[shared.name] = _shared_body(block, sub, nodes, shared.columns)
        reads[id(sub)] = exp.Table(this=exp.to_identifier(shared.name),
                                   alias=exp.TableAlias(this=exp.to_identifier(order[0])))
        inside.update({alias: order[0] for alias in order})
    head, chain = _chain(block, tree, nodes, reads)
    select.set("from_", exp.From(this=head))
    select.set("joins", chain or None)
    where = [conjuncts[i] for i in block.kept]
    for rel in block.aliases:
        if rel not in wrapped and rel not in inside:
            where += [c.copy() for c in block.filters.get(rel, [])]
    placed = {id(r) for j in _joins_post(tree) for r in _new_residuals(block, j)}
    where += [exp.Paren(this=r.expr.copy()) for r in block.residuals if id(r) not in placed]
    select.set("where", exp.Where(this=exp.and_(*where, copy=False)) if where else None)
    if inside:
        for col in list(select.find_all(exp.Column)):
            if col.table in inside and col.find_ancestor(exp.Select) is select:
                col.set("table", exp.to_identifier(inside[col.table]))


def _shared_body(block: JoinBlock, sub: Join, nodes: dict, columns: tuple[str, ...]) -> exp.Select:
    """``SELECT <columns> FROM <sub's joins> WHERE <its relations' filters>``."""
    order = leaves(sub)
    head, chain = _chain(block, sub, {a: nodes[a].copy() for a in order}, {})
    owner = {name: alias for alias in order for name in block.relation(alias).columns or {}}
    body = exp.Select(expressions=[exp.column(name, table=owner[name]) for name in columns],
                      from_=exp.From(this=head))
    body.set("joins", chain or None)
    filters = [c.copy() for alias in order for c in block.filters.get(alias, [])]
    if filters:
        body.set("where", exp.Where(this=exp.and_(*filters, copy=False)))
    return body


def _with_shared(ast: exp.Expr, ctes: list[tuple[str, exp.Select]]) -> None:
    defs = [exp.CTE(this=body, alias=exp.TableAlias(this=exp.to_identifier(name)), materialized=True)
            for name, body in ctes]
    with_ = ast.args.get("with_")
    if with_ is not None:
        with_.set("expressions", defs + list(with_.expressions))
    else:
        ast.set("with_", exp.With(expressions=defs))


def _restricted(item: exp.Expr, conds: list[exp.Expr]) -> exp.Subquery:
    """``item`` as ``(SELECT * FROM item WHERE conds) AS alias``: its subquery predicates
    then filter before any join, where DuckDB's own join order would place them."""
    inner = exp.Select(expressions=[exp.Star()], from_=exp.From(this=item))
    inner.set("where", exp.Where(this=exp.and_(*conds, copy=False)))
    return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(item.alias_or_name)))


def _name_stars(select: exp.Select, items: list[exp.Expr]) -> None:
    """``SELECT *`` lists the relations' columns in FROM order: keep the written order
    whatever the tree by writing it as each relation's star, ``a.*, b.*``."""
    if not any(type(e) is exp.Star for e in select.expressions):
        return
    names = []
    for item in items:
        alias = item.args.get("alias")
        names.append(alias.this if alias is not None and alias.this else item.this)
    out: list[exp.Expr] = []
    for e in select.expressions:
        if type(e) is exp.Star:
            out += [exp.Column(this=exp.Star(), table=name.copy()) for name in names]
        else:
            out.append(e)
    select.set("expressions", out)


def _joins_post(tree: Tree):
    if isinstance(tree, Join):
        yield from _joins_post(tree.probe)
        yield from _joins_post(tree.build)
        yield tree


def _new_residuals(block: JoinBlock, join: Join):
    left, right = join.probe.rels, join.build.rels
    both = left | right
    return [r for r in block.residuals if r.rels <= both and not r.rels <= left and not r.rels <= right]


def _chain(block: JoinBlock, tree: Tree, nodes: dict, reads: dict[int, exp.Table]) -> tuple[exp.Expr, list[exp.Join]]:
    """A tree as ``head JOIN x ON .. JOIN y ON ..``: its left spine is the chain. A
    subtree in ``reads`` is a relation already (a shared join)."""
    if isinstance(tree, Leaf):
        return nodes[tree.rel], []
    if id(tree) in reads:
        return reads[id(tree)], []
    head, chain = _chain(block, tree.probe, nodes, reads)
    if isinstance(tree.build, Leaf):
        right: exp.Expr = nodes[tree.build.rel]
    elif id(tree.build) in reads:
        right = reads[id(tree.build)]
    else:
        rhead, rchain = _chain(block, tree.build, nodes, reads)
        rhead.set("joins", rchain)
        right = exp.Subquery(this=rhead)
    conds = block.join_conditions(tree.probe.rels, tree.build.rels)
    if conds:
        chain.append(exp.Join(this=right, on=exp.and_(*conds, copy=False)))
    else:
        chain.append(exp.Join(this=right, kind="CROSS"))
    return head, chain
