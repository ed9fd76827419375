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
from lqo.sql.join_graph import build_query_graph
from lqo.trees.plan import Plan
from lqo.trees.render import render

_SENTINEL = re.compile(r"'lqoslot(\d{4})x'|7531(\d{4})97")


@dataclass(frozen=True)
class SlotRendering:
    """``parts`` alternate text and slot numbers: ``("SELECT .. > ", 0, " AND ..", 1, "")``."""

    parts: tuple[str | int, ...]
    n_literals: int

    def fill(self, literals: tuple[str, ...] | list[str]) -> str:
        if len(literals) != self.n_literals:
            raise PlanError(f"this rendering has {self.n_literals} literal slots, the query {len(literals)}")
        return "".join(p if isinstance(p, str) else literals[p] for p in self.parts)

    def to_json(self) -> list:
        return [self.n_literals, list(self.parts)]

    @classmethod
    def from_json(cls, data: list) -> "SlotRendering":
        n, parts = data
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
        sentinel_sql = "".join(pieces)
        rendered = render(build_query_graph(sentinel_sql, catalog), plan)
        parts: list[str | int] = []
        pos = 0
        seen = set()
        for m in _SENTINEL.finditer(rendered):
            slot = int(m.group(1) or m.group(2))
            if slot >= len(toks):
                raise PlanError("a sentinel-like constant in the query text")
            # A numeric sentinel rendered inside quotes (e.g. INTERVAL 30 DAY -> '30'):
            # the quotes come from the renderer and stay around the filled literal.
            parts += [rendered[pos:m.start()], slot]
            seen.add(slot)
            pos = m.end()
        parts.append(rendered[pos:])
        if len(seen) != len(toks):
            raise PlanError(f"the rendering drops {len(toks) - len(seen)} of the query's literals")
        out = cls(tuple(parts), len(toks))
        if out.fill(literals) != render(build_query_graph(sql, catalog), plan):
            raise PlanError("the rendering does not keep the query's literals as written")
        return out
