"""``lqo profile-threads WORKLOAD``: each query's latency alone at each thread count."""

from __future__ import annotations

import argparse
from typing import Any

from lqo.cli.options import add_repeat, add_seed, add_timeout
from lqo.cli.output import add_json_flag, emit
from lqo.cli.schedule_cmd import Counter
from lqo.engine.interrupt import is_user_interrupt
from lqo.errors import LqoError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "profile-threads",
        help="measure every query's latency at each thread count (for the scheduler and its simulator)",
        description="Run every query of WORKLOAD alone at each --threads count, --repeat times after a "
        "warm-up, interleaving thread counts, and append the runs to a thread profile: a DuckDB file "
        "the scheduler owns (default WORKLOAD/scheduler-profile.duckdb). With --calibrate, also run "
        "a real batch of N queries under fifo, all-at-once and the oracle's order at 2 threads per "
        "worker, and fit the simulator's latency scale, interference and oversubscription penalty to "
        "them (stored in the profile; see docs/scheduler.md).",
    )
    p.add_argument("workload", help="workload directory (with workload.toml)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    add_repeat(p, 3, "measured runs per query and thread count (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up rounds per query (default 1)")
    add_timeout(p)
    p.add_argument("--store", help="profile file (default WORKLOAD/scheduler-profile.duckdb)")
    p.add_argument("--queries", help="comma-separated query ids (default all)")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="after profiling, fit the simulator on a real batch of N queries run three ways (default off)")
    p.add_argument("--workers", type=int, help="workers for --calibrate (default: the number of cores)")
    add_seed(p, "seed of the --calibrate streams (default 0)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import os

    from lqo.sched.thread_profile import (
        ThreadProfile,
        default_profile_path,
        parse_threads,
        profile_workload,
        save_calibration,
    )
    from lqo.workloads.workload import Workload

    threads = parse_threads(args.threads)
    if args.repeat < 1 or args.warmup < 0 or args.timeout <= 0 or args.calibrate < 0:
        raise LqoError("--repeat must be >= 1, --warmup >= 0, --timeout > 0 and --calibrate >= 0")
    if args.workers is not None and args.workers < 1:
        raise LqoError("--workers must be >= 1")
    workload = Workload.load(args.workload)
    if args.queries:
        workload = workload.subset(args.queries.split(","))
    store = args.store or str(default_profile_path(workload))
    bar = Counter(len(workload), "profile-threads")
    rows: list[dict[str, Any]] = []
    interrupted = False

    def on_query(qid: str, med: dict[int, float | None]) -> None:
        rows.append({"id": qid, "ms": med})
        bar.update(1)

    try:
        profile_workload(workload, store, threads, args.repeat, args.warmup, args.timeout, on_query=on_query)
    except (KeyboardInterrupt, RuntimeError) as err:
        if not is_user_interrupt(err):
            raise
        interrupted = True
    finally:
        bar.close()
    payload: dict[str, Any] = {"store": store, "threads": list(threads), "queries": rows, "interrupted": interrupted}
    if args.calibrate and not interrupted:
        from lqo.sched.scheduler import Scheduler

        cores = os.cpu_count() or 1
        sched = Scheduler("fifo", args.workers or cores, cores, ThreadProfile.load(store), timeout_s=args.timeout)
        streams = [sched.make_stream(workload, args.calibrate, "batch", args.seed)]
        config, per_query_error, _ = sched.calibrate(streams)
        save_calibration(store, config, {"per_query_error": per_query_error, "queries": args.calibrate,
                                         "workers": sched.workers, "cores": cores, "seed": args.seed})
        payload["calibration"] = {"interference": config.interference, "scale": config.scale,
                                  "oversubscription": config.oversubscription, "per_query_error": per_query_error}
    lines = [f"{'query':<12} " + " ".join(f"{f'{t} thr ms':>10}" for t in threads) + f" {'speed-up':>9}"]
    for r in rows:
        ms = r["ms"]
        cells = " ".join(f"{ms[t]:>10.1f}" if ms.get(t) is not None else f"{'-':>10}" for t in threads)
        lo, hi = ms.get(threads[0]), ms.get(threads[-1])
        lines.append(f"{r['id']:<12} {cells} {(lo / hi if lo and hi else float('nan')):>9.2f}")
    lines.append(f"{len(rows)} queries profiled into {store}" + (" (interrupted)" if interrupted else ""))
    if "calibration" in payload:
        c = payload["calibration"]
        lines.append(f"simulator interference {c['interference']:.2f}, oversubscription {c['oversubscription']:.2f}, "
                     f"latency scale {c['scale']:.2f} "
                     f"(median per-query error {c['per_query_error']:.0%})")
    emit(args, "\n".join(lines), payload)
    return 130 if interrupted else 0
