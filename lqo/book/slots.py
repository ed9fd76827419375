"""A verified plan rendered once per template, with literal slots: serving fills in an
instance's constants without parsing it again.

Built from one instance: every literal token is replaced by a sentinel of the same
lexical kind (a string stays a string, a number a number), the sentinel text is parsed
and rendered with the plan, and the output is cut at the sentinels. Join graphs depend
on columns, never on constant values, so the same cut fits every instance of the
template. ``build`` checks that filling in the instance's own literals gives exactly
the full rendering, and refuses otherwise (the caller then renders in full).

>>> from lqo.sql.catalog import Catalog
>>> from lqo.trees.plan import Join, Leaf, Plan
>>> cat = Catalog({"a": {"x": "INT", "z": "INT"}, "b": {"y": "INT", "s": "VARCHAR"}})
>>> plan = Plan.of({0: Join(Leaf("b"), Leaf("a"))})
>>> sr = SlotRendering.build("SELECT * FROM a, b WHERE a.x = b.y AND a.z > 1 AND b.s = 'k'", cat, plan)
>>> sr.fill(("7", "'q'"))
"SELECT a.*, b.* FROM b JOIN a ON b.y = a.x WHERE a.z > 7 AND b.s = 'q'"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lqo.book.template import tokens
from lqo.errors import PlanError
from lqo.sql.catalog import Catalog
from lqo.sql.join_graph import QueryGraph, build_query_graph
from lqo.trees.plan import Plan, leaves
from lqo.trees.render import render
from lqo.trees.shared import SharedJoin, canonical_sql, shared_joins

_SENTINEL = re.compile(r"'lqoslot(\d{4})x'|7531(\d{4})97")


@dataclass(frozen=True)
class SlotRendering:
    """``parts`` alternate text and slot numbers: ``("SELECT .. > ", 0, " AND ..", 1, "")``.

    Where the plan renders a join once for several blocks (``lqo.trees.shared``), the
    blocks' filters must be the same in each instance: ``twins`` pairs each literal of a
    later block's shared filters with its twin in the first, and an instance whose twins
    differ gets ``plain`` instead, the rendering that shares nothing."""

    parts: tuple[str | int, ...]
    n_literals: int
    twins: tuple[tuple[int, int], ...] = ()
    plain: "SlotRendering | None" = None

    def fill(self, literals: tuple[str, ...] | list[str]) -> str:
        if len(literals) != self.n_literals:
            raise PlanError(f"this rendering has {self.n_literals} literal slots, the query {len(literals)}")
        if self.plain is not None and any(literals[a] != literals[b] for a, b in self.twins):
            return self.plain.fill(literals)
        return "".join(p if isinstance(p, str) else literals[p] for p in self.parts)

    def to_json(self) -> list:
        out: list = [self.n_literals, list(self.parts)]
        if self.plain is not None:
            out += [[list(t) for t in self.twins], self.plain.to_json()]
        return out

    @classmethod
    def from_json(cls, data: list) -> "SlotRendering":
        n, parts = data[0], data[1]
        if len(data) > 2:
            return cls(tuple(parts), int(n), tuple((int(a), int(b)) for a, b in data[2]), cls.from_json(data[3]))
        return cls(tuple(parts), int(n))

    @classmethod
    def build(cls, sql: str, catalog: Catalog, plan: Plan) -> "SlotRendering":
        """The slot rendering of ``plan`` for ``sql``'s template (``PlanError`` if the
        rendering cannot be cut at its literals)."""
        toks = [t for t in tokens(sql) if t[3]]
        if len(toks) >= 10000:
            raise PlanError("too many literals for a slot rendering")
        pieces, pos = [], 0
        literals = []
        for i, (start, end, text, _) in enumerate(toks):
            pieces.append(sql[pos:start])
            pieces.append(f"'lqoslot{i:04d}x'" if text[:1] in ("'", '"') or text[:1].isalpha() else f"7531{i:04d}97")
            literals.append(text)
            pos = end
        pieces.append(sql[pos:])
        graph = build_query_graph(sql, catalog)
        sentinel = build_query_graph("".join(pieces), catalog)
        out = _cut(render(sentinel, plan, shared=[]), len(toks), ())
        if out.fill(literals) != render(graph, plan, shared=[]):
            raise PlanError("the rendering does not keep the query's literals as written")
        shared = shared_joins(graph, plan)
        if shared:
            twins = _twins(graph, sentinel, shared)
            once = _cut(render(sentinel, plan, shared=shared), len(toks), twins)
            out = cls(once.parts, once.n_literals, twins, out)
            if out.fill(literals) != render(graph, plan, shared=shared):
                raise PlanError("the rendering does not keep the query's literals as written")
        return out


def _cut(rendered: str, n_literals: int, twins: tuple[tuple[int, int], ...]) -> SlotRendering:
    """``rendered`` cut at its sentinels; every literal must appear, but a twin's."""
    parts: list[str | int] = []
    pos = 0
    seen = set()
    for m in _SENTINEL.finditer(rendered):
        slot = int(m.group(1) or m.group(2))
        if slot >= n_literals:
            raise PlanError("a sentinel-like constant in the query text")
        # A numeric sentinel rendered inside quotes (e.g. INTERVAL 30 DAY -> '30'):
        # the quotes come from the renderer and stay around the filled literal.
        parts += [rendered[pos:m.start()], slot]
        seen.add(slot)
        pos = m.end()
    parts.append(rendered[pos:])
    if set(range(n_literals)) - seen != {a for a, _ in twins} or not {b for _, b in twins} <= seen:
        raise PlanError(f"the rendering drops {n_literals - len(seen)} of the query's literals")
    return SlotRendering(tuple(parts), n_literals)


def _twins(graph: QueryGraph, sentinel: QueryGraph, shared: list[SharedJoin]) -> tuple[tuple[int, int], ...]:
    """(slot, twin slot) for each literal in a later site's filters of a shared join:
    filters are paired by their text in the instance (the same in every site, or the
    join would not be shared), their literals by order of appearance."""
    real = {b.index: b for b in graph.blocks}
    cut = {b.index: b for b in sentinel.blocks}
    out: list[tuple[int, int]] = []
    for s in shared:
        first, sub = s.sites[0]
        for index, other in s.sites[1:]:
            for i, (a, b) in enumerate(zip(leaves(sub), leaves(other))):
                mine = [canonical_sql(f, {a: i}, a) for f in real[first].filters.get(a, [])]
                used: set[int] = set()
                for j, f in enumerate(real[index].filters.get(b, [])):
                    text = canonical_sql(f, {b: i}, b)
                    k = next((k for k, t in enumerate(mine) if t == text and k not in used), None)
                    if k is None:  # shared_joins paired these filters by the same text
                        raise PlanError("a shared join's filters differ between its blocks")
                    used.add(k)
                    ours, theirs = _slots(cut[index].filters[b][j]), _slots(cut[first].filters[a][k])
                    if len(ours) != len(theirs):
                        raise PlanError("a shared join's filters hold their literals differently")
                    out += zip(ours, theirs)
    return tuple(out)


def _slots(e) -> list[int]:
    return [int(m.group(1) or m.group(2)) for m in _SENTINEL.finditer(e.sql(dialect="duckdb"))]
