"""What lqo's protection of DuckDB's optimizer rules costs from 8 threads.

    python benchmarks/threads.py WORKLOAD [--threads 8] [--rounds 5] [--json OUT]

DuckDB's ``disabled_optimizers`` is one setting per database instance, so lqo runs a
statement that needs other rules only while no statement of another mode runs
(``lqo.engine.settings.RuleModes``). This times one pass of TPC-H's 22 queries per
thread (each thread its own cursor of one read-only connection, its own order), in
interleaved rounds, four ways:

- ``native``: plain DuckDB, ``cursor.execute(sql).fetchall()``;
- ``lqo native``: every query through ``Optimized.execute`` as written (the mode lock only);
- ``lqo mixed``: a third each as written, under a setting arm (``join_filter_pushdown``
  off) and as DuckDB's own tree rendered and forced: statements of different modes
  take turns;
- ``mixed, one thread``: the same mixed decisions run by one thread, for scale.

Throughput ratios are against ``native`` of the same round. Results are checked
against native (sorted rows) on the first round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time

import duckdb

from lqo.engine.db import connect_read_only
from lqo.optimized import Optimized
from lqo.sql.catalog import Catalog
from lqo.trees.query import prepare
from lqo.workloads.workload import Workload


def decisions(con: duckdb.DuckDBPyConnection, texts: list[str]) -> list[Optimized]:
    """Per text: as written, an arm, or DuckDB's own tree forced (in turn)."""
    catalog = Catalog.from_connection(con)
    out = []
    for i, sql in enumerate(texts):
        kind = i % 3
        if kind == 2:
            pq = prepare(sql, con, catalog)
            if pq.forceable and pq.free_blocks:
                out.append(Optimized.planned(sql, None, None, 0.0, forced_sql=pq.render(pq.native_plan)))
                continue
            kind = 1
        out.append(Optimized.as_written(sql, None, 0.0, disabled=("join_filter_pushdown",) if kind == 1 else ()))
    return out


def run_threads(con, work: list[list], fn, threads: int) -> tuple[float, list]:
    results: list = [None] * threads
    errors: list = []

    def one(t: int) -> None:
        cur = con.cursor()
        try:
            results[t] = [fn(cur, item) for item in work[t]]
        except Exception as err:  # noqa: BLE001 - reported by the caller
            errors.append(err)
        finally:
            cur.close()

    ts = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", help="a TPC-H workload directory (lqo workload create tpch)")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    wl = Workload.load(args.workload)
    con = connect_read_only(wl.database)
    texts = [q.sql for q in wl]
    decided = decisions(con, texts)
    rng = random.Random(1)
    orders = [rng.sample(range(len(texts)), len(texts)) for _ in range(args.threads)]
    modes = {
        "native": (lambda cur, i: sorted(cur.execute(texts[i]).fetchall(), key=repr), args.threads),
        "lqo native": (lambda cur, i: sorted(Optimized.as_written(texts[i], None, 0.0).execute(cur), key=repr),
                       args.threads),
        "lqo mixed": (lambda cur, i: sorted(decided[i].execute(cur), key=repr), args.threads),
    }
    times: dict[str, list[float]] = {m: [] for m in [*modes, "mixed, one thread"]}
    wrong = 0
    for r in range(args.rounds):
        reference = None
        names = list(modes)
        rng.shuffle(names)
        for name in names:
            fn, n = modes[name]
            s, results = run_threads(con, orders, fn, n)
            times[name].append(s)
            per_query = {i: rows for order, res in zip(orders, results) for i, rows in zip(order, res)}
            if reference is None:
                reference = per_query
            wrong += sum(per_query[i] != reference[i] for i in per_query)
        s, _ = run_threads(con, [[i for o in orders for i in o]], modes["lqo mixed"][0], 1)
        times["mixed, one thread"].append(s)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
    ratios = {k: [v[i] / times["native"][i] for i in range(args.rounds)] for k, v in times.items()}
    out = {
        "workload": args.workload, "threads": args.threads, "rounds": args.rounds, "queries_per_thread": len(texts),
        "forced": sum(d.forced for d in decided), "arms": sum(bool(d.disabled) for d in decided),
        "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "time_ratio_to_native": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
        "wrong": wrong, "duckdb": duckdb.__version__,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
