"""Exploration: how much faster could each query run with another join tree?

For every query: DuckDB's native plan, the native tree forced, and N distinct random
cross-product-free trees (one block changed at a time), each capped at
``timeout_factor`` x native latency. Every run goes to the experience store. The best
forced plan is then re-measured against native in interleaved repeats, because on these
noisy machines half of the single-run wins do not reproduce.

>>> report = explore_workload(Workload.load("plans/tpch-sf1"), ExploreConfig(plans=20))  # doctest: +SKIP
>>> report.totals["best_ms"] / report.totals["native_ms"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import duckdb

from lqo.engine.failures import error_line
from lqo.engine.harness import Harness, run_interleaved
from lqo.engine.interrupt import is_user_interrupt
from lqo.engine.run_result import RunResult, median_latency
from lqo.model_dir import workload_store
from lqo.sql.catalog import Catalog
from lqo.store.experience import ExperienceStore
from lqo.store.journal import Journal, replay
from lqo.store.keys import query_key
from lqo.store.recorder import RunRecorder
from lqo.trees.query import PreparedQuery, prepare_named
from lqo.workloads.workload import Query, Workload

if TYPE_CHECKING:
    from lqo.distributed.pool import ExecutorPool


@dataclass
class ExploreConfig:
    """Knobs of ``lqo explore``."""

    plans: int = 20  # random trees per query besides native and forced native
    timeout_factor: float = 3.0  # a forced plan may run this many times native latency
    min_timeout_s: float = 0.2  # floor, so tiny queries are not cut by timer jitter
    native_repeats: int = 3  # native runs (after one warm-up) to set the baseline
    confirm: int = 5  # interleaved re-measurement rounds of the best plan vs native
    seed: int = 0

    def rng(self, query_id: str) -> random.Random:
        """The random trees of a query depend on the seed and the query alone, not on
        which queries ran before it: explored in any order or on any node, a query
        gets the same trees."""
        return random.Random(f"{self.seed}/{query_id}")


@dataclass
class QueryResult:
    """What exploring one query found (times in ms; medians)."""

    id: str
    template: str
    native_ms: float
    best_ms: float  # best known plan, native included: never above native_ms
    ratio: float
    best_forced_ms: float | None = None  # confirmed median of the best forced plan
    forced_native_ms: float | None = None
    best_plan: str | None = None
    plans_tried: int = 0
    timeouts: int = 0
    wrong: int = 0
    reason: str | None = None  # why the query was kept native, if it was
    error: str | None = None  # why its native run failed (one line), if it did: nothing else was tried


@dataclass
class ExploreReport:
    """Every query explored, with the time it took."""

    queries: list[QueryResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    nodes: list[dict] | None = None  # per node (``--ray``): what it ran; None when sequential

    @property
    def totals(self) -> dict:
        """Totals: native and best time, the headroom, wrong results and timeouts."""
        native = sum(q.native_ms for q in self.queries)
        best = sum(q.best_ms for q in self.queries)
        # A query whose native run failed has no latency: it counts as failed, not as 1.0x.
        ratios = [q.ratio for q in self.queries if q.ratio > 0 and q.error is None]
        return {
            "queries": len(self.queries),
            "failed": sum(1 for q in self.queries if q.error is not None),
            "native_ms": round(native, 3),
            "best_ms": round(best, 3),
            "ratio": round(best / native, 4) if native else None,
            "geomean_ratio": round(statistics.geometric_mean(ratios), 4) if ratios else None,
            "queries_le_0_8": sum(1 for q in self.queries if q.ratio <= 0.8),
            "wrong_results": sum(q.wrong for q in self.queries),
            "timeouts": sum(q.timeouts for q in self.queries),
            "not_forceable": sum(1 for q in self.queries if q.reason and q.error is None),
            "elapsed_s": round(self.elapsed_s, 1),
            "interrupted": self.interrupted,
        }

    def to_json(self) -> dict:
        """``lqo explore --json``: the queries, the totals and (``--ray``) the nodes."""
        out = {"queries": [asdict(q) for q in self.queries], "totals": self.totals}
        if self.nodes is not None:
            out["nodes"] = self.nodes
        return out


def explore_workload(
    workload: Workload,
    config: ExploreConfig | None = None,
    store_path: str | Path | None = None,
    on_query: Callable[[QueryResult], None] | None = None,
    progress: Callable | None = None,
    pool: "ExecutorPool | None" = None,
) -> ExploreReport:
    """Explore every query of ``workload``; Ctrl-C stops cleanly with what was done kept.

    With ``pool`` (:class:`lqo.distributed.ExecutorPool`) each query is one task on a
    remote executor (native runs, candidates and the interleaved re-measurement on one
    node); this process alone writes the store, each task in one transaction."""
    config = config or ExploreConfig()
    report = ExploreReport()
    start = time.perf_counter()
    con = workload.connect()
    catalog = Catalog.from_connection(con)
    queries = list(workload)
    try:
        # Bind every query first: a bad one fails the command before anything is written.
        prepared = {q.id: prepare_named(f"{q.id} ({q.path})", q.sql, con, catalog) for q in queries}
        store = ExperienceStore.open(store_path or workload_store(workload.root))  # BusyError if another writer has it
    except BaseException:
        con.close()
        raise
    with store:
        try:
            if pool is not None:
                _explore_on_pool(pool, store, workload, queries, config, report, on_query, progress)
            else:
                for query in progress(queries) if progress else queries:
                    result = explore_query(con, store, workload, query, prepared[query.id], config,
                                           config.rng(query.id))
                    report.queries.append(result)
                    if on_query:
                        on_query(result)
        except (KeyboardInterrupt, duckdb.InterruptException, RuntimeError) as err:
            if not is_user_interrupt(err) and not isinstance(err, duckdb.InterruptException):
                raise
            report.interrupted = True
        finally:
            con.close()
            if pool is not None:
                order = {q.id: i for i, q in enumerate(queries)}
                report.queries.sort(key=lambda r: order[r.id])  # tasks finish in any order
                report.nodes = pool.summary()
    report.elapsed_s = time.perf_counter() - start
    return report


def _explore_on_pool(pool: Any, store: ExperienceStore, workload: Workload, queries: list[Query], config: ExploreConfig,
                     report: ExploreReport, on_query: Any, progress: Any) -> None:
    """One task per query, any node; results recorded as they arrive (one transaction each)."""
    database = str(workload.database)
    by_task = {}
    for q in queries:
        # The task id is the idempotency key of what it records: session, step, query.
        task_id = f"{store.session}/explore/{q.id}"
        by_task[task_id] = q
        wrong = store.wrong_plan_keys(query_key(q.sql, database))
        pool.submit(task_id, explore_task, workload, q, config, wrong)
    outcomes = pool.results()  # sized: the progress bar counts tasks over all nodes
    for out in progress(outcomes) if progress else outcomes:
        if out.error is not None:
            # The executor died again on the retry: the query is reported failed, the others go on.
            q = by_task[out.task_id]
            result = QueryResult(q.id, q.template, 0.0, 0.0, 0.0, error=out.error, reason=f"not explored: {out.error}")
        else:
            result, journal = out.value
            replay(store, journal, out.task_id, out.node, out.slot, out.attempts)
        report.queries.append(result)
        if on_query:
            on_query(result)


def explore_task(con: duckdb.DuckDBPyConnection, catalog: Catalog, workload: Workload, query: Query,
                 config: ExploreConfig, wrong: set[str]) -> tuple[QueryResult, Journal]:
    """Explore one query on this connection (a remote executor's), writing into a Journal
    the driver replays: the same measuring code as the sequential path."""
    pq = prepare_named(f"{query.id} ({query.path})", query.sql, con, catalog)
    journal = Journal(wrong=set(wrong))
    result = explore_query(con, journal, workload, query, pq, config, config.rng(query.id))
    return result, journal


def explore_query(
    con: duckdb.DuckDBPyConnection,
    store: RunRecorder,
    workload: Workload,
    query: Query,
    pq: PreparedQuery,
    config: ExploreConfig,
    rng: random.Random,
) -> QueryResult:
    """Native runs, then forced native plus ``config.plans`` random trees (each once, cut
    at ``timeout_factor`` x native), then the fastest re-measured against native,
    interleaved. Every run goes to ``store``."""
    harness = Harness(con)
    qk = store.add_query(query.sql, str(workload.database), workload.name, query.id, query.template)
    native_key = store.add_plan(qk, "native", None, None)
    reason = pq.reason
    harness.run(query.sql, profile=False)  # warm-up: caches, not recorded
    native_runs = [harness.run(query.sql, profile=(i == 0)) for i in range(config.native_repeats)]
    store.record_runs([(native_key, r) for r in native_runs])
    native_ms = median_latency(native_runs) or 0.0
    result = QueryResult(query.id, query.template, native_ms, native_ms, 1.0, reason=reason)
    failed = next((r for r in native_runs if r.error is not None), None)
    if failed is not None:
        # Recorded with its error above; the query is reported failed, the others go on.
        result.error = error_line(failed.error)
        result.reason = f"native run failed: {result.error}"
        result.native_ms = result.best_ms = 0.0
        return result
    if reason is not None or any(not r.ok for r in native_runs):
        result.reason = reason or "native run failed"
        return result
    timeout_s = max(config.min_timeout_s, config.timeout_factor * native_ms / 1000.0)
    tried = _try_plans(harness, store, qk, pq, config, rng, timeout_s, native_runs[0].fingerprint, result)
    if tried:
        _confirm_best(con, store, query.sql, native_key, native_runs, tried, config.confirm, timeout_s, result)
    return result


def _try_plans(harness: Harness, store: RunRecorder, qk: str, pq: PreparedQuery, config: ExploreConfig,
               rng: random.Random, timeout_s: float, reference: str | None,
               result: QueryResult) -> list[tuple[float, str, str, object]]:
    """One forced run of native's tree and of each random tree: the ones that completed
    with native's result, as (ms, plan key, sql, plan); wrong ones are marked so."""
    candidates = [("forced_native", pq.native_plan)] + [("random", p) for p in pq.random_plans(config.plans, rng)]
    tried: list[tuple[float, str, str, object]] = []
    for kind, plan in candidates:
        sql = pq.render(plan)
        pk = store.add_plan(qk, kind, plan.to_json(), sql)
        if store.is_wrong(pk):
            continue
        run = harness.run(sql, forced=True, timeout_s=timeout_s, profile=True)
        store.record_run(pk, run)
        result.plans_tried += 1
        if run.timed_out:
            result.timeouts += 1
            continue
        if run.error is not None:
            continue
        if run.fingerprint != reference:
            store.mark_wrong(pk, f"fingerprint {run.fingerprint} differs from native {reference}")
            result.wrong += 1
            continue
        if kind == "forced_native":
            result.forced_native_ms = run.latency_ms
        tried.append((run.latency_ms, pk, sql, plan))
    return tried


def _confirm_best(con: duckdb.DuckDBPyConnection, store: RunRecorder, native_sql: str, native_key: str,
                  native_runs: list[RunResult], tried: list[tuple[float, str, str, object]], rounds: int,
                  timeout_s: float, result: QueryResult) -> None:
    """Re-measure the single-run winner against native, interleaved; the figures into ``result``."""
    _, pk, sql, plan = min(tried, key=lambda t: t[0])
    native_conf, best_conf = run_interleaved(
        con, [(native_sql, False), (sql, True)], repeats=rounds, warmup=0, timeout_s=timeout_s
    )
    store.record_runs([(native_key, r) for r in native_conf] + [(pk, r) for r in best_conf])
    wrong = _check_confirm(store, pk, best_conf, native_runs[0].fingerprint, result)
    native_ms = median_latency(native_runs + native_conf) or result.native_ms
    best_forced = median_latency(best_conf)
    result.native_ms = native_ms
    result.best_forced_ms = best_forced
    result.best_plan = str(plan)
    if not wrong and best_forced is not None and best_forced < native_ms and all(r.ok for r in best_conf):
        result.best_ms = best_forced
    else:
        result.best_ms = native_ms
    result.ratio = result.best_ms / native_ms if native_ms else 1.0


def _check_confirm(store: RunRecorder, pk: str, runs: list[RunResult], reference: Any, result: QueryResult) -> bool:
    for r in runs:
        if r.ok and r.fingerprint != reference:
            store.mark_wrong(pk, "fingerprint differs from native on re-run")
            result.wrong += 1
            return True
    return False
