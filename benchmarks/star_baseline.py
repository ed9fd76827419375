"""A fixed, unlearned baseline: force the star-shaped plan on every query.

Usage: python benchmarks/star_baseline.py WORKLOAD [--queries q07,q16] [--repeat 5] [--json]

For each query lqo may reorder, the star plan (``lqo.search.star_plan``: probe with the
largest relation, build every other one, the smallest estimated intermediate result
first) replaces DuckDB's tree in every free block. Native, the star plan and the forced
native tree then run interleaved ``repeat`` times (timeout 3x native); prints per query
native ms, star ms, ratios to native and to forced native, and the totals. Results are
checked against native (order-insensitive fingerprints). Planning time is not counted:
this measures what the plan shape is worth, the ceiling of a "native or star" choice.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

from lqo.estimates.cardinality import Estimator
from lqo.sql.catalog import Catalog
from lqo.engine.harness import run_interleaved
from lqo.engine.run_result import median_latency
from lqo.trees.query import prepare
from lqo.search import star_plan
from lqo.estimates.stats import DatabaseStats
from lqo.workloads.workload import Workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--queries", help="comma-separated query ids (default: all)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    con = wl.connect()
    cat = Catalog.from_connection(con)
    stats = DatabaseStats.build(con, cat)
    wanted = set(args.queries.split(",")) if args.queries else None
    rows = []
    for q in wl:
        if wanted is not None and q.id not in wanted:
            continue
        pq = prepare(q.sql, con, cat)
        if not pq.forceable or not pq.free_blocks:
            continue
        star = star_plan(pq, Estimator(stats, pq.graph))
        if star == pq.native_plan:
            continue
        variants = [(q.sql, False), (pq.render(star), True), (pq.render(pq.native_plan), True)]
        probe = median_latency(run_interleaved(con, variants[:1], repeats=1)[0]) or 1.0
        res = run_interleaved(con, variants, repeats=args.repeat, warmup=0, timeout_s=max(1.0, 3 * probe / 1000))
        ref = next((r.fingerprint for r in res[0] if r.ok), None)
        native, star_ms, forced = (median_latency(r) for r in res)
        native = native or probe
        star_ms = star_ms if star_ms is not None else 3 * probe
        rows.append({
            "id": q.id, "native_ms": round(native, 2), "star_ms": round(star_ms, 2),
            "forced_native_ms": round(forced, 2) if forced else None,
            "ratio": round(star_ms / native, 3),
            "ratio_vs_forced_native": round(star_ms / forced, 3) if forced else None,
            "timed_out": any(r.timed_out for r in res[1]),
            "wrong": any(r.ok and r.fingerprint != ref for r in res[1]),
        })
        if not args.json:
            r = rows[-1]
            print(f"{r['id']:>5} native {r['native_ms']:9.1f}  star {r['star_ms']:9.1f}  ratio {r['ratio']:6.3f}"
                  f"  vs forced native {r['ratio_vs_forced_native']}", flush=True)
    nat = sum(r["native_ms"] for r in rows)
    st = sum(r["star_ms"] for r in rows)
    best = sum(min(r["native_ms"], r["star_ms"]) for r in rows)
    totals = {
        "queries": len(rows), "native_ms": round(nat, 1), "star_ms": round(st, 1),
        "ratio": round(st / nat, 4) if nat else None,
        "best_of_native_or_star_ratio": round(best / nat, 4) if nat else None,
        "geomean_ratio": round(math.exp(statistics.mean(math.log(r["ratio"]) for r in rows)), 4) if rows else None,
        "star_faster_0.8": sum(r["ratio"] <= 0.8 for r in rows),
        "star_slower_1.2": sum(r["ratio"] >= 1.2 for r in rows),
        "wrong": sum(r["wrong"] for r in rows),
    }
    if args.json:
        print(json.dumps({"queries": rows, "totals": totals}, indent=2))
    else:
        print(json.dumps(totals))


if __name__ == "__main__":
    main()
