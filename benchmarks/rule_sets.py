"""Rule sets and physical settings as arms: what would they add? (issue 25, items 1 and 2)

Usage: python benchmarks/rule_sets.py WORKLOAD [--templates q01 q05 ..] [--instances 3]
           [--screen-rounds 1] [--rounds 3] [--beam 3] [--per-level 6] [--max-set 4] [--json OUT]
       python benchmarks/rule_sets.py WORKLOAD --confirm 'q27:rule_a,rule_b|setting=value' .. [--rounds 7]

``--confirm``: re-measure given variants (``|``-separated; each a comma list of rules and
``setting=value``) of a template against native and the placebo, paired and interleaved
on its first ``instances`` instances; nothing is explored.

Per template, on its first instance (a tuning instance), three families of candidates,
every one the text as written (no tree forced):

- ``arms``: what ``lqo tune`` tries today: each rule of ``ARMS`` disabled alone, and
  every pair of them whose two single arms both screened below native;
- ``rulesets`` (AutoSteer-style): the rules among all of DuckDB's optimizer rules whose
  disabling changes the template's EXPLAIN (JSON, estimates dropped), each alone; then
  level by level, the ``beam`` best sets of the last level that screened below 1.05x
  native each grown by one more such rule, kept only where the grown set's EXPLAIN
  differs from every plan tried before for the template (so from each of its subsets
  tried), at most ``per-level`` new sets per level, up to ``max-set`` rules; the ARMS
  pairs count as tried sets too (the family contains today's);
- ``settings``: DuckDB operator settings, a few values each (``SETTINGS``), each alone,
  where its EXPLAIN differs from native's (``dynamic_or_filter_threshold`` acts at run
  time and is always tried).

Screening: ``screen-rounds`` interleaved rounds of native and every candidate of a level,
cut at 2x the native median. Then the finalists (the best-screening candidate of each
family, plus a *placebo*, the native text run as a candidate: what best-of-two noise
"gains") run against native in paired, interleaved rounds (1 warm-up, ``rounds`` rounds)
on each of the template's first ``instances`` instances; each finalist's result must
equal native's (order-insensitive fingerprints). Oracle per family: per instance, the
lower of native's and the family finalist's median, as a ratio of totals over native's.

Every run records its wall-clock latency and the CPU time the process spent on it
(``getrusage``: every DuckDB thread, user + system). On a loaded machine (the 2-core
machines this was run on had a load average of 7-12 from other jobs) wall-clock medians
of a few rounds are noise (the placebo "gained" 0.35-1.7x per instance), while CPU time
is the work a plan does, whatever else runs: screening picks by CPU time, and the
oracle is given in both (``--metric`` picks the screening one).

Settings go through lqo's own mode owner (``disabled_optimizers(con, rules, settings)``).
Writes the raw figures to ``--json``; prints one line per template and a summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from typing import Any

import duckdb
from paired import Variant as Run
from paired import interleave, med

from lqo.engine.harness import Harness
from lqo.tune.arms import plan_signature
from lqo.tune.trials import ARMS
from lqo.workloads.workload import Workload

# (setting, value): a few values each, DuckDB 1.5.5's defaults in the comment.
SETTINGS: tuple[tuple[str, str], ...] = (
    ("late_materialization_max_rows", "0"),       # 50
    ("late_materialization_max_rows", "1000"),
    ("merge_join_threshold", "0"),                 # 1000
    ("merge_join_threshold", "1000000"),
    ("nested_loop_join_threshold", "0"),           # 5
    ("nested_loop_join_threshold", "1000"),
    ("prefer_range_joins", "true"),                # false
    ("perfect_ht_threshold", "0"),                 # 12
    ("perfect_ht_threshold", "20"),
    ("dynamic_or_filter_threshold", "0"),          # 50
    ("dynamic_or_filter_threshold", "1000"),
)
RUNTIME_SETTINGS = frozenset({"dynamic_or_filter_threshold"})  # not visible in EXPLAIN
GROW_BELOW = 1.05
CUT = 2.0  # screening runs are cut at this many times native's median


Variant = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]  # (rules disabled, settings)


def label(v: Variant) -> str:
    rules, settings = v
    parts = list(rules) + [f"{n}={x}" for n, x in settings]
    return ",".join(parts) or "native"


def signature(con: duckdb.DuckDBPyConnection, sql: str, v: Variant) -> str | None:
    """A hash of the physical plan DuckDB builds under ``v`` (estimates dropped); None on error."""
    return plan_signature(con, sql, v[0], v[1])


METRIC = "cpu"  # what screening compares: "cpu" (process CPU time) or "wall" (latency)


def screen(con: duckdb.DuckDBPyConnection, sql: str, native_ms: float, fp: str, vs: list[Variant],
           rounds: int) -> dict[Variant, float]:
    """Screening ratio of each variant to native's median in the same rounds (inf: cut, failed or wrong)."""
    if not vs:
        return {}
    runs = interleave(con, [Run(sql, disabled=r, settings=st) for r, st in [((), ())] + vs], rounds, 0,
                     CUT * native_ms / 1000)
    nat = med(runs[0], METRIC) or med(runs[0], "wall") or native_ms
    out = {}
    for v, rs in zip(vs, runs[1:]):
        m = med(rs, METRIC)
        wrong = any(r.ok and r.fingerprint != fp for r in rs)
        out[v] = math.inf if m is None or wrong else m / nat
    return out


