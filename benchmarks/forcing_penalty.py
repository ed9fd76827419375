"""What forcing costs by itself: DuckDB's own tree, rendered and forced, vs the native text.

Usage: python benchmarks/forcing_penalty.py WORKLOAD [--queries q06,q92] [--rounds 5] [--json OUT]

For each query lqo may reorder, the native text and the rendering of DuckDB's own join
tree (run with ``join_order`` and ``build_side_probe_side`` disabled) run interleaved
``rounds`` times. The plan is the same join tree, so any ratio away from 1.0 is what the
forcing settings and lqo's rendering cost (or save). Prints per query the two medians,
their ratio, the subquery filters the rendering placed inside their relation, and the
totals: median and geomean ratio, worst query, queries above 1.15x. Results are checked
against native (order-insensitive fingerprints).
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
from lqo.sql.catalog import Catalog
from lqo.trees.query import PreparedQuery, prepare
from lqo.trees.render import render
from lqo.workloads.workload import Workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--queries", help="comma-separated query ids (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="write the raw results here")
    ap.add_argument("--also", default="", help="comma-separated optimizer rules: adds a variant, the same forced "
                                               "tree with these rules disabled too (e.g. compressed_materialization)")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    con = wl.connect()
    cat = Catalog.from_connection(con)
    wanted = set(args.queries.split(",")) if args.queries else None
    also = tuple(r for r in args.also.split(",") if r)
    rows, skipped = [], {}
    started = time.time()
    for q in wl:
        if wanted is not None and q.id not in wanted:
            continue
        pq = prepare(q.sql, con, cat)
        if not pq.forceable or not pq.free_blocks:
            skipped[q.id] = pq.reason or "no block lqo may reorder"
            continue
        forced_sql = pq.render(pq.native_plan)
        placed = sum(len(ps) for b in pq.graph.blocks for ps in b.placed.values())
        variants = [(q.sql, False), (forced_sql, True)]
        if placed:  # the same tree with every subquery predicate left in WHERE, as written
            variants.append((render(_unplaced(pq), pq.native_plan), True))
        if also:
            variants.append((forced_sql, True, also))
        probe = median_latency(run_interleaved(con, variants[:1], repeats=1)[0]) or 1.0
        res = run_interleaved(con, variants, repeats=args.rounds, warmup=0, timeout_s=max(2.0, 30 * probe / 1000))
        ref = next((r.fingerprint for r in res[0] if r.ok), None)
        native, forced = median_latency(res[0]), median_latency(res[1])
        unplaced = median_latency(res[2]) if placed else None
        with_also = median_latency(res[-1]) if also else None
        if native is None or forced is None:
            skipped[q.id] = "a run failed"
            continue
        rows.append({
            "id": q.id, "native_ms": round(native, 2), "forced_native_ms": round(forced, 2),
            "ratio": round(forced / native, 3), "placed_subquery_filters": placed,
            "ratio_unplaced": round(unplaced / native, 3) if unplaced else None,
            "ratio_also": round(with_also / native, 3) if with_also else None,
            "wrong": any(r.ok and r.fingerprint != ref for rs in res[1:] for r in rs),
        })
        r = rows[-1]
        print(f"{r['id']:>6} native {r['native_ms']:9.1f}  forced native {r['forced_native_ms']:9.1f}"
              f"  ratio {r['ratio']:6.3f}" + (f"  unplaced {r['ratio_unplaced']:6.3f}" if placed else "")
              + (f"  also {r['ratio_also']:6.3f}" if with_also else ""),
              file=sys.stderr, flush=True)
    ratios = [r["ratio"] for r in rows]
    worst = max(rows, key=lambda r: r["ratio"]) if rows else None
    totals = {
        "queries": len(rows), "skipped": len(skipped),
        "median_ratio": round(statistics.median(ratios), 4) if rows else None,
        "geomean_ratio": round(math.exp(statistics.mean(math.log(x) for x in ratios)), 4) if rows else None,
        "total_ratio": round(sum(r["forced_native_ms"] for r in rows) / sum(r["native_ms"] for r in rows), 4)
        if rows else None,
        "worst": {"id": worst["id"], "ratio": worst["ratio"]} if worst else None,
        "above_1.15": sorted((r["id"] for r in rows if r["ratio"] > 1.15)),
        "wrong": sum(r["wrong"] for r in rows),
        **(_also_totals(rows, also) if also else {}),
        "seconds": round(time.time() - started),
    }
    print(json.dumps(totals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "rounds": args.rounds, "totals": totals,
                       "queries": rows, "skipped": skipped}, f, indent=2)


def _also_totals(rows: list[dict], also: tuple[str, ...]) -> dict:
    """The forced-native figures with ``also`` disabled too, over the queries where that ran."""
    done = [r for r in rows if r["ratio_also"]]
    ratios = [r["ratio_also"] for r in done]
    return {"also": {
        "rules": list(also), "queries": len(done),
        "median_ratio": round(statistics.median(ratios), 4) if done else None,
        "geomean_ratio": round(math.exp(statistics.mean(math.log(x) for x in ratios)), 4) if done else None,
        "total_ratio": round(sum(r["ratio_also"] * r["native_ms"] for r in done) / sum(r["native_ms"] for r in done), 4)
        if done else None,
        "above_1.15": sorted(r["id"] for r in done if r["ratio_also"] > 1.15),
        "better_by_5pct": sorted(r["id"] for r in done if r["ratio_also"] < 0.95 * r["ratio"]),
        "worse_by_5pct": sorted(r["id"] for r in done if r["ratio_also"] > 1.05 * r["ratio"]),
    }}


def _unplaced(pq: PreparedQuery):
    """``pq``'s graph with its placed subquery predicates back in WHERE."""
    blocks = [dataclasses.replace(b, kept=sorted(b.kept + [p for ps in b.placed.values() for p in ps]), placed={})
              for b in pq.graph.blocks]
    return dataclasses.replace(pq.graph, blocks=blocks)


if __name__ == "__main__":
    main()
