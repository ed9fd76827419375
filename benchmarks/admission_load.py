"""Admission under open-loop load: dashboards arriving at random, 8 client threads.

    python benchmarks/admission_load.py solo --out data/app-driver --json benchmarks/results/admission-load-solo.json
    python benchmarks/admission_load.py run --out data/app-driver --solo benchmarks/results/admission-load-solo.json \\
        --load 0.7 --seeds 0,1,2 --json benchmarks/results/admission-load-70.json
    python benchmarks/admission_load.py run ... --burst 50 --json benchmarks/results/admission-load-burst.json
    python benchmarks/admission_load.py report benchmarks/results/admission-load-*.json

The calls are ``benchmarks/app_driver.py``'s new-value calls of both databases (TPC-H and
TPC-DS SF1 dashboards; never captured or tuned on: held-out instances).

``solo``: every call runs alone through plain DuckDB (twice: the second run's time is its
service time; the two results' fingerprints must agree, else the call is not judged).
Capacity = 1 / the mean solo service time of the call mix.

``run``: per seed, an arrival schedule drawn once and shared by every arm: the calls in a
shuffled order, Poisson arrivals at ``--load`` x capacity (or ``--burst N``: the first N
calls of the order all at time 0). A dispatcher hands each arrival to a pool of 8 client
threads (one cursor per database each); when all 8 are busy the arrival waits for one,
and that wait is the user's: latency = arrival to result fetched. Arms, in a shuffled
order per seed:

- ``native``: plain DuckDB, every statement on arrival;
- ``lqo``: ``lqo.connect(db, book=...)`` without admission;
- ``admit-<policy>-<slots>`` (``admit-sjf-1``, ``admit-fifo-2``, ...): the same with one
  ``AdmissionQueue(slots, policy)`` shared by both databases' connections (one process,
  one machine's cores). ``sjf`` is the known-latency shortest-first: each statement's
  expectation is the connection's memory of its text, else the book's time;
- ``admit-<policy>-<slots>-blind``: the same with a queue that does not see the
  statements' modes, ``-nodemote``: one that sees them but never demotes a statement to
  run as written (what mode-aware admission gives, with 2 slots or more).

Held-out templates: a third of each database's templates (drawn with ``--holdout-seed``)
are withheld from the admission memory's book prior: their first calls are expected to
take the median, and they are reported apart from the others.

Every result is judged against the solo native fingerprint. Each run records the
admission queue's longest wait (starvation) and its mode switches.
"""

from __future__ import annotations

import argparse
import json
import os
import queue as queue_mod
import random
import statistics
import sys
import threading
import time
from collections.abc import Hashable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import duckdb

import lqo
from lqo.book.params import bind_literals
from lqo.engine.admission import AdmissionQueue
from lqo.engine.run_result import fingerprint_rows
from lqo.workloads.query_log import decode_params

CLIENTS = 8


def _calls(root: Path) -> list[dict[str, Any]]:
    """The new-value calls of every prepared database, in a fixed order."""
    out = []
    for path in sorted(root.glob("*/calls.json")):
        data = json.loads(path.read_text())
        for c in data["calls"]:
            if c["phase"] == "new":
                out.append({"db": path.parent.name, "database": data["database"], "template": c["template"],
                            "sql": c["sql"], "params": c["params"]})
    return out


def solo(args: argparse.Namespace) -> int:
    calls = _calls(Path(args.out))
    cons: dict[str, Any] = {}
    rows = []
    for i, c in enumerate(calls):
        con = cons.get(c["db"]) or cons.setdefault(c["db"], duckdb.connect(c["database"], read_only=True))
        params = decode_params(c["params"])
        prints, times = [], []
        for _ in range(2):
            t0 = time.perf_counter()
            result = con.execute(c["sql"], params).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
            prints.append(fingerprint_rows(result))
        rows.append({"i": i, "db": c["db"], "template": c["template"], "ms": round(times[1], 3),
                     "fingerprint": prints[0], "stable": prints[0] == prints[1]})
    for con in cons.values():
        con.close()
    mean_ms = statistics.fmean(r["ms"] for r in rows)
    out = {"calls": rows, "mean_solo_ms": round(mean_ms, 3), "capacity_qps": round(1000 / mean_ms, 3),
           "uptime": os.getloadavg()}
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"{len(rows)} calls, mean solo {mean_ms:.1f} ms, capacity {1000 / mean_ms:.2f} qps, "
          f"unstable {sum(not r['stable'] for r in rows)}", file=sys.stderr)
    return 0


