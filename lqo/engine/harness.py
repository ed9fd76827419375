"""Execution harness: run a query natively or forced, with a timeout and per-operator actuals.

A *forced* run executes the SQL text exactly as written (join order and build sides)
under :func:`lqo.engine.settings.forced_settings`, undone afterwards, also on errors and
interrupts.

Timeouts: DuckDB has no statement timeout, so a ``threading.Timer`` calls
``con.interrupt()``; the query raises ``duckdb.InterruptException`` within a few ms and
the connection stays usable.

>>> h = Harness(connect_read_only("tpch.duckdb"), timeout_s=10)  # doctest: +SKIP
>>> r = h.run("SELECT count(*) FROM lineitem WHERE l_tax > 0", forced=True)  # doctest: +SKIP
>>> r.rows, r.timed_out, r.operators[0]["type"]                  # doctest: +SKIP
(1, False, 'UNGROUPED_AGGREGATE')
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb

from lqo.engine.settings import current_setting, disabled_optimizers, forced_settings, profiling_settings
from lqo.errors import QueryRuntimeError

_UNSET = object()

# Python errors of turning a finished query's values into Python objects (an INTERVAL
# beyond ``timedelta``'s range raises OverflowError in ``fetchall``): the query ran, its
# result cannot be held, so the run failed like any other run-time error.
RESULT_CONVERSION_ERRORS: tuple[type[Exception], ...] = (OverflowError, ValueError)

# extra_info keys worth keeping per operator: they let a caller match an operator to the
# join / scan of its own plan. Projections, filters etc. are long and not needed for that.
_KEPT_INFO = ("Table", "Join Type", "Conditions")

@dataclass
class RunResult:
    """Outcome of one execution.

    ``latency_ms`` is wall time around execute+fetchall; for a timed-out run it is the
    time until the interrupt took effect. ``rows`` is 0 and ``fingerprint`` None unless
    the query completed. ``operators`` is the profile flattened in pre-order: dicts with
    ``type``, ``rows`` (actual), ``est`` (DuckDB's estimate or None), ``ms`` (operator
    time), ``depth``, ``parent`` (index into the list, -1 for the root) and, where
    present, ``info`` (Table / Join Type / Conditions). ``operators`` is empty when not
    profiled, and also when DuckDB reports no tree (aggregates it answers from table
    statistics, e.g. ``SELECT count(*) FROM t``: its JSON is ``{"result": "error"}``).
    """

    latency_ms: float
    timed_out: bool = False
    error: str | None = None
    rows: int = 0
    fingerprint: str | None = None
    operators: list[dict[str, Any]] = field(default_factory=list)
    profile_latency_ms: float | None = None
    timeout_ms: float | None = None
    forced: bool = False
    threads: int | None = None
    started_at: _dt.datetime = field(default_factory=lambda: _utcnow())

    @property
    def ok(self) -> bool:
        """True when the query completed (no timeout, no error)."""
        return not self.timed_out and self.error is None


# Ctrl-C latch. DuckDB's client checks for signals while a query runs; one that lands
# as the query finishes can be consumed without an exception. The CLI's SIGINT handler
# also sets this event, and every run checks it, so such a Ctrl-C still stops the work.
# Process-wide by nature, like the signal itself.
_SIGINT_SEEN = threading.Event()


def install_sigint_latch() -> None:
    """Make Ctrl-C (when not ignored) also set the latch ``Harness.run`` checks."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        def _handler(signum, frame):
            _SIGINT_SEEN.set()
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _handler)


