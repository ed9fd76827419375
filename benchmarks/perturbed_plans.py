"""Perturbed-cardinality plans (Kepler-style row-count evolution): what would they add?

    python benchmarks/perturbed_plans.py WORKLOAD --json OUT.json [--templates q03 q07 ..]
        [--draws 16] [--max-new 24] [--screen-rounds 1] [--rounds 3] [--budget-s 560] [--seed 0]
    python benchmarks/perturbed_plans.py --summarize OUT.json [OUT2.json ..]

WORKLOAD holds several instances per template (``lqo workload vary``); the first three
of each template are its tuning instances (what ``lqo tune`` would tune on). Per template
whose query lqo may reorder:

- ``current``: every candidate ``lqo tune`` generates for the first tuning instance
  (``Trials._candidates``: rule arms, settings arms where their EXPLAIN changes, and the
  trees: star, ``dp``, ``truecard``, small blocks, flips, random), as lqo tune proposes them;
- ``perturbed``: trees from lqo's C_out dynamic programming (``lqo.trees.dp``) over its own
  estimates with join estimates scaled by 10^k, k in -3..3 (``perturbation_plans``): (a)
  one join at a time (each join of the ``dp`` tree, each k != 0: a single row-count
  perturbation, Kepler's step), (b) ``draws`` random draws scaling every join (relation
  subset of 2 or more) by its own random 10^k; the trees deduplicated against each other,
  native's and every ``current`` tree; at most ``max-new`` of them, single perturbations
  first. A template where none is left is skipped (the family adds nothing there).

Screening: ``screen-rounds`` interleaved rounds of native and every candidate of both
families on the first tuning instance, each cut at 1.5x native's median; a result other
than native's marks the candidate wrong. Then native, a *placebo* (the native text again:
what best-of-N noise "gains"), the best-screening ``current`` candidate and the best
``perturbed`` tree run in paired, interleaved rounds (1 warm-up + ``rounds``) on each of the
template's three tuning instances, each result checked against native's in the same rounds.

Oracle per family, per instance the lower of native's median and the family's finalist's,
as a ratio of totals over native's: ``current``; ``current+perturbed``; and, the control
for a third noisy option, ``current+placebo``. The perturbed family pays only if
``current+perturbed`` is clearly below ``current+placebo``. Every run also records the
process's CPU time (``getrusage``: every DuckDB thread), the work a plan does whatever
else runs on the machine; the summary gives both.

The JSON is written after every template; a rerun with the same ``--json`` skips templates
already there, so a long run goes in pieces (``--budget-s``: start no template after this).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

from paired import Variant, interleave, med

from lqo.book.book import BookEntry, Candidate
from lqo.engine.harness import Harness
from lqo.errors import LqoError
from lqo.estimates.cardinality import Estimator
from lqo.estimates.stats import DatabaseStats
from lqo.sql.catalog import Catalog
from lqo.trees.dp import perturbation_plans
from lqo.trees.plan import Plan
from lqo.trees.query import prepare
from lqo.tune.inputs import TemplateInstances, TuneConfig
from lqo.tune.trials import Trials, variant
from lqo.workloads.workload import Workload

CUT = 1.5  # screening runs are cut at this many times native's median


def families(con: Any, catalog: Catalog, stats: DatabaseStats, t: TemplateInstances, native_ms: float,
             args: argparse.Namespace) -> tuple[list[Candidate], list[Candidate], dict] | str:
    """The ``current`` and ``perturbed`` candidates of ``t`` and their counts (the same
    for the same ``--seed``), or why it has no trees."""
    sql = t.tune[0].sql
    pq = prepare(sql, con, catalog)
    if not pq.forceable or not pq.free_blocks:
        return pq.reason or "no block lqo may reorder"
    entry = BookEntry(t.key, t.label, sql)
    entry.native_ms[t.tune[0].id] = native_ms
    trials = Trials(con, catalog, stats, None, None, TuneConfig(seed=args.seed))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    current = trials._candidates(t, entry, random.Random(args.seed))
    gen_current_s = time.perf_counter() - t0
    native = pq.native_plan
    seen = {native} | {Plan.from_json(c.plan) for c in current if c.kind == "tree" and c.plan}
    t0 = time.perf_counter()
    est = Estimator(stats, pq.graph)
    raw = perturbation_plans(native, pq.free_blocks, lambda b: partial(est.join_rows, b), args.draws,
                             random.Random(args.seed))
    gen_perturbed_s = time.perf_counter() - t0
    distinct = {p for _, p in raw}
    fresh: list[tuple[str, Plan]] = []
    for scheme, p in raw:
        if p not in seen:
            seen.add(p)
            fresh.append((scheme, p))
    fresh = fresh[: args.max_new]
    perturbed = [Candidate(f"tree:{p.key[:12]}", "tree", (), p.to_json(), None, f"perturbed:{s}") for s, p in fresh]
    counts = {"native_ms": native_ms, "current": len(current), "current_trees": sum(c.kind == "tree" for c in current),
              "perturbed_raw": len(raw), "perturbed_distinct": len(distinct), "perturbed_new": len(perturbed),
              "gen_current_s": round(gen_current_s, 2), "gen_perturbed_s": round(gen_perturbed_s, 3)}
    return current, perturbed, counts


def explore(con: Any, catalog: Catalog, stats: DatabaseStats, t: TemplateInstances, args: argparse.Namespace) -> dict:
    """Both families of ``t``'s first tuning instance, screened; the finalists measured."""
    sql = t.tune[0].sql
    h = Harness(con)
    warm = [h.run(sql, timeout_s=None, profile=False) for _ in range(2)]
    native_ms, fp = warm[-1].latency_ms, warm[-1].fingerprint
    fam = families(con, catalog, stats, t, native_ms, args)
    if isinstance(fam, str):
        return {"native_ms": native_ms, "skipped": fam}
    current, perturbed, counts = fam
    if not perturbed:  # nothing the current candidates lack: the family adds nothing here
        return {**counts, "skipped": "no perturbed tree beyond the current candidates"}
    cands = current + perturbed
    runs = interleave(con, [Variant(sql)] + [Variant(*variant(c, sql, catalog)) for c in cands], args.screen_rounds, 0,
                      CUT * native_ms / 1000)
    screened: dict[str, dict] = {}
    for metric in ("wall", "cpu"):
        nat = med(runs[0], metric) or native_ms
        for c, rs in zip(cands, runs[1:]):
            m = med(rs, metric)
            wrong = any(r.ok and r.fingerprint != fp for r in rs)
            screened.setdefault(c.id, {"origin": c.origin, "wrong": wrong})[metric] = (
                None if m is None or wrong else round(m / nat, 4))

    def best(family: list[Candidate]) -> Candidate | None:
        ok = [c for c in family if screened[c.id][args.metric] is not None]
        return min(ok, key=lambda c: screened[c.id][args.metric]) if ok else None

    fin = {"current": best(current), "perturbed": best(perturbed)}
    return {
        **counts, "screened": screened,
        "finalists": {k: (None if c is None else {"id": c.id, "origin": c.origin}) for k, c in fin.items()},
        "final": final(con, catalog, t, fin, args.rounds),
    }


