"""Compare lqo's plans with DuckDB's native optimizer on a workload.

For every query: plan it with the model (cold: parse, graph, EXPLAIN, search), then run
native, lqo's plan and the forced native tree interleaved with repeats. lqo's time
includes its planning time. A lqo plan whose result differs from native is counted as
wrong (it must never happen).

>>> report = compare_workload(workload, Optimizer.load("runs/tpcds"), CompareConfig(repeats=5))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from lqo.engine.failures import error_line
from lqo.engine.harness import run_interleaved
from lqo.engine.interrupt import is_user_interrupt
from lqo.engine.run_result import median_latency
from lqo.errors import LqoError
from lqo.optimizer import Optimizer
from lqo.triage import NOT_WORTH_PLANNING
from lqo.workloads.workload import Query, Workload


@dataclass
class CompareConfig:
    """How ``lqo compare`` measures: interleaved repeats, warm-up, timeout, what counts as a regression."""

    repeats: int = 5
    warmup: int = 1
    timeout_factor: float = 5.0  # lqo's plan may run this many times native before it is cut
    regression: float = 1.2  # a query slower than this ratio is a regression


@dataclass
class QueryComparison:
    """One query compared: native and lqo latencies (ms, medians), planning, the decision."""

    id: str
    template: str
    native_ms: float
    lqo_ms: float  # execution median + planning
    planning_ms: float  # cold: parse, graph, EXPLAIN, search
    ratio: float
    warm_planning_ms: float = 0.0  # the same text again: cached decision
    lqo_warm_ms: float = 0.0  # execution median + cached-plan look-up (a recurring query)
    forced_native_ms: float | None = None
    fallback: str | None = None
    chosen: str | None = None
    wrong: bool = False
    timed_out: bool = False
    source: str = "model"  # "book", "model" or "native" (see Optimized.source)
    # Why the query could not be compared (not planned, or its native run failed): it
    # is left out of every total and listed under "failed".
    error: str | None = None
    # Why lqo's plan failed while native ran (one line): counted at the timeout, listed.
    lqo_error: str | None = None


@dataclass
class CompareReport:
    """Every query compared, and the totals over them."""

    queries: list[QueryComparison] = field(default_factory=list)
    interrupted: bool = False
    regression: float = 1.2

    @property
    def totals(self) -> dict:
        """Totals over the queries that ran: ratio of sums, geometric mean, worst, regressions, planning."""
        qs = [q for q in self.queries if q.error is None]  # a failed query has no latencies
        native = sum(q.native_ms for q in qs)
        lqo = sum(q.lqo_ms for q in qs)
        planning = sorted(q.planning_ms for q in qs)
        warm = sorted(q.warm_planning_ms for q in qs)
        ratios = [q.ratio for q in qs if q.ratio > 0]
        warm_ratios = [q.lqo_warm_ms / q.native_ms for q in qs if q.native_ms > 0]
        return {
            "queries": len(qs),
            "failed": [q.id for q in self.queries if q.error is not None],
            "lqo_failed": [q.id for q in qs if q.lqo_error is not None],
            "native_ms": round(native, 3),
            "lqo_ms": round(lqo, 3),
            "ratio": round(lqo / native, 4) if native else None,
            "lqo_warm_ms": round(sum(q.lqo_warm_ms for q in qs), 3),
            "warm_ratio": round(sum(q.lqo_warm_ms for q in qs) / native, 4) if native else None,
            "warm_geomean_ratio": round(statistics.geometric_mean(warm_ratios), 4) if warm_ratios else None,
            "warm_worst_ratio": round(max(warm_ratios), 4) if warm_ratios else None,
            "geomean_ratio": round(statistics.geometric_mean(ratios), 4) if ratios else None,
            "worst_ratio": round(max(ratios), 4) if ratios else None,
            "regressions": [q.id for q in qs if q.ratio > self.regression],
            "forced": sum(1 for q in qs if q.fallback is None),
            # first-seen queries the optimizer's triage ran as written, without planning
            "not_planned": sum(1 for q in qs if (q.fallback or "").startswith(NOT_WORTH_PLANNING)),
            "planning_share": round(sum(planning) / native, 4) if native else None,
            "wrong_results": sum(q.wrong for q in qs),
            "planning_ms_median": round(statistics.median(planning), 3) if planning else None,
            "planning_ms_p99": round(_p99(planning), 3) if planning else None,
            "warm_planning_ms_median": round(statistics.median(warm), 4) if warm else None,
            "warm_planning_ms_p99": round(_p99(warm), 4) if warm else None,
            "interrupted": self.interrupted,
        }

    def to_json(self) -> dict:
        """``lqo compare --json``: the queries and the totals."""
        return {"queries": [asdict(q) for q in self.queries], "totals": self.totals}

    def write_csv(self, path: str | Path) -> None:
        """Write the per-query table to ``path``."""
        rows = [asdict(q) for q in self.queries]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["id"])
            w.writeheader()
            w.writerows(rows)


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, int(0.99 * (len(values) - 1) + 0.5))]


def compare_workload(workload: Workload, optimizer: Optimizer, config: CompareConfig | None = None,
                     queries: list[Query] | None = None, progress: Any = None) -> CompareReport:
    """Compare lqo with native on ``queries`` (default: all of ``workload``); Ctrl-C keeps what was compared."""
    config = config or CompareConfig()
    report = CompareReport(regression=config.regression)
    con = workload.connect()
    try:
        optimizer.check_schema(con)
        items = queries if queries is not None else list(workload)
        for q in (progress(items) if progress else items):
            report.queries.append(compare_query(con, optimizer, q, config))
    except (KeyboardInterrupt, RuntimeError) as err:
        if not is_user_interrupt(err):
            raise
        report.interrupted = True
    finally:
        con.close()
    return report


def compare_query(con: Any, optimizer: Optimizer, q: Query, config: CompareConfig) -> QueryComparison:
    """Plan ``q`` cold and warm, then run native, lqo's plan and native's forced tree interleaved."""
    optimizer.forget(q.sql)  # cold planning: what a first sight of the query costs
    try:
        res = optimizer.optimize(q.sql, con)
        warm_ms = optimizer.optimize(q.sql, con).planning_ms  # the recurring query: cached plan
        pq = optimizer.prepare(q.sql, con)
    except LqoError as err:  # e.g. a column the database lacks: this query fails, the others go on
        return QueryComparison(q.id, q.template, 0.0, 0.0, 0.0, 1.0, error=f"not planned: {err}")
    variants: list[tuple[str, bool] | tuple[str, bool, Sequence[str], Sequence[tuple[str, str]]]] = [(q.sql, False)]
    uses_lqo = res.forced or bool(res.disabled) or bool(res.settings)
    if uses_lqo:
        variants.append((res.sql, res.forced, res.disabled, res.settings))
    if pq.forceable:
        variants.append((pq.render(pq.native_plan), True))
    arm = ", ".join([*(f"{r} off" for r in res.disabled), *(f"{n}={v}" for n, v in res.settings)])
    chosen = str(res.chosen) if res.chosen else (f"arm: {arm}" if arm else None)
    first = run_interleaved(con, variants[:1], repeats=1, warmup=config.warmup)
    failed = next((r for r in first[0] if r.error is not None), None)
    if failed is None:
        native_probe = median_latency(first[0]) or 1.0
        timeout = max(1.0, config.timeout_factor * native_probe / 1000)
        results = run_interleaved(con, variants, repeats=config.repeats, warmup=0, timeout_s=timeout)
        native_runs = results[0]
        failed = next((r for r in native_runs if r.error is not None), None)
    if failed is not None:
        # The query fails as written (conversion error, out of memory, ...): nothing to
        # compare lqo's plan with. Not a latency of 1 ms, not a regression: failed.
        return QueryComparison(q.id, q.template, 0.0, 0.0, res.planning_ms, 1.0, warm_planning_ms=warm_ms,
                               fallback=res.fallback, chosen=chosen, source=res.source,
                               error=f"native run failed: {error_line(failed.error)}")
    native_ms = median_latency(native_runs) or native_probe
    reference = next((r.fingerprint for r in native_runs if r.ok), None)
    out = QueryComparison(q.id, q.template, native_ms, native_ms + res.planning_ms, res.planning_ms, 1.0,
                          warm_planning_ms=warm_ms, fallback=res.fallback, chosen=chosen, source=res.source)
    if uses_lqo:
        lqo_runs = results[1]
        out.timed_out = any(r.timed_out for r in lqo_runs)
        out.wrong = any(r.ok and r.fingerprint != reference for r in lqo_runs)
        lqo_failed = next((r for r in lqo_runs if r.error is not None), None)
        if lqo_failed is not None:  # native ran, lqo's plan did not: as bad as a timeout, and said so
            out.lqo_error = error_line(lqo_failed.error)
        out.lqo_ms = (median_latency(lqo_runs) or timeout * 1000) + res.planning_ms
    if pq.forceable:
        out.forced_native_ms = median_latency(results[-1])
    out.ratio = out.lqo_ms / native_ms if native_ms else 1.0
    out.lqo_warm_ms = out.lqo_ms - res.planning_ms + warm_ms
    return out