def is_user_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C, as Python raises it or as DuckDB wraps it (an
    ``InterruptException`` counts once the CLI's latch has seen a Ctrl-C)."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, duckdb.InterruptException):
        return _SIGINT_SEEN.is_set()
    return isinstance(exc, RuntimeError) and (
        isinstance(exc.__cause__, KeyboardInterrupt) or "Query interrupted" in str(exc)
    )


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------- run-time errors

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


# --------------------------------------------------------------------------- fingerprint

def _norm(value: Any) -> Any:
    """A canonical, hashable form of one value; floats to 6 significant digits."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str, bytes)):
        return value
    if isinstance(value, (float, Decimal)):
        # Decimals too: a forced plan may sum in another order and some aggregates
        # (avg) move between DECIMAL and DOUBLE; both must compare equal.
        x = float(value)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if abs(x) < 1e-9:  # summation noise around zero (1e-17 vs -2e-17)
            return 0.0
        return float(f"{x:.6g}")
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    return str(value)  # dates, times, UUIDs, intervals: their text is canonical


def fingerprint_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Order-insensitive multiset hash of a result, robust to float noise.

    Rows are hashed one by one and the sorted digests hashed again: equal multisets of
    rows give equal fingerprints whatever their order (ties under ORDER BY may come back
    in any order), duplicates still count.

    >>> fingerprint_rows([(1, 0.1 + 0.2), (2, 'x')]) == fingerprint_rows([(2, 'x'), (1, 0.3)])
    True
    """
    digests = sorted(hashlib.blake2b(repr(_norm(r)).encode(), digest_size=16).digest() for r in rows)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(len(digests)).encode())
    for d in digests:
        h.update(d)
    return h.hexdigest()


# --------------------------------------------------------------------------- profile

def _parse_estimate(text: Any) -> int | None:
    try:
        return int(str(text).strip().lstrip("~"))
    except (TypeError, ValueError):
        return None


