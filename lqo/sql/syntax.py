"""Saying why a text is not SQL: DuckDB's parser is the judge, its message the answer.

lqo parses with sqlglot, which reads some broken texts as something else (``SELEC x``
is an aliased column to it, not an error). DuckDB runs the query, so where sqlglot fails
or finds no statement, DuckDB's parser decides whether the text is a syntax error and
says where. Only the error path pays for it: valid queries never get here.

>>> syntax_error("SELEC x")
'syntax error at or near "SELEC" (line 1, column 1)'
>>> syntax_error("SELECT 1\\nFROM t\\nWHER x = 1")
'syntax error at or near "x" (line 3, column 6)'
>>> syntax_error("SELECT * FROM t WHERE (")
'syntax error at end of input'
>>> syntax_error("SELECT 1") is None
True
"""

from __future__ import annotations

import re
import threading

import duckdb

_LINE = re.compile(r"^LINE (\d+): (.*)$")
_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def syntax_error(sql: str) -> str | None:
    """DuckDB's parser's complaint about ``sql`` on one line, with its position; None
    when DuckDB parses it."""
    global _parser
    with _lock:  # one in-memory connection, made on first need; parsing touches no data
        if _parser is None:
            _parser = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                                         "autoload_known_extensions": False})
        try:
            _parser.extract_statements(sql)
        except duckdb.ParserException as err:
            return describe_parser_error(str(err), sql)
    return None


def describe_parser_error(message: str, sql: str) -> str:
    """DuckDB's ``Parser Error: ...`` message on one line: the complaint, then the line
    and column its caret points at (DuckDB shows a window of a long line, cut with
    ``...``; the column is found back in ``sql``)."""
    lines = message.strip().splitlines()
    head = next((ln.strip() for ln in lines if ln.strip()), "syntax error")
    head = re.sub(r"^Parser Error:\s*", "", head)
    for i, ln in enumerate(lines):
        m = _LINE.match(ln)
        if not m or i + 1 >= len(lines) or "^" not in lines[i + 1]:
            continue
        number, shown = int(m.group(1)), m.group(2)
        caret = lines[i + 1].index("^") - (len(ln) - len(shown))
        column = _column(sql, number, shown, caret)
        return f"{head} (line {number}" + (f", column {column})" if column else ")")
    return head


def _column(sql: str, number: int, shown: str, caret: int) -> int | None:
    text = sql.splitlines()
    if not 1 <= number <= len(text) or caret < 0:
        return None
    start = 3 if shown.startswith("...") else 0
    core = shown[start:]
    if core.endswith("...") and core[:-3] and core[:-3] in text[number - 1]:
        core = core[:-3]
    base = text[number - 1].find(core) if start else 0
    return base + caret - start + 1 if base >= 0 else None
