"""``lqo compare WORKLOAD --model M``: lqo's plans vs DuckDB's native optimizer."""

from __future__ import annotations

import argparse
import gc
from typing import Any

from lqo.cli.options import add_model, add_repeat
from lqo.cli.output import add_json_flag, emit, progress
from lqo.errors import LqoError
from lqo.model_dir import SPLITS, ModelDir
from lqo.workloads.workload import Workload


def register(sub: Any) -> None:
    p = sub.add_parser(
        "compare",
        help="run native and lqo plans interleaved and compare them per query",
        description="For every query (or a split): plan with the directory's plan book (known templates) or model, "
        "then run native, "
        "lqo's plan and the forced native tree interleaved with repeats. Prints per query native ms, "
        "lqo ms (planning included), ratio, and totals: ratio of sums, geometric mean, worst ratio, "
        "regressions, planning median and p99.",
    )
    p.add_argument("workload", help="workload directory")
    add_model(p, "model directory written by lqo train and/or lqo tune (a plan book)", required=True)
    p.add_argument("--split", choices=list(SPLITS), default="all",
                   help="which queries to compare: all; the model's train or test templates; or 'instances', "
                   "the held-out instances of the templates `lqo tune` tuned (never run while tuning) (default all)")
    add_repeat(p, 5, "interleaved runs per plan (default 5)")
    p.add_argument("--csv", help="also write the per-query table to this CSV file")
    p.add_argument("--plot", metavar="PNG", help="also write the per-query speedup plot (native / lqo) to this file")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # torch is imported only when a command needs it: the CLI starts fast.
    from lqo.book.book import PlanBook
    from lqo.evaluate.compare import CompareConfig, compare_workload
    from lqo.optimizer import Optimizer
    if args.repeat < 1:
        raise LqoError("--repeat must be >= 1")
    workload = Workload.load(args.workload)
    model = ModelDir(args.model)
    held_out = PlanBook.load(args.model).held_out_ids() if args.split == "instances" else None
    queries = model.split_queries(workload, args.split, held_out)
    con = workload.connect()
    try:
        optimizer = Optimizer.load(args.model, con)
    finally:
        con.close()
    # The process is lqo's own: put what is loaded so far (torch, sqlglot, the model:
    # ~200k objects) out of the collector's reach, or a full collection that lands in
    # a planning call costs it 120-160 ms instead of ~40 (TPC-DS SF1, this machine).
    gc.collect()
    gc.freeze()
    report = compare_workload(workload, optimizer, CompareConfig(repeats=args.repeat), queries,
                              progress=lambda items: progress(items, total=len(items), desc="compare"))
    if args.csv:
        report.write_csv(args.csv)
    if args.plot:
        from lqo import plots

        compared = [q for q in report.to_json()["queries"] if q["error"] is None]  # failed ones have no latency
        fig = plots.speedup_bars(compared, report.regression,
                                 title=f"lqo vs DuckDB native: {workload.name}, {args.split}")
        fig.savefig(args.plot, dpi=120)
    emit(args, format_report(report), report.to_json())
    return 130 if report.interrupted else 0


def format_report(report: Any) -> str:
    lines = [f"{'query':<10} {'native ms':>10} {'lqo ms':>10} {'plan ms':>8} {'ratio':>7}  decision"]
    for q in report.queries:
        if q.error is not None:
            lines.append(f"{q.id:<10} {'-':>10} {'-':>10} {q.planning_ms:>8.2f} {'-':>7}  FAILED: {q.error}"[:200])
            continue
        mark = " REGRESSION" if q.ratio > report.regression else ""
        mark += f" FAILED: {q.lqo_error}" if q.lqo_error else ""
        lines.append(f"{q.id:<10} {q.native_ms:>10.1f} {q.lqo_ms:>10.1f} {q.planning_ms:>8.2f} {q.ratio:>7.3f}  "
                     + (f"native: {q.fallback}" if q.fallback else f"lqo {q.chosen}")[:90] + mark)
    t = report.totals
    failed = f" ({len(t['failed'])} more failed, left out: {', '.join(t['failed'])})" if t["failed"] else ""
    lines.append(
        f"TOTAL {t['queries']} queries{failed}: native {t['native_ms']:.0f} ms, lqo {t['lqo_ms']:.0f} ms "
        f"(ratio {t['ratio']}, geomean {t['geomean_ratio']}, worst {t['worst_ratio']}), "
        f"{t['forced']} forced, regressions >{report.regression}x: {len(t['regressions'])}, "
        f"wrong results: {t['wrong_results']}, " + (f"lqo plans failed: {len(t['lqo_failed'])}, " if t["lqo_failed"] else "")
        + f"planning median {t['planning_ms_median']} ms, p99 {t['planning_ms_p99']} ms\n"
        f"RECURRING (plan cached per query text): lqo {t['lqo_warm_ms']:.0f} ms, ratio {t['warm_ratio']}, "
        f"geomean {t['warm_geomean_ratio']}, worst {t['warm_worst_ratio']}"
    )
    return "\n".join(lines)
