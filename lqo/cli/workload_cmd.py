"""``lqo workload``: create TPC workloads, vary them, inspect one.

    lqo workload create tpch|tpcds --sf X --out DIR [--force] [--json]
    lqo workload vary WORKLOAD --per-template N [--seed S] --out DIR [--force] [--json]
    lqo workload import LOG.sql|DIR|CAPTURE.jsonl --db DB --out DIR [--name N] [--force] [--json]
    lqo workload info WORKLOAD [--json]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lqo.cli.options import add_out, add_seed
from lqo.cli.output import add_json_flag, emit, progress


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lqo workload ...`` to the top-level parser."""
    parser = subparsers.add_parser("workload", help="create, vary and inspect workloads (query sets)")
    sub = parser.add_subparsers(dest="workload_command", metavar="ACTION")
    sub.required = True

    create = sub.add_parser("create", help="generate a TPC-H or TPC-DS database and its queries")
    create.add_argument("kind", metavar="KIND", help="tpch or tpcds")
    create.add_argument("--sf", type=float, default=1.0, help="scale factor (default 1)")
    add_out(create, "output directory (absent or empty)", required=True)
    create.add_argument("--force", action="store_true", help="replace an existing workload directory")
    add_json_flag(create)
    create.set_defaults(handler=_create)

    vary = sub.add_parser("vary", help="new instances of each query with resampled constants")
    vary.add_argument("workload", metavar="WORKLOAD", help="workload directory")
    vary.add_argument("--per-template", type=int, required=True, help="instances per query")
    add_seed(vary)
    add_out(vary, "output directory (absent or empty)", required=True)
    vary.add_argument("--force", action="store_true", help="replace an existing workload directory")
    add_json_flag(vary)
    vary.set_defaults(handler=_vary)

    imp = sub.add_parser("import", help="a workload from a query log: a .sql file, a directory of them, "
                                        "or a capture (.jsonl from lqo.connect(..., capture=PATH))")
    imp.add_argument("source", metavar="LOG", help="a .sql file of statements, a directory of .sql files, or a "
                     "capture (.jsonl) written by lqo.connect(..., capture=PATH)")
    imp.add_argument("--db", required=True, help="the DuckDB database the queries run on (opened read-only)")
    add_out(imp, "output directory (absent or empty)", required=True)
    imp.add_argument("--name", help="the workload's name (default: the output directory's name)")
    imp.add_argument("--force", action="store_true", help="replace an existing workload directory")
    add_json_flag(imp)
    imp.set_defaults(handler=_import)

    info = sub.add_parser("info", help="validate a workload and summarise it")
    info.add_argument("workload", metavar="WORKLOAD", help="workload directory")
    add_json_flag(info)
    info.set_defaults(handler=_info)


def _summary(w: Any) -> dict:
    return {
        "workload": str(w.root),
        "name": w.name,
        "kind": w.kind,
        "scale_factor": w.scale_factor,
        "database": str(w.database),
        "queries": len(w),
        "templates": len(w.templates),
    }


def _create(args: argparse.Namespace) -> int:
    from lqo.workloads.create import create_workload

    w = create_workload(args.kind, args.sf, args.out, force=args.force,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    size_mb = w.database.stat().st_size / 1e6
    emit(args, f"created {w.name}: {len(w)} queries, database {w.database} ({size_mb:.1f} MB), workload {w.root}",
         _summary(w))
    return 0


def _vary(args: argparse.Namespace) -> int:
    from lqo.workloads.vary import instance_id, vary
    from lqo.workloads.workload import Workload

    source = Workload.load(args.workload)
    w = vary(source, per_template=args.per_template, seed=args.seed, out=args.out, force=args.force,
             progress=lambda qs: progress(qs, total=len(source), desc="vary"))
    unchanged = [q.id for q in source
                 if all(w.query(instance_id(q.id, i)).sql.strip() == q.sql.strip() for i in range(1, args.per_template + 1))]
    distinct = len({q.sql for q in w})
    payload = {**_summary(w), "source": str(source.root), "per_template": args.per_template, "seed": args.seed,
               "distinct": distinct, "unchanged": unchanged}
    text = f"wrote {len(w)} queries ({distinct} distinct) to {w.root}"
    if unchanged:
        text += f"\nno constants to vary in: {', '.join(unchanged)}"
    emit(args, text, payload)
    return 0


def _import(args: argparse.Namespace) -> int:
    from lqo.tune.log_import import import_log

    res = import_log(args.source, args.db, args.out, force=args.force, name=args.name,
                     progress=lambda sts: progress(sts, desc="import"))
    w = res.workload
    payload = {**_summary(w), "source": str(args.source), "statements": res.statements, "kept": res.kept,
               "skipped": res.skipped, "skipped_examples": res.examples}
    lines = [f"imported {res.kept} of {res.statements} statements: {len(w)} distinct queries in "
             f"{len(w.templates)} templates, workload {w.root}"]
    for t, qs in w.by_template().items():
        runs = sum(q.weight for q in qs)
        lines.append(f"  {t}: {len(qs)} instances, run {runs:g} times")
    for why, n in res.skipped.items():
        lines.append(f"skipped {n}: {why} (e.g. {res.examples[why][:80]!r})")
    emit(args, "\n".join(lines), payload)
    return 0


def _info(args: argparse.Namespace) -> int:
    from lqo.workloads.workload import Workload

    w = Workload.load(args.workload)
    payload = {**_summary(w), "query_ids": [q.id for q in w]}
    sf = f", sf {w.scale_factor}" if w.scale_factor is not None else ""
    emit(args, f"{w.name} ({w.kind}{sf}): {len(w)} queries, {len(w.templates)} templates, database {w.database}",
         payload)
    return 0
