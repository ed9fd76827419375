"""An application on DuckDB, with and without lqo: 8 threads, parameterized dashboards.

    python benchmarks/app_driver.py prepare --workload data/tpch-sf1 --workload data/tpcds-sf1 \\
        --out data/app-driver [--per-template 6] [--capture-instances 3] [--max-native-ms 3000]
    python benchmarks/app_driver.py capture --out data/app-driver
    lqo tune --log data/app-driver/<name>/traffic.jsonl --db <its database> --budget M --out data/app-driver/<name>/book
    python benchmarks/app_driver.py run --out data/app-driver [--threads 8] [--rounds 3] [--json OUT]

``prepare``: the dashboard templates are a workload's queries with their varying
constants turned into bind parameters (``?``; a ``DATE '..'`` literal becomes one
``?`` bound to a ``datetime.date``), instances drawn like ``lqo workload vary`` does
(values from the data), and the templates whose native run exceeds ``--max-native-ms``
dropped. The first ``--capture-instances`` instances of each template are the
application's earlier traffic; the others are new values, never captured or tuned on.

``capture``: the earlier traffic runs once through ``lqo.connect(db, capture=...)``:
the query log ``lqo tune --log`` tunes from.

``run``: every thread takes its own shuffled order of the new-value calls, each
``cursor.execute(sql, params).fetchall()`` on its own cursor; arms in interleaved
rounds (a shuffled arm order per round):

- ``native``: plain DuckDB (``duckdb.connect(db, read_only=True)``);
- ``lqo``: ``lqo.connect(db, book=...)``: the one-line switch;
- ``capture``: ``lqo.connect(db, capture=...)`` without a book: what recording costs;
- ``literal``: the book serving each call's values written in as literals (no
  parameters), to measure prepared against literal serving;
- ``admit-sjf`` / ``admit-fifo``: ``lqo``, with admission (``admission="sjf"`` or
  ``"fifo"``, one statement of each database at a time).

Reports throughput, per-template mean / p50 / p95 latency, per-arm ratios against native
of the same round, and whether every result equals native's (``fingerprint_rows``: order
and float noise aside; a call whose two native runs already differ, ties at a LIMIT, is
not judged and is counted as unstable).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import duckdb

import lqo
from lqo.book.params import bind_literals
from lqo.book.template import template_key, tokens
from lqo.engine.run_result import fingerprint_rows
from lqo.workloads.query_log import decode_params, encode_params
from lqo.workloads.vary import vary
from lqo.workloads.workload import Workload

_TYPE_WORDS = {"interval", "timestamp", "time", "decimal", "numeric", "varchar", "integer"}


def parameterize(sqls: list[str]) -> list[tuple[str, list[Any]]] | None:
    """Instances of one template as (text with ``?``, values): the literals that differ
    between instances become parameters; None when the instances' shapes differ."""
    keys = [template_key(s) for s in sqls]
    if len({k.shape for k in keys}) != 1 or len({k.key for k in keys}) != 1:
        return None
    varying = {i for i in range(len(keys[0].literals)) if len({k.literals[i] for k in keys}) > 1}
    out = []
    for sql in sqls:
        toks = tokens(sql)
        pieces, params, pos, lit = [], [], 0, 0
        for j, (s, e, text, is_lit) in enumerate(toks):
            if not is_lit:
                continue
            i, lit = lit, lit + 1
            if i not in varying:
                continue
            before = toks[j - 1][2].lower() if j else ""
            if before in _TYPE_WORDS:
                return None  # a typed literal whose value varies: not a parameter an app would bind
            if before == "date" and text.startswith("'"):
                s = toks[j - 1][0]
                value: Any = dt.date.fromisoformat(text.strip("'"))
            elif text.startswith("'"):
                value = text[1:-1].replace("''", "'")
            elif text.lstrip("-").isdigit():
                value = int(text)
            else:
                value = float(text)
            pieces.append(sql[pos:s])
            pieces.append("?")
            params.append(value)
            pos = e
        pieces.append(sql[pos:])
        out.append(("".join(pieces), params))
    return out


