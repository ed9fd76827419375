"""Admission for concurrent callers: which waiting statement runs next, and how many at once.

DuckDB runs concurrent statements together (processor sharing): on a small machine four
concurrent analytical queries gain no throughput over running them one by one, and each
takes three times longer. An admission queue lets ``slots`` statements run at once and
orders the others:

- ``fifo``: by arrival;
- ``sjf``: shortest expected first, aged so that nothing starves: the waiting statement
  with the highest response ratio ``(waited + expected) / expected`` goes next (HRRN), so
  a long statement's claim grows with its wait and a short one passes it only while the
  long one has waited less than a multiple of the short one's length.

A caller that is interrupted while it waits (``cancel`` set) leaves the queue with
``duckdb.InterruptException``, as an interrupted query does.

>>> q = AdmissionQueue(slots=1, policy="sjf")
>>> with q.admit(expected_ms=5.0):
...     q.running
1
>>> q.running, q.waiting
(0, 0)
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb

POLICIES = ("fifo", "sjf")


@dataclass(order=True)
class _Waiter:
    seq: int
    expected_ms: float = field(compare=False)
    arrived: float = field(compare=False)
    admitted: bool = field(default=False, compare=False)


class AdmissionQueue:
    """Admits at most ``slots`` statements at a time, the rest in ``policy`` order;
    thread-safe. ``max_wait_ms`` is the longest any statement waited (starvation check)."""

    def __init__(self, slots: int = 1, policy: str = "sjf") -> None:
        if slots < 1:
            raise ValueError("admission slots must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"admission policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.slots = slots
        self.policy = policy
        self.running = 0
        self.max_wait_ms = 0.0
        self._waiting: list[_Waiter] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        """How many statements wait now."""
        return len(self._waiting)

    def _next(self, now: float) -> _Waiter:
        if self.policy == "fifo":
            return self._waiting[0]
        return max(self._waiting, key=lambda w: ((now - w.arrived) * 1000 + w.expected_ms) / w.expected_ms)

    def _admit_next(self) -> None:
        """Admit waiters while slots are free (called with the lock held)."""
        now = time.perf_counter()
        while self._waiting and self.running < self.slots:
            w = self._next(now)
            self._waiting.remove(w)
            w.admitted = True
            self.running += 1
            self.max_wait_ms = max(self.max_wait_ms, (now - w.arrived) * 1000)
        self._cond.notify_all()

    @contextlib.contextmanager
    def admit(self, expected_ms: float, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold one slot for the block; wait for it in policy order."""
        w = _Waiter(next(self._seq), max(float(expected_ms), 0.01), time.perf_counter())
        with self._cond:
            self._waiting.append(w)
            self._admit_next()
            while not w.admitted:
                if cancel is not None and cancel.is_set():
                    self._waiting.remove(w)
                    raise duckdb.InterruptException("INTERRUPT Error: interrupted while waiting for admission")
                self._cond.wait(timeout=0.05 if cancel is not None else None)
        try:
            yield
        finally:
            with self._cond:
                self.running -= 1
                self._admit_next()
