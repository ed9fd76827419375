"""The training pool of the learned scheduler: jobs with the latencies a policy would know.

In the simulator a job runs for its *measured* latency (the thread profile: the truth),
but the policy must decide from what lqo knows before the query runs. Trained on the
truth, a policy meets noisier figures in production and ranks worse than a plain
shortest-job-first on the same figures. So every pool query gets two views:

- ``known``: leave-one-out knowledge, as for a new instance of a recurring template: its
  template's median over the *other* training instances (``knowledge.without``), else
  its estimate;
- ``estimate``: as for a query of a template never seen: DuckDB's estimated cost through
  the line fitted on the training queries.

Training streams draw each query's view at random (``estimate_share``), so one policy
learns to use good figures and not to over-trust poor ones.

>>> pool = training_pool(train_workloads, profile)          # doctest: +SKIP
>>> jobs = pool.draw(40, "util:0.7", cores=2, rng=random.Random(0), estimate_share=0.3)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any, Sequence

from lqo.errors import LqoError
from lqo.sched.jobs import Job, QueryFeatures, build_jobs, knowledge_rows
from lqo.sched.knowledge import LatencyKnowledge, template_samples
from lqo.sched.stream import arrival_times, make_stream, parse_arrivals, rate_for_utilisation


@dataclass
class TrainingPool:
    """``known[i]`` and ``estimate[i]`` are two views of the same query (see module docs)."""

    known: list[Job]
    estimate: list[Job]
    knowledge: LatencyKnowledge

    def __len__(self) -> int:
        return len(self.known)

    def draw(self, n: int, arrivals: str, cores: int, rng: random.Random, estimate_share: float = 0.0) -> list[Job]:
        """A random stream of ``n`` jobs (with replacement) under ``arrivals``."""
        return episode_jobs(self.known, n, arrivals, cores, rng, self.estimate, estimate_share)


def episode_jobs(pool: Sequence[Job], n: int, arrivals: str, cores: int, rng: random.Random,
                 alt: Sequence[Job] | None = None, alt_share: float = 0.0) -> list[Job]:
    """A random stream of ``n`` jobs drawn from ``pool`` (with replacement) under
    ``arrivals``; with probability ``alt_share`` a pick takes its view in ``alt`` instead."""
    arr = parse_arrivals(arrivals)
    idx = [rng.randrange(len(pool)) for _ in range(n)]
    picks = [alt[i] if alt is not None and alt_share > 0 and rng.random() < alt_share else pool[i] for i in idx]
    rate = None
    if arr.kind == "util" and arr.util is not None:
        rate = rate_for_utilisation(arr.util, sum(j.f.latency_s(1) for j in pool) / len(pool), cores)
    times = arrival_times(n, arr, rng, rate)
    return [Job(dataclasses.replace(j.q, idx=i, arrival_s=t), j.f) for i, (j, t) in enumerate(zip(picks, times))]


def training_pool(workloads: Sequence, profile: Any, seed: int = 0, graph: bool = True) -> TrainingPool:
    """Every query of ``workloads`` once, with plan graphs (if ``graph``), measured
    latencies and both views of what is known (one ``EXPLAIN`` per distinct query)."""
    stream = make_stream(list(workloads), None, "batch", seed)
    jobs = build_jobs(stream, {"graph", "lat", "est"} if graph else {"lat", "est"}, profile)
    if not jobs:
        raise LqoError("no training queries")
    rows = knowledge_rows(jobs)
    know = LatencyKnowledge.from_latencies(rows.values())
    samples = template_samples(rows.values())
    only_est = LatencyKnowledge(est_line=know.est_line)
    first = {j.q.query_key: j.f for j in reversed(jobs)}
    views: dict[str, tuple[QueryFeatures, QueryFeatures]] = {}
    for qk, (_, tid, _, est, _) in rows.items():
        f = first[qk]
        loo = know.without(qk, tid, samples)
        ms, src = loo.lookup(qk, tid, None, est)
        a = dataclasses.replace(f, known_ms=ms, known_source=src, known_speedup=loo.speedup(qk, tid))
        ms, src = only_est.lookup(qk, tid, None, est)
        b = dataclasses.replace(f, known_ms=ms, known_source=src, known_speedup=None)
        views[qk] = (a, b)
    fill = sorted(v[0].known_ms for v in views.values() if v[0].known_ms is not None)
    mid = fill[len(fill) // 2] if fill else 1000.0
    for a, b in views.values():
        for f in (a, b):
            if f.known_ms is None:
                f.known_ms, f.known_source = mid, "none"
    return TrainingPool([Job(j.q, views[j.q.query_key][0]) for j in jobs],
                        [Job(j.q, views[j.q.query_key][1]) for j in jobs], know)
