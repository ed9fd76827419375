"""One query made ready for planning: its join graph and DuckDB's native trees.

``prepare`` is the start of the planning path: parse and graph (lqo's own, fast), then
one ``EXPLAIN`` for the native trees every forced plan must keep where lqo changes
nothing. Errors from DuckDB's binder become typed lqo errors.

>>> pq = prepare("SELECT count(*) FROM orders, customer WHERE o_custkey = c_custkey", con)  # doctest: +SKIP
>>> pq.render(pq.native_plan)  # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import duckdb

from lqo.errors import InvalidSQLError, LqoError, UnknownTableError
from lqo.sql.catalog import Catalog
from lqo.sql.join_graph import QueryGraph, build_query_graph
from lqo.sql.syntax import describe_parser_error
from lqo.trees.enumerate import random_tree
from lqo.trees.native import NativeTrees, explain_json, read_native_trees
from lqo.trees.plan import Plan
from lqo.trees.render import render


@dataclass
class PreparedQuery:
    """A query's graph and native trees; ``reason`` says why it cannot be forced."""

    sql: str
    graph: QueryGraph
    native: NativeTrees

    @property
    def reason(self) -> str | None:
        """Why lqo keeps this query exactly as written (native), or None."""
        if not self.graph.blocks:
            return "no joins to reorder"
        if self.graph.unsafe_reason:
            return self.graph.unsafe_reason
        if self.native.missing:
            index, why = next(iter(self.native.missing.items()))
            return f"block {index}: {why}"
        return None

    @property
    def forceable(self) -> bool:
        """Whether lqo may force a tree for this query."""
        return self.reason is None

    @property
    def native_plan(self) -> Plan:
        """DuckDB's own trees as a Plan."""
        return self.native.plan

    def render(self, plan: Plan) -> str:
        """``plan`` as SQL that DuckDB runs as written."""
        return render(self.graph, plan)

    @property
    def free_blocks(self) -> list:
        """Blocks whose tree lqo may choose (the others keep DuckDB's native tree)."""
        return [b for b in self.graph.reorderable if b.fixed is None and len(b.relations) >= 2]

    def random_plans(self, n: int, rng: random.Random, max_tries: int = 50) -> list[Plan]:
        """Up to ``n`` distinct plans, each differing from native in one random block.

        Changing one block at a time keeps the rest at DuckDB's choice, so a bad tree in
        one block does not hide what another block's tree is worth.
        """
        if not self.forceable:
            return []
        base = self.native_plan
        blocks = self.free_blocks
        if not blocks:
            return []
        seen = {base}
        out: list[Plan] = []
        for _ in range(n * max_tries):
            if len(out) >= n:
                break
            block = rng.choice(blocks)
            plan = base.replace(block.index, random_tree(block, rng, bushy=rng.random() < 0.7))
            if plan not in seen:
                seen.add(plan)
                out.append(plan)
        return out


def prepare(sql: str, con: duckdb.DuckDBPyConnection, catalog: Catalog | None = None,
            explain_unforceable: bool = True) -> PreparedQuery:
    """Parse, build the join graph and read DuckDB's native trees for ``sql``.

    With ``explain_unforceable=False``, a query the graph alone shows lqo must keep as
    written (no joins, an outer join) is only bound by DuckDB, not planned: its native
    trees stay empty and the planning path saves the EXPLAIN (~8 ms on TPC-DS SF1)
    while bad columns still fail here. Raises ``InvalidSQLError``, ``NotSelectError``
    or ``UnknownTableError``.
    """
    catalog = catalog or Catalog.from_connection(con)
    graph = build_query_graph(sql, catalog)
    try:
        if not explain_unforceable and (not graph.blocks or graph.unsafe_reason):
            con.sql(sql)  # binds only (a SELECT relation runs nothing until fetched)
            return PreparedQuery(sql=sql, graph=graph, native=NativeTrees())
        roots = explain_json(con, sql)
    except duckdb.ParserException as err:
        raise InvalidSQLError(f"invalid SQL: {describe_parser_error(str(err), sql)}") from None
    except (duckdb.CatalogException, duckdb.BinderException) as err:
        raise UnknownTableError(_first_line(err)) from None
    except duckdb.Error as err:
        raise InvalidSQLError(f"DuckDB cannot plan this query: {_first_line(err)}") from None
    return PreparedQuery(sql=sql, graph=graph, native=read_native_trees(graph, roots))


def prepare_named(name: str, sql: str, con: duckdb.DuckDBPyConnection, catalog: Catalog | None = None) -> PreparedQuery:
    """``prepare``, with ``name`` (a workload query's id and file) leading the message
    of any error it raises: a workload command says which of its queries is bad."""
    try:
        return prepare(sql, con, catalog)
    except LqoError as err:
        raise type(err)(f"query {name}: {err}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]
