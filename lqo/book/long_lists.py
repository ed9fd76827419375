"""Long literal lists, found without reading them token by token.

A text with a list of 64 or more literals of one type (``IN (1, 2, ..., 5000)``, an
application's id filter) would cost a DuckDB tokenize and a Python pass over every item
to key. :func:`cut_long_lists` finds such lists with one regular-expression pass and cuts
each to its first two items; :func:`lqo.book.template.template_key` then reads the cut text
and uses it only where DuckDB's tokens show each cut list as a list slot at the place it
was cut (a list inside a string, a quoted name or a comment is read in full).

>>> cut_long_lists("SELECT 1 WHERE x IN (" + ", ".join(map(str, range(70))) + ")")[0]
'SELECT 1 WHERE x IN (0, 1)'
"""

from __future__ import annotations

import re

_LONG_LIST_MIN = 64
_NUMBER_LIST = re.compile(r"\((?:[-0-9.eE+ \t\n\r\f]*,){%d,}[-0-9.eE+ \t\n\r\f]*\)" % (_LONG_LIST_MIN - 1))
_WS = "[ \t\n\r\f]*"  # the whitespace DuckDB's lexer skips (Python's \s is more)
_STRING_LIST = re.compile(r"\((?:%s'[^']*(?:''[^']*)*'%s,){%d,}%s'[^']*(?:''[^']*)*'%s\)"
                          % (_WS, _WS, _LONG_LIST_MIN - 1, _WS, _WS))
_STRING = re.compile(r"'[^']*(?:''[^']*)*'")
# A whole list body of one numeric slot type (signs allowed), checked in one match.
_BODIES = tuple(re.compile(r"(?:{w}{n}{w},)*{w}{n}{w}".format(w=_WS, n=n)) for n in (
    r"-?\d+", r"-?(?:\d+\.\d*|\.\d+)", r"-?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+"))
LONG_TEXT = 4096  # characters: shorter texts never hold such a list


def cut_long_lists(sql: str) -> tuple[str, dict[int, list[str]]] | None:
    """``sql`` with every long list of one literal type cut to two items, and per cut
    list (by the position of its '(' in the cut text) its full members; None for none."""
    found: list[tuple[int, int, list[str]]] = []
    for m in _NUMBER_LIST.finditer(sql):
        body = m.group(0)[1:-1]
        members = list(map(str.strip, body.split(",")))
        if ("-" not in body and all(map(str.isdigit, members))) or any(rx.fullmatch(body) for rx in _BODIES):
            found.append((m.start(), m.end(), members))
    if "'" in sql:
        found.extend((m.start(), m.end(), _STRING.findall(m.group(0))) for m in _STRING_LIST.finditer(sql))
    if not found:
        return None
    pieces: list[str] = []
    cut: dict[int, list[str]] = {}
    pos = length = 0
    for start, end, members in sorted(found):
        if start < pos:
            return None  # overlapping matches (a list inside a string): read in full
        head = sql[pos:start]
        short = f"({members[0]}, {members[1]})"
        cut[length + len(head)] = members
        pieces += [head, short]
        length += len(head) + len(short)
        pos = end
    pieces.append(sql[pos:])
    return "".join(pieces), cut
