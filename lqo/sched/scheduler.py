"""``Scheduler``: run a query stream for real under a policy, or simulate it.

>>> from lqo.sched import Scheduler, make_stream
>>> from lqo.workloads.workload import Workload
>>> wl = Workload.load("ws/tpch-sf1")                                         # doctest: +SKIP
>>> sched = Scheduler(policy="oracle", workers=2, profile="prof.duckdb")       # doctest: +SKIP
>>> stream = sched.make_stream([wl], n=50, arrivals="util:0.7", seed=3)        # doctest: +SKIP
>>> real = sched.run(stream); sim = sched.simulate(stream)                     # doctest: +SKIP
>>> real.mean_s, real.p95_s, sched.compare(sim, real)["per_query_mape"]        # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from lqo.engine.settings import NO_MODE
from lqo.errors import LqoError, MissingFileError
from lqo.sched.jobs import Job, build_jobs
from lqo.sched.policies import POLICIES, get_policy
from lqo.sched.policy import Policy, PolicyError
from lqo.sched.result import QueryRecord, ScheduleResult, compare
from lqo.sched.simulator import SimConfig, calibrate, simulate
from lqo.sched.stream import Stream, make_stream, parse_arrivals, rate_for_utilisation
from lqo.sched.thread_profile import ThreadProfile
from lqo.sched.workers import Workers
from lqo.workloads.workload import Workload

if TYPE_CHECKING:
    import duckdb

PLANS = ("native", "optimized")


def load_optimizer(path: str | os.PathLike) -> Any:
    """The optimizer's model at ``path`` via ``lqo.optimizer.Optimizer.load``."""
    if not Path(path).exists():
        raise MissingFileError(f"optimizer model not found: {path}")
    try:
        from lqo.optimizer import Optimizer
    except ImportError as exc:
        raise LqoError(f"cannot load optimizer model {path}: lqo.optimizer is unavailable ({exc})") from None
    return Optimizer.load(path)


