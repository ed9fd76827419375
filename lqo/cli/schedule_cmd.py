"""``lqo schedule WORKLOAD... --policy P --arrivals A``: run a query stream for real under a policy."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from lqo.cli.options import add_model, add_seed, add_timeout
from lqo.cli.output import add_json_flag, emit
from lqo.errors import LqoError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "schedule",
        help="run a stream of queries on worker processes under a scheduling policy",
        description="Sample a seeded stream of --queries queries from WORKLOAD(s) (several workloads mix "
        "their databases), let them arrive as a batch or a Poisson process, run them for real on "
        "--workers worker processes (each opens the databases read-only with its own thread count) "
        "in the order and with the thread counts the policy chooses, and print mean, p50 and p95 "
        "completion time (end - arrival) and the makespan. With a thread profile the same stream is "
        "also simulated and the simulator's error reported.",
    )
    p.add_argument("workload", nargs="+", help="workload directory (with workload.toml); several mix their queries")
    p.add_argument("--policy", default="fifo",
                   help="learned | fifo | all | sjf-est | sjf-known | sjf-model | oracle (default fifo)")
    p.add_argument("--arrivals", default="batch",
                   help="batch | poisson:RATE (queries/s) | util:U (Poisson at utilisation U; needs a profile)")
    p.add_argument("--queries", type=int, help="stream length (default: every query once)")
    p.add_argument("--workers", type=int, help="worker processes (default: the number of cores)")
    p.add_argument("--cores", type=int, help="cores to schedule for (default: this machine's)")
    add_seed(p, "stream seed: which queries, arrival times (default 0)")
    add_model(p, "optimizer model (for sjf-model and --plan optimized)")
    p.add_argument("--scheduler-model", help="learned scheduler checkpoint (for --policy learned)")
    p.add_argument("--profile", action="append",
                   help="thread profile file(s) (default: WORKLOAD/scheduler-profile.duckdb where present)")
    p.add_argument("--book", help="a tuned model (lqo tune --out DIR): its plan book's template latencies inform "
                   "sjf-known and learned where the profile knows neither the query nor its template")
    p.add_argument("--plan", default="native", help="native | optimized: run each query's native or optimized plan")
    add_timeout(p, "per-query timeout in seconds (default 300)")
    p.add_argument("--simulate", action="store_true", help="only simulate the stream (needs a profile)")
    p.add_argument("--per-query", action="store_true", help="also print one line per query")
    add_json_flag(p)
    p.set_defaults(handler=run)


class Counter:
    """A progress bar driven by callbacks (``update(n)``), for work reported by events
    rather than iterated: tqdm on a terminal, else a plain line every 10 s (as
    ``output.progress`` does)."""

    def __init__(self, total: int, desc: str, every_s: float = 10.0) -> None:
        import sys
        import time

        self.total, self.desc, self.every_s, self.n = total, desc, every_s, 0
        self._start = self._last = time.perf_counter()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        import sys
        import time

        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(**postfix)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s:
            self._last = now
            extra = " ".join(f"{k}={v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.n}/{self.total} ({now - self._start:.0f} s) {extra}".rstrip(),
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def resolve_profiles(explicit: list[str] | None, workloads: Any) -> list[str]:
    """Explicit profile files (each must exist), else the workloads' default files that exist."""
    from lqo.errors import MissingFileError
    from lqo.sched.thread_profile import default_profile_path

    if explicit:
        for path in explicit:
            if not Path(path).is_file():
                raise MissingFileError(f"thread profile not found: {path}")
        return list(explicit)
    return [str(p) for p in (default_profile_path(w) for w in workloads) if p.is_file()]


def run(args: argparse.Namespace) -> int:
    from lqo.sched.policies import POLICIES
    from lqo.sched.policy import PolicyError
    from lqo.sched.stream import parse_arrivals
    from lqo.workloads.workload import Workload

    if args.policy not in POLICIES:
        raise PolicyError(f"unknown policy {args.policy!r} (choose from {', '.join(POLICIES)})")
    parse_arrivals(args.arrivals)
    if args.queries is not None and args.queries < 1:
        raise LqoError("--queries must be >= 1")
    if (args.workers is not None and args.workers < 1) or (args.cores is not None and args.cores < 1):
        raise LqoError("--workers and --cores must be >= 1")
    if args.policy == "sjf-model" and not args.model:
        raise PolicyError("policy 'sjf-model' needs the optimizer's model: pass --model PATH")
    if args.policy == "learned" and not args.scheduler_model:
        raise PolicyError("policy 'learned' needs a trained scheduler model: pass --scheduler-model PATH")
    workloads = [Workload.load(w) for w in args.workload]
    profiles = resolve_profiles(args.profile, workloads)
    cores = args.cores or os.cpu_count() or 1
    from lqo.sched.scheduler import Scheduler

    sched = Scheduler(args.policy, args.workers or cores, cores, profiles or None, model=args.model,
                      scheduler_model=args.scheduler_model, plan=args.plan, timeout_s=args.timeout,
                      book=args.book)
    stream = sched.make_stream(workloads, args.queries, args.arrivals, args.seed)
    if args.simulate:
        result, sim = sched.simulate(stream), None
    else:
        bar = Counter(len(stream), f"schedule {args.policy}")
        try:
            result = sched.run(stream, on_done=lambda rec: bar.update(1))
        finally:
            bar.close()
        sim = _simulate_if_covered(sched, stream)
    payload = result.to_json()
    if sim is not None:
        payload["sim"] = {**sim.figures(), "error": sched.compare(sim, result)}
    emit(args, format_result(result, payload.get("sim"), args.per_query), payload)
    return 0


def _simulate_if_covered(sched: Any, stream: Any):
    """The simulated twin of a real run, when the profile covers every query; else None."""
    if sched.profile is None:
        return None
    try:
        return sched.simulate(stream)
    except LqoError:
        return None


def format_result(result: Any, sim: dict | None, per_query: bool) -> str:
    m = result.meta
    lines = [
        f"policy {result.policy} ({result.mode}): {m.get('queries')} queries, arrivals {m.get('arrivals')}, "
        f"seed {m.get('seed')}, {m.get('workers')} workers on {m.get('cores')} cores",
        f"mean {result.mean_s:.3f} s  p50 {result.p50_s:.3f} s  p95 {result.p95_s:.3f} s  "
        f"makespan {result.makespan_s:.3f} s  errors {result.errors}",
    ]
    if result.known_sources:
        lines.append("latency figures the policy read, by source: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(result.known_sources.items(), key=lambda kv: -kv[1])))
    if sim is not None:
        e = sim["error"]
        lines.append(f"simulated: mean {sim['mean_s']:.3f} s  p95 {sim['p95_s']:.3f} s  makespan "
                     f"{sim['makespan_s']:.3f} s  (per-query error median {e['per_query_median']:.0%}, "
                     f"p90 {e['per_query_p90']:.0%}; mean "
                     f"{e['mean_err']:+.0%})")
    if per_query:
        lines.append(f"{'idx':>4} {'query':<22} {'arrival':>8} {'start':>8} {'end':>8} {'thr':>3} {'wkr':>3} "
                     f"{'latency from':<12} rows")
        for r in sorted(result.records, key=lambda r: r.idx):
            lines.append(f"{r.idx:>4} {r.key[:22]:<22} {r.arrival_s:>8.3f} {r.start_s:>8.3f} {r.end_s:>8.3f} "
                         f"{r.threads:>3} {r.worker:>3} {r.known_source or '-':<12} "
                         f"{r.rows if r.ok else 'ERROR ' + str(r.error)[:60]}")
    return "\n".join(lines)
