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
>>> with disabled_optimizers(con, ["join_filter_pushdown"]):
...     con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
'join_filter_pushdown'
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
def disabled_optimizers(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> Iterator[None]:
    """Disable DuckDB optimizer rules ``names`` while the block runs; restore after.

    Rules that were already disabled stay disabled: ``names`` are added to them. An
    empty ``names`` changes nothing.
    """
    if not names:
        yield
        return
    previous = current_setting(con, "disabled_optimizers")
    already = [o.strip() for o in str(previous or "").split(",") if o.strip()]
    wanted = already + [o for o in names if o not in already]
    con.execute(f"SET disabled_optimizers = {_sql_str(','.join(wanted))}")
    try:
        yield
    finally:
        _restore(con, "disabled_optimizers", previous)


@contextmanager
def forced_settings(con: duckdb.DuckDBPyConnection, also: Sequence[str] = ()) -> Iterator[None]:
    """Disable join ordering and build-side swapping (plus rules ``also``) while the
    block runs: DuckDB then executes the joins exactly as written. Restored after.

    >>> with forced_settings(con):                      # doctest: +SKIP
    ...     con.execute(rendered_sql).fetchall()
    """
    with disabled_optimizers(con, tuple(FORCE_DISABLED_OPTIMIZERS) + tuple(o for o in also if o not in FORCE_DISABLED_OPTIMIZERS)):
        yield


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
