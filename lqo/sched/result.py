"""Per-query records of a schedule (real or simulated) and the figures over them.

Times are seconds from the stream's start (time 0 = the first possible arrival, after
every worker is up). Completion time = end - arrival; makespan = last end - first arrival.

>>> r = ScheduleResult("fifo", "sim", [QueryRecord(0, "w", "q1", "db", 0.0, 0.0, 1.0, 1, 0),
...                                    QueryRecord(1, "w", "q2", "db", 0.0, 1.0, 3.0, 1, 0)])
>>> r.mean_s, r.makespan_s
(2.0, 3.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence


@dataclass
class QueryRecord:
    """What happened to one arrival. ``worker`` is the worker process index (-1 in a
    simulated shared run); ``rows`` and ``fingerprint`` are None when not executed.
    ``rules``: the optimizer rules the query ran with disabled (its decision's
    ``Optimized.rules``); ``settings``: the operator settings it ran under (a setting
    arm's); ``forced``: whether the rules include the forcing rules."""

    idx: int
    workload: str
    query_id: str
    database: str
    arrival_s: float
    start_s: float
    end_s: float
    threads: int
    worker: int
    ok: bool = True
    error: str | None = None
    rows: int | None = None
    fingerprint: str | None = None
    forced: bool = False
    dispatch_s: float | None = None
    known_source: str | None = None  # where the policy's latency figure came from (knowledge.py)
    rules: tuple[str, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        """``workload/query id``."""
        return f"{self.workload}/{self.query_id}"

    @property
    def completion_s(self) -> float:
        """From arrival to end."""
        return self.end_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        """From start to end."""
        return self.end_s - self.start_s

    def to_json(self) -> dict[str, Any]:
        """The record as plain JSON data, with its derived figures."""
        d = asdict(self)
        d["key"] = self.key
        d["rules"] = list(self.rules)
        d["settings"] = [list(pair) for pair in self.settings]
        d["completion_s"] = self.completion_s
        d["latency_s"] = self.latency_s
        return d


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100].

    >>> percentile([1, 2, 3, 4], 50), percentile([1, 2, 3, 4], 95)
    (2.5, 3.85)
    """
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 12)


@dataclass
class ScheduleResult:
    """The outcome of running (``mode='real'``) or simulating (``'sim'``) a stream."""

    policy: str
    mode: str
    records: list[QueryRecord]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def completions(self) -> list[float]:
        """Every query's completion time."""
        return [r.completion_s for r in self.records]

    @property
    def mean_s(self) -> float:
        """Mean completion time (NaN without queries)."""
        c = self.completions
        return sum(c) / len(c) if c else float("nan")

    @property
    def p50_s(self) -> float:
        """Median completion time."""
        return percentile(self.completions, 50)

    @property
    def p95_s(self) -> float:
        """95th percentile of completion time."""
        return percentile(self.completions, 95)

    @property
    def makespan_s(self) -> float:
        """From the first arrival to the last end."""
        if not self.records:
            return 0.0
        return max(r.end_s for r in self.records) - min(r.arrival_s for r in self.records)

    @property
    def errors(self) -> int:
        """Queries that failed or timed out."""
        return sum(not r.ok for r in self.records)

    @property
    def known_sources(self) -> dict[str, int]:
        """How many queries each latency source served (empty if the policy read none)."""
        out: dict[str, int] = {}
        for r in self.records:
            if r.known_source:
                out[r.known_source] = out.get(r.known_source, 0) + 1
        return out

    def figures(self) -> dict[str, float]:
        """Mean, median, p95 and makespan."""
        return {"mean_s": self.mean_s, "p50_s": self.p50_s, "p95_s": self.p95_s, "makespan_s": self.makespan_s}

    def to_json(self) -> dict[str, Any]:
        """``policy``, ``mode``, the figures, ``errors``, ``meta`` and ``queries`` (per record)."""
        return {"policy": self.policy, "mode": self.mode, **self.figures(), "errors": self.errors,
                "meta": self.meta, "queries": [r.to_json() for r in sorted(self.records, key=lambda r: r.idx)]}


def per_query_errors(sim: ScheduleResult, real: ScheduleResult) -> list[float]:
    """|sim - real| / real completion time per query present in both (matched by ``idx``)."""
    real_by = {r.idx: r for r in real.records}
    return [abs(s.completion_s - real_by[s.idx].completion_s) / real_by[s.idx].completion_s
            for s in sim.records if s.idx in real_by and real_by[s.idx].completion_s > 0]


def compare(sim: ScheduleResult, real: ScheduleResult) -> dict[str, float]:
    """How far simulated completion times are from real ones on the same stream.

    ``per_query_mape``: mean |sim - real| / real over queries (matched by ``idx``), and
    its ``per_query_median`` and ``per_query_p90``; ``mean_err`` / ``p95_err`` /
    ``makespan_err``: relative error of each figure.

    >>> a = ScheduleResult("x", "sim", [QueryRecord(0, "w", "q", "d", 0, 0, 1.1, 1, 0)])
    >>> b = ScheduleResult("x", "real", [QueryRecord(0, "w", "q", "d", 0, 0, 1.0, 1, 0)])
    >>> round(compare(a, b)["per_query_mape"], 3), round(compare(a, b)["per_query_p90"], 3)
    (0.1, 0.1)
    """
    errs = per_query_errors(sim, real)

    def rel(a: float, b: float) -> float:
        return (a - b) / b if b else float("nan")

    return {
        "per_query_mape": sum(errs) / len(errs) if errs else float("nan"),
        "per_query_median": percentile(errs, 50),
        "per_query_p90": percentile(errs, 90),
        "mean_err": rel(sim.mean_s, real.mean_s),
        "p95_err": rel(sim.p95_s, real.p95_s),
        "makespan_err": rel(sim.makespan_s, real.makespan_s),
    }
