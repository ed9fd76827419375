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

A *setting arm* may also need DuckDB operator settings (``late_materialization_max_rows
= 0``, ``merge_join_threshold``, ...) for its statement: they are part of its mode,
owned and restored the same way (``RuleModes``).

>>> with disabled_optimizers(con, (), {"late_materialization_max_rows": 0}):
...     con.execute("SELECT current_setting('late_materialization_max_rows')").fetchone()[0]
0
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

from lqo.engine.db import one_value
from lqo.errors import LqoError, SettingRefusedError

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


Settings = tuple[tuple[str, str], ...]  # (DuckDB setting, value) pairs, sorted by name
Mode = tuple[tuple[str, ...], Settings]  # (rules disabled, settings): what a statement runs under
NO_MODE: Mode = ((), ())  # DuckDB's own rules and settings
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def setting_pairs(settings: Mapping[str, Any] | Iterable[Sequence[Any]] = ()) -> Settings:
    """``settings`` (a mapping or (name, value) pairs) as a mode's settings: sorted, values
    as text; ``LqoError`` for a name that is not a plain setting lqo may own.

    >>> setting_pairs({"merge_join_threshold": 0, "late_materialization_max_rows": "0"})
    (('late_materialization_max_rows', '0'), ('merge_join_threshold', '0'))
    """
    pairs: Iterable[Sequence[Any]] = list(settings.items()) if isinstance(settings, Mapping) else settings
    out = {}
    for pair in pairs:
        name, value = str(pair[0]).lower(), pair[1]
        if not _NAME.fullmatch(name) or name in ("disabled_optimizers", "threads"):
            raise LqoError(f"not a setting lqo can run a statement under: {name!r}")
        out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return tuple(sorted(out.items()))


