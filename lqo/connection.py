"""lqo in an application: DuckDB's connection, serving known templates from a plan book.

An application switches by changing one line::

    con = duckdb.connect("shop.duckdb", read_only=True)         # before
    con = lqo.connect("shop.duckdb", book="runs/shop")          # after

and keeps calling ``con.execute(q, params).fetchall()``, ``con.sql(q).df()``,
``con.cursor()`` per thread, and DuckDB's exceptions. A SELECT whose template the
plan book verified runs its verified plan (a forced tree, or the text under a setting
arm); everything else, writes included, goes to DuckDB unchanged and never runs while
lqo has DuckDB's optimizer rules changed for another thread's statement
(``lqo.engine.settings.RuleModes``). Those rules are per DuckDB instance, so a verified
plan that needs rules or settings of its own runs under them only when no other
statement runs or waits; beside others it runs as written (``serving.demoted`` counts
them), rather than holding every other thread back while it runs.
``lqo.wrap(con, book=...)`` does the same for a
connection you opened yourself.

Loading a book-only directory imports neither torch nor sqlglot.

>>> import duckdb
>>> con = wrap(duckdb.connect(), book=None)
>>> con.execute("SELECT 40 + ?", [2]).fetchall()
[(42,)]
>>> rel = con.sql("SELECT 1 AS one")
>>> rel.columns, rel.fetchall()
(['one'], [(1,)])
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from lqo.book.book import PlanBook
from lqo.book.expected import LatencyMemory
from lqo.book.serve import BookServer
from lqo.engine.admission import AdmissionQueue
from lqo.engine.settings import RULE_MODES, disabled_optimizers
from lqo.errors import MissingFileError, SchemaMismatchError, SettingRefusedError
from lqo.model_dir import BOOK_FILE, ModelDir, book_file
from lqo.optimized import Optimized
from lqo.workloads.query_log import QueryLog


def connect(database: str | os.PathLike = ":memory:", book: str | os.PathLike | None = None,
            read_only: bool | None = None, config: dict[str, Any] | None = None, *,
            capture: str | os.PathLike | None = None, capture_limit_mb: float = 64.0,
            admission: str | AdmissionQueue | None = None, admission_slots: int = 1) -> "Connection":
    """``duckdb.connect(database, read_only, config)`` serving ``book``'s verified plans.

    A database file opens read-only unless ``read_only=False`` (an application that
    also writes; lqo itself never does); ``:memory:`` cannot be read-only. ``capture``:
    a query log (JSONL) that records every SELECT's text, parameters and latency, for
    ``lqo tune --log`` (:mod:`lqo.workloads.query_log`); it stops growing at
    ``capture_limit_mb``. ``admission`` (``"sjf"``, ``"hrrn"`` or ``"fifo"``; off by default): the
    SELECTs that this connection and its cursors ``execute`` run ``admission_slots`` at a
    time, the others waiting in that order (:mod:`lqo.engine.admission`); an
    ``AdmissionQueue`` instead of a name: that queue, shared with the other connections
    given it (``admission_slots`` is then the queue's own).
    """
    if read_only is None:
        read_only = str(database) != ":memory:"
    con = duckdb.connect(str(database), read_only=read_only, config=config or {})
    return wrap(con, book, capture=capture, capture_limit_mb=capture_limit_mb, admission=admission,
                admission_slots=admission_slots)


def wrap(con: duckdb.DuckDBPyConnection, book: str | os.PathLike | None, *,
         capture: str | os.PathLike | None = None, capture_limit_mb: float = 64.0,
         admission: str | AdmissionQueue | None = None, admission_slots: int = 1) -> "Connection":
    """``con`` serving the model directory ``book`` (None: nothing): its plan book for
    known templates and, where it holds a trained model, the learned optimizer for the
    other SELECTs (this imports torch). ``capture``, ``admission``: as for :func:`connect`."""
    server = planner = None
    if book is not None:
        root = Path(book)
        if not root.exists():
            raise MissingFileError(f"model directory not found: {root}")
        file = book_file(root)
        server = _load(file, con) if file.is_file() else None
        if root.is_dir() and ModelDir(root).model.is_file():
            from lqo.optimizer import Optimizer

            planner = Optimizer.load(root, con)
        if server is None and planner is None:
            raise MissingFileError(f"{root} holds neither a plan book ({BOOK_FILE}) nor a model: "
                                   "tune one with `lqo tune`")
    queue = (admission if isinstance(admission, AdmissionQueue) or admission is None
             else AdmissionQueue(admission_slots, admission))
    log = QueryLog(capture, capture_limit_mb) if capture is not None else None
    expected = LatencyMemory(server.book if server is not None else None)
    return Connection(con, Serving(server, planner, log, queue, expected))


def _load(file: Path, con: duckdb.DuckDBPyConnection) -> BookServer:
    from lqo.sql.catalog import Catalog

    plans = PlanBook.load(file)
    found = Catalog.from_connection(con).fingerprint
    if plans.schema and plans.schema != found:
        raise SchemaMismatchError(f"plan book {file} was tuned for schema {plans.schema}, "
                                  f"this database has schema {found}")
    return BookServer(plans, _render_for(con))


def _render_for(con: duckdb.DuckDBPyConnection):
    """The full renderer for instances no slot rendering fits (parses: sqlglot, lazily)."""
    catalog = None

    def render_full(sql: str, plan: Any) -> str:
        nonlocal catalog
        from lqo.sql.catalog import Catalog
        from lqo.sql.join_graph import build_query_graph
        from lqo.trees.render import render

        if catalog is None:
            catalog = Catalog.from_connection(con)
        return render(build_query_graph(sql, catalog), plan)
    return render_full


@dataclass
class Serving:
    """What a connection and all its cursors share: the plan book's server, the learned
    optimizer (a model directory with a model), the query log, the admission queue and
    what it expects each statement to take."""

    server: BookServer | None = None
    planner: Any = None  # an Optimizer with a trained model, for SELECTs the book does not know
    log: QueryLog | None = None
    admission: AdmissionQueue | None = None
    expected: LatencyMemory = field(default_factory=lambda: LatencyMemory())
    demoted: int = 0  # verified plans run as written beside other statements (approximate under threads)


class Connection:
    """A DuckDB connection whose SELECTs of known templates run their verified plan.

    Everything DuckDB's connection has is here (unknown attributes are DuckDB's own);
    ``execute`` and ``sql`` decide, the rest is passed through. Like DuckDB's, one
    ``Connection`` is for one thread at a time: give each thread ``cursor()``.
    ``last`` is the decision behind the latest ``execute`` (None when it went to DuckDB
    unchanged)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, serving: Serving | None = None) -> None:
        self._con = con
        self.serving = serving if serving is not None else Serving()
        self._server = self.serving.server
        self._planner = self.serving.planner
        self.log = self.serving.log  # the query log this connection captures into (None: no capture)
        self._cancel = threading.Event()  # interrupt() while waiting for admission
        self.last: Optimized | None = None
        # DuckDB finds a query's Python variables (``FROM df``) in the calling frame,
        # which is lqo's here: let it look further up, to the application's.
        con.execute("SET python_scan_all_frames = true")

    # ----- deciding --------------------------------------------------------------------
    def _decide(self, query: Any, parameters: Any) -> Optimized | None:
        if not isinstance(query, str) or self._server is None and self._planner is None:
            return None
        bound = isinstance(parameters, (list, tuple, Mapping)) and len(parameters) > 0
        if parameters is not None and not bound and not isinstance(parameters, (list, tuple, Mapping)):
            return None  # parameters lqo does not read (a numpy array, ...): DuckDB binds them as written
        try:
            if bound:
                served = self._server.serve_bound(query, parameters) if self._server is not None else None
            else:
                served = self._server.serve(query) if self._server is not None else None
                if served is None and self._planner is not None:
                    served = self._planned(query)
        except (TypeError, ValueError, UnicodeError):
            return None  # a text or value lqo cannot read (a lone surrogate): DuckDB's to judge
        if served is None:
            return None
        changed = served.forced or served.disabled or served.settings or served.sql != served.original_sql
        return served if changed else None  # a rewrite changes only the text

    def _planned(self, query: str) -> Optimized | None:
        """The learned optimizer's decision for a SELECT (None for anything else: DuckDB's)."""
        try:
            statements = self._con.extract_statements(query)
        except duckdb.Error:
            return None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            return None
        from lqo.errors import LqoError

        try:
            return self._planner.optimize(query, self._con)
        except LqoError:
            return None  # lqo cannot plan it: DuckDB runs it (and reports its own errors)

    def execute(self, query: Any, parameters: Any = None) -> "Connection":
        """DuckDB's ``execute``: the verified plan for a known SELECT template, else
        the statement unchanged. Returns this connection, its result ready to fetch."""
        decision = self._decide(query, parameters)
        self.last = decision
        selects = QueryLog.wanted(query)
        queue = self.serving.admission
        self._cancel.clear()  # interrupt() from now on stops this statement, waiting or running
        if queue is not None and selects:
            mode = self._mode(decision)
            with queue.admit(self.serving.expected.expect(query, parameters), self._cancel, mode) as granted:
                if granted is None and mode is not None:
                    decision = self.last = None  # demoted: as written, not holding other statements back
                ms = self._run(query, parameters, decision)
            self.serving.expected.observe(query, parameters, ms)
        elif decision is not None and (decision.rules or decision.settings):
            # DuckDB's rules and settings are per instance: a plan that needs its own would
            # hold back every statement of the other threads while it runs.
            ms = self._run_if_idle(query, parameters, decision)
        else:
            ms = self._run(query, parameters, decision)
        if self.log is not None and selects:
            self.log.record(query, parameters, ms)
        return self

    def _run_if_idle(self, query: Any, parameters: Any, decision: Optimized) -> float:
        """Run ``decision`` in its mode if no other statement runs or waits, else as
        written; its latency in ms."""
        stale = None
        with RULE_MODES.hold_if_idle(self._con, decision.rules, decision.settings) as alone:
            if not alone:
                self.last = None
                self.serving.demoted += 1
                return self._run(query, parameters, None)
            try:
                return self._run(query, parameters, decision, fall_back=False)
            except (duckdb.BinderException, duckdb.CatalogException) as err:
                if not decision.may_fall_back:
                    raise
                stale = err  # the verified plan no longer binds: as written, once the mode is let go
        decision.no_longer_binds(stale)
        return self._run(query, parameters, decision)

    def _mode(self, decision: Optimized | None) -> Any:
        """The admission mode of a decision: None for DuckDB's own rules and settings,
        else its rules and settings on this connection's database (``RuleModes`` lets
        one mode run at a time in a process)."""
        if decision is None or not decision.rules and not decision.settings:
            return None
        return id(self.serving), decision.rules, decision.settings

    def _run(self, query: Any, parameters: Any, decision: Optimized | None, fall_back: bool = True) -> float:
        """Run the decision (or the statement as written); its latency in ms."""
        start = time.perf_counter()
        if decision is not None:
            decision.start(self._con, parameters, cancel=self._cancel, fall_back=fall_back)
        else:
            with disabled_optimizers(self._con, (), (), self._cancel):
                self._con.execute(query, parameters)
        return (time.perf_counter() - start) * 1000

    def interrupt(self) -> None:
        """DuckDB's ``interrupt``: stops the running statement, or one waiting for admission
        or for another statement's optimizer rules to be restored."""
        self._cancel.set()
        self._con.interrupt()

    def sql(self, query: str, params: Any = None) -> Any:
        """DuckDB's ``sql``. A known SELECT template gives a relation of its verified
        plan whose every call (``df()``, ``fetchall()``, ``limit()``, ...) runs under
        the plan's rules; anything else gives DuckDB's own relation, unchanged (planned
        when you fetch it: under DuckDB's own rules unless another thread's lqo
        statement has rules set at that moment, which can cost speed, never rows; use
        ``execute`` where that matters)."""
        decision = self._decide(query, params)
        self.last = decision
        if self.log is not None and QueryLog.wanted(query):
            self.log.record(query, params, None)  # a relation runs when fetched: no latency here
        if decision is None:
            return self._con.sql(query, params=params)
        try:
            with disabled_optimizers(self._con, decision.rules, decision.settings):
                rel = self._con.sql(decision.sql, params=params)
        except (duckdb.BinderException, duckdb.CatalogException):
            if decision.sql == decision.original_sql:
                raise
            return self._con.sql(query, params=params)  # the verified plan no longer binds
        except SettingRefusedError:
            return self._con.sql(query, params=params)  # a setting this DuckDB refuses: as written
        return _Guarded(rel, self._con, decision.rules, decision.settings)

    query = sql

    def cursor(self) -> "Connection":
        """A new cursor of the same database for another thread, serving the same book."""
        return Connection(self._con.cursor(), self.serving)

    def close(self) -> None:
        """Close the underlying DuckDB connection (a cursor leaves the shared query log open;
        the log's owner closes it with ``log.close()``, or it closes at exit)."""
        self._con.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def description(self) -> Any:
        """The last result's column description, as DuckDB gives it."""
        return self._con.description

    @property
    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """The wrapped DuckDB connection."""
        return self._con

    def __getattr__(self, name: str) -> Any:
        # fetchall, fetchone, fetchmany, df, arrow, pl, register, read_parquet, ...
        return getattr(self._con, name)


class _Guarded:
    """A DuckDB relation of a verified plan whose every call runs under the plan's rules
    and settings (a relation is planned when it is fetched)."""

    def __init__(self, rel: duckdb.DuckDBPyRelation, con: duckdb.DuckDBPyConnection, rules: tuple[str, ...],
                 settings: tuple[tuple[str, str], ...] = ()) -> None:
        self._rel, self._con, self._rules, self._settings = rel, con, rules, settings

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # Not the relation's protocols (``__arrow_c_stream__``): DuckDB's scan of a Python
            # variable by name would run the relation on the connection that is scanning it.
            raise AttributeError(name)
        value = getattr(self._rel, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with disabled_optimizers(self._con, self._rules, self._settings):
                out = value(*args, **kwargs)
            return (_Guarded(out, self._con, self._rules, self._settings)
                    if isinstance(out, duckdb.DuckDBPyRelation) else out)
        return call

    def __repr__(self) -> str:
        with disabled_optimizers(self._con, self._rules, self._settings):
            return repr(self._rel)

    def __len__(self) -> int:
        return len(self._rel)
