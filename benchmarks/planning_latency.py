"""Planning-path latency per query, stage by stage.

Usage: python benchmarks/planning_latency.py WORKLOAD [--model MODEL_DIR] [--rounds 5] [--gc-freeze]
       [--min-relations N] [--json]

Without a model: parse + join graph, EXPLAIN + native trees, render (native and a random
plan), and featurization of random plans (the first plan of a query with a fresh
featurizer, which builds the query's estimator and static features, and each further
plan, which reuses them). ``--min-relations`` keeps only queries whose reorderable
blocks have at least that many relations in all (8 on TPC-DS: the largest plans).

With ``--model``: the whole cold path of ``Optimizer.optimize`` (caches dropped
before every call), split into parse + graph, EXPLAIN + reading the native trees,
search + decision (featurization and model inference), render; plus DuckDB's own
``PREPARE`` of the same text as the floor any EXPLAIN-based planner pays.

Each stage is timed over every query of the workload, ``rounds`` times, interleaved
(round-robin over queries); prints median and p99 per stage in ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time

from lqo.estimates.stats import DatabaseStats
from lqo.learn.features import Featurizer
from lqo.sql.catalog import Catalog
from lqo.sql.join_graph import build_query_graph
from lqo.trees.native import explain_json, read_native_trees
from lqo.trees.query import PreparedQuery
from lqo.trees.render import render
from lqo.workloads.workload import Workload


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1e3


def n_relations(sql: str, cat: Catalog) -> int:
    """Relations in the query's reorderable blocks, all blocks together."""
    return sum(len(b.relations) for b in build_query_graph(sql, cat).reorderable)


def time_stages(wl: Workload, con, rounds: int, min_relations: int = 0) -> dict[str, list[float]]:
    cat = Catalog.from_connection(con)
    stats = DatabaseStats.build(con, cat, sample_rows=5_000)
    stages: dict[str, list[float]] = {k: [] for k in ("parse_graph", "explain_native", "render_native",
                                                      "render_random", "graph_plus_render",
                                                      "featurize_first", "featurize_next")}
    rng = random.Random(0)
    queries = [q for q in wl if n_relations(q.sql, cat) >= min_relations]
    for _ in range(rounds):
        for q in queries:
            t0 = time.perf_counter()
            g = build_query_graph(q.sql, cat)
            t1 = time.perf_counter()
            nat = read_native_trees(g, explain_json(con, q.sql))
            t2 = time.perf_counter()
            pq = PreparedQuery(q.sql, g, nat)
            stages["parse_graph"].append(_ms(t0, t1))
            stages["explain_native"].append(_ms(t1, t2))
            if not pq.forceable:
                continue
            render(g, nat.plan)
            t3 = time.perf_counter()
            plans = pq.random_plans(1, rng) or [nat.plan]
            t4 = time.perf_counter()
            render(g, plans[0])
            t5 = time.perf_counter()
            stages["render_native"].append(_ms(t2, t3))
            stages["render_random"].append(_ms(t4, t5))
            stages["graph_plus_render"].append(_ms(t0, t1) + _ms(t2, t3))
            # Featurization: a fresh featurizer's first plan, then 5 more plans (mean).
            more = pq.random_plans(5, rng)
            fz = Featurizer(stats)
            t6 = time.perf_counter()
            fz.featurize(g, nat.plan)
            t7 = time.perf_counter()
            for plan in more:
                fz.featurize(g, plan)
            t8 = time.perf_counter()
            stages["featurize_first"].append(_ms(t6, t7))
            if more:
                stages["featurize_next"].append(_ms(t7, t8) / len(more))
    return stages


def time_optimizer(wl: Workload, con, model_dir: str, rounds: int, freeze: bool = False) -> dict[str, list[float]]:
    from lqo.optimizer import Optimizer

    opt = Optimizer.load(model_dir, con)
    cat = Catalog.from_connection(con)
    stages: dict[str, list[float]] = {k: [] for k in ("duckdb_prepare", "parse_graph", "explain_native",
                                                      "search_decide", "render", "optimize_total")}
    for q in wl:  # warm-up: first torch call, imports
        opt.optimize(q.sql, con)
    if freeze:
        gc.collect()
        gc.freeze()
    for r in range(rounds):
        for i, q in enumerate(wl):
            t0 = time.perf_counter()
            con.execute(f"PREPARE lqo_bench_{r}_{i} AS {q.sql}")
            stages["duckdb_prepare"].append(_ms(t0, time.perf_counter()))
            con.execute(f"DEALLOCATE lqo_bench_{r}_{i}")
            opt.forget()
            t0 = time.perf_counter()
            res = opt.optimize(q.sql, con)
            stages["optimize_total"].append(_ms(t0, time.perf_counter()))
            # The same path again, stage by stage (a new graph: no featurizer cache hit).
            opt.forget()
            t0 = time.perf_counter()
            g = build_query_graph(q.sql, cat)
            t1 = time.perf_counter()
            pq = PreparedQuery(q.sql, g, read_native_trees(g, explain_json(con, q.sql)))
            t2 = time.perf_counter()
            stages["parse_graph"].append(_ms(t0, t1))
            stages["explain_native"].append(_ms(t1, t2))
            if not pq.forceable or not pq.free_blocks:
                continue
            t2 = time.perf_counter()
            result, fallback = opt.decide(pq)
            t3 = time.perf_counter()
            stages["search_decide"].append(_ms(t2, t3))
            if res.forced:
                pq.render(result.best)
                stages["render"].append(_ms(t3, time.perf_counter()))
    return stages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--model", help="a model directory: time the whole optimizer path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after loading, as lqo compare does (see docs/learned-optimizer.md)")
    ap.add_argument("--min-relations", type=int, default=0,
                    help="without --model: only queries with at least this many relations to order")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    con = wl.connect()
    stages = (time_optimizer(wl, con, args.model, args.rounds, args.gc_freeze) if args.model
              else time_stages(wl, con, args.rounds, args.min_relations))
    out = {k: {"median_ms": round(statistics.median(v), 3), "p99_ms": round(pct(v, 99), 3), "n": len(v)}
           for k, v in stages.items() if v}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:<18} median {v['median_ms']:7.2f} ms   p99 {v['p99_ms']:7.2f} ms   (n={v['n']})")


if __name__ == "__main__":
    main()
