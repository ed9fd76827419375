"""Do setting arms carry over to templates never measured? (No tree, no parse, no EXPLAIN.)

Usage: python benchmarks/arm_transfer.py WORKLOAD [--rounds 3] [--json OUT]

A setting arm (the text as written, one DuckDB optimizer rule off: the plan book's
``ARMS``) costs nothing to plan, so if a first-seen query's arm could be picked from the
text alone, the cold path would gain without planning. This measures the native text and
each arm, interleaved ``rounds`` times, on every query (a timed-out arm counts 3x native),
then asks what a first stage could have taken:

- each arm applied to every query, and the oracle (the best arm per query, measured);
- leave one template out: a query takes the arm its nearest templates (Jaccard
  similarity of the catalog tables the texts name, at least ``threshold``; at least
  ``min_neighbours`` of them) all ran faster with, by a mean of ``margin`` in log ratio
  at least; otherwise native. The query's own runs only score the choice.

Results are checked against native (order-insensitive fingerprints).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
import time

from lqo.tune.trials import ARMS
from lqo.engine.harness import run_interleaved
from lqo.engine.run_result import median_latency
from lqo.sql.catalog import Catalog
from lqo.workloads.workload import Workload

_WORD = re.compile(r"[a-z_][a-z0-9_]*")
THRESHOLDS = (0.5, 0.6, 0.75, 0.9, 1.0)
MIN_NEIGHBOURS = (1, 2, 3)
MARGINS = (0.02, 0.05, 0.10)


def measure(wl: Workload, rounds: int) -> dict[str, dict]:
    con = wl.connect()
    out: dict[str, dict] = {}
    for q in wl:
        (first,) = run_interleaved(con, [(q.sql, False)], repeats=1, warmup=1)
        limit_s = max(1.0, 3 * (median_latency(first) or 0) / 1000)
        variants = [(q.sql, False)] + [(q.sql, False, (a,)) for a in ARMS]
        runs = run_interleaved(con, variants, repeats=rounds, warmup=0, timeout_s=limit_s)
        native = median_latency(runs[0]) or 0.0
        reference = runs[0][0].fingerprint
        row: dict = {"native_ms": native, "arms_ms": {}, "wrong": []}
        for arm, rs in zip(ARMS, runs[1:]):
            ok = bool(rs) and all(r.ok for r in rs)
            row["arms_ms"][arm] = median_latency(rs) if ok else None
            if ok and rs[0].fingerprint != reference:
                row["wrong"].append(arm)
        out[q.id] = row
        ratios = {a: round(ms / native, 2) if ms else None for a, ms in row["arms_ms"].items()}
        print(f"{q.id:<8} {native:8.1f} ms  {ratios}", file=sys.stderr, flush=True)
    con.close()
    return out


def arm_ms(row: dict, arm: str | None) -> float:
    if arm is None:
        return row["native_ms"]
    ms = row["arms_ms"][arm]
    return 3 * row["native_ms"] if ms is None or arm in row["wrong"] else ms


def log_ratio(row: dict, arm: str) -> float:
    return math.log(arm_ms(row, arm) / row["native_ms"])


def table_sets(wl: Workload) -> dict[str, frozenset[str]]:
    con = wl.connect()
    tables = Catalog.from_connection(con).tables
    con.close()
    return {q.id: frozenset(w for w in _WORD.findall(q.sql.lower()) if w in tables) for q in wl}


def nearest_template_policy(matrix: dict, sets: dict, threshold: float, min_neighbours: int,
                            margin: float) -> dict[str, str | None]:
    choice: dict[str, str | None] = {}
    for q, tables in sets.items():
        near = [o for o in sets if o != q and tables | sets[o]
                and len(tables & sets[o]) / len(tables | sets[o]) >= threshold]
        choice[q] = None
        if len(near) < min_neighbours:
            continue
        logs = {a: [log_ratio(matrix[o], a) for o in near] for a in ARMS}
        best = min(ARMS, key=lambda a: sum(logs[a]))
        if sum(logs[best]) / len(near) <= -margin and max(logs[best]) < 0:
            choice[q] = best
    return choice


def summarise(matrix: dict, sets: dict) -> dict:
    native = sum(r["native_ms"] for r in matrix.values())

    def total(pick) -> dict:
        ms = {q: arm_ms(r, pick(q)) for q, r in matrix.items()}
        ratios = [ms[q] / r["native_ms"] for q, r in matrix.items()]
        return {"ratio": round(sum(ms.values()) / native, 4),
                "geomean": round(math.exp(sum(map(math.log, ratios)) / len(ratios)), 4),
                "worst": round(max(ratios), 3)}

    every = {a: total(lambda q, a=a: a) for a in ARMS}
    oracle = total(lambda q: min([None, *ARMS], key=lambda a: arm_ms(matrix[q], a)))
    policies = []
    for thr, k, margin in itertools.product(THRESHOLDS, MIN_NEIGHBOURS, MARGINS):
        choice = nearest_template_policy(matrix, sets, thr, k, margin)
        taken = {q: a for q, a in choice.items() if a}
        policies.append({"threshold": thr, "min_neighbours": k, "margin": margin, **total(choice.get),
                         "applied": {q: [a, round(arm_ms(matrix[q], a) / matrix[q]["native_ms"], 3)]
                                     for q, a in sorted(taken.items())}})
    return {"queries": len(matrix), "native_ms": round(native, 1), "every_query": every, "oracle": oracle,
            "nearest_template": policies, "wrong": {q: r["wrong"] for q, r in matrix.items() if r["wrong"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    start = time.perf_counter()
    matrix = measure(wl, args.rounds)
    summary = summarise(matrix, table_sets(wl))
    print(f"{summary['queries']} queries, native {summary['native_ms'] / 1000:.1f} s")
    for arm, t in summary["every_query"].items():
        print(f"  every query {arm:<28} {t['ratio']:.3f}x  geomean {t['geomean']:.3f}  worst {t['worst']:.2f}x")
    print(f"  oracle (best arm per query, measured) {summary['oracle']['ratio']:.3f}x")
    best = min(summary["nearest_template"], key=lambda p: p["ratio"])
    worst = max(summary["nearest_template"], key=lambda p: p["ratio"])
    print(f"  nearest templates, {len(summary['nearest_template'])} settings: best {best['ratio']:.4f}x "
          f"(threshold {best['threshold']}, >= {best['min_neighbours']}, margin {best['margin']}: "
          f"{len(best['applied'])} queries), worst {worst['ratio']:.4f}x")
    print(f"  wrong results: {sum(len(w) for w in summary['wrong'].values())}")
    if args.json:
        out = {"command": "python " + " ".join(sys.argv), "rounds": args.rounds,
               "elapsed_s": round(time.perf_counter() - start, 1), "summary": summary, "matrix": matrix}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
