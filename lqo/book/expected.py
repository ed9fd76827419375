"""What a statement is expected to take, for admission to order waiting statements by.

Kept per text without literals (so every instance of a template shares it), seeded from a
plan book's measured native times, learned from each run.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Mapping
from typing import Any

from lqo.book.long_lists import LONG_TEXT
from lqo.book.params import bind_literals
from lqo.book.template import literal_free_text


class LatencyMemory:
    """What admission expects a statement to take: the latest latencies of its text
    without literals (an exponential average), else the plan book's measured time of its
    template, else the median of everything seen; thread-safe.

    >>> m = LatencyMemory()
    >>> m.observe("SELECT * FROM t WHERE x = 5", None, 10.0)
    >>> m.expect("SELECT * FROM t WHERE x = 7", None), m.expect("SELECT 1", None)
    (10.0, 10.0)
    """

    def __init__(self, book: Any = None, default_ms: float = 50.0) -> None:
        self._ms: dict[str, float] = {}
        self._lock = threading.Lock()
        self.default_ms = default_ms
        if book is not None:  # a PlanBook: each template's native time under its choice
            for e in book.entries.values():
                if e.native_ms:
                    self._ms[self._key(e.sample_sql)] = statistics.median(e.native_ms.values()) * e.adopted_ratio

    @staticmethod
    def _key(sql: str) -> str:
        return literal_free_text(sql if len(sql) <= LONG_TEXT else sql[:LONG_TEXT])

    def expect(self, sql: str, parameters: Any) -> float:
        """Expected milliseconds of ``sql`` (with bind ``parameters``, a text first seen
        finds its template's book time through its values written in as literals)."""
        key = self._key(sql)
        with self._lock:
            ms = self._ms.get(key)
        if ms is None and isinstance(parameters, (list, tuple, Mapping)) and parameters:
            bound = bind_literals(sql, parameters)
            with self._lock:
                ms = self._ms.get(self._key(bound.sql)) if bound is not None else None
                if ms is not None:
                    self._ms[key] = ms  # the parameterized text's own entry from now on
        if ms is None:
            with self._lock:
                ms = statistics.median(self._ms.values()) if self._ms else self.default_ms
        return ms

    def forget(self, sql: str) -> None:
        """Forget what is known of ``sql``'s text without literals (a template the
        memory should meet as new)."""
        with self._lock:
            self._ms.pop(self._key(sql), None)

    def observe(self, sql: str, parameters: Any, ms: float) -> None:
        """Remember a measured latency of ``sql``."""
        key = self._key(sql)
        with self._lock:
            old = self._ms.get(key)
            self._ms[key] = ms if old is None else 0.7 * old + 0.3 * ms
            if len(self._ms) > 10_000:
                self._ms.pop(next(iter(self._ms)))
