"""Admission for concurrent callers: which waiting statement runs next, and how many at once.

DuckDB runs concurrent statements together (processor sharing): on a small machine four
concurrent analytical queries gain no throughput over running them one by one, and each
takes three times longer. An admission queue lets ``slots`` statements run at once and
orders the others:

- ``fifo``: by arrival;
- ``sjf``: shortest expected first, aged so that nothing starves: the waiting statement
  with the least ``expected - waited / AGING`` goes next, so a statement gains a
  millisecond of precedence per ``AGING`` milliseconds it waits, and one expected to take
  ``e`` waits at most about ``AGING * e`` for shorter newcomers;
- ``hrrn``: the highest response ratio ``(waited + expected) / expected`` next: also
  aged, but nearer to arrival order (a statement that just arrived ranks below one
  that waited a little, however long that one is).

A caller that is interrupted while it waits (``cancel`` set) leaves the queue with
``duckdb.InterruptException``, as an interrupted query does.

*Modes*: DuckDB's optimizer rules and the settings a verified plan needs are global to a
database instance, so statements of different modes (``admit(..., mode=)``: any
hashable, None for DuckDB's own rules and settings) cannot run together
(``lqo.engine.settings.RuleModes``): one of another mode would only wait there while
holding a slot, and the slots beside a statement running in its own mode stay idle.
With more than one slot the queue sees modes:

- a statement of a mode starts in its mode only where it would run alone (nothing runs
  and nothing else waits), or beside statements of the same mode; otherwise, with
  ``demote`` (the default), it is *demoted*: it runs as written, under DuckDB's own
  rules (``admit`` yields the mode granted, None when demoted; the caller runs the text
  as written, which gives DuckDB's own result), so it never blocks the slots beside it;
- while statements of a mode run, only statements of that mode join them: ``fifo`` stops
  at a head of another mode until they drain; ``sjf`` and ``hrrn`` admit instead the
  best waiting statement of the running mode that is expected to take at most
  ``mode_slack`` times as long as the best, until the best has waited ``mode_slack``
  times its expected time; else they stop (then the best goes next, once the slots
  drain, so no mode starves).

With one slot nothing overlaps, so modes change nothing and nothing is demoted.

A statement from one of DuckDB's own worker threads (a Python function of an admitted
statement calling back) is admitted at once, as written: the statement it serves holds
a slot it would otherwise wait for.

One queue may serve several connections (``lqo.connect(..., admission=queue)``): two
databases in one process share the machine's cores.

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
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

import duckdb

from lqo.engine.settings import engine_thread

POLICIES = ("fifo", "sjf", "hrrn")
AGING = 4.0  # sjf: waiting this many ms gains a statement 1 ms of precedence


@dataclass(order=True)
class _Waiter:
    seq: int
    expected_ms: float = field(compare=False)
    arrived: float = field(compare=False)
    mode: Hashable = field(default=None, compare=False)
    admitted: bool = field(default=False, compare=False)
    granted: Hashable = field(default=None, compare=False)

    def ratio(self, now: float) -> float:
        """Its response ratio at ``now``: (waited + expected) / expected."""
        return ((now - self.arrived) * 1000 + self.expected_ms) / self.expected_ms


class AdmissionQueue:
    """Admits at most ``slots`` statements at a time, the rest in ``policy`` order;
    thread-safe. ``max_wait_ms`` is the longest any statement waited (starvation check),
    ``mode_switches`` how often a statement was admitted in another mode than the last,
    ``demoted`` how many statements were told to run as written (see *Modes*)."""

    def __init__(self, slots: int = 1, policy: str = "sjf", mode_slack: float = 2.0, demote: bool = True) -> None:
        if slots < 1:
            raise ValueError("admission slots must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"admission policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if not mode_slack >= 1.0:
            raise ValueError("admission mode_slack must be >= 1")
        self.slots = slots
        self.policy = policy
        self.mode_slack = mode_slack
        self.running = 0
        self.max_wait_ms = 0.0
        self.mode_switches = 0
        self.demote = demote
        self.demoted = 0
        self._mode: Hashable = None  # the mode of the running statements (of the last, when none runs)
        self._waiting: list[_Waiter] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._holding = threading.local()  # slots the calling thread holds now

    @property
    def waiting(self) -> int:
        """How many statements wait now."""
        return len(self._waiting)

    def _next(self, now: float) -> tuple[_Waiter, Hashable] | None:
        """The waiter to admit now and the mode it runs in; None to let the running
        statements drain first."""
        best = self._waiting[0] if self.policy == "fifo" else max(self._waiting, key=lambda w: self._rank(w, now))
        if self.running and best.mode == self._mode:  # joins the running statements' mode
            return best, best.mode
        if self.running == 0 and (best.mode is None or self.slots == 1 or len(self._waiting) == 1 or not self.demote):
            return best, best.mode  # starts its own mode (alone, unless demoting is off)
        if best.mode is not None and self.demote and (self.running == 0 or self._mode is None):
            self.demoted += 1  # would hold the slots beside it idle: runs as written
            return best, None
        return self._held(best, now)

    def _held(self, best: _Waiter, now: float) -> tuple[_Waiter, Hashable] | None:
        """``best`` cannot join the running mode: a near waiter of that mode (sjf), or none."""
        if self.policy == "fifo":
            return None
        slack = self.mode_slack
        if (now - best.arrived) * 1000 >= slack * best.expected_ms:
            return None
        near = [w for w in self._waiting if w.mode == self._mode and w.expected_ms <= best.expected_ms * slack]
        if not near:
            return None
        w = max(near, key=lambda w: self._rank(w, now))
        return w, w.mode

    def _rank(self, w: _Waiter, now: float) -> float:
        """How strong ``w``'s claim is at ``now`` (higher goes first)."""
        if self.policy == "hrrn":
            return w.ratio(now)
        return (now - w.arrived) * 1000 / AGING - w.expected_ms

    def _admit_next(self) -> None:
        """Admit waiters while slots are free (called with the lock held)."""
        now = time.perf_counter()
        while self._waiting and self.running < self.slots:
            picked = self._next(now)
            if picked is None:
                break
            w, granted = picked
            w.granted = granted
            self._waiting.remove(w)
            w.admitted = True
            if w.granted != self._mode:
                self.mode_switches += 1
            self._mode = w.granted
            self.running += 1
            self.max_wait_ms = max(self.max_wait_ms, (now - w.arrived) * 1000)
        self._cond.notify_all()

    @contextlib.contextmanager
    def admit(self, expected_ms: float, cancel: threading.Event | None = None,
              mode: Hashable = None) -> Iterator[Hashable]:
        """Hold one slot for the block; wait for it in policy order (``mode``: what the
        statement needs to run under, None for DuckDB's own rules and settings). Yields
        the mode granted: ``mode``, or None where the statement is to run as written."""
        # A Python UDF calling back into lqo runs on a DuckDB worker thread, or on the very
        # thread whose statement holds a slot: waiting would wait on itself.
        if engine_thread() or getattr(self._holding, "slots", 0) > 0:
            with self._cond:
                self.demoted += mode is not None
            yield None
            return
        w = _Waiter(next(self._seq), max(float(expected_ms), 0.01), time.perf_counter(), mode)
        with self._cond:
            self._waiting.append(w)
            self._admit_next()
            while not w.admitted:
                if cancel is not None and cancel.is_set():
                    self._waiting.remove(w)
                    self._admit_next()  # it may have been what held the others back
                    raise duckdb.InterruptException("INTERRUPT Error: interrupted while waiting for admission")
                self._cond.wait(timeout=0.05 if cancel is not None else None)
        self._holding.slots = getattr(self._holding, "slots", 0) + 1
        try:
            yield w.granted
        finally:
            self._holding.slots -= 1
            with self._cond:
                self.running -= 1
                self._admit_next()
