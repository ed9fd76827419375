"""Does serving a template through one prepared statement beat the literal text?

    python benchmarks/prepared_vs_literal.py WORKLOAD --rounds 5 [--limit 40] [--json OUT]

Per template (instances sharing a template key): ``PREPARE`` the first instance's text
with every literal replaced by a parameter, once, outside the timing; then for each
other instance run, interleaved, the literal text and ``EXECUTE`` with its constants.
Templates whose parameterised text DuckDB cannot prepare (a literal where a parameter
is not allowed, e.g. after ``date`` or ``interval``) are reported and skipped. Results
must be identical (fingerprints). Prints the per-template ratio prepared / literal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import sys
from collections import defaultdict

import duckdb

from lqo.book.template import template_key, tokens
from lqo.engine.run_result import fingerprint_rows
from lqo.workloads.workload import Workload


def parameterise(sql: str) -> str:
    out, pos = [], 0
    for i, (start, end, _text, _lit) in enumerate(t for t in tokens(sql) if t[3]):
        out.append(sql[pos:start])
        out.append(f"${i + 1}")
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="at most this many templates (0: all)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    wl = Workload.load(args.workload)
    groups = defaultdict(list)
    for q in wl:
        groups[template_key(q.sql).key].append(q)
    con = wl.connect()
    rows, skipped = [], {}
    for n, (key, qs) in enumerate(sorted(groups.items(), key=lambda kv: kv[1][0].id)):
        if args.limit and len(rows) >= args.limit:
            break
        qs.sort(key=lambda q: q.id)
        name = f"s{n}"
        try:
            con.execute(f"PREPARE {name} AS {parameterise(qs[0].sql)}")
        except duckdb.Error as err:
            skipped[qs[0].template] = str(err).splitlines()[0][:100]
            continue
        lit, prep, same = [], [], True
        for q in qs[1:]:
            lits = template_key(q.sql).literals
            execute = f"EXECUTE {name}({', '.join(lits)})" if lits else f"EXECUTE {name}"
            for rnd in range(args.rounds + 1):
                timed = {}
                for which in (("lit", "prep") if rnd % 2 else ("prep", "lit")):  # alternate who goes first
                    t0 = time.perf_counter()
                    timed[which] = con.execute(q.sql if which == "lit" else execute).fetchall()
                    timed[which + "_s"] = time.perf_counter() - t0
                a, b = timed["lit"], timed["prep"]
                if rnd:
                    lit.append(timed["lit_s"])
                    prep.append(timed["prep_s"])
                same &= fingerprint_rows(a) == fingerprint_rows(b)
        if lit:
            r = statistics.median(prep) / statistics.median(lit)
            rows.append({"template": qs[0].template, "literal_ms": 1000 * statistics.median(lit),
                         "prepared_ms": 1000 * statistics.median(prep), "ratio": r, "same_result": same})
            print(f"{qs[0].template:<6} literal {rows[-1]['literal_ms']:8.2f} ms  prepared {rows[-1]['prepared_ms']:8.2f} ms"
                  f"  ratio {r:.3f}  {'same' if same else 'DIFFERENT'}", flush=True)
    con.close()
    ratios = [r["ratio"] for r in rows]
    summary = {"templates": len(rows), "skipped": len(skipped), "geomean_ratio": statistics.geometric_mean(ratios) if ratios else None,
               "total_ratio": sum(r["prepared_ms"] for r in rows) / sum(r["literal_ms"] for r in rows) if rows else None,
               "different_results": sum(not r["same_result"] for r in rows)}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"summary": summary, "rows": rows, "skipped": skipped}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