class RuleModes:
    """The one owner of ``disabled_optimizers`` (and of the operator settings a setting
    arm changes) for the statements lqo runs in a process.

    DuckDB keeps the setting per database instance, shared by every cursor, so two
    threads that each save, set and restore it can run each other's statements under
    the wrong rules, or leave rules disabled for good. The rule here: a statement runs
    in a *mode* (the rules it needs disabled, and the settings it needs, such as
    ``late_materialization_max_rows = 0``; DuckDB's own rules and settings: ``NO_MODE``).
    Statements of one mode run together; a statement of another mode waits until they
    have finished, then its first statement sets the rules and settings, and the last
    statement of the mode to finish restores what the first found. A mode's settings are
    set instance-wide (``SET GLOBAL``), like the rules: a cursor that set its own
    value of such a setting (a plain ``SET``, session-local) keeps it. Modes take turns
    in arrival order, so a stream of one mode never starves another. A statement joins a
    running mode only where its own connection shows that mode's rules and settings
    (another database instance that happens to hold the same may join; one that does not
    waits its turn). A thread that already holds a mode may nest another only while
    nothing else runs. A statement from one of DuckDB's own worker threads (a Python
    function of a running statement calling back) joins a running mode that is its own
    at once, ahead of what waits: the statement it serves cannot finish before it.

    >>> import duckdb
    >>> con = duckdb.connect()
    >>> modes = RuleModes()
    >>> with modes.hold(con, ("join_order",)):
    ...     current_setting(con, "disabled_optimizers")
    'join_order'
    >>> current_setting(con, "disabled_optimizers")
    ''
    >>> with modes.hold(con, (), {"merge_join_threshold": 0}):
    ...     current_setting(con, "merge_join_threshold")
    0
    >>> current_setting(con, "merge_join_threshold")
    1000
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._mode: Mode = NO_MODE
        self._value: frozenset[str] = frozenset()  # the rules disabled while a non-empty mode runs
        self._values: dict[str, str] = {}  # the settings as DuckDB shows them while the mode runs
        self._active = 0
        # How to undo the running mode: a cursor of the instance it was set on (its own,
        # so a statement's unfetched result and a closed caller's cursor do not matter)
        # and the values found there. The last statement of the mode to leave undoes it.
        self._undo: _Undo | None = None
        self._queue: list[tuple[int, Mode]] = []
        self._tickets = itertools.count()
        self._local = threading.local()

    @contextmanager
    def hold(self, con: duckdb.DuckDBPyConnection, names: Sequence[str],
             settings: Mapping[str, Any] | Iterable[Sequence[Any]] = (),
             cancel: threading.Event | None = None) -> Iterator[None]:
        """Run the block in the mode ``names`` (added to rules already disabled) and
        ``settings`` (name -> value, or pairs); restore after. ``cancel`` set while the
        statement waits for another mode to finish: it leaves with
        ``duckdb.InterruptException``, as an interrupted statement does."""
        mode: Mode = (tuple(names), setting_pairs(settings))
        held = getattr(self._local, "held", None)
        if held is not None:
            with self._nested(con, held, mode):
                yield
            return
        self._enter(con, mode, cancel)
        self._local.held = mode
        try:
            yield
        finally:
            self._local.held = None
            self._leave(con)

    @contextmanager
    def hold_if_idle(self, con: duckdb.DuckDBPyConnection, names: Sequence[str],
                     settings: Mapping[str, Any] | Iterable[Sequence[Any]] = ()) -> Iterator[bool]:
        """Run the block in the mode ``names`` / ``settings`` if no other statement runs or
        waits (yields True; nested ``hold`` of the same mode inside then changes nothing),
        else hold nothing and yield False at once: the caller runs its statement as
        written, rather than holding every other thread's statement back while it runs."""
        mode: Mode = (tuple(names), setting_pairs(settings))
        if getattr(self._local, "held", None) is not None or mode == NO_MODE:
            yield False
            return
        with self._cond:
            idle = self._active == 0 and not self._queue
            if idle:
                try:
                    self._undo = self._apply(con, mode)
                except SettingRefusedError:
                    idle = False  # a rule or setting this DuckDB refuses: as written
                else:
                    self._active, self._mode = 1, mode
        if not idle:
            yield False
            return
        self._local.held = mode
        try:
            yield True
        finally:
            self._local.held = None
            self._leave(con)

    def _enter(self, con: duckdb.DuckDBPyConnection, mode: Mode, cancel: threading.Event | None = None) -> None:
        with self._cond:
            if mode == NO_MODE and not self._queue and (self._active == 0 or self._mode == NO_MODE):
                self._active += 1  # the common case: DuckDB's own rules, nothing waiting
                self._mode = NO_MODE
                return
            if (engine_thread() and self._active and self._mode == mode
                    and (mode == NO_MODE or self._shows(con))):
                # DuckDB's own worker thread: a Python function of a running statement
                # calling back; that statement cannot finish before this one, so waiting
                # behind another mode queued after it would deadlock.
                self._active += 1
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
                    if first and self._active and self._mode == mode and (mode == NO_MODE or self._shows(con)):
                        self._active += 1
                        return
                    if cancel is not None and cancel.is_set():
                        raise duckdb.InterruptException("INTERRUPT Error: interrupted while waiting for "
                                                        "another statement's optimizer rules to be restored")
                    self._cond.wait(timeout=0.05 if cancel is not None else None)
            finally:
                self._queue.remove((ticket, mode))
                self._cond.notify_all()

    def _shows(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether ``con``'s instance shows the running mode's rules and settings."""
        cur = con.cursor()
        try:
            return (_rule_set(current_setting(cur, "disabled_optimizers")) == self._value
                    and all(_shown(current_setting(cur, n)) == v for n, v in self._values.items()))
        finally:
            cur.close()

    def _apply(self, con: duckdb.DuckDBPyConnection, mode: Mode) -> _Undo | None:
        """Set ``mode``'s rules and settings on ``con``'s instance; how to undo it, or
        None if nothing changed. ``SettingRefusedError`` where DuckDB refuses one (what
        was set is undone)."""
        rules, settings = mode
        if mode == NO_MODE:
            return None
        cur = con.cursor()  # not ``con``: it may hold a result its caller has yet to fetch
        undo = _Undo(cur)
        try:
            if rules:
                previous = current_setting(cur, "disabled_optimizers")
                already = [o.strip() for o in str(previous or "").split(",") if o.strip()]
                wanted = ",".join(already + [o for o in rules if o not in already])
                self._value = _rule_set(wanted)
                if self._value != _rule_set(previous):
                    undo.rules = (previous,)
                    cur.execute(f"SET disabled_optimizers = {_sql_str(wanted)}")
            else:
                self._value = _rule_set(current_setting(cur, "disabled_optimizers"))
            values = dict(self._values) if self._mode != NO_MODE else {}
            for name, value in settings:
                previous = current_setting(cur, name)
                cur.execute(f"SET GLOBAL {name} = {_sql_str(value)}")
                undo.settings.append((name, previous))
                values[name] = _shown(current_setting(cur, name))
            self._values = values
        except BaseException as err:
            try:
                undo.run()
            finally:
                cur.close()
            if isinstance(err, duckdb.Error) and not isinstance(err, duckdb.InterruptException):
                raise SettingRefusedError(f"DuckDB refused the mode {mode}: {str(err).splitlines()[0]}") from err
            raise
        if not undo.changes():
            cur.close()
            return None
        return undo

    def _leave(self, con: duckdb.DuckDBPyConnection) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                undo, self._undo, self._mode, self._values = self._undo, None, NO_MODE, {}
                self._cond.notify_all()
                if undo is not None:
                    try:
                        undo.run()
                    except duckdb.ConnectionException:
                        # the cursor that set the mode was closed (a cursor of a cursor
                        # closes with it): undo through this statement's, which saw it
                        undo.cur = con.cursor()
                        undo.run()
            else:
                self._cond.notify_all()

    @contextmanager
    def _nested(self, con: duckdb.DuckDBPyConnection, held: Mode, mode: Mode) -> Iterator[None]:
        if mode == held or mode == NO_MODE and held == NO_MODE:
            yield
            return
        with self._cond:
            if self._active != 1 or mode == NO_MODE:
                raise LqoError("lqo changed DuckDB's optimizer rules inside a statement while others ran, "
                               "or asked for DuckDB's own rules inside changed ones")
            outer_value, outer_values = self._value, self._values
            try:
                undo = self._apply(con, mode)
            except BaseException:
                self._value, self._values = outer_value, outer_values  # the outer mode still runs
                raise
            outer_mode, self._mode = self._mode, mode
        self._local.held = mode
        try:
            yield
        finally:
            self._local.held = held
            with self._cond:
                if undo is not None:
                    undo.run()
                self._mode, self._value, self._values = outer_mode, outer_value, outer_values


class _Undo:
    """How to put back what a mode changed: through cursor ``cur``, the rules found
    (``rules``: empty if they were left alone) and each setting's value found, in order."""

    def __init__(self, cur: duckdb.DuckDBPyConnection) -> None:
        self.cur = cur
        self.rules: tuple[Any, ...] = ()
        self.settings: list[tuple[str, Any]] = []

    def changes(self) -> bool:
        return bool(self.rules or self.settings)

    def run(self) -> None:
        try:
            for name, previous in reversed(self.settings):
                if previous is None:
                    self.cur.execute(f"RESET GLOBAL {name}")
                else:
                    self.cur.execute(f"SET GLOBAL {name} = {_sql_str(_shown(previous))}")
            if self.rules:
                _restore(self.cur, "disabled_optimizers", self.rules[0])
        finally:
            try:
                self.cur.close()
            except duckdb.Error:
                pass


def engine_thread() -> bool:
    """Whether the calling thread is one Python did not start: a DuckDB worker running a
    Python function (UDF) of a statement in progress."""
    return isinstance(threading.current_thread(), threading._DummyThread)


def _shown(value: Any) -> str:
    """A setting's value as text, as a mode compares it (``True`` -> ``true``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _rule_set(value: Any) -> frozenset[str]:
    """The rules a ``disabled_optimizers`` value names (DuckDB may list them in its own order)."""
    return frozenset(o.strip() for o in str(value or "").split(",") if o.strip())


# DuckDB's rules are per database instance, which Python cannot name: one owner per process.
RULE_MODES = RuleModes()


@contextmanager
def disabled_optimizers(con: duckdb.DuckDBPyConnection, names: Sequence[str],
                        settings: Mapping[str, Any] | Iterable[Sequence[Any]] = (),
                        cancel: threading.Event | None = None) -> Iterator[None]:
    """Disable DuckDB optimizer rules ``names`` (and set ``settings``: name -> value, or
    pairs) while the block runs; restore after.

    Rules that were already disabled stay disabled: ``names`` are added to them. An
    empty ``names`` without settings changes nothing, but still waits while lqo runs a
    statement under other rules or settings (see ``RuleModes``), so it never runs under
    another statement's; ``cancel``: see ``RuleModes.hold``.
    """
    with RULE_MODES.hold(con, names, settings, cancel):
        yield


@contextmanager
def forced_settings(con: duckdb.DuckDBPyConnection, also: Sequence[str] = (),
                    settings: Mapping[str, Any] | Iterable[Sequence[Any]] = ()) -> Iterator[None]:
    """Disable join ordering and build-side swapping (plus rules ``also``; with
    ``settings`` set) while the block runs: DuckDB then executes the joins exactly as
    written. Restored after.

    >>> with forced_settings(con):                      # doctest: +SKIP
    ...     con.execute(rendered_sql).fetchall()
    """
    with disabled_optimizers(con, tuple(FORCE_DISABLED_OPTIMIZERS)
                             + tuple(o for o in also if o not in FORCE_DISABLED_OPTIMIZERS), settings):
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
