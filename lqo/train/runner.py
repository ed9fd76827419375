"""Running training queries' plans: native and forced runs, recorded in the experience store.

:class:`TrainingRunner` is what the trainer (:mod:`lqo.train.trainer`) executes through:
each query's native latency (measured once, its result's fingerprint the reference),
forced plans under a timeout derived from the best latency known, wrong results marked
in the store, and the bootstrap's first plans of a query.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from lqo.engine.failures import error_line
from lqo.engine.harness import Harness
from lqo.engine.run_result import median_latency
from lqo.store.experience import ExperienceStore
from lqo.train.recipe import Recipe
from lqo.train.samples import Sample
from lqo.trees.plan import Plan
from lqo.trees.query import PreparedQuery
from lqo.workloads.workload import Query, Workload


class TrainingRunner:
    """Executes and records plans of training queries; knows their best latencies."""

    def __init__(self, con: Any, store: ExperienceStore, workload: Workload, recipe: Recipe,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.con, self.store, self.workload, self.recipe = con, store, workload, recipe
        self.log = log
        self.harness = Harness(con)
        # Queries whose native run failed (conversion error, out of memory, ...): their
        # runs are recorded with the error, and they are left out of training.
        self.failed: dict[str, str] = {}
        self.outcome = ""  # of the last run_plan: "ok", "timeout", "error", "wrong"
        self._native: dict[str, tuple[float, str | None]] = {}
        self._best: dict[str, float] = {}
        self._tried: set[tuple[str, Plan]] = set()

    def _qk(self, q: Query) -> str:
        return self.store.add_query(q.sql, str(self.workload.database), self.workload.name, q.id, q.template)

    def native_ms(self, q: Query) -> float:
        """The query's median native latency (ms), measured once (a warm-up and three
        runs, recorded); a failing query is noted in ``failed``."""
        if q.id not in self._native:
            qk = self._qk(q)
            pk = self.store.add_plan(qk, "native", None, None)
            self.harness.run(q.sql, profile=False)  # warm-up
            runs = [self.harness.run(q.sql, profile=(i == 0)) for i in range(3)]
            self.store.record_runs([(pk, r) for r in runs])
            bad = next((r for r in runs if r.error is not None), None)
            if bad is not None:
                self.failed[q.id] = error_line(bad.error)
                self.log(f"query {q.id}: native run failed, left out of training: {self.failed[q.id]}")
            ms = median_latency(runs) or 0.0
            self._native[q.id] = (ms, runs[0].fingerprint)
            self._best[q.id] = min(self._best.get(q.id, ms), ms)
        return self._native[q.id][0]

    def timeout_ms(self, q: Query) -> float:
        """The timeout of a forced run: ``factor`` x the best latency known, at least ``min_s``."""
        t = self.recipe.timeouts
        return max(t.min_s * 1000, t.factor * self._best.get(q.id, self.native_ms(q)))

    def tried(self, q: Query, plan: Plan) -> bool:
        """Whether ``plan`` of ``q`` was run (or found in experience) already."""
        return (q.id, plan) in self._tried

    def run_plan(self, q: Query, pq: PreparedQuery, plan: Plan, kind: str) -> float | None:
        """Run a forced plan once; its latency, or None on timeout/wrong result/error."""
        self.native_ms(q)
        reference = self._native[q.id][1]
        sql = pq.render(plan)
        qk = self._qk(q)
        pk = self.store.add_plan(qk, kind, plan.to_json(), sql)
        self._tried.add((q.id, plan))
        if self.store.is_wrong(pk):
            self.outcome = "wrong"
            return None
        r = self.harness.run(sql, forced=True, timeout_s=self.timeout_ms(q) / 1000, profile=True)
        self.store.record_run(pk, r)
        if not r.ok:
            self.outcome = "timeout" if r.timed_out else "error"
            return None
        if r.fingerprint != reference:
            self.store.mark_wrong(pk)
            self.outcome = "wrong"
            return None
        self.outcome = "ok"
        self._best[q.id] = min(self._best[q.id], r.latency_ms)
        return r.latency_ms

    def bootstrap(self, q: Query, usable: PreparedQuery | None, rng: random.Random,
                  known: list[Sample], seeds: Sequence[Plan] = ()) -> None:
        """Native and its forced tree, ``seeds`` not yet run, then random plans up to
        ``bootstrap_plans`` (plans already known count)."""
        self.native_ms(q)
        if usable is None or q.id in self.failed:
            return
        for s in known:
            self._tried.add((q.id, s.plan))
            if not s.timed_out:
                self._best[q.id] = min(self._best[q.id], s.latency_ms)
        seeds = [p for p in seeds if p != usable.native_plan and not self.tried(q, p)]
        missing = self.recipe.exploration.bootstrap_plans - len(known) - len(seeds)
        if missing <= 0 and not seeds:
            return
        plans = [usable.native_plan, *seeds] + usable.random_plans(max(0, missing), rng)
        for plan in plans:
            if not self.tried(q, plan):
                kind = "forced_native" if plan == usable.native_plan else "star" if plan in seeds else "random"
                self.run_plan(q, usable, plan, kind)