def explore(con: duckdb.DuckDBPyConnection, sql: str, rules: list[str], args: argparse.Namespace) -> dict:
    h = Harness(con)
    warm = [h.run(sql, timeout_s=None, profile=False) for _ in range(2)]
    native_ms, fp = warm[-1].latency_ms, warm[-1].fingerprint  # wall: the cut of screening runs
    t0 = time.perf_counter()
    base = signature(con, sql, ((), ()))
    changing = [r for r in rules if (s := signature(con, sql, ((r,), ()))) is not None and s != base]
    seen = {base}
    sigs: dict[Variant, str | None] = {}
    for r in changing:
        sigs[((r,), ())] = signature(con, sql, ((r,), ()))
    settings = []
    for n, x in SETTINGS:
        s = signature(con, sql, ((), ((n, x),)))
        if s is not None and (s != base or n in RUNTIME_SETTINGS):
            settings.append(((), ((n, x),)))
    explain_s = time.perf_counter() - t0

    # Level 1: every single rule that changes the plan, ARMS singles (tried today whatever
    # they change), and the settings.
    singles = list(dict.fromkeys([((r,), ()) for r in changing] + [((a,), ()) for a in ARMS]))
    ratios = screen(con, sql, native_ms, fp, singles + settings, args.screen_rounds)
    seen |= {s for s in sigs.values() if s is not None}
    # Today's pairs: two ARMS singles that both screened below native.
    good_arms = sorted(a for a in ARMS if ratios.get(((a,), ()), math.inf) < 1.0)
    pairs = [(tuple(sorted(p)), ()) for p in itertools.combinations(good_arms, 2)]
    ratios.update(screen(con, sql, native_ms, fp, pairs, args.screen_rounds))
    for p in pairs:
        if (s := signature(con, sql, p)) is not None:
            seen.add(s)
    # Rule sets, level by level.
    level = [v for v in ratios if not v[1] and v[0] and set(v[0]) <= set(changing)]
    considered = {frozenset(v[0]) for v in ratios if not v[1]}
    by_single = sorted(changing, key=lambda r: ratios.get(((r,), ()), math.inf))
    sets_tried = 0
    for _size in range(2, args.max_set + 1):
        parents = sorted((v for v in level if ratios[v] < GROW_BELOW), key=lambda v: ratios[v])[: args.beam]
        new: list[Variant] = []
        for p in parents:
            for r in by_single:
                grown = frozenset(p[0]) | {r}
                if r in p[0] or grown in considered:
                    continue
                considered.add(grown)
                v = (tuple(sorted(grown)), ())
                s = signature(con, sql, v)
                if s is None or s in seen:
                    continue
                seen.add(s)
                new.append(v)
                if len(new) >= args.per_level:
                    break
            if len(new) >= args.per_level:
                break
        if not new:
            break
        ratios.update(screen(con, sql, native_ms, fp, new, args.screen_rounds))
        sets_tried += len(new)
        level = new
    explore_s = time.perf_counter() - t0

    def best(vs: list[Variant]) -> Variant | None:
        vs = [v for v in vs if ratios.get(v, math.inf) < math.inf]
        return min(vs, key=lambda v: ratios[v]) if vs else None

    arms_family = [((a,), ()) for a in ARMS] + pairs
    rule_family = [v for v in ratios if not v[1]]  # every rule set tried, today's arms included
    return {
        "native_ms": native_ms, "fingerprint": fp, "changing": changing, "explain_s": round(explain_s, 2),
        "explore_s": round(explore_s, 1), "sets_tried": sets_tried,
        "screened": {label(v): (None if r == math.inf else round(r, 4)) for v, r in ratios.items()},
        "finalists": {"arms": best(arms_family), "rulesets": best(rule_family),
                      "settings": best([v for v in ratios if v[1]])},
    }


