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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from lqo.book.template import scan_literals, template_key
from lqo.errors import PlanError

if TYPE_CHECKING:  # building a rendering parses (sqlglot); serving one only fills it in
    from lqo.sql.catalog import Catalog
    from lqo.sql.join_graph import QueryGraph
    from lqo.trees.plan import Plan
    from lqo.trees.shared import SharedJoin

_SENTINEL = re.compile(r"'lqoslot(\d{4})x'|7531(\d{4})97")
_OPERATOR_CHARS = set("-+*/%^~!@#&|<>=")
# Sentinels of the extra list items a rendering is checked with (beyond any literal index).
_EXTRA = 9000

# A part of a rendering: text, a literal ``(slot, member)`` of the template, or a whole
# list slot ``(slot, -1)`` filled with however many items the instance's list holds.
Part: TypeAlias = "str | tuple[int, int]"


@dataclass(frozen=True)
class SlotRendering:
    """``parts`` alternate text and literal references: ``("SELECT .. > ", (0, 0), " AND ..", (1, -1), ")")``.

    ``shape`` is the slot shape of the instance it was built from (``TemplateKey.shape``).
    A reference ``(slot, member)`` takes one literal; ``(slot, -1)`` takes a whole list
    slot, its items joined by ", ": only where ``build`` verified that the plan renders
    lists of other lengths the same way, so an instance whose lists are longer or
    shorter still fits. ``fill`` returns None for an instance it does not fit.

    Where the plan renders a join once for several blocks (``lqo.trees.shared``), the
    blocks' filters must be the same in each instance: ``twins`` pairs each literal of a
    later block's shared filters with its twin in the first (flat literal indices of
    ``shape``), and an instance whose twins differ, or whose shape differs, gets
    ``plain`` instead, the rendering that shares nothing."""

    parts: tuple[Part, ...]
    shape: tuple[int, ...]
    twins: tuple[tuple[int, int], ...] = ()
    plain: "SlotRendering | None" = None

    @property
    def n_literals(self) -> int:
        """How many literals an instance must bring (every slot's length summed)."""
        return sum(self.shape)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an instance of slot shape ``shape`` can be filled in."""
        if shape == self.shape:
            return True
        if len(shape) != len(self.shape):
            return False
        variable = self._variable()
        return all(a == b or (i in variable and a >= 1) for i, (a, b) in enumerate(zip(shape, self.shape)))

    def _variable(self) -> frozenset[int]:
        return frozenset(p[0] for p in self.parts if isinstance(p, tuple) and p[1] < 0)

    def fill(self, literals: tuple[str, ...] | list[str], shape: tuple[int, ...] | None = None) -> str | None:
        """The rendering with an instance's literals (``TemplateKey.literals`` and
        ``.shape``; ``shape`` defaults to the build shape); None where it does not fit."""
        shape = self.shape if shape is None else tuple(shape)
        if len(literals) != sum(shape):
            raise PlanError(f"the query has {len(literals)} literals, its shape says {sum(shape)}")
        if self.plain is not None and (shape != self.shape or any(literals[a] != literals[b] for a, b in self.twins)):
            return self.plain.fill(literals, shape)
        if not self.fits(shape):
            return None
        starts, pos = [], 0
        for n in shape:
            starts.append(pos)
            pos += n
        out: list[str] = []
        for p in self.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            if p[1] < 0:
                text = ", ".join(literals[starts[p[0]]:starts[p[0]] + shape[p[0]]])
            else:
                text = literals[starts[p[0]] + p[1]]
            if text[:1] == "-" and out and out[-1][-1:] in _OPERATOR_CHARS:
                text = " " + text  # ``~ -5``, ``a - -5``: never one operator ``~-`` or a comment ``--``
            out.append(text)
        return "".join(out)

    def to_json(self) -> list:
        """The rendering as plain JSON data (stored with its candidate in the book)."""
        out: list = [list(self.shape), [p if isinstance(p, str) else list(p) for p in self.parts]]
        if self.plain is not None:
            out += [[list(t) for t in self.twins], self.plain.to_json()]
        return out

    @classmethod
    def from_json(cls, data: list) -> "SlotRendering":
        """A rendering from its JSON; ``PlanError`` for one an older lqo wrote."""
        shape, parts = data[0], data[1]
        if not isinstance(shape, list):
            raise PlanError("a slot rendering from an older lqo (re-tune the plan book)")
        out = tuple(p if isinstance(p, str) else (int(p[0]), int(p[1])) for p in parts)
        if len(data) > 2:
            return cls(out, tuple(int(n) for n in shape), tuple((int(a), int(b)) for a, b in data[2]), cls.from_json(data[3]))
        return cls(out, tuple(int(n) for n in shape))

    @classmethod
    def build(cls, sql: str, catalog: Catalog, plan: Plan) -> "SlotRendering":
        """The slot rendering of ``plan`` for ``sql``'s template (``PlanError`` if the
        rendering cannot be cut at its literals)."""
        from lqo.sql.join_graph import build_query_graph
        from lqo.trees.render import render
        from lqo.trees.shared import shared_joins

        key = template_key(sql)
        literals = scan_literals(sql) or []
        if len(literals) >= _EXTRA:
            raise PlanError("too many literals for a slot rendering")
        graph = build_query_graph(sql, catalog)
        sentinel = build_query_graph(_sentinel_text(sql, literals, {}), catalog)
        flat = _cut(render(sentinel, plan, shared=[]), len(literals), ())
        out = cls(_by_slot(flat, key.shape), key.shape)
        if out.fill(key.literals) != render(graph, plan, shared=[]):
            raise PlanError("the rendering does not keep the query's literals as written")
        out = _with_lists(out, sql, literals, catalog, plan)
        shared = shared_joins(graph, plan)
        if shared:
            twins = _twins(graph, sentinel, shared)
            once = _cut(render(sentinel, plan, shared=shared), len(literals), twins)
            out = cls(_by_slot(once, key.shape), key.shape, twins, out)
            if out.fill(key.literals) != render(graph, plan, shared=shared):
                raise PlanError("the rendering does not keep the query's literals as written")
        return out


    @classmethod
    def of_rewrite(cls, sql: str, rewrite: Callable[[str], str | None]) -> "SlotRendering":
        """The slot rendering of a text rewrite (``rewrite``: a text -> the rewritten
        text, None where it does not apply; :mod:`lqo.sql.rewrites`) for ``sql``'s
        template: the rewrite of the text with every literal a sentinel, cut at them.
        ``PlanError`` unless filling in ``sql``'s own literals gives ``rewrite(sql)``
        exactly. Lists of other lengths do not fit (the instance then runs as written).

        >>> sr = SlotRendering.of_rewrite("SELECT 1 AS a WHERE 2 > 1", lambda s: s.replace("WHERE", "AND", 0))
        >>> sr.fill(("5", "6", "7"))
        'SELECT 5 AS a WHERE 6 > 7'
        """
        key = template_key(sql)
        literals = scan_literals(sql) or []
        if len(literals) >= _EXTRA:
            raise PlanError("too many literals for a slot rendering")
        full = rewrite(sql)
        cut = rewrite(_sentinel_text(sql, literals, {}))
        if full is None or cut is None:
            raise PlanError("the rewrite does not apply to the template's text")
        out = cls(_by_slot(_cut(cut, len(literals), ()), key.shape), key.shape)
        if out.fill(key.literals) != full:
            raise PlanError("the rewrite does not keep the query's literals as written")
        return out


def _sentinel(i: int, typ: str) -> str:
    return f"'lqoslot{i:04d}x'" if typ == "s" else f"7531{i:04d}97"


def _list_sentinels(first: int, typ: str, k: int, members: int, extra: int) -> tuple[list[str], int]:
    """The sentinels of a list of ``k`` items whose first literal has index ``first``:
    its own ``members`` first, then extras numbered from ``extra`` (returned advanced)."""
    own = min(k, members)
    items = [_sentinel(first + m, typ) for m in range(own)] + [_sentinel(extra + m, typ) for m in range(k - own)]
    return items, extra + k - own


def _sentinel_text(sql: str, literals: list, lengths: dict[int, tuple[int, int]]) -> str:
    """``sql`` with every literal replaced by its sentinel; the list whose first literal
    has index ``i`` and ``members`` items gets ``k`` items instead, where ``lengths[i]``
    is ``(k, members)`` (extra items numbered from _EXTRA)."""
    pieces, pos, extra = [], 0, _EXTRA
    skip: set[int] = set()
    for i, (start, end, _text, typ) in enumerate(literals):
        if i in skip:
            pos = end
            continue
        pieces.append(sql[pos:start])
        if i in lengths:
            k, members = lengths[i]
            items, extra = _list_sentinels(i, typ, k, members, extra)
            skip.update(range(i + 1, i + members))
            last = literals[i + members - 1][1]
            pieces.append(", ".join(items))
            pos = last
            continue
        pieces.append(_sentinel(i, typ))
        pos = end
    pieces.append(sql[pos:])
    return "".join(pieces)


def _by_slot(flat: "SlotRendering", shape: tuple[int, ...]) -> tuple[Part, ...]:
    """Flat literal references (ints) as ``(slot, member)``."""
    where = [(j, m) for j, n in enumerate(shape) for m in range(n)]
    return tuple(where[p] if isinstance(p, int) else p for p in flat.parts)


def _with_lists(sr: "SlotRendering", sql: str, literals: list, catalog: Catalog, plan: Plan) -> "SlotRendering":
    """``sr`` with each list slot rendered as one part ``(slot, -1)``, where the plan
    renders the list as written, item by item, at every length: checked by rendering
    the text with each list one item longer, and with one item. Unchanged otherwise."""
    from lqo.sql.join_graph import build_query_graph
    from lqo.trees.render import render

    lists = [j for j, n in enumerate(sr.shape) if n > 1 or _in_parens(sr.parts, j)]
    if not lists:
        return sr
    parts = list(sr.parts)
    for j in lists:
        run = _list_run(parts, j, sr.shape[j])
        if run is None:
            return sr
        a, b = run
        parts[a:b] = [(j, -1)]
    candidate = SlotRendering(tuple(parts), sr.shape)
    firsts = [sum(sr.shape[:j]) for j in lists]
    for lengths in ({f: (sr.shape[j] + 1, sr.shape[j]) for f, j in zip(firsts, lists)},
                    {f: (1, sr.shape[j]) for f, j in zip(firsts, lists)}):
        variant = _sentinel_text(sql, literals, lengths)
        try:
            rendered = render(build_query_graph(variant, catalog), plan, shared=[])
        except Exception:  # noqa: BLE001 - any failure to render another length keeps the shape fixed
            return sr
        shape = tuple(lengths[sum(sr.shape[:j])][0] if j in lists else n for j, n in enumerate(sr.shape))
        expected_literals = []
        extra = _EXTRA
        for j, n in enumerate(sr.shape):
            first = sum(sr.shape[:j])
            typ = literals[first][3]
            if j in lists:
                items, extra = _list_sentinels(first, typ, *lengths[first], extra)
                expected_literals += items
            else:
                expected_literals += [_sentinel(first + m, literals[first + m][3]) for m in range(n)]
        if candidate.fill(expected_literals, shape) != rendered:
            return sr
    return candidate


def _in_parens(parts: Sequence[Part], j: int) -> bool:
    """Whether the one-literal slot ``j`` stands alone in parentheses (a list of one)."""
    for k, p in enumerate(parts):
        if p == (j, 0):
            before = parts[k - 1] if k else ""
            after = parts[k + 1] if k + 1 < len(parts) else ""
            return isinstance(before, str) and before.endswith("(") and isinstance(after, str) and after.startswith(")")
    return False


def _list_run(parts: Sequence[Part], j: int, n: int) -> tuple[int, int] | None:
    """The extent ``[a, b)`` in ``parts`` of list slot ``j``'s ``n`` items rendered in
    order, separated by ", " and enclosed in parentheses; None if not rendered so, or
    more than once."""
    found = None
    for a, p in enumerate(parts):
        if p != (j, 0):
            continue
        b = a + 1
        for m in range(1, n):
            if b + 1 >= len(parts) or parts[b] != ", " or parts[b + 1] != (j, m):
                return None
            b += 2
        before, after = parts[a - 1] if a else "", parts[b] if b < len(parts) else ""
        if not (isinstance(before, str) and before.endswith("(") and isinstance(after, str) and after.startswith(")")):
            return None
        if found is not None:
            return None
        found = (a, b)
    return found


def _cut(rendered: str, n_literals: int, twins: tuple[tuple[int, int], ...]) -> SlotRendering:
    """``rendered`` cut at its sentinels (flat literal indices, as ints, in ``parts``);
    every literal must appear, but a twin's."""
    parts: list = []
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
    return SlotRendering(tuple(parts), (1,) * n_literals)


def _twins(graph: QueryGraph, sentinel: QueryGraph, shared: list[SharedJoin]) -> tuple[tuple[int, int], ...]:
    """(slot, twin slot) for each literal in a later site's filters of a shared join:
    filters are paired by their text in the instance (the same in every site, or the
    join would not be shared), their literals by order of appearance."""
    from lqo.trees.plan import leaves
    from lqo.trees.shared import canonical_sql

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


def _slots(e: Any) -> list[int]:
    return [int(m.group(1) or m.group(2)) for m in _SENTINEL.finditer(e.sql(dialect="duckdb"))]
