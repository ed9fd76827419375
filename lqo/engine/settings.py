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

import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

from lqo.engine.db import one_value
from lqo.errors import LqoError

FORCE_DISABLED_OPTIMIZERS: tuple[str, ...] = ("join_order", "build_side_probe_side")
# filter_pushdown stays ON on purpose: without it a forced TPC-H Q5 ran > 60 s.
FORCE_SETTINGS: dict[str, str] = {"disabled_optimizers": ",".join(FORCE_DISABLED_OPTIMIZERS)}

def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def current_setting(con: duckdb.DuckDBPyConnection, name: str) -> Any:
    """The setting's value on ``con`` (None for a setting never set)."""
    return one_value(con, f"SELECT current_setting({_sql_str(name)})")


def _restore(con: duckdb.DuckDBPyConnection, name: str, value: Any) -> None:
    # current_setting gives NULL for a setting never set; RESET is the only way back to that.
    if value is None:
        con.execute(f"RESET {name}")
    else:
        con.execute(f"SET {name} = {_sql_str(str(value))}")


class RuleModes:
    """The one owner of ``disabled_optimizers`` for the statements lqo runs in a process.

    DuckDB keeps the setting per database instance, shared by every cursor, so two
    threads that each save, set and restore it can run each other's statements under
    the wrong rules, or leave rules disabled for good. The rule here: a statement runs
    in a *mode* (the rules it needs disabled; DuckDB's own rules are mode ``()``).
    Statements of one mode run together; a statement of another mode waits until they
    have finished, then its first statement sets the rules, and the last statement of
    the mode to finish restores what the first found. Modes take turns in arrival order, so
    a stream of one mode never starves another. A statement joins a running mode only
    where its own connection shows that mode's rules (another database instance that
    happens to hold the same rules may join; one that does not waits its turn). A
    thread that already holds a mode may nest another only while nothing else runs.

    >>> import duckdb
    >>> con = duckdb.connect()
    >>> modes = RuleModes()
    >>> with modes.hold(con, ("join_order",)):
    ...     current_setting(con, "disabled_optimizers")
    'join_order'
    >>> current_setting(con, "disabled_optimizers")
    ''
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._mode: tuple[str, ...] = ()
        self._value: frozenset[str] = frozenset()  # the rules disabled while a non-empty mode runs
        self._active = 0
        # How to undo the running mode: a cursor of the instance it was set on (its own,
        # so a statement's unfetched result and a closed caller's cursor do not matter)
        # and the value found there. The last statement of the mode to leave undoes it.
        self._undo: tuple[duckdb.DuckDBPyConnection, Any] | None = None
        self._queue: list[tuple[int, tuple[str, ...]]] = []
        self._tickets = itertools.count()
        self._local = threading.local()

    @contextmanager
    def hold(self, con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> Iterator[None]:
        """Run the block in the mode ``names`` (added to rules already disabled); restore after."""
        mode = tuple(names)
        held = getattr(self._local, "held", None)
        if held is not None:
            with self._nested(con, held, mode):
                yield
            return
        self._enter(con, mode)
        self._local.held = mode
        try:
            yield
        finally:
            self._local.held = None
            self._leave(con)

    def _enter(self, con: duckdb.DuckDBPyConnection, mode: tuple[str, ...]) -> None:
        with self._cond:
            if not mode and not self._queue and (self._active == 0 or not self._mode):
                self._active += 1  # the common case: DuckDB's own rules, nothing waiting
                self._mode = ()
                return
            ticket = next(self._tickets)
            self._queue.append((ticket, mode))
            try:
                while True:
                    first = not any(m != mode for t, m in self._queue if t < ticket)
                    if first and self._active == 0:
                        self._undo = self._apply(con, mode)
                        self._active, self._mode = 1, mode
                        return
                    if first and self._active and self._mode == mode and (
                            not mode or _rule_set(_setting_aside(con)) == self._value):
                        self._active += 1
                        return
                    self._cond.wait()
            finally:
                self._queue.remove((ticket, mode))
                self._cond.notify_all()

    def _apply(self, con: duckdb.DuckDBPyConnection, mode: tuple[str, ...]) -> tuple | None:
        """Set ``mode``'s rules on ``con``'s instance; how to undo it, or None if nothing changed."""
        if not mode:
            return None
        cur = con.cursor()  # not ``con``: it may hold a result its caller has yet to fetch
        try:
            previous = current_setting(cur, "disabled_optimizers")
            already = [o.strip() for o in str(previous or "").split(",") if o.strip()]
            wanted = ",".join(already + [o for o in mode if o not in already])
            self._value = _rule_set(wanted)
            if self._value == _rule_set(previous):
                cur.close()
                return None
            cur.execute(f"SET disabled_optimizers = {_sql_str(wanted)}")
        except BaseException:
            cur.close()
            raise
        return (cur, previous)

    def _leave(self, con: duckdb.DuckDBPyConnection) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                undo, self._undo, self._mode = self._undo, None, ()
                self._cond.notify_all()
                if undo is not None:
                    try:
                        _undo(undo)
                    except duckdb.ConnectionException:
                        # the cursor that set the rules was closed (a cursor of a cursor
                        # closes with it): undo through this statement's, which saw them
                        _undo((con.cursor(), undo[1]))
            else:
                self._cond.notify_all()

    @contextmanager
    def _nested(self, con: duckdb.DuckDBPyConnection, held: tuple[str, ...], mode: tuple[str, ...]) -> Iterator[None]:
        if mode == held or not mode and not held:
            yield
            return
        with self._cond:
            if self._active != 1 or not mode:
                raise LqoError("lqo changed DuckDB's optimizer rules inside a statement while others ran, "
                               "or asked for DuckDB's own rules inside changed ones")
            outer_value = self._value
            undo = self._apply(con, mode)
            outer_mode, self._mode = self._mode, mode
        self._local.held = mode
        try:
            yield
        finally:
            self._local.held = held
            with self._cond:
                if undo is not None:
                    _undo(undo)
                self._mode, self._value = outer_mode, outer_value


def _setting_aside(con: duckdb.DuckDBPyConnection) -> Any:
    """The rules disabled on ``con``'s instance, read through another cursor."""
    cur = con.cursor()
    try:
        return current_setting(cur, "disabled_optimizers")
    finally:
        cur.close()


