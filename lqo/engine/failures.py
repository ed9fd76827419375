"""A query that failed while it ran, in one line: DuckDB's message, or the conversion error.

>>> error_line('Conversion Error: bad date\\n\\nLINE 1: SELECT ...')
'Conversion Error: bad date'
"""

from __future__ import annotations

import duckdb

from lqo.errors import QueryRuntimeError

# Python errors of turning a finished query's values into Python objects (an INTERVAL
# beyond ``timedelta``'s range raises OverflowError in ``fetchall``): the query ran, its
# result cannot be held, so the run failed like any other run-time error.
RESULT_CONVERSION_ERRORS: tuple[type[Exception], ...] = (OverflowError, ValueError)


def error_line(text: str | None) -> str:
    """The first non-empty line of an error message: DuckDB appends the query text
    with a caret, and hints, on later lines.

    >>> error_line('Conversion Error: bad date\\n\\nLINE 1: SELECT ...')
    'Conversion Error: bad date'
    """
    for line in str(text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def query_label(sql: str, limit: int = 60) -> str:
    """A query's text on one line, cut to ``limit`` characters, quoted: how an error
    names a query that has no id.

    >>> query_label("SELECT *\\n  FROM nation")
    '"SELECT * FROM nation"'
    """
    one = " ".join(str(sql).split())
    return '"' + (one if len(one) <= limit else one[: limit - 3] + "...") + '"'


def describe_failure(exc: BaseException) -> str:
    """One line saying why a run failed (DuckDB's message, or the conversion error)."""
    if isinstance(exc, duckdb.InterruptException):
        return "interrupted (DuckDB: " + (error_line(str(exc)) or type(exc).__name__) + ")"
    if isinstance(exc, duckdb.Error):
        line = error_line(str(exc)) or type(exc).__name__
        if isinstance(exc, duckdb.OutOfMemoryException):
            line += " (DuckDB's memory_limit is reached: raise it, or lower threads)"
        return line
    return f"its result cannot be converted to Python: {type(exc).__name__}: {error_line(str(exc))}"


def runtime_error(exc: BaseException, sql: str, name: str | None = None) -> QueryRuntimeError:
    """The typed error for a query that failed while running; ``name`` (e.g. a query
    id) defaults to the start of ``sql``. Raise it ``from exc``."""
    label = name or query_label(sql)
    detail = describe_failure(exc)
    return QueryRuntimeError(f"query {label} failed while running: {detail}", query=label, detail=detail)
