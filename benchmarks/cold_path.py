"""First-seen queries: lqo with its triage vs lqo planning everything vs DuckDB native.

Usage: python benchmarks/cold_path.py WORKLOAD --model DIR [--split test|all] [--rounds 5] [--json OUT]

For each query (by default the model's held-out test templates: never seen in training)
the optimizer plans the text cold twice, with its triage (the first stage decides
whether planning is worth it) and with every query planned (and, for a model that
records its training queries, planned without the check that a query resembles one of
them: ``full_unguarded``), and the chosen SQL of each runs interleaved with the native
text ``rounds`` times. Latencies are medians plus that variant's cold planning time.
Reports per variant: total ratio to native, geomean, worst query, planning as a share of
native time, the runs alone (``run_ratio``), queries planned vs run as written, queries
forced, wrong results (order-insensitive fingerprints).

``e2e``: the user's path for a first-seen text, timed whole, ``e2e_rounds`` times
interleaved with DuckDB running the text (order alternating): ``optimize`` with the triage
on a text it has forgotten, then ``Optimized.execute``. Planning happens every round there,
right before its run, as it does in a workload; the accounting above times one cold
planning apart from the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time

from lqo.engine.harness import run_interleaved
from lqo.engine.run_result import median_latency
from lqo.optimizer import Optimizer
from lqo.triage import NOT_WORTH_PLANNING
from lqo.workloads.workload import Workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--model", required=True)
    ap.add_argument("--split", choices=["test", "all"], default="test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--e2e-rounds", type=int, help="rounds of the whole user path (default: --rounds)")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    con = wl.connect()
    triaged = Optimizer.load(args.model, con)
    full = Optimizer.load(args.model, con)
    full.triage = None
    variants_of = {"triage": triaged, "full": full}
    if full.ranges is not None and full.ranges.radius is not None:
        # the same, without the check that the query resembles a trained one (an A/B of it)
        loose = Optimizer.load(args.model, con)
        loose.triage, loose.ranges = None, dataclasses.replace(full.ranges, query_points=None, radius=None)
        variants_of["full_unguarded"] = loose
    config = json.load(open(f"{args.model}/optimizer.json"))
    test = set(config.get("test_templates") or [])
    queries = [q for q in wl if args.split == "all" or q.template in test]
    rows = []
    started = time.time()
    for q in queries:
        plans = {}
        for name, opt in variants_of.items():
            opt.forget(q.sql)
            plans[name] = opt.optimize(q.sql, con)
        # Each variant runs what its Optimized.execute would: a text kept as written runs
        # as the statement lqo parsed to check it (so that parse is not paid twice).
        variants = [(q.sql, False, ())] + [(r.runnable, r.forced, r.disabled) for r in plans.values()]
        probe = median_latency(run_interleaved(con, variants[:1], repeats=1)[0]) or 1.0
        res = run_interleaved(con, variants, repeats=args.rounds, warmup=0, timeout_s=max(2.0, 10 * probe / 1000))
        ref = next((r.fingerprint for r in res[0] if r.ok), None)
        native = median_latency(res[0])
        if native is None:
            continue
        row = {"id": q.id, "template": q.template, "native_ms": round(native, 2)}
        for (name, r), runs in zip(plans.items(), res[1:]):
            ms = (median_latency(runs) or 10 * probe) + r.planning_ms
            row[name] = {"ms": round(ms, 2), "ratio": round(ms / native, 3), "planning_ms": round(r.planning_ms, 3),
                         "planned": not (r.fallback or "").startswith(NOT_WORTH_PLANNING), "forced": r.forced,
                         "fallback": r.fallback, "wrong": any(x.ok and x.fingerprint != ref for x in runs)}
        if all(x.ok for x in res[1]):  # the triage variant ran within its time: time its whole path
            base, lqo_ms = end_to_end(con, triaged, q.sql, args.e2e_rounds or args.rounds)
            row["e2e"] = {"native_ms": round(base, 3), "lqo_ms": round(lqo_ms, 3), "ratio": round(lqo_ms / base, 4)}
        rows.append(row)
        print(f"{q.id:>8} native {native:8.1f}  triage {row['triage']['ratio']:6.3f} "
              f"({'planned' if row['triage']['planned'] else 'as written'}, {row['triage']['planning_ms']:.2f} ms)"
              f"  full {row['full']['ratio']:6.3f} ({row['full']['planning_ms']:.1f} ms"
              f"{', forced' if row['full']['forced'] else ''})", file=sys.stderr, flush=True)
    native_total = sum(r["native_ms"] for r in rows)
    totals = {"queries": len(rows), "native_ms": round(native_total, 1), "seconds": round(time.time() - started)}
    for name in variants_of:
        ratios = [r[name]["ratio"] for r in rows]
        totals[name] = {
            "ratio": round(sum(r[name]["ms"] for r in rows) / native_total, 4),
            "geomean": round(math.exp(statistics.mean(math.log(x) for x in ratios)), 4),
            "worst": max(rows, key=lambda r: r[name]["ratio"])["id"], "worst_ratio": max(ratios),
            "above_1.15": sum(x > 1.15 for x in ratios),
            "planning_share": round(sum(r[name]["planning_ms"] for r in rows) / native_total, 4),
            "run_ratio": round(sum(r[name]["ms"] - r[name]["planning_ms"] for r in rows) / native_total, 4),
            "planning_ms_median": round(statistics.median(r[name]["planning_ms"] for r in rows), 3),
            "planned": sum(r[name]["planned"] for r in rows), "forced": sum(r[name]["forced"] for r in rows),
            "wrong": sum(r[name]["wrong"] for r in rows),
        }
    timed = [r for r in rows if "e2e" in r]
    if timed:
        ratios = [r["e2e"]["ratio"] for r in timed]
        totals["e2e"] = {"queries": len(timed),
                         "ratio": round(sum(r["e2e"]["lqo_ms"] for r in timed) / sum(r["e2e"]["native_ms"] for r in timed), 4),
                         "geomean": round(math.exp(statistics.mean(math.log(x) for x in ratios)), 4),
                         "worst": max(timed, key=lambda r: r["e2e"]["ratio"])["id"], "worst_ratio": max(ratios)}
    print(json.dumps(totals, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "totals": totals, "queries": rows}, f, indent=2)


def end_to_end(con, opt: Optimizer, sql: str, rounds: int) -> tuple[float, float]:
    """Median ms of DuckDB running ``sql`` and of lqo's whole path for it as a first-seen
    text (plan, then ``Optimized.execute``), interleaved, which goes first alternating."""
    native, lqo = [], []
    for i in range(rounds):
        for path in (("native", "lqo") if i % 2 == 0 else ("lqo", "native")):
            if path == "lqo":
                opt.forget(sql)
            start = time.perf_counter()
            if path == "native":
                con.execute(sql).fetchall()
            else:
                opt.optimize(sql, con).execute(con)
            (native if path == "native" else lqo).append((time.perf_counter() - start) * 1000)
    return statistics.median(native), statistics.median(lqo)


if __name__ == "__main__":
    main()
