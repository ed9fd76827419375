"""Rewrites DuckDB's optimizer does not make: do they pay? (lqo.sql.rewrites)

Usage: python benchmarks/rewrites.py WORKLOAD [--templates q01 ..] [--instances 3] [--rounds 5]
           [--families cte decorrelate eager_agg] [--json OUT] [--append]

WORKLOAD holds several instances per template (``lqo workload vary``). Per template, the
generator (:func:`lqo.sql.rewrites.rewrites`) runs on every instance's text; a candidate
is a rewrite label (family and site, e.g. ``cte:ssr=materialized``). Candidates whose
physical plan (EXPLAIN JSON, estimates dropped) equals native's on the first instance
are dropped: they run native's plan. Screening (by process CPU time): one interleaved round of native and every
candidate on the first instance, cut at 3x native's latency; a wrong result (fingerprint
other than native's) disqualifies. Then per family the best-screening candidate, native
and a *placebo* (the native text again, as an arm: what best-of-two noise "gains") run in
paired interleaved rounds (1 warm-up, ``--rounds`` rounds) on each of the template's first
``--instances`` instances; every run's result must equal native's.

Reported per family: the templates where it applies (a candidate with a plan of its own),
per template the ratio of the finalist's total (median per instance) to native's, and the
family's oracle over all templates measured (per instance the lower of native and the
finalist, as a ratio of totals over native's), next to the placebo's. Wall-clock latency
(planning included) and process CPU time (``getrusage``: all DuckDB threads) both.
``--append`` keeps the templates already in ``--json`` (pieces of one run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import duckdb
from paired import Variant, interleave, med

from lqo.engine.harness import Harness
from lqo.sql.catalog import Catalog
from lqo.sql.rewrites import FAMILIES, rewrites
from lqo.tune.arms import plan_signature
from lqo.workloads.workload import Workload

CUT = 3.0  # screening runs are cut at this many times native's latency (wall: a loaded machine)


def candidates(con: duckdb.DuckDBPyConnection, texts: list[str], cat: dict, families: tuple[str, ...]
               ) -> tuple[dict[str, list[str | None]], dict[str, str]]:
    """label -> the rewrite of each instance (None where it does not apply), and the
    labels dropped with why (same plan as native, DuckDB refuses the text)."""
    per: dict[str, list[str | None]] = {}
    for k, sql in enumerate(texts):
        for rw in rewrites(sql, cat, families):
            per.setdefault(rw.label, [None] * len(texts))[k] = rw.sql
    dropped = {}
    native = plan_signature(con, texts[0])
    for label, rws in list(per.items()):
        first = rws[0]
        sig = plan_signature(con, first) if first is not None else None
        if sig is None:
            dropped[label] = "no plan" if first is not None else "not on the first instance"
            del per[label]
        elif sig == native:
            dropped[label] = "native's plan"
            del per[label]
    return per, dropped


def measure_template(con: duckdb.DuckDBPyConnection, texts: list[str], cat: dict, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    per, dropped = candidates(con, texts, cat, tuple(args.families))
    gen_s = time.perf_counter() - t0
    row: dict[str, Any] = {"applies": sorted(per), "dropped": dropped, "generate_s": round(gen_s, 2)}
    if not per:
        return row
    h = Harness(con)
    warm = [h.run(texts[0], timeout_s=None, profile=False) for _ in range(2)]
    nat_ms, fp = warm[-1].latency_ms, warm[-1].fingerprint
    labels = sorted(per)
    runs = interleave(con, [Variant(t) for t in [texts[0]] + [per[lb][0] or texts[0] for lb in labels]],
                     args.screen_rounds, 0,
                      CUT * nat_ms / 1000)
    nat = med(runs[0], "cpu") or 1.0
    screened: dict[str, float | None] = {}
    for lb, rs in zip(labels, runs[1:]):
        m = med(rs, "cpu")  # CPU time: the work a plan does, whatever else runs
        wrong = any(r.ok and r.fingerprint != fp for r in rs)
        screened[lb] = None if m is None or wrong else round(m / nat, 4)
    row["screened"] = screened
    row["screen_wrong"] = sorted(lb for lb, rs in zip(labels, runs[1:]) if any(r.ok and r.fingerprint != fp for r in rs))
    finalists = {}
    for fam in args.families:
        mine = [lb for lb in labels if lb.startswith(fam + ":") and screened[lb] is not None]
        if mine:
            finalists[fam] = min(mine, key=lambda lb: screened[lb])  # type: ignore[arg-type, return-value]
    row["finalists"] = finalists
    row["final"] = final(con, texts, per, finalists, args.rounds)
    return row


def final(con: duckdb.DuckDBPyConnection, texts: list[str], per: dict[str, list[str | None]],
          finalists: dict[str, str], rounds: int) -> list[dict]:
    """Per instance: native, the placebo and every finalist, paired and interleaved."""
    out = []
    for k, sql in enumerate(texts):
        native = Harness(con).run(sql, timeout_s=None, profile=False)
        arms = [sql, sql] + [per[lb][k] or sql for lb in finalists.values()]
        runs = interleave(con, [Variant(t) for t in arms], rounds, 1, 3 * native.latency_ms / 1000 + 1)
        inst: dict[str, Any] = {"wrong": [], "not_applied": [lb for lb in finalists.values() if per[lb][k] is None]}
        for metric in ("wall", "cpu"):
            inst[metric] = {"native": med(runs[0], metric), "placebo": med(runs[1], metric)}
            for lb, rs in zip(finalists.values(), runs[2:]):
                inst[metric][lb] = med(rs, metric)
        for name, rs in zip(["placebo"] + list(finalists.values()), runs[1:]):
            if any(r.ok and r.fingerprint != native.fingerprint for r in rs):
                inst["wrong"].append(name)
        out.append(inst)
    return out


def summarize(templates: dict, families: list[str], metric: str) -> dict:
    """Per family: templates where it applies, per-template finalist ratio, oracle total."""
    native = 0.0
    tot = {f: 0.0 for f in ["placebo"] + families}
    per_t: dict[str, dict[str, float]] = {f: {} for f in ["placebo"] + families}
    wrong = 0
    for t, row in templates.items():
        fin = row.get("finalists", {})
        rows = row.get("final")
        if rows is None:
            continue  # nothing applies: native for every family, left out of the totals' base
        nsum = {f: 0.0 for f in tot}
        nt = 0.0
        for inst in rows:
            m = inst[metric]
            n = m["native"]
            if n is None:
                continue
            wrong += len(inst["wrong"])
            nt += n
            for f in tot:
                lb = "placebo" if f == "placebo" else fin.get(f)
                x = m.get(lb) if lb is not None and lb not in inst["wrong"] else None
                nsum[f] += min(n, x) if x is not None else n
                if lb is not None:
                    per_t[f].setdefault(t, 0.0)
                    per_t[f][t] += x if x is not None else math.inf
        native += nt
        for f in tot:
            tot[f] += nsum[f]
            if t in per_t[f] and nt:
                per_t[f][t] = round(per_t[f][t] / nt, 3)
    return {"native_ms": round(native, 1), "wrong": wrong,
            "applies": {f: len(per_t[f]) for f in families},
            "per_template": per_t,
            "oracle_total": {f: round(tot[f] / native, 4) for f in tot} if native else {}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--templates", nargs="*")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--screen-rounds", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--json")
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    wl = Workload.load(args.workload)
    con = wl.connect()
    cat = Catalog.from_connection(con).tables
    by_t = wl.by_template()
    out: dict[str, Any] = {"workload": os.path.abspath(args.workload), "args": vars(args), "duckdb": duckdb.__version__,
                           "templates": {}, "loads": []}
    if args.append and args.json and os.path.exists(args.json):
        with open(args.json) as fh:
            out = json.load(fh)
        out.setdefault("loads", [])
    for t in args.templates or sorted(by_t):
        texts = [q.sql for q in by_t[t][: args.instances]]
        load0 = os.getloadavg()
        row = measure_template(con, texts, cat, args)
        row["load"] = [round(load0[0], 2), round(os.getloadavg()[0], 2)]
        out["templates"][t] = row
        print(t, json.dumps({k: row.get(k) for k in ("applies", "screened", "finalists")}), file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    out["loads"].append(os.getloadavg())
    out["summary"] = {m: summarize(out["templates"], list(FAMILIES), m) for m in ("wall", "cpu")}
    print(json.dumps({m: {k: v for k, v in s.items() if k != "per_template"} for m, s in out["summary"].items()},
                     indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