class Scheduler:
    """Schedules streams with one policy on ``workers`` worker processes (see module docs).

    ``policy``: a name from ``POLICIES`` or a ``Policy``. ``profile``: a ``ThreadProfile``
    or profile file path(s), needed by ``oracle``, ``learned`` (measured latencies),
    ``simulate`` and ``util:`` arrivals. ``model``: the optimizer (an object with
    ``predict_latency_ms``, or a model path loaded lazily), needed by ``sjf-model`` and
    ``plan='optimized'``. ``scheduler_model``: the learned policy's checkpoint.
    ``cores`` defaults to this machine's; ``timeout_s`` caps each real query.
    ``interference`` overrides the profile's calibrated simulator value; ``warmup`` makes
    each worker read every table before the stream starts (as the profile was measured).
    ``knowledge``: the latencies policies that read ``known`` (``sjf-known``, ``learned``)
    may use (``knowledge.LatencyKnowledge``); default: built from the profile over the
    stream's queries, plus ``book`` (a tuned model's plan book) where given.
    """

    def __init__(
        self,
        policy: str | Policy = "fifo",
        workers: int = 2,
        cores: int | None = None,
        profile: ThreadProfile | str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        model: Any = None,
        scheduler_model: str | os.PathLike | None = None,
        plan: str = "native",
        timeout_s: float | None = 300.0,
        interference: float | None = None,
        warmup: bool = True,
        knowledge: Any = None,
        book: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise LqoError(f"workers must be a positive integer, not {workers!r}")
        if plan not in PLANS:
            raise LqoError(f"unknown plan {plan!r} (choose from {', '.join(PLANS)})")
        if timeout_s is not None and not timeout_s > 0:
            raise LqoError("timeout must be > 0 seconds")
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise PolicyError(f"unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
            if policy == "sjf-model" and model is None:
                raise PolicyError("policy 'sjf-model' needs the optimizer's model: pass --model PATH")
            policy = get_policy(policy, str(scheduler_model) if scheduler_model else None)
        if plan == "optimized" and model is None:
            raise LqoError("plan 'optimized' needs the optimizer's model: pass --model PATH")
        if isinstance(model, (str, os.PathLike)) and not Path(model).exists():
            raise MissingFileError(f"optimizer model not found: {model}")
        self.policy = policy
        self.workers = workers
        self.cores = cores or os.cpu_count() or 1
        self.plan = plan
        self.timeout_s = timeout_s
        self.warmup = warmup
        self.knowledge = knowledge
        self.book = str(book) if book is not None else None
        self._model = model
        if profile is None or isinstance(profile, ThreadProfile):
            self.profile = profile
        else:
            self.profile = ThreadProfile.load(profile)
        if interference is None:
            interference = self.profile.interference if self.profile and self.profile.interference is not None else 0.0
        prof = self.profile
        self.sim_config = SimConfig(self.cores, float(interference), (prof and prof.scale) or 1.0,
                                    (prof and prof.oversubscription) or 0.0)
        if "lat" in policy.needs and self.profile is None:
            raise PolicyError(f"policy {policy.name!r} needs measured latencies: run `lqo profile-threads` "
                              "and pass the profile (--profile)")

    @property
    def model(self) -> Any:
        """The optimizer model, loaded on first use."""
        if isinstance(self._model, (str, os.PathLike)):
            self._model = load_optimizer(self._model)
        return self._model

    # ----- streams ---------------------------------------------------------------------
    def make_stream(self, workloads: Workload | Sequence[Workload], n: int | None = None,
                    arrivals: str = "batch", seed: int = 0) -> Stream:
        """``stream.make_stream``, resolving ``util:U`` with this scheduler's profile."""
        arr = parse_arrivals(arrivals)
        rate = None
        if arr.kind == "util" and arr.util is not None:
            if self.profile is None:
                raise LqoError(f"arrivals {arrivals!r} need a thread profile (--profile)")
            probe = make_stream(workloads, None, "batch", seed)
            jobs = build_jobs(probe, {"lat"}, self.profile)
            rate = rate_for_utilisation(arr.util, sum(j.f.latency_s(1) for j in jobs) / len(jobs), self.cores)
        return make_stream(workloads, n, arr, seed, rate)

    def _planned(self, stream: Stream) -> tuple[Stream, float]:
        """The stream with the optimizer's decisions: each query carries its decision's
        ``sql`` (as ``run_sql``), ``rules`` (``Optimized.rules``: every optimizer rule
        it runs with disabled, a forced tree's and a setting arm's alike) and ``settings``
        (``Optimized.settings``: a setting arm's operator settings). Planning
        happens before the stream starts, once per distinct query; its total ms is
        returned."""
        if self.plan == "native":
            return stream, 0.0
        from lqo.engine.db import connect_read_only

        model, t0 = self.model, time.perf_counter()
        cons: dict[str, duckdb.DuckDBPyConnection] = {}
        done: dict[str, tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]] = {}
        try:
            out = []
            for q in stream:
                if q.query_key not in done:
                    con = cons.get(q.database) or cons.setdefault(q.database, connect_read_only(q.database))
                    res = model.optimize(q.sql, con)
                    done[q.query_key] = (res.sql, tuple(res.rules), tuple(res.settings))
                sql, rules, settings = done[q.query_key]
                out.append(replace(q, run_sql=sql if sql != q.sql else None, rules=rules, settings=settings))
        finally:
            for con in cons.values():
                con.close()
        return Stream(out, stream.arrivals, stream.seed, dict(stream.meta)), (time.perf_counter() - t0) * 1000.0

    def jobs(self, stream: Stream, extra_needs: Sequence[str] = ()) -> list[Job]:
        """The stream's jobs with the features this scheduler's policy reads."""
        needs = set(self.policy.needs) | set(extra_needs)
        if "known" in needs and self._model is not None:
            needs.add("pred")
        model = self.model if "pred" in needs else None
        knowledge = self.knowledge
        if "known" in needs and knowledge is None:
            from lqo.sched.jobs import build_knowledge

            knowledge = build_knowledge(stream, self.profile, self.book)
        return build_jobs(stream, needs, self.profile, model, knowledge)

    # ----- running ---------------------------------------------------------------------
    def run(self, stream: Stream, on_done: Callable[[QueryRecord], None] | None = None) -> ScheduleResult:
        """Run ``stream`` on real worker processes; Ctrl-C stops them and re-raises."""
        stream, planning_ms = self._planned(stream)
        jobs = self.jobs(stream)
        modes = sorted({q.mode for q in stream} | {NO_MODE})  # one shared worker per mode
        with Workers(stream.databases, self.workers, self.cores, self.timeout_s,
                      shared=self.policy.shared, modes=modes, warmup=self.warmup) as ex:
            result = ex.run(jobs, self.policy, on_done)
        result.meta.update(self._meta(stream), planning_ms=round(planning_ms, 3))
        return result

    def simulate(self, stream: Stream) -> ScheduleResult:
        """Simulate ``stream`` with the profile's latencies (no query is executed)."""
        if self.profile is None:
            raise LqoError("simulation needs a thread profile (run `lqo profile-threads`, pass --profile)")
        result = simulate(self.jobs(stream, ["lat"]), self.policy, self.workers, self.sim_config)
        result.meta.update(self._meta(stream))
        return result

    def _meta(self, stream: Stream) -> dict[str, Any]:
        return {"workers": self.workers, "cores": self.cores, "arrivals": stream.arrivals, "seed": stream.seed,
                "queries": len(stream), "plan": self.plan, "rate": stream.meta.get("rate"),
                "interference": self.sim_config.interference, "scale": self.sim_config.scale,
                "oversubscription": self.sim_config.oversubscription}

    @staticmethod
    def compare(sim: ScheduleResult, real: ScheduleResult) -> dict[str, float]:
        """Simulated vs real completion times on the same stream (``result.compare``)."""
        return compare(sim, real)

    def calibrate(self, streams: Sequence[Stream], policies: Sequence[str | Policy] | None = None,
                  on_result: Callable[[ScheduleResult], None] | None = None) -> tuple[SimConfig, float, list[ScheduleResult]]:
        """Run ``streams`` for real under ``policies`` and fit the simulator's scale,
        interference and oversubscription (``simulator.calibrate``). Default policies:
        ``fifo`` (side by side, baseline threads), ``all`` (everything shared) and the
        oracle's order with every worker at 2 threads (``policies.wide_oracle``): the
        three regimes the policies run in.

        Returns (the fitted ``SimConfig``, its median per-query error, the real results).
        """
        if self.profile is None:
            raise LqoError("calibration needs a thread profile")
        if policies is None:
            from lqo.sched.policies import wide_oracle

            policies = ["fifo", "all", wide_oracle(2, 2 * self.workers)]
        runs, results = [], []
        for stream in streams:
            for name in policies:
                sched = Scheduler(name, self.workers, self.cores, self.profile, timeout_s=self.timeout_s)
                real = sched.run(stream)
                results.append(real)
                if on_result is not None:
                    on_result(real)
                runs.append((sched.jobs(stream, ["lat"]), sched.policy, self.workers, real))
        config, err = calibrate(runs, self.cores)
        return config, err, results
