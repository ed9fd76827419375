"""Scheduler benchmark on queries the policy never trained on, on the real executor.

Protocol (so that a ratio survives a noisy machine):

- the learned policy's checkpoint says which queries it trained on (``lqo
  train-scheduler`` with a ``[split] holdout``); streams are drawn from the *held-out*
  side only (new instances of trained templates, or whole templates never seen);
- every policy that reads latencies gets only what lqo would know before running a held-out
  query: the training queries' profile (its own text when identical, else its template's
  median, else DuckDB's estimate through a line fitted on them, or ``--model``'s
  prediction); the report counts which source served each query;
- per arrivals spec and seed one stream; every policy runs it ``--rounds`` times, the
  order rotated per stream and reversed every other round (ABC.. then ..CBA), so drift
  of the machine hits every policy alike; per seed the median over rounds, then the
  mean and the min-max spread over seeds;
- the same stream is simulated under each policy: per-query error of the simulator
  (median and p90 of |sim - real| / real completion time), pooled per policy and load.

Prints the table of the issue (mean completion per policy, learned / FIFO, learned / best
heuristic, learned / oracle, p95 vs FIFO) and writes every run as JSON.

Prerequisites: a thread profile of the workloads (``lqo profile-threads W --store P``)
and a scheduler trained with a holdout on them. Example (the figures in docs/scheduler.md)::

    python benchmarks/scheduler_benchmark.py data/tpch-sf1-x6 data/tpcds-sf1-x6 --profile P \\
        --scheduler-model runs/sched-instances --queries 50 \\
        --arrivals batch util:0.5 util:0.7 util:0.9 --seeds 11 12 13 --rounds 3 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

HEURISTICS = ("fifo", "all", "sjf-est")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workloads", nargs="+", help="workload directories whose queries are mixed")
    p.add_argument("--profile", action="append", required=True, help="thread profile file(s)")
    p.add_argument("--scheduler-model", help="learned scheduler checkpoint (omit to skip 'learned')")
    p.add_argument("--holdout", help="override the checkpoint's holdout (none | instances | templates:K)")
    p.add_argument("--train-instances", type=int, help="override the checkpoint's train_instances")
    p.add_argument("--model", help="optimizer model: its predictions serve queries no profile knows")
    p.add_argument("--book", help="a tuned model's plan book: template latencies for the knowledge")
    p.add_argument("--policies", nargs="+", default=["fifo", "all", "sjf-est", "sjf-known", "oracle", "learned"])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--arrivals", nargs="+", default=["batch", "util:0.5", "util:0.7", "util:0.9"])
    p.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cores", type=int, default=None)
    p.add_argument("--timeout", type=float, default=120.0, help="per-query timeout, seconds")
    p.add_argument("--rounds", type=int, default=3, help="runs per policy and stream (default 3)")
    p.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="first fit the simulator's interference on real N-query streams of *training* queries "
                   "(batch and util:0.7, fifo and all) and store it in the first --profile file")
    p.add_argument("--keep-queries", action="store_true",
                   help="also write every run's per-query records (megabytes; off: figures and errors only)")
    p.add_argument("--out", help="JSON output file (written after every stream, so a long run keeps its data)")
    return p.parse_args(argv)


def pct(xs: list[float], q: float) -> float:
    from lqo.sched.result import percentile

    return percentile(xs, q) if xs else float("nan")


def summarise(report: dict, policies: list[str]) -> list[dict]:
    """Per arrivals spec: mean over seeds of the per-seed medians, ratios with spreads."""
    out = []
    for arrivals in dict.fromkeys(s["arrivals"] for s in report["streams"]):
        streams = [s for s in report["streams"] if s["arrivals"] == arrivals]
        row: dict = {"arrivals": arrivals, "seeds": [s["seed"] for s in streams], "mean_s": {}, "ratios": {}}
        for p in policies:
            row["mean_s"][p] = statistics.fmean(s["median"][p]["mean_s"] for s in streams)

        def ratio(name: str, f) -> None:
            vals = [f(s["median"]) for s in streams]
            row["ratios"][name] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}

        if "learned" in policies:
            heur = [h for h in HEURISTICS if h in policies]
            if "fifo" in policies:
                ratio("learned/fifo", lambda m: m["learned"]["mean_s"] / m["fifo"]["mean_s"])
                ratio("p95 learned/fifo", lambda m: m["learned"]["p95_s"] / m["fifo"]["p95_s"])
            if heur:
                ratio("learned/best heuristic", lambda m: m["learned"]["mean_s"] / min(m[h]["mean_s"] for h in heur))
            for other in ("sjf-known", "oracle"):
                if other in policies:
                    ratio(f"learned/{other}", lambda m, o=other: m["learned"]["mean_s"] / m[o]["mean_s"])
        if "oracle" in policies and "fifo" in policies:
            ratio("oracle/fifo", lambda m: m["oracle"]["mean_s"] / m["fifo"]["mean_s"])
        errs = {p: [e for s in streams for e in s["sim_errors"][p]] for p in policies}
        row["sim_error"] = {p: {"median": pct(v, 50), "p90": pct(v, 90)} for p, v in errs.items()}
        out.append(row)
    return out


def print_table(summary: list[dict], policies: list[str]) -> None:
    print("\nmean completion (s), mean over seeds of the median over rounds; ratios mean [min-max] over seeds")
    print("| stream | " + " | ".join(policies) + " | learned / FIFO | learned / best heuristic | learned / sjf-known "
          "| learned / oracle | p95 learned / FIFO | sim error median / p90 (learned) |")
    print("|" + "---|" * (len(policies) + 7))
    for row in summary:
        r = row["ratios"]

        def f(name: str) -> str:
            x = r.get(name)
            return f"{x['mean']:.2f} [{x['min']:.2f}-{x['max']:.2f}]" if x else "-"

        e = row["sim_error"].get("learned") or next(iter(row["sim_error"].values()))
        print(f"| {row['arrivals']} | " + " | ".join(f"{row['mean_s'][p]:.3f}" for p in policies)
              + f" | {f('learned/fifo')} | {f('learned/best heuristic')} | {f('learned/sjf-known')} | "
              f"{f('learned/oracle')} | {f('p95 learned/fifo')} | {e['median']:.0%} / {e['p90']:.0%} |")


def main(argv: list[str] | None = None) -> int:
    from lqo.sched.jobs import build_knowledge
    from lqo.sched.thread_profile import ThreadProfile
    from lqo.sched.result import per_query_errors
    from lqo.sched.scheduler import Scheduler
    from lqo.sched.split import split_workloads
    from lqo.sched.stream import make_stream
    from lqo.workloads.workload import Workload

    args = parse_args(argv)
    workloads = [Workload.load(w) for w in args.workloads]
    profile = ThreadProfile.load(args.profile)
    policies = [p for p in args.policies if p != "learned" or args.scheduler_model]
    meta: dict = {}
    if args.scheduler_model:
        from lqo.sched.gnn_policy import LearnedPolicy

        meta = LearnedPolicy.load(args.scheduler_model).meta
    holdout = args.holdout or meta.get("holdout", "none")
    k = args.train_instances or int(meta.get("train_instances", 3))
    train_wls, test_wls = split_workloads(workloads, holdout, k)
    if not test_wls:
        test_wls = train_wls  # holdout none: the old, optimistic protocol (said so in the report)
    train_keys = {q.query_key for q in make_stream(train_wls)}
    test_stream = make_stream(test_wls)
    if meta.get("train_query_keys") and set(meta["train_query_keys"]) != train_keys:
        print("warning: the checkpoint trained on other queries than this split's training side", file=sys.stderr)
    seen = sum(q.query_key in train_keys for q in test_stream)
    knowledge = build_knowledge(make_stream(train_wls), profile, args.book)
    print(f"holdout {holdout}: {len({q.query_key for q in test_stream})} held-out queries "
          f"({seen} with a text identical to a training query), knowledge from {len(train_keys)} training queries",
          flush=True)
    if args.calibrate:
        from lqo.sched.thread_profile import save_calibration

        cal = Scheduler("fifo", args.workers, args.cores, profile, timeout_s=args.timeout)
        streams = [cal.make_stream(train_wls, args.calibrate, a, 999) for a in ("batch", "util:0.7")]
        config, err, _ = cal.calibrate(streams)
        save_calibration(args.profile[0], config, {"per_query_error": err, "queries": args.calibrate,
                                                   "workers": args.workers, "mix": [w.name for w in workloads]})
        profile = ThreadProfile.load(args.profile)
        print(f"calibrated interference {config.interference:.2f}, scale {config.scale:.2f} (median per-query "
              f"error {err:.0%} on training streams)", flush=True)
    scheds = {p: Scheduler(p, args.workers, args.cores, profile, model=args.model,
                           scheduler_model=args.scheduler_model, timeout_s=args.timeout, knowledge=knowledge)
              for p in policies}
    report: dict = {"argv": sys.argv, "holdout": holdout, "train_instances": k, "workers": args.workers,
                    "interference": profile.interference, "scale": profile.scale, "held_out_identical_texts": seen, "streams": [], "runs": []}
    n = 0
    try:
        for arrivals in args.arrivals:
            for seed in args.seeds:
                stream = scheds[policies[0]].make_stream(test_wls, args.queries, arrivals, seed)
                known = scheds["sjf-known"].jobs(stream) if "sjf-known" in scheds else []
                sources = dict(Counter(j.f.known_source for j in known))
                base = policies[n % len(policies):] + policies[:n % len(policies)]
                n += 1
                runs: dict[str, list[dict]] = {p: [] for p in policies}
                errors: dict[str, list[float]] = {p: [] for p in policies}
                print(f"\n== {arrivals} (rate {stream.meta.get('rate')}), seed {seed}, {len(stream)} queries; "
                      f"latency sources {sources}", flush=True)
                for rnd in range(args.rounds):
                    for name in (base if rnd % 2 == 0 else base[::-1]):
                        t0 = time.monotonic()
                        load = os.getloadavg()[0]
                        real = scheds[name].run(stream)
                        sim = scheds[name].simulate(stream)
                        errs = per_query_errors(sim, real)
                        errors[name] += errs
                        fig = {**real.figures(), "errors": real.errors, "wall_s": round(time.monotonic() - t0, 2),
                               "loadavg": load, "sim": sim.figures(), "sim_error_median": pct(errs, 50)}
                        runs[name].append(fig)
                        report["runs"].append({"arrivals": arrivals, "seed": seed, "round": rnd, "policy": name,
                                               **fig, **({"result": real.to_json()} if args.keep_queries else {})})
                        print(f"r{rnd} {name:<10} mean {real.mean_s:7.3f}  p95 {real.p95_s:7.3f}  makespan "
                              f"{real.makespan_s:7.3f}  err {real.errors}  | sim mean {sim.mean_s:7.3f}  q-err "
                              f"median {pct(errs, 50):.0%} p90 {pct(errs, 90):.0%}  | load {load:.1f}", flush=True)
                median = {p: {k2: statistics.median(r[k2] for r in rs) for k2 in ("mean_s", "p50_s", "p95_s", "makespan_s")}
                          for p, rs in runs.items() if rs}
                report["streams"].append({"arrivals": arrivals, "seed": seed, "rate": stream.meta.get("rate"),
                                          "sources": sources, "median": median, "sim_errors": errors})
                report["summary"] = summarise(report, policies)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    if report["streams"]:
        report["summary"] = summarise(report, policies)
        print_table(report["summary"], policies)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
