"""DuckDB settings lqo changes for a statement, and restores after it.

A *forced* run executes the SQL text exactly as written (join order and build sides),
by disabling DuckDB's ``join_order`` and ``build_side_probe_side`` optimizers for the
duration of the statement (see ``FORCE_SETTINGS``). Those settings are global to the
DuckDB instance, so every change is undone afterwards, also on errors and interrupts.

>>> import duckdb
>>> con = duckdb.connect()
>>> with forced_settings(con):
...     con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
'join_order,build_side_probe_side'
>>> con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
''
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

FORCE_DISABLED_OPTIMIZERS: tuple[str, ...] = ("join_order", "build_side_probe_side")
# filter_pushdown stays ON on purpose: without it a forced TPC-H Q5 ran > 60 s.
FORCE_SETTINGS: dict[str, str] = {"disabled_optimizers": ",".join(FORCE_DISABLED_OPTIMIZERS)}

def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def current_setting(con: duckdb.DuckDBPyConnection, name: str) -> Any:
    """The setting's value on ``con`` (None for a setting never set)."""
    return con.execute(f"SELECT current_setting({_sql_str(name)})").fetchone()[0]


def _restore(con: duckdb.DuckDBPyConnection, name: str, value: Any) -> None:
    # current_setting gives NULL for a setting never set; RESET is the only way back to that.
    if value is None:
        con.execute(f"RESET {name}")
    else:
        con.execute(f"SET {name} = {_sql_str(str(value))}")


@contextmanager
def forced_settings(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Disable join ordering and build-side swapping while the block runs; restore after.

    Optimizers that were already disabled (e.g. by a knob-search arm) stay disabled:
    the forced set is added to them, not substituted.

    >>> with forced_settings(con):                      # doctest: +SKIP
    ...     con.execute(rendered_sql).fetchall()
    """
    previous = current_setting(con, "disabled_optimizers")
    already = [o.strip() for o in str(previous or "").split(",") if o.strip()]
    wanted = already + [o for o in FORCE_DISABLED_OPTIMIZERS if o not in already]
    con.execute(f"SET disabled_optimizers = {_sql_str(','.join(wanted))}")
    try:
        yield
    finally:
        _restore(con, "disabled_optimizers", previous)


@contextmanager
def profiling_settings(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Collect a profile silently (``no_output``) while the block runs; restore after.

    ``con.enable_profiling()`` would print a tree after every query, hence the SET.
    """
    previous = current_setting(con, "enable_profiling")
    con.execute("SET enable_profiling = 'no_output'")
    try:
        yield
    finally:
        _restore(con, "enable_profiling", previous)
