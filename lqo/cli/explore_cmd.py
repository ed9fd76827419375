"""``lqo explore WORKLOAD``: native plus N random trees per query; the headroom."""

from __future__ import annotations

import argparse
from typing import Any

from lqo.cli.options import add_seed
from lqo.cli.output import add_json_flag, emit, progress
from lqo.cli.ray_opts import add_ray_flags, format_nodes, ray_pool
from lqo.evaluate.explore import ExploreConfig, explore_workload
from lqo.model_dir import STORE_FILE
from lqo.workloads.workload import Workload


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explore",
        help="try native plus N random join trees per query and report the headroom",
        description="For every query of WORKLOAD run DuckDB's native plan, the native tree forced, "
        "and N distinct cross-product-free join trees (timeout = factor x native), record every run "
        "in the experience store, re-measure the best tree against native in interleaved repeats, "
        "and print native ms, best ms and best/native per query with workload totals.",
    )
    p.add_argument("workload", help="workload directory (with workload.toml)")
    p.add_argument("--plans", type=int, default=20, help="random trees per query (default 20)")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="timeout as a multiple of native latency (default 3)")
    p.add_argument("--confirm", type=int, default=5, help="interleaved re-measurement rounds of the best tree (default 5)")
    add_seed(p)
    p.add_argument("--store", help=f"experience store file (default WORKLOAD/{STORE_FILE})")
    p.add_argument("--queries", help="comma-separated query ids to explore (default all)")
    add_ray_flags(p)
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.plans < 0 or args.timeout_factor <= 1.0 or args.confirm < 1:
        from lqo.errors import LqoError

        raise LqoError("--plans must be >= 0, --timeout-factor > 1 and --confirm >= 1")
    workload = Workload.load(args.workload)
    if args.queries:
        workload = workload.subset(args.queries.split(","))
    config = ExploreConfig(plans=args.plans, timeout_factor=args.timeout_factor, confirm=args.confirm, seed=args.seed)
    with ray_pool(args, workload.database, quiet=args.json) as pool:
        desc = "explore" if pool is None else f"explore ({len(pool.summary())} nodes, {pool.size} executors)"
        report = explore_workload(
            workload,
            config,
            store_path=args.store,
            progress=lambda items: progress(items, total=len(items), desc=desc),
            pool=pool,
        )
    emit(args, format_report(report), report.to_json())
    return 130 if report.interrupted else 0


def format_report(report: Any) -> str:
    lines = [f"{'query':<10} {'native ms':>10} {'best ms':>10} {'best/nat':>9} {'plans':>6} {'t/o':>4}  note"]
    for q in report.queries:
        lines.append(
            f"{q.id:<10} {q.native_ms:>10.1f} {q.best_ms:>10.1f} {q.ratio:>9.3f} {q.plans_tried:>6} {q.timeouts:>4}  "
            + ("FAILED: " + q.error if q.error else q.reason or (f"best {q.best_plan}" if q.ratio < 1 else ""))[:120]
        )
    t = report.totals
    lines.append(
        f"TOTAL {t['queries']} queries: native {t['native_ms']:.0f} ms, best {t['best_ms']:.0f} ms, "
        f"ratio {t['ratio']}, geomean {t['geomean_ratio']}, <=0.8x: {t['queries_le_0_8']}, "
        f"wrong results: {t['wrong_results']}, timeouts: {t['timeouts']}, kept native: {t['not_forceable']}, "
        + (f"failed: {t['failed']}, " if t["failed"] else "")
        + f"{t['elapsed_s']} s" + (" (interrupted)" if t["interrupted"] else "")
    )
    if report.nodes:
        lines.append(format_nodes(report.nodes))
    return "\n".join(lines)