def _held_out_templates(calls: list[dict], seed: int) -> set[tuple[str, str]]:
    """A third of each database's templates, withheld from the admission memory's prior."""
    rng = random.Random(seed)
    out: set[tuple[str, str]] = set()
    for db in sorted({c["db"] for c in calls}):
        ts = sorted({c["template"] for c in calls if c["db"] == db})
        out |= {(db, t) for t in rng.sample(ts, len(ts) // 3)}
    return out


class _ModeBlind(AdmissionQueue):
    """An admission queue that does not see modes (to measure what seeing them gives)."""

    def admit(self, expected_ms: float, cancel: threading.Event | None = None, mode: Hashable = None
              ) -> AbstractContextManager[None]:
        return super().admit(expected_ms, cancel, None)


def _connections(arm: str, calls: list[dict], root: Path, held: set) -> tuple[dict[str, Any], AdmissionQueue | None]:
    dbs = {c["db"]: c["database"] for c in calls}
    if arm == "native":
        return {n: duckdb.connect(d, read_only=True) for n, d in dbs.items()}, None
    shared = None
    if arm.startswith("admit-"):
        _, policy, slots, *variant = arm.split("-")
        if variant == ["blind"]:
            shared = _ModeBlind(int(slots), policy)
        else:
            shared = AdmissionQueue(int(slots), policy, demote=variant != ["nodemote"])
    cons = {n: lqo.connect(d, book=root / n / "book", admission=shared) for n, d in dbs.items()}
    for c in calls:  # the held-out templates start unknown to the memory
        if (c["db"], c["template"]) in held:
            memory = cons[c["db"]].serving.expected
            memory.forget(c["sql"])
            bound = bind_literals(c["sql"], decode_params(c["params"]))
            if bound is not None:
                memory.forget(bound.sql)
    return cons, shared


def _one_run(arm: str, calls: list[dict], schedule: list[tuple[float, int]], root: Path,
             held: set) -> dict[str, Any]:
    cons, shared = _connections(arm, calls, root, held)
    arrivals: queue_mod.Queue = queue_mod.Queue()
    done: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        curs = {n: c.cursor() for n, c in cons.items()}
        while True:
            item = arrivals.get()
            if item is None:
                break
            i, due = item
            c = calls[i]
            started = time.perf_counter()
            try:
                rows = curs[c["db"]].execute(c["sql"], decode_params(c["params"])).fetchall()
            except Exception as err:  # noqa: BLE001 - reported, never hidden
                with lock:
                    errors.append(f"{c['template']}: {type(err).__name__}: {str(err)[:200]}")
                continue
            end = time.perf_counter()
            with lock:
                done.append({"i": i, "latency_ms": (end - due) * 1000, "client_wait_ms": (started - due) * 1000,
                             "fingerprint": fingerprint_rows(rows)})
        for cur in curs.values():
            cur.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    for at, i in schedule:
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        arrivals.put((i, t0 + at))
    for _ in threads:
        arrivals.put(None)
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for con in cons.values():
        con.close()
    if errors:
        raise SystemExit(f"{arm}: {len(errors)} errors, e.g. {errors[:3]}")
    out: dict[str, Any] = {"wall_s": round(wall, 3), "calls": done}
    if shared is not None:
        out["max_admission_wait_ms"] = round(shared.max_wait_ms, 1)
        out["mode_switches"] = shared.mode_switches
        out["demoted"] = shared.demoted
    return out


def _schedule(n_calls: int, seed: int, rate_qps: float | None, burst: int | None) -> list[tuple[float, int]]:
    """(arrival second, call index) for one seed: the same for every arm."""
    rng = random.Random(seed)
    order = list(range(n_calls))
    rng.shuffle(order)
    if burst:
        return [(0.0, i) for i in order[:burst]]
    assert rate_qps is not None
    at, out = 0.0, []
    for i in order:
        at += rng.expovariate(rate_qps)
        out.append((at, i))
    return out


def run(args: argparse.Namespace) -> int:
    root = Path(args.out)
    calls = _calls(root)
    solo_data = json.loads(Path(args.solo).read_text())
    truth = {r["i"]: r for r in solo_data["calls"]}
    if len(truth) != len(calls):
        raise SystemExit("the solo file does not match the prepared calls: rerun `solo`")
    held = _held_out_templates(calls, args.holdout_seed)
    rate = None if args.burst else args.load * solo_data["capacity_qps"]
    arms = args.arms.split(",")
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        schedule = _schedule(len(calls), seed, rate, args.burst)
        order = arms[:]
        random.Random(1000 + seed).shuffle(order)
        for arm in order:
            result = _one_run(arm, calls, schedule, root, held)
            for r in result["calls"]:
                t = truth[r["i"]]
                r["wrong"] = t["stable"] and r["fingerprint"] != t["fingerprint"]
                r["held_out_template"] = (t["db"], t["template"]) in held
                r["template"] = f"{t['db']}:{t['template']}"
                del r["fingerprint"]
            runs.append({"seed": seed, "arm": arm, **result})
            lat = [r["latency_ms"] for r in result["calls"]]
            print(f"seed {seed} {arm}: wall {result['wall_s']:.1f} s, mean {statistics.fmean(lat):.0f} ms, "
                  f"p95 {_pct(lat, 0.95):.0f} ms", file=sys.stderr, flush=True)
    out = {"load": args.load if not args.burst else None, "burst": args.burst, "rate_qps": rate,
           "capacity_qps": solo_data["capacity_qps"], "mean_solo_ms": solo_data["mean_solo_ms"],
           "clients": CLIENTS, "arms": arms, "held_out_templates": sorted(f"{d}:{t}" for d, t in held),
           "uptime_before": args.uptime, "loadavg_after": os.getloadavg(), "runs": runs}
    Path(args.json).write_text(json.dumps(out))
    print(json.dumps(_summary(out), indent=1))
    return 0


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _stats(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "mean_ms": round(statistics.fmean(xs), 1), "p50_ms": round(_pct(xs, 0.5), 1),
            "p95_ms": round(_pct(xs, 0.95), 1), "max_ms": round(max(xs), 1)} if xs else {"n": 0}


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    """Per arm, pooled over seeds: latency overall, on known and on held-out templates;
    ratios to native (mean and p95, pooled; mean per seed); wrong results; longest wait."""
    out: dict[str, Any] = {}
    native_by_seed = {r["seed"]: r for r in data["runs"] if r["arm"] == "native"}
    for arm in data["arms"]:
        mine = [r for r in data["runs"] if r["arm"] == arm]
        rows = [c for r in mine for c in r["calls"]]
        s: dict[str, Any] = {"all": _stats([c["latency_ms"] for c in rows]),
                             "known_templates": _stats([c["latency_ms"] for c in rows if not c["held_out_template"]]),
                             "held_out_templates": _stats([c["latency_ms"] for c in rows if c["held_out_template"]]),
                             "client_wait_mean_ms": round(statistics.fmean(c["client_wait_ms"] for c in rows), 1),
                             "wrong": sum(c["wrong"] for c in rows),
                             "wall_s": [r["wall_s"] for r in mine]}
        if "max_admission_wait_ms" in mine[0]:
            s["max_admission_wait_ms"] = max(r["max_admission_wait_ms"] for r in mine)
            s["mode_switches"] = [r["mode_switches"] for r in mine]
            s["demoted"] = [r.get("demoted", 0) for r in mine]
        s["max_latency_ms"] = round(max(c["latency_ms"] for c in rows), 1)
        out[arm] = s
    if "native" in out:
        nat = out["native"]
        for arm in data["arms"]:
            if arm == "native":
                continue
            s = out[arm]
            for part in ("all", "known_templates", "held_out_templates"):
                if s[part]["n"] and nat[part]["n"]:
                    s[part]["mean_ratio"] = round(s[part]["mean_ms"] / nat[part]["mean_ms"], 3)
                    s[part]["p95_ratio"] = round(s[part]["p95_ms"] / nat[part]["p95_ms"], 3)
            s["mean_ratio_per_seed"] = [
                round(statistics.fmean(c["latency_ms"] for c in r["calls"])
                      / statistics.fmean(c["latency_ms"] for c in native_by_seed[r["seed"]]["calls"]), 3)
                for r in data["runs"] if r["arm"] == arm and r["seed"] in native_by_seed]
    return out


def report(args: argparse.Namespace) -> int:
    merged = {}
    for path in args.files:
        data = json.loads(Path(path).read_text())
        name = f"burst {data['burst']}" if data["burst"] else f"load {data['load']:.0%}"
        merged[name] = {"rate_qps": data["rate_qps"], "capacity_qps": data["capacity_qps"],
                        "uptime_before": data.get("uptime_before"), "loadavg_after": data.get("loadavg_after"),
                        "arms": _summary(data)}
    text = json.dumps(merged, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("solo")
    s.add_argument("--out", required=True)
    s.add_argument("--json", required=True)
    s.set_defaults(fn=solo)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--solo", required=True)
    r.add_argument("--load", type=float, default=0.7)
    r.add_argument("--burst", type=int)
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--arms", default="native,lqo,admit-fifo-1,admit-sjf-1")
    r.add_argument("--holdout-seed", type=int, default=0)
    r.add_argument("--uptime", help="the machine's `uptime` before the run, recorded as given")
    r.add_argument("--json", required=True)
    r.set_defaults(fn=run)
    m = sub.add_parser("report")
    m.add_argument("files", nargs="+")
    m.add_argument("--json")
    m.set_defaults(fn=report)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
