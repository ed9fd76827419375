"""Planning-path latency per query: parse + join graph, EXPLAIN + native trees, render.

Usage: python benchmarks/planning_latency.py WORKLOAD [--rounds 5]

Each stage is timed separately over every query of the workload, ``rounds`` times,
interleaved (round-robin over queries); prints median and p99 per stage in ms.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from lqo.catalog import Catalog
from lqo.join_graph import build_query_graph
from lqo.native_plan import explain_json, read_native_trees
from lqo.query import PreparedQuery
from lqo.render import render
from lqo.workload import Workload


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("workload")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    con = wl.connect()
    cat = Catalog.from_connection(con)
    stages = {"parse_graph": [], "explain_native": [], "render_native": [], "render_random": [], "graph_plus_render": []}
    rng = random.Random(0)
    for _ in range(args.rounds):
        for q in wl:
            t0 = time.perf_counter()
            g = build_query_graph(q.sql, cat)
            t1 = time.perf_counter()
            nat = read_native_trees(g, explain_json(con, q.sql))
            t2 = time.perf_counter()
            pq = PreparedQuery(q.sql, g, nat)
            if not pq.forceable:
                stages["parse_graph"].append((t1 - t0) * 1e3)
                stages["explain_native"].append((t2 - t1) * 1e3)
                continue
            render(g, nat.plan)
            t3 = time.perf_counter()
            plans = pq.random_plans(1, rng) or [nat.plan]
            t4 = time.perf_counter()
            render(g, plans[0])
            t5 = time.perf_counter()
            stages["parse_graph"].append((t1 - t0) * 1e3)
            stages["explain_native"].append((t2 - t1) * 1e3)
            stages["render_native"].append((t3 - t2) * 1e3)
            stages["render_random"].append((t5 - t4) * 1e3)
            stages["graph_plus_render"].append((t1 - t0 + t3 - t2) * 1e3)
    out = {k: {"median_ms": round(statistics.median(v), 3), "p99_ms": round(pct(v, 99), 3), "n": len(v)} for k, v in stages.items() if v}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:<18} median {v['median_ms']:7.2f} ms   p99 {v['p99_ms']:7.2f} ms   (n={v['n']})")


if __name__ == "__main__":
    main()
