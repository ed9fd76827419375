"""What lqo's connection costs on the queries it leaves alone, what capture costs, what
loading a book costs, and the key of a huge IN list.

    python benchmarks/connection_overhead.py WORKLOAD --book DIR [--rounds 7] [--json OUT]

- ``per call``: ``SELECT 42`` in alternating blocks of 100 calls: the time a call adds.
- ``left alone``: every query of WORKLOAD whose template the book keeps native (and a
  few texts the book does not know), one thread, ``execute(sql).fetchall()`` through
  plain DuckDB and through ``lqo.connect(db, book=DIR)``, interleaved per query and
  round (the order of the two alternates), after one warm-up each; the median of the
  per-query ratios and the added time per call.
- ``capture``: the same through ``lqo.connect(db, capture=...)`` (no book).
- ``load``: a fresh process importing lqo and opening the book, 5 times: time and the
  peak memory added, and whether torch or sqlglot got imported.
- ``long list``: the template key of ``IN (5,000 integers)`` / ``(5,000 strings)``
  against DuckDB's tokenizer on the same text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

import lqo
from lqo.book.book import PlanBook
from lqo.book.template import template_key
from lqo.model_dir import ModelDir
from lqo.workloads.workload import Workload

_LOAD = '''
import resource, sys, time
import duckdb
con = duckdb.connect({db!r}, read_only=True)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
import lqo
c = lqo.wrap(con, book={book!r})
ms = (time.perf_counter() - t) * 1000
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(ms, (r1 - r0) / 1024, "torch" in sys.modules, "sqlglot" in sys.modules)
'''


def _time(con, sql: str) -> float:
    t = time.perf_counter()
    con.execute(sql).fetchall()
    return (time.perf_counter() - t) * 1000


def left_alone(w: Workload, book_dir: str, rounds: int, capture: Path) -> dict:
    book = PlanBook.load(ModelDir(book_dir).book)
    native_keys = {k for k, e in book.entries.items() if e.chosen.kind == "native"}
    texts = [q.sql for q in w if template_key(q.sql).key in native_keys]
    plain = duckdb.connect(str(w.database), read_only=True)
    texts.append("SELECT 42 AS answer")  # texts the book does not know
    texts += [f"SELECT count(*) FROM {t}" for (t,) in plain.execute(
        "SELECT table_name FROM duckdb_tables() ORDER BY estimated_size LIMIT 3").fetchall()]
    served = lqo.connect(w.database, book=book_dir)
    captured = lqo.connect(w.database, capture=capture, capture_limit_mb=256)
    arms = {"native": plain, "lqo": served, "capture": captured}
    times: dict[str, dict[int, list[float]]] = {a: {i: [] for i in range(len(texts))} for a in arms}
    for i, sql in enumerate(texts):
        for con in arms.values():
            con.execute(sql).fetchall()  # warm-up
    for r in range(rounds):
        for i, sql in enumerate(texts):
            order = list(arms) if (r + i) % 2 == 0 else list(reversed(list(arms)))
            for a in order:
                times[a][i].append(_time(arms[a], sql))
    out = {"queries": len(texts)}
    for a in ("lqo", "capture"):
        ratios = [statistics.median(times[a][i]) / statistics.median(times["native"][i]) for i in range(len(texts))]
        added = [statistics.median(times[a][i]) - statistics.median(times["native"][i]) for i in range(len(texts))]
        total = sum(statistics.median(times[a][i]) for i in range(len(texts))) / sum(
            statistics.median(times["native"][i]) for i in range(len(texts)))
        out[a] = {"median_ratio": round(statistics.median(ratios), 4), "total_ratio": round(total, 4),
                  "median_added_ms": round(statistics.median(added), 4)}
    out["native_median_ms"] = round(statistics.median(statistics.median(v) for v in times["native"].values()), 3)
    captured.log.close()
    for c in arms.values():
        c.close()
    return out


def per_call(db: str, book_dir: str, capture: Path, blocks: int = 40, block: int = 100) -> dict:
    """What a call costs beyond DuckDB's own: ``SELECT 42`` (unknown to any book) in
    alternating blocks through plain DuckDB, lqo with the book, and lqo capturing."""
    arms = {"native": duckdb.connect(db, read_only=True), "lqo": lqo.connect(db, book=book_dir),
            "capture": lqo.connect(db, capture=capture, capture_limit_mb=256)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    for b in range(blocks):
        for a in (list(arms) if b % 2 else list(reversed(list(arms)))):
            con = arms[a]
            t = time.perf_counter()
            for _ in range(block):
                con.execute("SELECT 42").fetchall()
            times[a].append((time.perf_counter() - t) / block * 1e6)
    med = {a: statistics.median(v) for a, v in times.items()}
    arms["capture"].log.close()
    for c in arms.values():
        c.close()
    return {"native_us": round(med["native"], 1), "lqo_added_us": round(med["lqo"] - med["native"], 1),
            "capture_added_us": round(med["capture"] - med["native"], 1)}


def load(db: str, book_dir: str) -> dict:
    runs = []
    for _ in range(5):
        res = subprocess.run([sys.executable, "-c", _LOAD.format(db=db, book=book_dir)], capture_output=True,
                             text=True, check=True)
        ms, mb, torch, sqlglot = res.stdout.split()
        runs.append((float(ms), float(mb), torch == "True", sqlglot == "True"))
    return {"load_ms_median": round(statistics.median(r[0] for r in runs), 1),
            "load_ms_min": round(min(r[0] for r in runs), 1),
            "added_mb_median": round(statistics.median(r[1] for r in runs), 1),
            "imports_torch": any(r[2] for r in runs), "imports_sqlglot": any(r[3] for r in runs)}


def long_list() -> dict:
    out = {}
    for name, items in (("ints", [str(i * 7) for i in range(5000)]), ("strings", [f"'c{i * 7}'" for i in range(5000)])):
        sql = f"SELECT count(*) FROM orders WHERE o_orderkey IN ({', '.join(items)}) AND o_comment <> 'x'"
        for label, fn in (("template_key", template_key), ("duckdb_tokenize", duckdb.tokenize)):
            fn(sql)
            ts = []
            for _ in range(30):
                t = time.perf_counter()
                fn(sql)
                ts.append((time.perf_counter() - t) * 1000)
            out[f"{name}_{label}_ms"] = round(statistics.median(ts), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload")
    ap.add_argument("--book", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    w = Workload.load(args.workload)
    with tempfile.TemporaryDirectory() as tmp:
        report = {"per_call": per_call(str(w.database), args.book, Path(tmp) / "p.jsonl"),
                  "left_alone": left_alone(w, args.book, args.rounds, Path(tmp) / "c.jsonl"),
                  "load": load(str(w.database), args.book), "long_list": long_list()}
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