def flatten_profile(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten DuckDB's JSON profile tree (root keys skipped) into a pre-order list."""
    out: list[dict[str, Any]] = []

    def walk(node: dict[str, Any], depth: int, parent: int) -> None:
        extra = node.get("extra_info") or {}
        op: dict[str, Any] = {
            "type": node.get("operator_type") or node.get("operator_name"),
            "rows": node.get("operator_cardinality"),
            "est": _parse_estimate(extra.get("Estimated Cardinality")),
            "ms": round(float(node.get("operator_timing") or 0.0) * 1000.0, 4),
            "depth": depth,
            "parent": parent,
        }
        info = {k: extra[k] for k in _KEPT_INFO if k in extra}
        if info:
            op["info"] = info
        out.append(op)
        me = len(out) - 1
        for child in node.get("children") or []:
            walk(child, depth + 1, me)

    for top in profile.get("children") or []:
        walk(top, 0, -1)
    return out


# --------------------------------------------------------------------------- harness

class Harness:
    """Runs queries on one connection (read-only is fine) with timeouts and profiling.

    Not thread-safe: one query at a time per Harness, as the connection allows.

    >>> h = Harness(con, timeout_s=5.0)                           # doctest: +SKIP
    >>> native = h.run(sql)                                       # doctest: +SKIP
    >>> forced = h.run(rendered, forced=True, profile=False)      # doctest: +SKIP
    >>> forced.fingerprint == native.fingerprint                  # doctest: +SKIP
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float | None = None) -> None:
        self.con = con
        self.timeout_s = timeout_s

    def run(self, sql: "str | duckdb.Statement", forced: bool = False, timeout_s: Any = _UNSET, profile: bool = True,
            disabled: Sequence[str] = ()) -> RunResult:
        """Execute ``sql`` (text or parsed statement) once; never raises for query errors.

        ``timeout_s`` defaults to the Harness's; None means no timeout. DuckDB errors
        (conversion, overflow, out of memory under ``memory_limit``, ...) and results
        Python cannot hold become ``RunResult.error``. An interrupt that did not come
        from this run's timer (e.g. Ctrl-C) is re-raised.
        """
        timeout = self.timeout_s if timeout_s is _UNSET else timeout_s
        con = self.con
        threads = current_setting(con, "threads")
        result = RunResult(
            latency_ms=0.0,
            timeout_ms=None if timeout is None else float(timeout) * 1000.0,
            forced=forced,
            threads=int(threads) if threads is not None else None,
        )
        rules = forced_settings(con, disabled) if forced else disabled_optimizers(con, disabled)
        with profiling_settings(con) if profile else _nothing(), rules:
            fired = threading.Event()
            timer = None
            if timeout is not None:
                def _fire() -> None:
                    fired.set()
                    con.interrupt()

                timer = threading.Timer(float(timeout), _fire)
                timer.daemon = True
            result.started_at = _utcnow()
            t0 = time.perf_counter()
            rows: list[tuple] | None = None
            try:
                if timer is not None:
                    timer.start()
                try:
                    rows = con.execute(sql).fetchall()
                finally:
                    result.latency_ms = (time.perf_counter() - t0) * 1000.0
                    if timer is not None:
                        timer.cancel()
                        # Wait out a timer that is firing right now, so its interrupt
                        # cannot land on the restoring SET statements below.
                        timer.join()
            except duckdb.InterruptException:
                if not fired.is_set():
                    raise
                result.timed_out = True
            except RuntimeError as exc:
                if not is_user_interrupt(exc):
                    raise
                # Ctrl-C: DuckDB raises RuntimeError('Query interrupted') and may keep
                # running the query; stop it so the connection answers again.
                con.interrupt()
                raise KeyboardInterrupt from exc
            except duckdb.Error as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            except RESULT_CONVERSION_ERRORS as exc:
                result.error = describe_failure(exc)
            if _SIGINT_SEEN.is_set():
                raise KeyboardInterrupt
            if rows is not None:
                result.rows = len(rows)
                result.fingerprint = fingerprint_rows(rows)
                if profile:
                    # Must be read before any other statement replaces the profile.
                    prof = json.loads(con.get_profiling_information(format="json"))
                    result.operators = flatten_profile(prof)
                    if prof.get("latency") is not None:
                        result.profile_latency_ms = float(prof["latency"]) * 1000.0
        return result


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run_interleaved(
    con: duckdb.DuckDBPyConnection,
    variants: Sequence[tuple[str, bool] | tuple[str, bool, Sequence[str]]],
    repeats: int,
    warmup: int = 1,
    timeout_s: float | None = None,
    profile: bool = False,
    on_run: Callable[[int, int, RunResult], None] | None = None,
) -> list[list[RunResult]]:
    """Run variants ``(sql, forced)`` or ``(sql, forced, disabled_rules)`` round-robin:
    warm-up rounds, then ``repeats`` rounds.

    Interleaving A B C A B C ... spreads machine noise over all variants alike. A variant
    that times out or fails (in warm-up or later) is not run again; its list ends with
    that result, so it may be shorter than ``repeats``. Warm-up results are dropped
    unless they are that final timeout/error. ``on_run(variant, round, result)`` is
    called after every run; warm-up rounds are numbered negative (-warmup .. -1).

    >>> a, b = run_interleaved(con, [(q, False), (forced_q, True)], repeats=5, timeout_s=10)  # doctest: +SKIP
    >>> median_latency(b) / median_latency(a)                                                # doctest: +SKIP
    """
    harness = Harness(con)
    results: list[list[RunResult]] = [[] for _ in variants]
    dead = [False] * len(variants)
    for rnd in range(-warmup, repeats):
        for i, variant in enumerate(variants):
            if dead[i]:
                continue
            sql, forced = variant[0], variant[1]
            disabled = variant[2] if len(variant) > 2 else ()
            r = harness.run(sql, forced=forced, timeout_s=timeout_s, profile=profile, disabled=disabled)
            if on_run is not None:
                on_run(i, rnd, r)
            if not r.ok:
                dead[i] = True
                results[i].append(r)
            elif rnd >= 0:
                results[i].append(r)
    return results


# --------------------------------------------------------------------------- summaries

def censored_latency(r: RunResult) -> float:
    """Latency for ranking: a timed-out run counts as at least its timeout."""
    if r.timed_out:
        return max(r.latency_ms, r.timeout_ms or 0.0)
    return r.latency_ms


def median_latency(results: Sequence[RunResult]) -> float | None:
    """Median latency in ms over completed and timed-out runs (errors ignored).

    Timed-out runs rank above every completed run, at ``censored_latency``; if the
    median lands on one, the value returned is a lower bound. None if nothing counts.

    >>> median_latency([RunResult(10.0), RunResult(30.0), RunResult(5.0, timed_out=True, timeout_ms=20.0)])
    30.0
    """
    counted = [r for r in results if r.error is None]
    if not counted:
        return None
    done = sorted(r.latency_ms for r in counted if not r.timed_out)
    timed = sorted(censored_latency(r) for r in counted if r.timed_out)
    # Timeouts go last even if a completed run was slower than some timeout value.
    ranked = done + [max(t, done[-1] if done else t) for t in timed]
    return float(statistics.median(ranked))
