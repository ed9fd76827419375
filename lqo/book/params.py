"""Bind parameters: a parameterized text served by the plan of its literal template.

An application binds its filter values (``con.execute(sql, [v1, v2])``). lqo tunes the
*literal* instances such traffic stands for (each parameter replaced by its value as
an SQL literal: :func:`bind_literals`, what ``lqo workload import`` writes from a
capture) and serves the parameterized text by the plan of the literal template its
values give, rendered with the parameters kept as parameters: the verified plan's
slot rendering is filled with ``$k`` where a value was bound, and DuckDB binds the
caller's values as it would for the text as written (each parameter stays in the same
expression, so it gets the same type).

A value has a literal form only where its type does: integers, finite floats and
decimals, strings, dates and naive timestamps. Anything else (None, booleans, bytes,
lists, time zones), a text whose parameters lqo cannot read, or a parameter next to a
minus sign is left as written.

>>> b = bind_literals("SELECT * FROM t WHERE a = ? AND s IN (?, ?)", [5, "x", "it's"])
>>> b.sql
"SELECT * FROM t WHERE a = 5 AND s IN ('x', 'it''s')"
>>> b.fill(), b.tokens
((' $1', ' $2', ' $3'), ('$1', '$2', '$3'))
>>> bind_literals("SELECT * FROM t WHERE a = ? AND b > 2.5", (None,)) is None
True
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lqo.book.template import bind_parameters, scan_literals


def sql_literal(value: Any) -> str | None:
    """``value`` as the SQL literal lqo tunes for it; None for a type without one.

    >>> [sql_literal(v) for v in (3, -2.5, "o'k", dt.date(2000, 1, 2), True, None)]
    ['3', '-2.5', "'o''k'", "'2000-01-02'", None, None]
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        text = str(value)
        return text if value.is_finite() and "E" not in text else None
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'" if "\x00" not in value else None
    if isinstance(value, dt.datetime):
        return f"'{value.isoformat(sep=' ')}'" if value.tzinfo is None else None
    if isinstance(value, dt.date):
        return f"'{value.isoformat()}'"
    return None


@dataclass(frozen=True)
class BoundText:
    """A parameterized text with its values written in as literals.

    ``sql``: the literal text; ``tokens``: per literal of ``sql``'s template key (in
    order), the parameter it came from (``$k`` / ``$name``) or, for a literal written in
    the text itself, its own text."""

    sql: str
    tokens: tuple[str, ...]

    def fill(self) -> tuple[str, ...]:
        """What a slot rendering is filled with to keep the parameters parameters (a space
        before each, so no operator character runs into it)."""
        return tuple(" " + t if t[:1] == "$" else t for t in self.tokens)


def bind_literals(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> BoundText | None:
    """``sql`` with every bind parameter replaced by its value's literal; None where lqo
    cannot do that exactly (see the module doc). Positional ``?`` become ``$1, $2, ..`` in
    order, ``$N`` keep their number, ``$name`` their name."""
    found = bind_parameters(sql)
    if not found:
        return None
    named = isinstance(params, Mapping)
    if named and not all(isinstance(k, str) for k in params):
        return None
    kinds = {"?" if n == "" else "$" if n.isdigit() else "name" for _, _, n in found}
    if len(kinds) != 1 or named != (kinds == {"name"}):
        return None
    if kinds == {"?"} and len(found) != len(params):
        return None
    out: list[str] = []
    spans: dict[tuple[int, int], str] = {}
    pos = length = 0
    for i, (s, e, name) in enumerate(found):
        value, token = _value(params, name, i)
        text = sql_literal(value) if token else None
        if text is None:
            return None
        gap = sql[pos:s]
        if text[:1] == "-" and gap[-1:] in "-+*/%^~!@#&|<>=":  # never ``a--5``: a comment
            gap += " "
        out.append(gap)
        length += len(gap)
        spans[(length, length + len(text))] = token
        out.append(text)
        length += len(text)
        pos = e
    out.append(sql[pos:])
    literal_sql = "".join(out)
    items = scan_literals(literal_sql)
    if items is None:
        return None
    tokens = tuple(spans.pop((s, e), text) for s, e, text, _ in items)
    if spans:  # a value did not come out as one literal of its own (a sign merged into it)
        return None
    return BoundText(literal_sql, tokens)


def literal_kinds(params: Sequence[Any] | Mapping[str, Any]) -> tuple[object, ...] | None:
    """What of ``params`` decides the literal template they give: each value's lexical
    kind (integer, decimal, scientific, string; its sign); None where a value has no
    literal form. Two value lists of the same kinds give the same template key and the
    same rendering with the parameters kept, so a server decides once per kinds.

    >>> literal_kinds([1, -2, 0.5, "a"]) == literal_kinds([7, -1, 2.25, "bc"])
    True
    >>> literal_kinds([1]) == literal_kinds([1.5]), literal_kinds([None])
    (False, None)
    """
    if isinstance(params, Mapping) and not all(isinstance(k, str) for k in params):
        return None  # DuckDB names parameters by strings: let it judge the rest
    values = sorted(params.items()) if isinstance(params, Mapping) else enumerate(params)
    out: list[object] = []
    for name, value in values:
        text = sql_literal(value)
        if text is None:
            return None
        kind = "s" if text[0] == "'" else "e" if "e" in text or "E" in text else "d" if "." in text else "i"
        out.append((name, kind, text[0] == "-"))
    return tuple(out)


def _value(params: Sequence[Any] | Mapping[str, Any], name: str, index: int) -> tuple[Any, str]:
    """The value bound to parameter ``name`` (the ``index``-th in the text) and its
    token in a rendering; ``(None, "")`` where the caller gave none."""
    if isinstance(params, Mapping):
        return (params[name], "$" + name) if name in params else (None, "")
    k = int(name) if name else index + 1
    return (params[k - 1], f"${k}") if 1 <= k <= len(params) else (None, "")