def prepare(args: argparse.Namespace) -> int:
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    for wdir in args.workload:
        source = Workload.load(wdir)
        name = source.name
        tmp = Path(tempfile.mkdtemp(prefix="app-driver-"))
        varied = vary(source, per_template=args.per_template, seed=args.seed, out=tmp / "v")
        con = duckdb.connect(str(source.database), read_only=True)
        calls, dropped = [], {}
        for template, qs in varied.by_template().items():
            pairs = parameterize([q.sql for q in qs])
            if pairs is None or not pairs[0][1]:
                dropped[template] = "no varying constants that bind as parameters"
                continue
            try:
                t0 = time.perf_counter()
                con.execute(pairs[0][0], pairs[0][1]).fetchall()
                ms = (time.perf_counter() - t0) * 1000
            except duckdb.Error as err:
                dropped[template] = f"does not run parameterized: {str(err).splitlines()[0][:100]}"
                continue
            if ms > args.max_native_ms:
                dropped[template] = f"native {ms:.0f} ms > {args.max_native_ms} ms"
                continue
            for i, (sql, params) in enumerate(pairs):
                calls.append({"template": template, "sql": sql, "params": encode_params(params),
                              "phase": "capture" if i < args.capture_instances else "new"})
        con.close()
        out = root / name
        out.mkdir(exist_ok=True)
        (out / "calls.json").write_text(json.dumps({"database": str(source.database), "calls": calls,
                                                    "dropped": dropped}, indent=1))
        n_t = len({c["template"] for c in calls})
        print(f"{name}: {n_t} templates, {len(calls)} calls; dropped {len(dropped)}: {dropped}", file=sys.stderr)
    return 0


def _sets(root: Path) -> list[tuple[str, dict]]:
    return [(p.parent.name, json.loads(p.read_text())) for p in sorted(root.glob("*/calls.json"))]


def capture(args: argparse.Namespace) -> int:
    root = Path(args.out)
    for name, data in _sets(root):
        if args.only and name != args.only:
            continue
        log = root / name / "traffic.jsonl"
        log.unlink(missing_ok=True)
        with lqo.connect(data["database"], capture=log) as con:
            for c in data["calls"]:
                if c["phase"] == "capture":
                    con.execute(c["sql"], decode_params(c["params"])).fetchall()
            con.log.close()
        print(f"{name}: captured {sum(1 for _ in open(log))} calls to {log}", file=sys.stderr)
    return 0