def final(con: duckdb.DuckDBPyConnection, sqls: list[tuple[str, str]], finalists: dict[str, Variant | None],
          rounds: int) -> dict:
    """Paired interleaved rounds of native, the placebo and each distinct finalist, per instance."""
    distinct = list(dict.fromkeys(v for v in finalists.values() if v is not None))
    vs: list[Variant] = [((), ()), ((), ())] + distinct
    out: dict[str, Any] = {}
    for qid, sql in sqls:
        native = Harness(con).run(sql, timeout_s=None, profile=False)
        runs = interleave(con, [Run(sql, disabled=r, settings=st) for r, st in vs], rounds, 1,
                         3 * native.latency_ms / 1000)
        fp = native.fingerprint
        row: dict[str, Any] = {"native_ms": med(runs[0], "wall"), "placebo_ms": med(runs[1], "wall"), "wrong": [],
                               "cpu": {"native_ms": med(runs[0], "cpu"), "placebo_ms": med(runs[1], "cpu")}}
        for v, rs in zip(distinct, runs[2:]):
            row[label(v)] = med(rs, "wall")
            row["cpu"][label(v)] = med(rs, "cpu")
            if any(r.ok and r.fingerprint != fp for r in rs):
                row["wrong"].append(label(v))
        out[qid] = row
    return out


def parse(text: str) -> Variant:
    """A variant from its label: ``native``, or rules and ``setting=value`` items, comma-separated."""
    if text == "native":
        return ((), ())
    parts = [p for p in text.split(",") if p]
    return (tuple(sorted(p for p in parts if "=" not in p)),
            tuple(sorted((n, v) for n, _, v in (p.partition("=") for p in parts if "=" in p))))


def _total(rows: dict, key: str, metric: str) -> float:
    return sum((r if metric == "wall" else r["cpu"]).get(key) or math.nan for r in rows.values())


