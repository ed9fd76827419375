"""``lqo report WORKLOAD --model M --out DIR``: PNG figures, ``report.md`` and ``report.json``
(written by :mod:`lqo.evaluate.report_page`).

>>> main(["report", "data/tpcds-sf1", "--model", "runs/tpcds", "--out", "results"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
from typing import Any

from lqo.cli.options import add_model, add_out, add_repeat
from lqo.cli.output import add_json_flag, emit, progress
from lqo.errors import LqoError
from lqo.model_dir import SPLITS


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write plots and a results page comparing lqo with DuckDB's native optimizer",
        description="Compare lqo's plans with native on a split of the model directory (a plan book alone: its "
        "held-out instances; a trained model: its test templates; or reuse a `lqo compare --json` output), then "
        "write into DIR: speedup (the largest wins and losses by name, and the distribution of every query), ratio "
        "CDF, planning overhead, the training curve, native vs lqo join trees with estimated/actual rows for the 3 "
        "biggest wins and the worst regression, optionally GreedyLR vs cosine refits and scheduler plots, plus "
        "report.md and report.json; each says which split it measured.",
    )
    p.add_argument("workload", help="workload directory")
    add_model(p, "model directory written by lqo train and/or lqo tune (a plan book)", required=True)
    add_out(p, "report directory (created; an earlier report there is replaced)", required=True, metavar="DIR")
    p.add_argument("--split", choices=list(SPLITS),
                   help="which queries to compare: all; the model's train or test templates; or 'instances', the "
                   "held-out instances of the templates `lqo tune` tuned (never run while tuning) (default: instances "
                   "for a directory that holds only a plan book, else test; with --compare-json, the split its "
                   "queries make up)")
    add_repeat(p, 5, "interleaved runs per plan in the comparison (default 5)")
    p.add_argument("--compare-json", metavar="FILE",
                   help="reuse this `lqo compare --json` output instead of running the comparison")
    p.add_argument("--scheduler-json", metavar="FILE", nargs="+", action="extend", default=[],
                   help="`lqo schedule --json` outputs (one per policy, same stream) to plot and tabulate")
    p.add_argument("--lr-compare", type=float, default=0.0, metavar="SECONDS",
                   help="also refit the model with GreedyLR and with cosine on its experience, "
                   "within this many seconds in all (default 0: skip)")
    p.add_argument("--no-trees", action="store_true", help="skip profiling the join-tree cases")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # torch and matplotlib are imported only when this command runs: the CLI starts fast.
    from lqo.evaluate.report import build_report, load_compare, load_schedule, optimizer_summary
    from lqo.evaluate.report_page import check_out, write_report
    from lqo.optimizer import Optimizer
    from lqo.workloads.workload import Workload

    if args.repeat < 1:
        raise LqoError("--repeat must be >= 1")
    if args.lr_compare < 0:
        raise LqoError("--lr-compare must be >= 0 seconds")
    # Every input is checked before any work, so a bad one writes nothing.
    workload = Workload.load(args.workload)
    with workload.connect() as con:
        Optimizer.load(args.model, con)
    compare = load_compare(args.compare_json) if args.compare_json else None
    schedules = [load_schedule(f) for f in args.scheduler_json]
    out = check_out(args.out)
    report = build_report(args.workload, args.model, args.split, args.repeat, compare, schedules,
                          trees=not args.no_trees, lr_budget_s=args.lr_compare,
                          progress=lambda items: progress(items, total=len(items), desc="compare"))
    report.command = _command(args, report.split)
    files = write_report(report, out)
    s = optimizer_summary(report.compare)
    text = (f"report written to {out}: {', '.join(files)}\n"
            f"measured on the {report.split_text}\n"
            f"{s['queries']} queries: lqo/native total {_x(s['ratio'])}, worst {_x(s['worst_ratio'], 2)} "
            f"({s['worst_query']}), planning median {s['planning_ms_median']} ms")
    emit(args, text, {"out": str(out), "files": files, "split": report.split, "split_text": report.split_text,
                      "summary": s})
    return 130 if report.compare.get("totals", {}).get("interrupted") else 0


def _command(args: argparse.Namespace, split: str) -> str:
    # Paths as the user typed them: the command reproduces the report from the same directory.
    parts = ["lqo report", args.workload, "--model", args.model, "--out", args.out]
    parts += ["--split", split] if split in SPLITS else []
    parts += ["--repeat", str(args.repeat)]
    if args.compare_json:
        parts += ["--compare-json", args.compare_json]
    if args.scheduler_json:
        parts += ["--scheduler-json", *args.scheduler_json]
    if args.lr_compare:
        parts += ["--lr-compare", f"{args.lr_compare:g}"]
    if args.no_trees:
        parts.append("--no-trees")
    return " ".join(parts)


def _x(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"