def final(con: Any, catalog: Catalog, t: TemplateInstances, fin: dict[str, Candidate | None], rounds: int) -> dict:
    """Paired interleaved rounds of native, the placebo and each finalist, per tuning instance."""
    names = [k for k, c in fin.items() if c is not None]
    out: dict[str, Any] = {}
    for q in t.tune:
        native = Harness(con).run(q.sql, timeout_s=None, profile=False)
        vs = [(q.sql, False, (), ()), (q.sql, False, (), ())] + [variant(fin[k], q.sql, catalog) for k in names]
        runs = interleave(con, [Variant(*v) for v in vs], rounds, 1, max(0.2, 3 * native.latency_ms / 1000),
                          shuffle=True)
        row: dict[str, Any] = {"wrong": []}
        for metric in ("wall", "cpu"):
            row[metric] = {"native": med(runs[0], metric), "placebo": med(runs[1], metric)}
            for k, rs in zip(names, runs[2:]):
                row[metric][k] = med(rs, metric)
        for k, rs in zip(names, runs[2:]):
            if any(r.ok and r.fingerprint != native.fingerprint for r in rs):
                row["wrong"].append(k)
        out[q.id] = row
    return out


def confirm(con: Any, catalog: Catalog, stats: DatabaseStats, t: TemplateInstances, found: dict,
            args: argparse.Namespace) -> dict:
    """The finalists ``found`` for ``t`` in a first run, measured again (``--rounds``)."""
    native_ms = Harness(con).run(t.tune[0].sql, timeout_s=None, profile=False).latency_ms
    fam = families(con, catalog, stats, t, native_ms, args)
    if isinstance(fam, str):
        return {"skipped": fam}
    by_id = {c.id: c for c in fam[0] + fam[1]}
    fin = {k: by_id.get(v["id"]) if v else None for k, v in found["finalists"].items()}
    return {"finalists": found["finalists"], "final": final(con, catalog, t, fin, args.rounds)}


