"""What a scheduler may know of a query's latency before it runs, and where it came from.

A scheduling policy is only as good as its idea of how long each waiting query takes.
``LatencyKnowledge`` answers with the best source it has, in this order:

1. ``measured``: this very query text on this database was profiled (a recurring query);
2. ``template``: other instances of its template were (median of their latencies; the
   template is :func:`~lqo.book.template.template_key`, so new constants still match);
3. ``book``: the plan book of a tuned model measured the template's native latency
   (scaled from the book's thread count to one thread by the profile's median speed-up);
4. ``predicted``: the optimizer model's predicted latency;
5. ``estimate``: DuckDB's estimated cardinalities (``jobs.estimated_cost``) through a
   log-log line fitted on the known queries; the least informed.

All figures are one-thread milliseconds, as in a thread profile. The knowledge is built
from the queries lqo has run (``jobs.build_knowledge``), so a policy judged on held-out
queries sees exactly what it would see in production: the scheduler benchmark builds it
from the training queries alone.

>>> k = LatencyKnowledge(measured={"a": 100.0}, templates={("db", "t"): 40.0})
>>> k.lookup("a", ("db", "t")), k.lookup("b", ("db", "t")), k.lookup("b", ("db", "u"), est_cost=1e6)
((100.0, 'measured'), (40.0, 'template'), (None, None))
>>> fit = fit_estimate_line([(1e3, 10.0), (1e5, 100.0), (1e7, 1000.0)])
>>> round(LatencyKnowledge(est_line=fit).lookup("b", ("db", "u"), est_cost=1e5)[0], 1)
100.0
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from lqo.book.template import template_key

SOURCES: tuple[str, ...] = ("measured", "template", "book", "predicted", "estimate")
TemplateId = tuple[str, str]  # (database path, template key)


def template_id(sql: str, database: str) -> TemplateId:
    """The knowledge's key of a query's template on its database."""
    return (str(database), template_key(sql).key)


def fit_estimate_line(points: Iterable[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``ln(ms) = a + b ln(1 + est)`` over (estimated cost, ms) points;
    None with fewer than 3 usable points or no spread in the estimates. The slope is
    kept positive: a larger estimate never predicts a shorter query."""
    xs, ys = [], []
    for est, ms in points:
        if est is not None and est >= 0 and ms is not None and ms > 0 and math.isfinite(est):
            xs.append(math.log1p(est))
            ys.append(math.log(ms))
    if len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12:
        return None
    b = max(1e-3, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx)
    return (my - b * mx, b)