def _undo(undo: tuple[duckdb.DuckDBPyConnection, Any]) -> None:
    cur, previous = undo
    try:
        _restore(cur, "disabled_optimizers", previous)
    finally:
        try:
            cur.close()
        except duckdb.Error:
            pass


def _rule_set(value: Any) -> frozenset[str]:
    """The rules a ``disabled_optimizers`` value names (DuckDB may list them in its own order)."""
    return frozenset(o.strip() for o in str(value or "").split(",") if o.strip())


# DuckDB's rules are per database instance, which Python cannot name: one owner per process.
RULE_MODES = RuleModes()


@contextmanager
def disabled_optimizers(con: duckdb.DuckDBPyConnection, names: Sequence[str]) -> Iterator[None]:
    """Disable DuckDB optimizer rules ``names`` while the block runs; restore after.

    Rules that were already disabled stay disabled: ``names`` are added to them. An
    empty ``names`` changes nothing, but still waits while lqo runs a statement under
    other rules (see ``RuleModes``), so it never runs under another statement's rules.
    """
    with RULE_MODES.hold(con, names):
        yield


@contextmanager
def forced_settings(con: duckdb.DuckDBPyConnection, also: Sequence[str] = ()) -> Iterator[None]:
    """Disable join ordering and build-side swapping (plus rules ``also``) while the
    block runs: DuckDB then executes the joins exactly as written. Restored after.

    >>> with forced_settings(con):                      # doctest: +SKIP
    ...     con.execute(rendered_sql).fetchall()
    """
    with disabled_optimizers(con, tuple(FORCE_DISABLED_OPTIMIZERS)
                             + tuple(o for o in also if o not in FORCE_DISABLED_OPTIMIZERS)):
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
