"""The outcome of planning one query: what to run, with which settings, and why.

The boundary between choosing a plan (the optimizer, the plan book) and running it.
Imports neither torch nor sqlglot: a plan book serves without them.

>>> import duckdb
>>> con = duckdb.connect()
>>> o = Optimized.as_written("SELECT 42", "no joins", 0.01)
>>> o.execute(con)
[(42,)]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import duckdb

from lqo.engine.failures import RESULT_CONVERSION_ERRORS, runtime_error
from lqo.engine.interrupt import is_user_interrupt
from lqo.engine.settings import FORCE_DISABLED_OPTIMIZERS, disabled_optimizers
from lqo.errors import SettingRefusedError

if TYPE_CHECKING:
    from lqo.trees.plan import Plan


# What running a decision may raise that is the query's failure, not lqo's.
_RUN_ERRORS: tuple[type[Exception], ...] = (duckdb.Error, *RESULT_CONVERSION_ERRORS)


@dataclass
class Optimized:
    """The outcome of planning one query."""

    original_sql: str
    sql: str  # what to run: the rendered plan, or the original text when native is kept
    forced: bool  # whether ``sql`` needs the forcing settings
    chosen: Plan | None
    native: Plan | None
    predicted_ms: float | None
    predicted_native_ms: float | None
    fallback: str | None  # why native was kept, or None
    planning_ms: float
    candidates: int = 0
    disabled: tuple[str, ...] = ()  # optimizer rules switched off to run ``sql`` (a setting arm)
    source: str = "model"  # "book" (verified plan book), "model" (planned now), "native" (not planned)
    # DuckDB operator settings (name, value) to run ``sql`` under (a setting arm), beside the rules.
    settings: tuple[tuple[str, str], ...] = ()
    # Opt-in feedback: called with (self, latency ms) after every execute().
    on_latency: Callable[["Optimized", float], None] | None = field(default=None, repr=False, compare=False)
    # DuckDB's parse of ``original_sql`` where lqo parsed the text to check it and runs it
    # as written: executing the parse skips a second one, so the check costs nothing net.
    statement: duckdb.Statement | None = field(default=None, repr=False, compare=False)

    @classmethod
    def as_written(cls, sql: str, why: str | None, planning_ms: float, *, source: str = "native",
                   disabled: tuple[str, ...] = (), predicted_native_ms: float | None = None,
                   settings: tuple[tuple[str, str], ...] = ()) -> "Optimized":
        """The text run as written: natively (``why`` says why), or under a setting arm
        (rules ``disabled``, ``settings``)."""
        return cls(sql, sql, False, None, None, None, predicted_native_ms, why, planning_ms,
                   disabled=disabled, source=source, settings=settings)

    @classmethod
    def from_book(cls, sql: str, text: str, plan: Plan | None, planning_ms: float, *,
                  disabled: tuple[str, ...] = (), settings: tuple[tuple[str, str], ...] = ()) -> "Optimized":
        """A verified plan served from the plan book: ``text`` (the tree filled with this
        instance's literals) runs forced, with the candidate's extra ``disabled`` rules
        and ``settings``."""
        return cls(sql, text, True, plan, None, None, None, None, planning_ms, disabled=disabled, source="book",
                   settings=settings)

    @classmethod
    def rewritten(cls, sql: str, text: str, planning_ms: float) -> "Optimized":
        """A verified rewrite served from the plan book: ``text`` (the rewrite filled
        with this instance's literals) runs as written, under DuckDB's own rules."""
        return cls(sql, text, False, None, None, None, None, None, planning_ms, source="book")

    @classmethod
    def planned(cls, sql: str, chosen: Plan | None, native: Plan | None, planning_ms: float, *,
                forced_sql: str | None = None, predicted_ms: float | None = None,
                predicted_native_ms: float | None = None, fallback: str | None = None,
                candidates: int = 0) -> "Optimized":
        """Planned now (``source="model"``): with ``forced_sql`` (``chosen`` rendered) that
        text runs forced; without, ``sql`` runs as written and ``fallback`` says why."""
        return cls(sql, sql if forced_sql is None else forced_sql, forced_sql is not None, chosen, native,
                   predicted_ms, predicted_native_ms, fallback, planning_ms, candidates)

    @property
    def rules(self) -> tuple[str, ...]:
        """Every DuckDB optimizer rule ``sql`` runs with disabled: the forcing rules for a
        forced tree, plus the arm's rules. With ``settings``, the whole decision a runner
        needs besides ``sql``."""
        if not self.forced:
            return self.disabled
        return FORCE_DISABLED_OPTIMIZERS + tuple(r for r in self.disabled if r not in FORCE_DISABLED_OPTIMIZERS)

    @property
    def runnable(self) -> "str | duckdb.Statement":
        """What to hand ``con.execute``: the parsed statement where the text runs as written."""
        if self.statement is not None and self.sql == self.original_sql and not self.forced:
            return self.statement
        return self.sql

    def execute(self, con: duckdb.DuckDBPyConnection) -> list[tuple]:
        """Run the chosen plan on ``con`` and return all rows (settings restored after).

        Only the optimizer rules (and a setting arm's settings) the plan needs are
        changed; every other setting of ``con`` (``memory_limit``, ``threads``, ...) stays
        in force. Safe from several threads (cursors of one connection): statements
        needing other rules or settings take turns
        (``lqo.engine.settings.RuleModes``). A query that fails while running
        (conversion error, overflow, out of memory, ``con.interrupt()``) raises
        ``QueryRuntimeError`` naming the query, DuckDB's error as its cause.
        """
        began = time.perf_counter()
        try:
            rows = self.start(con).fetchall()
        except _RUN_ERRORS as err:
            if is_user_interrupt(err):  # Ctrl-C in the lqo CLI stays Ctrl-C
                raise KeyboardInterrupt from err
            raise runtime_error(err, self.original_sql) from err
        if self.on_latency is not None:
            self.on_latency(self, (time.perf_counter() - began) * 1000)
        return rows

    def start(self, con: duckdb.DuckDBPyConnection, parameters: Any = None, *,
              cancel: Any = None, fall_back: bool = True) -> duckdb.DuckDBPyConnection:
        """Run the decision on ``con`` and leave its result there to fetch (``fetchall``,
        ``df``, ``arrow``), as ``con.execute`` does; DuckDB's own exceptions reach the
        caller. DuckDB plans a statement inside ``execute``, so the rules it needs are
        held for exactly that long. A plan-book plan that no longer binds (the schema
        changed under it) runs the text as written instead, with the reason in
        ``fallback``; with ``fall_back=False`` (a caller that holds the plan's mode around
        this call, and cannot run the text as written inside it) that error is raised,
        for the caller to call ``no_longer_binds`` and start again once it let the mode
        go. ``cancel``: a ``threading.Event`` that interrupts a wait for another
        statement's rules (``RuleModes.hold``)."""
        # Native too: it must not run while another thread's statement has rules disabled.
        try:
            with disabled_optimizers(con, self.rules, self.settings, cancel):
                try:
                    return con.execute(self.runnable, parameters)
                except (duckdb.BinderException, duckdb.CatalogException) as err:
                    if not fall_back or not self.may_fall_back:
                        raise
                    stale: Exception = err
        except SettingRefusedError as err:  # a setting this DuckDB refuses: as written
            if not fall_back:
                raise
            stale = err
        self.no_longer_binds(stale)
        with disabled_optimizers(con, (), (), cancel):
            return con.execute(self.original_sql, parameters)

    @property
    def may_fall_back(self) -> bool:
        """Whether a binder error of this decision may be its plan gone stale (a book plan
        that changes the text, rules or settings), so that the text as written runs instead."""
        return self.source == "book" and not (self.sql == self.original_sql and not self.disabled
                                              and not self.settings)

    def no_longer_binds(self, err: Exception) -> None:
        """Turn this decision into the text as written: its verified plan raised ``err``."""
        why = "DuckDB refused its settings" if isinstance(err, SettingRefusedError) else "no longer binds"
        self.fallback = f"the verified plan {why} ({str(err).splitlines()[0][:120]}): ran as written"
        self.sql, self.forced, self.disabled, self.settings = self.original_sql, False, (), ()

    def to_json(self) -> dict[str, Any]:
        """The decision as plain JSON data (plans as text)."""
        return {
            "sql": self.sql, "forced": self.forced,
            "chosen": str(self.chosen) if self.chosen else None,
            "native": str(self.native) if self.native else None,
            "predicted_ms": self.predicted_ms, "predicted_native_ms": self.predicted_native_ms,
            "fallback": self.fallback, "planning_ms": round(self.planning_ms, 3), "candidates": self.candidates,
            "disabled": list(self.disabled), "settings": dict(self.settings), "source": self.source,
        }