@dataclass(frozen=True)
class LatencyKnowledge:
    """One-thread latencies (ms) lqo knows, by query key and by template (see module docs)."""

    measured: Mapping[str, float] = field(default_factory=dict)
    templates: Mapping[TemplateId, float] = field(default_factory=dict)
    book: Mapping[TemplateId, float] = field(default_factory=dict)
    est_line: tuple[float, float] | None = None
    speedups: Mapping[str | TemplateId, float] = field(default_factory=dict)  # by query key and template

    def speedup(self, qkey: str, tid: TemplateId) -> float | None:
        """The query's (else its template's) measured speed-up at its best thread count
        over one thread; None when neither was measured."""
        return self.speedups.get(qkey, self.speedups.get(tid))

    def lookup(self, qkey: str, tid: TemplateId, pred_ms: float | None = None,
               est_cost: float | None = None) -> tuple[float | None, str | None]:
        """(ms, source) from the best source that knows the query; (None, None) if none."""
        if qkey in self.measured:
            return self.measured[qkey], "measured"
        if tid in self.templates:
            return self.templates[tid], "template"
        if tid in self.book:
            return self.book[tid], "book"
        if pred_ms is not None and pred_ms > 0:
            return float(pred_ms), "predicted"
        if self.est_line is not None and est_cost is not None and math.isfinite(est_cost):
            a, b = self.est_line
            return math.exp(a + b * math.log1p(max(0.0, est_cost))), "estimate"
        return None, None

    def without(self, qkey: str, tid: TemplateId,
                samples: Mapping[TemplateId, Mapping[str, tuple[float, float | None]]]) -> "LatencyKnowledge":
        """This knowledge as it was before ``qkey`` was measured: the query's own figure
        gone, its template's median over the other instances in ``samples``
        (``template_samples``) only. Training uses it so that a policy learns from
        latencies as noisy as those it will get for a new instance.

        >>> rows = [("a", ("d", "t"), 10.0, None), ("b", ("d", "t"), 30.0, None)]
        >>> k = LatencyKnowledge.from_latencies(rows)
        >>> k.without("a", ("d", "t"), template_samples(rows)).lookup("a", ("d", "t"))
        (30.0, 'template')
        """
        measured = {k: v for k, v in self.measured.items() if k != qkey}
        templates = dict(self.templates)
        speedups = {k: v for k, v in self.speedups.items() if k != qkey}
        rest = [v for k, v in samples.get(tid, {}).items() if k != qkey]
        if rest:
            templates[tid] = statistics.median(ms for ms, _ in rest)
            ups = [up for _, up in rest if up is not None]
            if ups:
                speedups[tid] = statistics.median(ups)
        else:
            templates.pop(tid, None)
            speedups.pop(tid, None)
        return LatencyKnowledge(measured, templates, self.book, self.est_line, speedups)

    @classmethod
    def from_latencies(cls, rows: Iterable[Row], book: Mapping[TemplateId, float] | None = None) -> "LatencyKnowledge":
        """Knowledge from ``Row``s of queries lqo has run; the estimate line is fitted on
        the same rows."""
        rows = [_row(r) for r in rows]
        measured = {r[0]: r[2] for r in rows}
        speedups: dict[str | TemplateId, float] = {r[0]: r[4] for r in rows if r[4] is not None}
        templates: dict[TemplateId, float] = {}
        ups: dict[str | TemplateId, float] = {}
        for tid, group in template_samples(rows).items():
            templates[tid] = statistics.median(ms for ms, _ in group.values())
            known = [up for _, up in group.values() if up is not None]
            if known:
                ups[tid] = statistics.median(known)
        speedups.update(ups)
        line = fit_estimate_line((r[3], r[2]) for r in rows if r[3] is not None)
        return cls(measured, templates, dict(book or {}), line, speedups)


# (query key, template id, one-thread ms, estimated cost or None[, speed-up or None])
Row = tuple


def _row(r: Row) -> tuple:
    return tuple(r) + (None,) * (5 - len(r))


def template_samples(rows: Iterable[Row]) -> dict[TemplateId, dict[str, tuple[float, float | None]]]:
    """Per template, each distinct query's (one-thread ms, speed-up); identical instances
    count once (for ``from_latencies`` and ``LatencyKnowledge.without``)."""
    out: dict[TemplateId, dict[str, tuple[float, float | None]]] = {}
    for r in rows:
        qk, tid, ms, _, up = _row(r)
        out.setdefault(tid, {})[qk] = (ms, up)
    return out


def book_latencies(book: str, profile: Any = None) -> dict[TemplateId, float]:
    """Per template of a plan book, the median native latency of its tuning instances,
    scaled to one thread by the profile's median speed-up (the book measured with
    DuckDB's default thread count)."""
    from lqo.book.book import PlanBook
    from lqo.workloads.workload import Workload

    pb = PlanBook.load(book)
    workload = pb.meta.get("workload")
    if not workload:
        return {}
    database = str(Workload.load(workload).database)
    scale = 1.0
    if profile is not None and len(profile):
        ups = [lat[1] / lat[max(lat)] for lat in profile.latencies.values() if 1 in lat and max(lat) > 1]
        scale = statistics.median(ups) if ups else 1.0
    return {(database, e.key): statistics.median(e.native_ms.values()) * scale
            for e in pb.entries.values() if e.native_ms}
