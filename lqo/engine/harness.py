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

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb

from lqo.engine.failures import RESULT_CONVERSION_ERRORS, describe_failure
from lqo.engine.interrupt import is_user_interrupt, sigint_seen
from lqo.engine.run_result import RunResult, fingerprint_rows, flatten_profile, utcnow
from lqo.engine.settings import current_setting, disabled_optimizers, forced_settings, profiling_settings

_UNSET = object()


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
            disabled: Sequence[str] = (), settings: Sequence[tuple[str, str]] = ()) -> RunResult:
        """Execute ``sql`` (text or parsed statement) once, with optimizer rules
        ``disabled`` and DuckDB ``settings`` (name, value) in force; never raises for query errors.

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
        rules = forced_settings(con, disabled, settings) if forced else disabled_optimizers(con, disabled, settings)
        with profiling_settings(con) if profile else _nothing(), rules:
            rows = _timed_execute(con, sql, timeout, result)
            if sigint_seen():
                raise KeyboardInterrupt
            if rows is not None:
                _record_rows(con, rows, profile, result)
        return result


def _timed_execute(con: duckdb.DuckDBPyConnection, sql: "str | duckdb.Statement", timeout: float | None,
                   result: RunResult) -> list[tuple] | None:
    """Run ``sql`` once under a timeout timer; its rows, or None with the timeout or the
    error recorded in ``result``. Ctrl-C (not the timer) is re-raised."""
    fired = threading.Event()
    timer = None
    if timeout is not None:
        def _fire() -> None:
            fired.set()
            con.interrupt()

        timer = threading.Timer(float(timeout), _fire)
        timer.daemon = True
    result.started_at = utcnow()
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
    return rows


def _record_rows(con: duckdb.DuckDBPyConnection, rows: list[tuple], profile: bool, result: RunResult) -> None:
    """A completed run's row count, fingerprint and (profiled) operators into ``result``."""
    result.rows = len(rows)
    result.fingerprint = fingerprint_rows(rows)
    if profile:
        # Must be read before any other statement replaces the profile.
        prof = json.loads(con.get_profiling_information(format="json"))
        result.operators = flatten_profile(prof)
        if prof.get("latency") is not None:
            result.profile_latency_ms = float(prof["latency"]) * 1000.0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run_interleaved(
    con: duckdb.DuckDBPyConnection,
    variants: Sequence[tuple[str, bool] | tuple[str, bool, Sequence[str]]
                       | tuple[str, bool, Sequence[str], Sequence[tuple[str, str]]]],
    repeats: int,
    warmup: int = 1,
    timeout_s: float | None = None,
    profile: bool = False,
    on_run: Callable[[int, int, RunResult], None] | None = None,
) -> list[list[RunResult]]:
    """Run variants ``(sql, forced)``, ``(sql, forced, disabled_rules)`` or ``(sql, forced,
    disabled_rules, settings)`` round-robin:
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
            settings = variant[3] if len(variant) > 3 else ()
            r = harness.run(sql, forced=forced, timeout_s=timeout_s, profile=profile, disabled=disabled,
                            settings=settings)
            if on_run is not None:
                on_run(i, rnd, r)
            if not r.ok:
                dead[i] = True
                results[i].append(r)
            elif rnd >= 0:
                results[i].append(r)
    return results