def summarize(templates: dict, metric: str) -> dict:
    """Oracles over every instance measured: sum of per-instance min(native, options) / sum native."""
    fams = {"placebo": ("placebo",), "current": ("current",), "perturbed": ("perturbed",),
            "current+placebo": ("current", "placebo"), "current+perturbed": ("current", "perturbed")}
    tot = dict.fromkeys(fams, 0.0)
    native = 0.0
    wrong = instances = 0
    wins: list[dict] = []
    for name, ex in templates.items():
        for qid, row in ex.get("final", {}).items():
            r = row[metric]
            n = r["native"]
            if n is None:
                continue
            wrong += len(row["wrong"])
            instances += 1
            native += n
            for f, opts in fams.items():
                xs = [r.get(o) for o in opts if o not in row["wrong"]]
                tot[f] += min([n] + [x for x in xs if x is not None])
            c, p = r.get("current"), r.get("perturbed")
            if p is not None and "perturbed" not in row["wrong"] and p < min(n, c if c is not None else math.inf):
                wins.append({"template": name, "instance": qid, "perturbed": round(p / n, 3),
                             "current": None if c is None else round(c / n, 3), "placebo": round(r["placebo"] / n, 3)
                             if r["placebo"] is not None else None})
    return {"instances": instances, "native_ms": round(native, 1), "wrong": wrong,
            "oracle_total": {f: round(v / native, 4) for f, v in tot.items()} if native else {},
            "perturbed_beats_current_and_native": wins}


def per_template(templates: dict, metric: str) -> dict:
    """Per template: totals over its instances of current / perturbed / placebo finalists over native."""
    out = {}
    for name, ex in templates.items():
        rows = [row[metric] for row in ex.get("final", {}).values() if row[metric]["native"] is not None]
        if not rows:
            continue
        n = sum(r["native"] for r in rows)
        out[name] = {k: round(sum(r[k] for r in rows) / n, 3) if all(r.get(k) is not None for r in rows) else None
                     for k in ("placebo", "current", "perturbed")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?")
    ap.add_argument("--templates", nargs="*")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--screen-rounds", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--metric", choices=("wall", "cpu"), default="cpu", help="what screening picks finalists by")
    ap.add_argument("--budget-s", type=float, default=560.0, help="start no template after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--stats", help="lqo's statistics cache (default: next to --json)")
    ap.add_argument("--summarize", nargs="+", metavar="OUT.json", help="print the summary of finished runs")
    ap.add_argument("--confirm", nargs="+", metavar="TEMPLATE",
                    help="measure these templates' finalists in --json again (--rounds), into its 'confirm'")
    args = ap.parse_args()
    if args.summarize:
        for path in args.summarize:
            d = json.loads(Path(path).read_text())
            print(path, json.dumps({m: summarize(d["templates"], m) for m in ("wall", "cpu")}, indent=1))
            print(json.dumps(per_template(d["templates"], "wall")))
        return
    if not args.workload or not args.json:
        ap.error("WORKLOAD and --json are required (or --summarize)")
    wl = Workload.load(args.workload)
    con = wl.connect()
    catalog = Catalog.from_connection(con)
    stats = DatabaseStats.load_or_build(con, catalog, args.stats or Path(args.json).with_suffix(".stats.json"))
    out_path = Path(args.json)
    out: dict[str, Any] = json.loads(out_path.read_text()) if out_path.is_file() else {
        "workload": os.path.abspath(args.workload), "args": vars(args), "templates": {}, "pieces": []}
    by_t = wl.by_template()
    if args.confirm:
        done = out.setdefault("confirm", {})
        for name in args.confirm:
            t = TemplateInstances(name, name, by_t[name][: args.instances], [])
            load0 = os.getloadavg()[0]
            done[name] = {**confirm(con, catalog, stats, t, out["templates"][name], args), "rounds": args.rounds,
                          "load": [load0, os.getloadavg()[0]]}
            print(name, json.dumps(per_template({name: done[name]}, "wall")),
                  json.dumps(per_template({name: done[name]}, "cpu")), file=sys.stderr, flush=True)
            out_path.write_text(json.dumps(out, indent=1))
        return
    t_start = time.perf_counter()
    piece = {"load_start": os.getloadavg(), "templates": []}
    out["pieces"].append(piece)
    for name in args.templates or sorted(by_t):
        if name in out["templates"]:
            continue
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget spent: stopping before {name}", file=sys.stderr)
            break
        qs = by_t[name][: args.instances]
        t = TemplateInstances(name, name, qs, [])
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            ex = explore(con, catalog, stats, t, args)
        except LqoError as err:
            ex = {"skipped": f"{type(err).__name__}: {err}"}
        ex["elapsed_s"] = round(time.perf_counter() - t0, 1)
        ex["load"] = [load0, os.getloadavg()[0]]
        out["templates"][name] = ex
        piece["templates"].append(name)
        brief = {k: ex.get(k) for k in ("skipped", "current", "perturbed_distinct", "perturbed_new", "finalists")}
        print(f"{name}: {json.dumps(brief)} {ex['elapsed_s']} s; {json.dumps(per_template({name: ex}, 'wall'))}",
              file=sys.stderr, flush=True)
        piece["load_end"] = os.getloadavg()
        out_path.write_text(json.dumps(out, indent=1))
    out["summary"] = {m: summarize(out["templates"], m) for m in ("wall", "cpu")}
    out_path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"], indent=1))


if __name__ == "__main__":
    main()
