"""What choosing per instance among a template's verified plans could add to the book.

    python benchmarks/per_instance_choice.py RESULTS.json MODEL_DIR WORKLOAD

RESULTS.json is ``benchmarks/plan_book.py``'s output for MODEL_DIR (it measures, in the
same interleaved rounds as native and lqo, every candidate of a template that earned an
acceptance test on each held-out instance, and names the verified ones). Per held-out
instance this compares, with look-up time left out (execution only):

- ``single``: the book's one verified choice per template (what lqo serves);
- ``best_verified``: the best of native and the template's verified plans, per instance,
  known after the fact: the ceiling of any per-instance chooser that stays inside the
  verified set;
- ``nearest``: a chooser that costs microseconds: the verified option (native included)
  fastest on the tuning instance whose literals are nearest to this instance's (numbers
  and dates by distance over the tuning instances' span, other literals equal or not),
  from the tuning runs in MODEL_DIR's experience store;
- ``oracle``: the best of native and *every* tested candidate (verified or not);
- ``rejected_better``: per template, the one candidate the acceptance rule turned down
  whose held-out total beats the served choice's by the most, where any does (what a
  looser rule could have won, noise included).

Prints the totals as ratios to native and writes them as JSON next to RESULTS.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import duckdb

from lqo.book.book import PlanBook
from lqo.book.template import template_key
from lqo.tune.trials import recorded_plan
from lqo.store.keys import canonical_plan_json
from lqo.workloads.workload import Workload


def as_number(literal: str) -> float | None:
    s = str(literal).strip("'")
    try:
        return float(s)
    except ValueError:
        pass
    try:
        return float(datetime.date.fromisoformat(s).toordinal())
    except ValueError:
        return None


def distance(a, b, spans) -> float:
    if len(a) != len(b):
        return float("inf")
    d = 0.0
    for x, y, span in zip(a, b, spans):
        nx, ny = as_number(x), as_number(y)
        d += abs(nx - ny) / span if nx is not None and ny is not None else float(x != y)
    return d


def tuning_medians(model: Path) -> tuple[dict, dict]:
    """Median latency per (query id, recorded plan JSON; None = native) and query texts."""
    con = duckdb.connect(str(model / "experience.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT q.query_id, q.sql, p.plan_json, r.latency_ms FROM runs r "
                           "JOIN plans p USING (plan_key) JOIN queries q ON q.query_key = p.query_key "
                           "WHERE NOT r.timed_out AND r.error IS NULL").fetchall()
    finally:
        con.close()
    lat, sqls = defaultdict(list), {}
    for qid, sql, pj, ms in rows:
        lat[(qid, pj)].append(ms)
        sqls[qid] = sql
    return {k: statistics.median(v) for k, v in lat.items()}, sqls


def nearest_pick(entry, verified: list[str], mine: list, med: dict, sqls: dict) -> str | None:
    ratio = {}
    for qid in entry.instances:
        native = med.get((qid, None))
        if native is None or qid not in sqls:
            continue
        ratio[qid] = {"native": 1.0}
        for c in verified:
            ms = med.get((qid, canonical_plan_json(recorded_plan(entry.candidates[c]))))
            if ms is not None:
                ratio[qid][c] = ms / native
    if not ratio:
        return None
    lits = {qid: template_key(sqls[qid]).literals for qid in ratio}
    spans = []
    for column in zip(*lits.values()):
        nums = [as_number(v) for v in column]
        ok = all(n is not None for n in nums) and max(nums) > min(nums)
        spans.append(max(nums) - min(nums) if ok else 1.0)
    near = min(ratio, key=lambda q: distance(mine, lits[q], spans))
    return min(ratio[near], key=ratio[near].get)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results")
    ap.add_argument("model")
    ap.add_argument("workload")
    args = ap.parse_args(argv)
    model = Path(args.model)
    held = next(h for h in json.loads(Path(args.results).read_text())["held_out"]
                if Path(h["model"]).resolve() == model.resolve() or Path(h["model"]).name == model.name)
    by_id = {r["id"]: r for r in held["queries"]}
    if not all("candidate_ms" in r for r in by_id.values()):
        raise SystemExit("results were written before plan_book.py recorded per-candidate times: rerun it")
    book, wl = PlanBook.load(model), Workload.load(args.workload)
    med, sqls = tuning_medians(model)
    total: dict[str, float] = defaultdict(float)
    multi = differ = 0
    for e in book.entries.values():
        verified = [c for c, v in e.verdicts.items() if v.accepted and c in e.candidates]
        multi += len(verified) >= 2
        rows = [by_id[q] for q in e.held_out if q in by_id]
        served = sum(r["lqo_exec_ms"] if r["lqo_exec_ms"] is not None else r["native_ms"] for r in rows)
        rejected = [sum(ms) for c, v in e.verdicts.items() if not v.accepted
                    for ms in [[r["candidate_ms"].get(c) for r in rows]] if rows and None not in ms]
        total["rejected_better"] += min([served, *rejected])
        for qid in e.held_out:
            r = by_id.get(qid)
            if r is None:
                continue
            single = r["lqo_exec_ms"] if r["lqo_exec_ms"] is not None else r["native_ms"]
            options = {"native": r["native_ms"], **{c: r["candidate_ms"].get(c) for c in verified}}
            options = {k: v for k, v in options.items() if v is not None}
            total["native"] += r["native_ms"]
            total["single"] += single
            total["best_verified"] += min(options.values())
            total["oracle"] += r["oracle_ms"]
            pick = nearest_pick(e, verified, template_key(wl.query(qid).sql).literals, med, sqls) \
                if len(verified) >= 2 else None
            total["nearest"] += options.get(pick, single) if pick else single
            differ += pick is not None and pick != e.choice
    out = {"results": args.results, "model": str(model), "instances": len(by_id),
           "templates_with_2_or_more_verified": multi, "nearest_picks_other_than_choice": differ,
           "ratio_to_native": {k: round(v / total["native"], 4) for k, v in total.items() if k != "native"}}
    print(json.dumps(out, indent=1))
    Path(args.results).with_name(Path(args.results).stem + "-per-instance.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