def _connections(arm: str, sets: list[tuple[str, dict]], root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, data in sets:
        db = data["database"]
        if arm == "native":
            out[name] = duckdb.connect(db, read_only=True)
        elif arm in ("lqo", "literal"):
            out[name] = lqo.connect(db, book=root / name / "book")
        elif arm.startswith("admit"):  # admit-sjf, admit-fifo: the book, with admission (one slot)
            out[name] = lqo.connect(db, book=root / name / "book", admission=arm.split("-")[1])
        else:
            out[name] = lqo.connect(db, capture=root / name / "overhead-capture.jsonl", capture_limit_mb=256)
    return out


def _one_round(arm: str, calls: list[tuple[str, dict]], sets: list, root: Path, threads: int,
               seed: int) -> tuple[float, list[tuple[int, float, str]], dict[str, int]]:
    cons = _connections(arm, sets, root)
    results: list[tuple[int, float, str]] = []
    sources: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[str] = []

    def work(t: int) -> None:
        curs = {n: c.cursor() for n, c in cons.items()}
        order = list(range(len(calls)))
        random.Random(seed * 1000 + t).shuffle(order)
        mine = []
        for i in order[t::threads] if threads > 1 else order:
            name, c = calls[i]
            params = decode_params(c["params"])
            sql = c["sql"]
            if arm == "literal":
                bound = bind_literals(sql, params)
                if bound is not None:
                    sql, params = bound.sql, None
            try:
                t0 = time.perf_counter()
                rows = curs[name].execute(sql, params).fetchall()
                ms = (time.perf_counter() - t0) * 1000
            except Exception as err:  # noqa: BLE001 - reported, never hidden
                with lock:
                    errors.append(f"{c['template']}: {type(err).__name__}: {str(err)[:200]}")
                continue
            src = "-"
            if arm != "native" and arm != "capture":
                last = curs[name].last
                src = "none" if last is None else ("tree" if last.forced else "arm" if last.disabled else "native")
            mine.append((i, ms, fingerprint_rows(rows), src))
        with lock:
            for i, ms, rows, src in mine:
                results.append((i, ms, rows))
                sources[src] = sources.get(src, 0) + 1
        for cur in curs.values():
            cur.close()

    start = time.perf_counter()
    ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    wall = time.perf_counter() - start
    for c in cons.values():
        if getattr(c, "log", None) is not None:
            c.log.close()
        c.close()
    if errors:
        raise SystemExit(f"{arm}: {len(errors)} errors, e.g. {errors[:3]}")
    return wall, results, sources


def run(args: argparse.Namespace) -> int:
    root = Path(args.out)
    sets = _sets(root)
    calls = [(name, c) for name, data in sets for c in data["calls"] if c["phase"] == "new"]
    arms = args.arms.split(",")
    walls: dict[str, list[float]] = {a: [] for a in arms}
    lat: dict[str, dict[int, list[float]]] = {a: {} for a in arms}
    truth: dict[int, str] = {}
    wrong: dict[str, int] = {a: 0 for a in arms}
    wrong_calls: dict[str, list[str]] = {}
    served: dict[str, dict[str, int]] = {}
    rng = random.Random(args.seed)
    unstable: set[int] = set()
    for name, data in sets:  # the native result of every call, twice, outside the timing
        con = duckdb.connect(data["database"], read_only=True)
        for i, (n, c) in enumerate(calls):
            if n == name:
                runs = [fingerprint_rows(con.execute(c["sql"], decode_params(c["params"])).fetchall()) for _ in range(2)]
                truth[i] = runs[0]
                if runs[0] != runs[1]:
                    unstable.add(i)  # DuckDB's own result varies (ties at a LIMIT): not judged
        con.close()
    for r in range(args.rounds):
        order = arms[:]
        rng.shuffle(order)
        for arm in order:
            wall, results, sources = _one_round(arm, calls, sets, root, args.threads, r)
            walls[arm].append(wall)
            served[arm] = sources
            for i, ms, rows in results:
                lat[arm].setdefault(i, []).append(ms)
                if rows != truth[i] and i not in unstable:
                    wrong[arm] += 1
                    wrong_calls.setdefault(arm, []).append(calls[i][1]["template"])
            print(f"round {r + 1} {arm}: {wall:.2f} s", file=sys.stderr, flush=True)
    report = _report(arms, calls, walls, lat, wrong, served, args)
    report["summary"]["unstable_calls"] = len(unstable)
    report["wrong_calls"] = wrong_calls
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(json.dumps(report["summary"], indent=1))
    return 0


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _report(arms, calls, walls, lat, wrong, served, args) -> dict:
    per_template: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        for i, mss in lat[arm].items():
            t = f"{calls[i][0]}:{calls[i][1]['template']}"
            per_template.setdefault(t, {}).setdefault(arm, []).extend(mss)
    templates = {t: {arm: {"mean_ms": round(statistics.fmean(v), 2), "p50_ms": round(_pct(v, 0.5), 2),
                           "p95_ms": round(_pct(v, 0.95), 2)} for arm, v in d.items()}
                 for t, d in sorted(per_template.items())}
    all_ms = {arm: [ms for mss in lat[arm].values() for ms in mss] for arm in arms}
    summary: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds, "calls_per_round": len(calls),
                               "templates": len(templates)}
    for arm in arms:
        summary[arm] = {
            "wall_s_median": round(statistics.median(walls[arm]), 2),
            "throughput_qps": round(len(calls) / statistics.median(walls[arm]), 2),
            "mean_ms": round(statistics.fmean(all_ms[arm]), 2), "p50_ms": round(_pct(all_ms[arm], 0.5), 2),
            "p95_ms": round(_pct(all_ms[arm], 0.95), 2), "wrong": wrong[arm], "served": served.get(arm, {}),
        }
        if arm != "native" and "native" in arms:
            per_round = [a / b for a, b in zip(walls[arm], walls["native"])]
            summary[arm]["wall_ratio_per_round"] = [round(x, 3) for x in per_round]
            summary[arm]["mean_latency_ratio"] = round(statistics.fmean(all_ms[arm]) / statistics.fmean(all_ms["native"]), 3)
            summary[arm]["p95_ratio"] = round(_pct(all_ms[arm], 0.95) / _pct(all_ms["native"], 0.95), 3)
    return {"summary": summary, "templates": templates}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--workload", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--per-template", type=int, default=6)
    p.add_argument("--capture-instances", type=int, default=3)
    p.add_argument("--max-native-ms", type=float, default=3000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=prepare)
    c = sub.add_parser("capture")
    c.add_argument("--out", required=True)
    c.add_argument("--only", help="capture this set only (a workload name)")
    c.set_defaults(fn=capture)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=8)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--arms", default="native,lqo,capture,literal")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json")
    r.set_defaults(fn=run)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
