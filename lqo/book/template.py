"""Template identity: a query text with its literals replaced by typed slots.

``template_key(sql)`` reads DuckDB's own tokens (no parse) and returns a stable key plus
the literal tokens in order. Instances of a template that differ only in constants
share the key; whitespace, comments, a trailing ``;`` and the case of keywords (but
unreserved ones such as ``Name``, which can be aliases), function and type names do not
matter. Everything else does: identifiers (quoted or not, with their
case: an alias is a result column's name, ``sum(Foo)`` another column than ``sum(foo)``),
operators, and the *type* of every literal. A slot is typed by its literal's lexical
form: ``i`` integer, ``d`` decimal, ``e`` scientific, ``s`` string; ``x = 5`` and
``x = '5'`` are two templates. A parenthesised list of literals of one type
(``IN (1, 2, 3)``) is one list slot, so instances with longer or shorter lists share the
key; ``shape`` records each slot's length, which a slot rendering must match or support
(:mod:`lqo.book.slots`). A list that mixes types keeps one slot per literal.

Every position comes from DuckDB's tokenizer: comments are the gaps between tokens,
never a regular expression over the text, so ``--`` inside a quoted identifier or a
string is what it is. Text lqo cannot read exactly (an unterminated quote, a quoting
form it does not know) is keyed by its whole text: only the same text shares it.

>>> a = template_key("SELECT * FROM t WHERE x = 5 AND d > date '2000-01-01' AND y IN (1, 2)")
>>> b = template_key("select *  from t where x = 7 and d > date '1999-03-04' and y in (3, 4, 5)")
>>> a.key == b.key, a.literals, b.shape
(True, ('5', "'2000-01-01'", '1', '2'), (1, 1, 3))
>>> template_key("SELECT * FROM t WHERE x = 5").key == template_key("SELECT * FROM t WHERE z = 5").key
False
>>> template_key("SELECT a - 1 FROM t WHERE x > -5").literals
('1', '-5')
>>> one_line = 'SELECT o_orderkey AS "orders--n" FROM orders WHERE o_totalprice {} 5'
>>> template_key(one_line.format(">")).key == template_key(one_line.format("<")).key
False
>>> template_key("SELECT 1 FROM t WHERE x = 5").key == template_key("SELECT 1 FROM t WHERE x = '5'").key
False
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import duckdb

from lqo.book.long_lists import LONG_TEXT, cut_long_lists

_NUM = duckdb.token_type.numeric_const.value
_STR = duckdb.token_type.string_const.value
_IDENT = duckdb.token_type.identifier.value
_KEYWORD = duckdb.token_type.keyword.value
_COMMENT = duckdb.token_type.comment.value
_OPERAND = {_IDENT, _NUM, _STR}


@dataclass(frozen=True)
class TemplateKey:
    """``key``: the template's identity; ``literals``: this instance's literal tokens
    (as written, quotes included) in text order; ``shape``: the number of literals in
    each slot of the key (1, or a list slot's length)."""

    key: str
    literals: tuple[str, ...]
    shape: tuple[int, ...]


# A token: (start, end, text, kind) in characters of the text, comments dropped.
_Scanned = tuple[int, int, str, int]
# A token of a template: (start, end, text, is_literal). Plain tuples: on the serving path.
Token = tuple[int, int, str, bool]

_DECIMAL = re.compile(r"(?:\d+\.\d*|\.\d+)")
_SCIENTIFIC = re.compile(r"(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
# After an unquoted token: where the gap (whitespace, comments) to the next token starts.
_GAP = re.compile(r"\s|--|/\*")
# What may follow a token's text up to the next token: whitespace, then a comment or nothing.
_IS_GAP = re.compile(r"\s*(?:--|/\*|$)")
# A '-' before a number is the number's sign (not a subtraction) only where nothing that
# binds tighter follows the number: ``-2 ^ 2`` and ``-2::VARCHAR`` keep their minus apart.
_SIGN_ENDS = frozenset({",", ")", "]", ";", "=", "<", ">", "<=", ">=", "<>", "!=", "==",
                        "and", "or", "then", "else", "end", "when", "from", "where", "group", "order",
                        "having", "limit", "offset", "union", "except", "intersect", "as", "preceding",
                        "following", "window", "qualify", "is", "not", "between", "in", "like", "ilike"})
# Tokens after which a '-' is a subtraction: the end of an operand.
_OPERAND_ENDS = frozenset({")", "]", "end", "null", "true", "false"})


def _scan(sql: str) -> list[_Scanned] | None:
    """DuckDB's tokens of ``sql`` with exact extents; None where lqo cannot read a token
    exactly (then the text is keyed whole).

    DuckDB gives each token's start only (in bytes of UTF-8); a token ends where the gap
    to the next one (whitespace and comments) begins: for a quoted token, at its closing
    quote; for any other, at the first space or comment start.
    """
    raw = duckdb.tokenize(sql)
    starts = [s for s, _ in raw]
    if not sql.isascii():
        starts = _char_offsets(sql, starts)
    comments = "--" in sql or "/*" in sql
    out: list[_Scanned] = []
    bounds = starts[1:] + [len(sql)]
    for (_start, kind), s, e in zip(raw, starts, bounds):
        k = kind.value
        if k == _COMMENT:
            continue
        seg = sql[s:e]
        c = seg[:1]
        if c in ("'", '"') or (k == _STR):
            text = _quoted(seg, k)
            # DuckDB joins 'a' 'b' written on two lines into one string token: a quote
            # after the closing one means the token is more than lqo read
            if text is None or "'" in seg[len(text):] or '"' in seg[len(text):]:
                return None
        elif comments:
            m = _GAP.search(seg, 1)
            text = seg[:m.start()] if m else seg
            if m and not _IS_GAP.match(seg, m.start()):  # DuckDB lumped text it could not tokenize
                return None
        else:
            text = seg.rstrip()
        if not text:
            return None
        out.append((s, s + len(text), text, k))
    return out


def _quoted(seg: str, kind: int) -> str | None:
    """The quoted token at the start of ``seg`` (string, quoted identifier, E-string,
    dollar-quoted, bit or hex string); None for a form lqo does not read."""
    c = seg[:1]
    if c in ("'", '"'):
        return _close(seg, c, 1)
    if kind != _STR:
        return None
    if c in "eE" and seg[1:2] == "'":
        i = 2
        while i < len(seg):
            ch = seg[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "'":
                if seg[i + 1:i + 2] == "'":
                    i += 2
                    continue
                return seg[:i + 1]
            i += 1
        return None
    if c == "$":
        m = _DOLLAR_TAG.match(seg)
        if m is None:
            return None
        end = seg.find(m.group(0), m.end())
        return None if end < 0 else seg[:end + len(m.group(0))]
    if c in "xXbB" and seg[1:2] == "'":
        return _close(seg, "'", 2)
    return None


def _close(seg: str, q: str, i: int) -> str | None:
    """``seg`` up to the quote ``q`` that closes it (a doubled quote is part of the text)."""
    while True:
        j = seg.find(q, i)
        if j < 0:
            return None
        if seg[j + 1:j + 2] == q:
            i = j + 2
            continue
        return seg[:j + 1]


def _char_offsets(sql: str, byte_starts: list[int]) -> list[int]:
    """Byte offsets of UTF-8 ``sql`` as character offsets (DuckDB counts bytes)."""
    out, b, c = [], 0, 0
    data = sql.encode("utf-8")
    it = iter(byte_starts)
    target = next(it, None)
    while target is not None:
        while b < target:
            b += _utf8_len(data[b])
            c += 1
        out.append(c)
        target = next(it, None)
    return out


def _utf8_len(first: int) -> int:
    return 1 if first < 0x80 else 2 if first < 0xE0 else 3 if first < 0xF0 else 4


def _slot_type(text: str, kind: int) -> str | None:
    """The slot type of a literal token; None for a literal kept as part of the key
    (a form lqo does not fill in: E'..', $$..$$, x'..', 1_000, ...)."""
    if kind == _STR:
        return "s" if text[0] == "'" else None
    if text.isascii() and text.isdigit():
        return "i"
    if _DECIMAL.fullmatch(text):
        return "d"
    if _SCIENTIFIC.fullmatch(text):
        return "e"
    return None


# A template item: (start, end, text, slot type); the type is None for a token that is
# part of the key (its text then lower-cased for a keyword).
_Item = tuple[int, int, str, "str | None"]


def _items(toks: list[_Scanned]) -> tuple[list[_Item], list[int]]:
    """The template's items in order and the indices of '(' items a literal follows
    (where a list slot may start)."""
    items: list[_Item] = []
    opens: list[int] = []
    n = len(toks)
    for i in range(n):
        s, e, text, k = toks[i]
        if k == _NUM or k == _STR:
            # a string right after FROM or JOIN is a file DuckDB reads as a table: part of the key
            typ = _slot_type(text, k) if not (k == _STR and items and items[-1][2] in ("from", "join")) else None
            if typ is not None:
                if (k == _NUM and items and items[-1][2] == "-" and items[-1][1] == s
                        and _is_sign(toks, i - 1) and (i + 1 == n or toks[i + 1][2].lower() in _SIGN_ENDS)):
                    s, text = items.pop()[0], "-" + text
                if items and items[-1][2] == "(" and items[-1][3] is None:
                    opens.append(len(items) - 1)
                items.append((s, e, text, typ))
                continue
        if (k == _KEYWORD and text.lower() in _FOLDED_KEYWORDS or k == _IDENT and i + 1 < n and text[0] != '"'
                and (toks[i + 1][2] == "(" or toks[i + 1][3] == _STR)) and not (
                items and items[-1][2] in ("as", ".") or i + 1 < n and toks[i + 1][2] in (":", ":=")):
            # keywords, function names and type names (DATE '...'): DuckDB's result names
            # spell them its own way, so their case never shows; an unreserved word (Name,
            # Value, Year) may be a column or an alias, whose case does show
            text = text.lower()
        items.append((s, e, text, None))
    while items and items[-1][2] == ";" and items[-1][3] is None:  # a trailing ';' ends the one statement
        items.pop()
    return items, opens


# DuckDB's keywords that cannot stand as a bare column name or alias (its categories
# reserved, type_function and column_name; tests/test_serving_safety.py checks this list
# against ``duckdb_keywords()``). Unreserved ones (Name, Value, Year) can, and their case
# shows in result names.
_FOLDED_KEYWORDS = frozenset("""
    all analyse analyze and anti any array as asc asof asymmetric at authorization between bigint
    binary bit boolean both by case cast char character check coalesce collate collation column
    columns concurrently constraint create cross dec decimal default deferrable desc describe
    distinct do else end except exists extract false fetch float for foreign freeze from full
    generated glob group grouping grouping_id having ilike in initially inner inout int integer
    intersect interval into is isnull join lambda lateral leading left like limit map national
    natural nchar none not notnull null nullif numeric offset on only or order out outer overlaps
    overlay pivot pivot_longer pivot_wider placing position positional precision primary qualify
    real references returning right row select semi setof show similar smallint some struct
    substring summarize symmetric table tablesample then time timestamp to trailing treat trim true
    try_cast union unique unpack unpivot using values varchar variadic verbose when where window
    with xmlattributes xmlconcat xmlelement xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot
    xmlserialize xmltable
""".split())


def _is_sign(toks: list[_Scanned], minus: int) -> bool:
    """Whether the '-' token at ``toks[minus]`` is a sign (not a subtraction)."""
    if minus == 0:
        return True
    _, _, text, kind = toks[minus - 1]
    return kind not in _OPERAND and text.lower() not in _OPERAND_ENDS


def _lists(items: list[_Item], opens: list[int]) -> dict[int, int]:
    """List slots: '(' index -> ')' index, for each parenthesised list of literals of one type."""
    out: dict[int, int] = {}
    last = len(items) - 1
    for o in opens:
        typ = items[o + 1][3]
        j = o + 1
        while j < last and items[j][3] == typ:
            nxt = items[j + 1]
            if nxt[3] is not None or nxt[2] not in (",", ")"):
                break
            if nxt[2] == ")":
                out[o] = j + 1
                break
            j += 2
    return out


def scan_literals(sql: str) -> list[_Item] | None:
    """The literals ``template_key`` makes slots of, in order, as (start, end, text,
    type); None where the text is keyed whole. One scan shared with the key, so a slot
    rendering cuts a text exactly where its key has slots."""
    toks = _scan(sql)
    if toks is None:
        return None
    return [it for it in _items(toks)[0] if it[3] is not None]




def template_key(sql: str) -> TemplateKey:
    """The template key, literals and slot shape of ``sql``.

    On the serving path: one DuckDB tokenize and one pass over its tokens. A text with a
    list of 64 or more literals of one type (``IN (1, 2, ..., 5000)``) is keyed with each
    such list cut to its first two items, and the key is used only where DuckDB's tokens of
    the cut text show exactly those lists as list slots (a list inside a string, a quoted
    name or a comment is read in full): the same key, literals and shape, at a fraction
    of the cost (a 5,000-item list: ~0.3 ms instead of ~10).

    >>> long = "SELECT * FROM t WHERE x IN ({}) AND s = 'a'".format(", ".join(map(str, range(500))))
    >>> k = template_key(long)
    >>> k == _template_key(long), k.shape, k.literals[-2:]
    (True, (500, 1), ('499', "'a'"))
    """
    if len(sql) > LONG_TEXT and (cut := cut_long_lists(sql)) is not None:
        tk = _template_key(cut[0], cut[1])
        if tk is not None:
            return tk
    full = _template_key(sql)
    assert full is not None  # only a reading of cut lists can fail
    return full


def _template_key(sql: str, cut: dict[int, list[str]] | None = None) -> TemplateKey | None:
    """The key of ``sql``; with ``cut`` (lists cut to two items, by position), the key of
    the full text, or None where a cut list is not a list slot of ``sql``."""
    toks = _scan(sql)
    if toks is None:
        if cut is not None:
            return None
        return TemplateKey("text:" + hashlib.sha1(sql.encode()).hexdigest()[:16], (), ())
    items, opens = _items(toks)
    lists = _lists(items, opens) if opens else {}
    parts: list[str] = []
    literals: list[str] = []
    shape: list[int] = []
    i, n = 0, len(items)
    while i < n:
        close = lists.get(i) if lists else None
        if close is not None:
            members = items[i + 1:close:2]
            parts.append("(\x01" + members[0][3] + ")")  # type: ignore[operator]
            full = cut.pop(items[i][0], None) if cut else None
            if full is not None and [m[2] for m in members] != full[:2]:
                return None
            texts = full if full is not None else [m[2] for m in members]
            literals.extend(texts)
            shape.append(len(texts))
            i = close + 1
            continue
        _, _, text, typ = items[i]
        if typ is None:
            parts.append(text)
        else:
            parts.append("\x00" + typ)
            literals.append(text)
            shape.append(1)
        i += 1
    if cut:  # a cut list that is no list slot: inside a string, a name or a comment
        return None
    digest = hashlib.sha1(" ".join(parts).encode()).hexdigest()[:16]
    return TemplateKey(digest, tuple(literals), tuple(shape))


def tokens(sql: str) -> list[Token]:
    """The template's tokens of ``sql`` as ``(start, end, text, is_literal)``, comments
    dropped, keywords lower-cased, a number's sign part of it where it is one
    (``x > -5`` and ``x > 5`` share a template). Empty where the text is keyed whole.

    >>> [t[2] for t in tokens("SELECT a-1 FROM t /* note */ WHERE x = -2")]
    ['select', 'a', '-', '1', 'from', 't', 'where', 'x', '=', '-2']
    """
    toks = _scan(sql)
    return [] if toks is None else [(s, e, text, typ is not None) for s, e, text, typ in _items(toks)[0]]


# Quoted strings (with '' escapes), numbers that stand alone (not the digits of a name
# such as ``d1``) with a minus sign written right before them, and all whitespace.
_LITERALS_AND_SPACE = re.compile(r"'(?:[^']|'')*'|-?(?<![\w.])\d+(?:\.\d*)?(?:[eE][-+]?\d+)?(?![\w.])|\s+")


def literal_free_text(sql: str) -> str:
    """``sql`` without quoted strings, stand-alone numbers and whitespace: one regular
    expression, 2-4x cheaper than ``template_key`` (q41 0.07 vs 0.23 ms, warm).

    Coarser in one way and finer in others than the template key: instances of a
    template share it only when their literals differ in value or sign, not in list
    length or comments; and a text that is not a query of the template can share it
    (``x = 5`` and ``x = 'a'``, ``a - 1`` and ``a``, a quote inside a quoted identifier).
    So it is a shortcut for one decision only, where a false match cannot cost a wrong
    result: running the text as written (see ``BookServer``).

    >>> literal_free_text("SELECT * FROM t1 WHERE x = 5 AND s = 'it''s'")
    'SELECT*FROMt1WHEREx=ANDs='
    >>> literal_free_text("select a from t where x = 1.5e3") == literal_free_text("select a from t where x > -2")
    False
    >>> literal_free_text("select a from t where x > 1.5e3") == literal_free_text("select a from t where x > -2")
    True
    """
    return _LITERALS_AND_SPACE.sub("", sql)


_NUMBERED = re.compile(r"[?$](\d+)")
# Words that make the string after them a typed literal (``DATE '2000-01-01'``).
_TYPE_WORDS = frozenset("""interval timestamp timestamptz time date varchar char character integer int bigint
    smallint tinyint hugeint decimal dec numeric real float double boolean bool bit json uuid blob""".split())


def bind_parameters(sql: str) -> list[tuple[int, int, str]] | None:
    """The bind parameters of ``sql`` in text order as ``(start, end, name)``: name ``""``
    for ``?``, the number for ``$1`` / ``?1``, the identifier for ``$name``. An empty
    list for a text without any; None where the text is keyed whole or holds a ``?`` or
    ``$`` token that is none of these (an operator such as ``?|``).

    >>> bind_parameters("SELECT * FROM t WHERE a = ? AND b IN ($2, $name) AND c = 'x?'")
    [(26, 27, ''), (38, 40, '2'), (42, 47, 'name')]
    """
    toks = _scan(sql)
    if toks is None:
        return None
    out: list[tuple[int, int, str]] = []
    for i, (s, e, text, kind) in enumerate(toks):
        if kind != duckdb.token_type.operator.value or ("?" not in text and "$" not in text):
            continue
        if i + 1 < len(toks) and toks[i + 1][0] == e and toks[i + 1][2][0] in "?|&@#":
            # run into what starts a JSON or geometric operator elsewhere (``?|``): not a
            # parameter lqo can be sure of; arithmetic and comparisons (``?+11``) are DuckDB's
            # own tokens, split the same way by its parser
            return None
        if i and (toks[i - 1][3] == _IDENT or toks[i - 1][2].lower() in _TYPE_WORDS):
            return None  # after a name or a type (``DATE ?``): no literal lqo could write there
        if text == "?":
            out.append((s, e, ""))
        elif (m := _NUMBERED.fullmatch(text)) is not None:
            out.append((s, e, m.group(1)))
        elif text == "$" and i + 1 < len(toks) and toks[i + 1][0] == e and toks[i + 1][3] in (_IDENT, _KEYWORD):
            out.append((s, toks[i + 1][1], toks[i + 1][2]))
        else:
            return None
    return out
