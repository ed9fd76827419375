"""How fast is template identity? ``template_key`` vs the two tokenizers it could use.

    python benchmarks/template_key.py WORKLOAD [--rounds 5]

Times, per query text of WORKLOAD (each repeated ``--rounds`` times, interleaved):
DuckDB's ``duckdb.tokenize``, sqlglot's tokenizer (compiled with ``sqlglot[c]``) and the
whole ``lqo.book.template.template_key``. Prints median and p99 in ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time

import duckdb
from sqlglot.dialects.duckdb import DuckDB

from lqo.book.template import template_key
from lqo.workloads.workload import Workload


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    texts = [q.sql for q in Workload.load(args.workload)]
    tokenizer = DuckDB().tokenizer_class()
    fns = {"duckdb.tokenize": duckdb.tokenize, "sqlglot tokenize": tokenizer.tokenize, "template_key": template_key}
    times = {k: [] for k in fns}
    gc.collect()
    gc.freeze()
    for _ in range(args.rounds):
        for sql in texts:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(sql)
                times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {"median_ms": round(statistics.median(ts), 4), "p99_ms": round(ts[int(0.99 * (len(ts) - 1))], 4)}
    print(json.dumps({"texts": len(texts), "rounds": args.rounds, **out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