def confirm(con: duckdb.DuckDBPyConnection, wl: Workload, specs: list[str], args: argparse.Namespace) -> dict:
    """Per ``template:variant|variant``, the ratio of totals over its instances of each
    variant's median (and the placebo's) to native's, wall-clock and CPU."""
    out = {}
    by_t = wl.by_template()
    for spec in specs:
        t, _, labels_text = spec.partition(":")
        labels = labels_text.split("|")
        sqls = [(q.id, q.sql) for q in by_t[t][: args.instances]]
        load0 = os.getloadavg()[0]
        rows = final(con, sqls, {lb: parse(lb) for lb in labels}, args.rounds)
        res: dict[str, Any] = {"native_ms": round(sum(r["native_ms"] or 0 for r in rows.values()), 1)}
        for metric in ("wall", "cpu"):
            nat = _total(rows, "native_ms", metric)
            res[metric] = {"placebo": round(_total(rows, "placebo_ms", metric) / nat, 3),
                           **{lb: round(_total(rows, label(parse(lb)), metric) / nat, 3) for lb in labels}}
        res["wrong"] = sorted({w for r in rows.values() for w in r["wrong"]})
        res["load"] = [load0, os.getloadavg()[0]]
        out[t] = res
        print(t, json.dumps(res), file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--templates", nargs="*")
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--screen-rounds", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--per-level", type=int, default=6)
    ap.add_argument("--max-set", type=int, default=4)
    ap.add_argument("--metric", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--confirm", nargs="+", metavar="TEMPLATE:VARIANTS")
    ap.add_argument("--json")
    args = ap.parse_args()
    global METRIC
    METRIC = args.metric
    wl = Workload.load(args.workload)
    con = wl.connect()
    rules = [r for (r,) in con.execute("SELECT name FROM duckdb_optimizers() ORDER BY name").fetchall()]
    if args.confirm:
        result = {"workload": os.path.abspath(args.workload), "args": vars(args),
                  "templates": confirm(con, wl, args.confirm, args)}
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
        return
    by_t = wl.by_template()
    templates = args.templates or sorted(by_t)
    out: dict[str, Any] = {"workload": os.path.abspath(args.workload), "args": vars(args),
                           "uptime_start": os.getloadavg(), "templates": {}}
    for t in templates:
        qs = by_t[t][: args.instances]
        load0 = os.getloadavg()[0]
        ex = explore(con, qs[0].sql, rules, args)
        fin = final(con, [(q.id, q.sql) for q in qs], ex["finalists"], args.rounds)
        ex["finalists"] = {k: (label(v) if v is not None else None) for k, v in ex["finalists"].items()}
        ex["final"] = fin
        ex["load"] = [load0, os.getloadavg()[0]]
        out["templates"][t] = ex
        print(f"{t}: native {ex['native_ms']:.0f} ms, {len(ex['changing'])} rules change the plan, "
              f"{ex['sets_tried']} sets, {ex['explore_s']:.0f} s; finalists {ex['finalists']}; "
              f"final {json.dumps(fin)}; load {load0:.1f}", file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    out["uptime_end"] = os.getloadavg()
    summary = {"wall": summarize(out, "wall"), "cpu": summarize(out, "cpu")}
    out["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


def _best_of(row: dict, fin: dict, family: str, native: float) -> float:
    """The lower of native's and the family finalist's median (native where it failed or was wrong)."""
    if family == "placebo":
        x = row["placebo_ms"]
    else:
        x = row.get(fin[family]) if fin[family] is not None and fin[family] not in row["wrong"] else None
    return native if x is None else min(native, x)


def summarize(out: dict, metric: str) -> dict:
    """Per family, the oracle over the templates' instances: sum of min(native, finalist) / sum native."""
    fams = ("placebo", "arms", "rulesets", "settings", "arms+rulesets", "arms+settings")
    tot = {f: 0.0 for f in fams}
    native = 0.0
    logs: dict[str, list[float]] = {f: [] for f in fams}
    wrong = 0
    for ex in out["templates"].values():
        fin = ex["finalists"]
        for full in ex["final"].values():
            row = full if metric == "wall" else dict(full["cpu"], wrong=full["wrong"])
            n = row["native_ms"]
            if n is None:
                continue
            wrong += len(row["wrong"])
            got = {f: _best_of(row, fin, f, n) for f in ("placebo", "arms", "rulesets", "settings")}
            got["arms+rulesets"] = min(got["arms"], got["rulesets"])
            got["arms+settings"] = min(got["arms"], got["settings"])
            native += n
            for f in fams:
                tot[f] += got[f]
                logs[f].append(math.log(got[f] / n))
    return {"native_ms": round(native, 1), "wrong": wrong,
            "oracle_total": {f: round(tot[f] / native, 4) for f in fams} if native else {},
            "oracle_geomean": {f: round(math.exp(sum(v) / len(v)), 4) for f, v in logs.items() if v}}


if __name__ == "__main__":
    main()
