"""Explore on Ray vs sequentially, on one machine: throughput, overheads, paired-ratio agreement.

Usage: python benchmarks/ray_explore.py WORKLOAD [--plans 5] [--confirm 3] [--rounds 2]
           [--paired-rounds 5] [--trees 2] [--out benchmarks/results/ray-explore-X.json]

Modes, alternated ``--rounds`` times (seq, ray1, ray2, seq, ...), each exploring the whole
workload into a fresh store:

- ``seq``: ``lqo explore`` as it runs without ``--ray`` (one connection, DuckDB's default
  threads: all cores);
- ``ray1``: one Ray executor (all cores);
- ``ray2``: two Ray executors (cores / 2 threads each), two queries at once.

Throughput = runs recorded / explore wall time (Ray's start excluded, reported apart).
Overheads: Ray start; a no-op task's round trip through the pool; the driver's replay
of a task's journal into the store (per task and per run).

Paired ratios: per query, the forced native tree and ``--trees`` random trees against
native text in ``--paired-rounds`` interleaved rounds (the acceptance test's
measurement), as one task per query; ratio = median candidate / median native. Mode
pairs are compared by the median |log ratio difference| and by how often they agree on
the side of 0.95 (what screening and acceptance decide on); seq round 1 vs seq round 2 is
the noise floor of the machine itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

import lqo.evaluate.explore as explore_mod
from lqo.engine.harness import run_interleaved
from lqo.engine.run_result import median_latency
from lqo.evaluate.explore import ExploreConfig, explore_workload
from lqo.sql.catalog import Catalog
from lqo.trees.query import prepare
from lqo.workloads.workload import Workload


def noop_task(con, catalog):
    return None, None


def paired_task(con, catalog, sql: str, trees: int, rounds: int, seed: str):
    """Per candidate (forced native tree, ``trees`` random trees): median ratio to native
    over interleaved rounds. Runs wherever it is sent (driver or executor)."""
    pq = prepare(sql, con, catalog)
    if not pq.forceable or not pq.free_blocks:
        return {}, None
    plans = [("forced_native", pq.native_plan)] + [
        (f"random{i}", p) for i, p in enumerate(pq.random_plans(trees, random.Random(seed)))]
    variants = [(sql, False)] + [(pq.render(p), True) for _, p in plans]
    probe = median_latency(run_interleaved(con, variants[:1], repeats=1)[0]) or 1.0
    res = run_interleaved(con, variants, repeats=rounds, warmup=1, timeout_s=max(0.5, 5 * probe / 1000))
    native = median_latency(res[0])
    out = {}
    for (name, _), runs in zip(plans, res[1:]):
        m = median_latency(runs)
        if native and m and all(r.ok for r in runs) and len(runs) == rounds:
            out[name] = m / native
    return out, None


def run_mode(mode: str, wl: Workload, config: ExploreConfig, args, tmp: Path, rnd: int) -> dict:
    store = tmp / f"{mode}-{rnd}.duckdb"
    replay_s = [0.0, 0]
    real_replay = explore_mod.replay

    def timed_replay(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_replay(*a, **k)
        finally:
            replay_s[0] += time.perf_counter() - t0
            replay_s[1] += 1

    out: dict = {"mode": mode, "round": rnd}
    pool = None
    try:
        if mode != "seq":
            from lqo.distributed.pool import ExecutorPool

            t0 = time.perf_counter()
            pool = ExecutorPool(wl.database, address="local", slots=int(mode[3:]))
            out["ray_start_s"] = round(time.perf_counter() - t0, 2)
            # Round trip of a task that does nothing: dispatch + result, no DuckDB.
            for _ in range(3):  # warm the executors' workers
                pool.submit("warm", noop_task)
                pool.next()
            t0 = time.perf_counter()
            for i in range(50):
                pool.submit(f"noop{i}", noop_task)
                pool.next()
            out["noop_roundtrip_ms"] = round((time.perf_counter() - t0) / 50 * 1000, 3)
            explore_mod.replay = timed_replay
        t0 = time.perf_counter()
        report = explore_workload(wl, config, store_path=store, pool=pool)
        out["explore_s"] = round(time.perf_counter() - t0, 2)
        explore_mod.replay = real_replay
        con = duckdb.connect(str(store), read_only=True)
        out["runs"] = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        con.close()
        out["runs_per_min"] = round(out["runs"] / out["explore_s"] * 60, 1)
        out["queries"] = len(report.queries)
        out["ratio"] = report.totals["ratio"]
        out["best"] = {q.id: q.best_plan for q in report.queries}
        if pool is not None:
            out["nodes"] = report.nodes
            out["replay_ms_per_task"] = round(replay_s[0] / max(1, replay_s[1]) * 1000, 3)
            out["replay_ms_per_run"] = round(replay_s[0] / max(1, out["runs"]) * 1000, 4)
            busy = sum(n["busy_s"] for n in report.nodes)
            out["executor_busy_share"] = round(busy / (out["explore_s"] * pool.size), 3)
        # Paired ratios: the same candidates in every mode, one task per query.
        t0 = time.perf_counter()
        paired = {}
        if pool is None:
            con = wl.connect()
            cat = Catalog.from_connection(con)
            for q in wl:
                paired[q.id] = paired_task(con, cat, q.sql, args.trees, args.paired_rounds, f"{q.id}")[0]
            con.close()
        else:
            for q in wl:
                pool.submit(q.id, paired_task, q.sql, args.trees, args.paired_rounds, f"{q.id}")
            for o in pool.results():
                paired[o.task_id] = o.value[0]
        out["paired_s"] = round(time.perf_counter() - t0, 2)
        out["paired"] = paired
    finally:
        explore_mod.replay = real_replay
        if pool is not None:
            pool.close()
    return out


def agreement(a: dict, b: dict, line: float = 0.95) -> dict:
    diffs, same_side, n = [], 0, 0
    for q, cands in a.items():
        for name, ra in cands.items():
            rb = b.get(q, {}).get(name)
            if rb is None:
                continue
            n += 1
            diffs.append(abs(math.log(ra / rb)))
            same_side += (ra < line) == (rb < line)
    if not diffs:
        return {"pairs": 0}
    diffs.sort()
    return {"pairs": n, "median_abs_log_diff": round(statistics.median(diffs), 4),
            "p90_abs_log_diff": round(diffs[int(0.9 * (len(diffs) - 1))], 4),
            "same_side_of_0.95": round(same_side / n, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--plans", type=int, default=5)
    ap.add_argument("--confirm", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--paired-rounds", type=int, default=5)
    ap.add_argument("--trees", type=int, default=2)
    ap.add_argument("--modes", default="seq,ray1,ray2")
    ap.add_argument("--out")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    config = ExploreConfig(plans=args.plans, confirm=args.confirm, seed=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="ray-explore-") as tmp:
        for rnd in range(1, args.rounds + 1):
            for mode in args.modes.split(","):
                r = run_mode(mode, wl, config, args, Path(tmp), rnd)
                print(json.dumps({k: v for k, v in r.items() if k not in ("paired", "best", "nodes")}), flush=True)
                results.append(r)
    by_mode: dict[str, list[dict]] = {}
    for r in results:
        by_mode.setdefault(r["mode"], []).append(r)
    summary = {m: {"runs_per_min": [r["runs_per_min"] for r in rs],
                   "median_runs_per_min": statistics.median(r["runs_per_min"] for r in rs),
                   **({"ray_start_s": [r["ray_start_s"] for r in rs],
                       "noop_roundtrip_ms": statistics.median(r["noop_roundtrip_ms"] for r in rs),
                       "replay_ms_per_task": statistics.median(r["replay_ms_per_task"] for r in rs),
                       "replay_ms_per_run": statistics.median(r["replay_ms_per_run"] for r in rs),
                       "executor_busy_share": [r["executor_busy_share"] for r in rs]} if m != "seq" else {})}
               for m, rs in by_mode.items()}
    pairs = {}
    modes = list(by_mode)
    for i, a in enumerate(modes):
        for b in modes[i:]:
            for ra in by_mode[a]:
                for rb in by_mode[b]:
                    if a == b and ra["round"] >= rb["round"]:
                        continue
                    pairs[f"{a}#{ra['round']} vs {b}#{rb['round']}"] = agreement(ra["paired"], rb["paired"])
    # Per pair of modes: the median over round pairs (same mode: different rounds only).
    groups: dict[str, list[dict]] = {}
    for key, v in pairs.items():
        a, b = (part.split("#")[0] for part in key.split(" vs "))
        if v.get("pairs"):
            groups.setdefault(f"{a} vs {b}", []).append(v)
    by_pair = {g: {"median_abs_log_diff": round(statistics.median(v["median_abs_log_diff"] for v in vs), 4),
                   "p90_abs_log_diff": round(statistics.median(v["p90_abs_log_diff"] for v in vs), 4),
                   "same_side_of_0.95": round(statistics.median(v["same_side_of_0.95"] for v in vs), 3),
                   "comparisons": len(vs)}
               for g, vs in groups.items()}
    levels = {m: round(statistics.median(x for r in rs for c in r["paired"].values() for x in c.values()), 4)
              for m, rs in by_mode.items()}
    doc = {"workload": str(wl.root), "queries": len(wl), "cpus": os.cpu_count(), "duckdb": duckdb.__version__,
           "config": vars(args), "summary": summary, "agreement_by_modes": by_pair,
           "median_paired_ratio": levels, "agreement": pairs, "results": results}
    print(json.dumps({"summary": summary, "agreement_by_modes": by_pair, "median_paired_ratio": levels}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=1, default=str))


if __name__ == "__main__":
    main()
