"""Thread profiles: each query's latency alone at each thread count, in a sidecar file.

Where: a DuckDB file the scheduler owns, by default ``WORKLOAD/scheduler-profile.duckdb``
(``--store`` elsewhere; one file may hold several workloads). Not the experience store:
that file admits one writer process at a time and belongs to the optimizer's training,
which may hold it open for hours; profiling must not wait for it or block it.

Schema (version 1), append-only::

    meta(key VARCHAR PRIMARY KEY, value VARCHAR)   -- schema_version, interference (+ scale, fit)
    latencies(query_key VARCHAR, workload VARCHAR, query_id VARCHAR, database VARCHAR,
              threads INTEGER, latency_ms DOUBLE, ok BOOLEAN, error VARCHAR, rows BIGINT,
              measured_at TIMESTAMP, session VARCHAR)

``query_key`` is the experience store's key of (sql, database path). A query's latency at
``t`` threads is the median over its completed runs (timed-out runs count at the
timeout). Runs are interleaved per query (1, 2, 1, 2, ... threads) after a warm-up, so
machine noise spreads over thread counts alike.

>>> profile_workload(Workload.load("ws/tpch-sf1"), "prof.duckdb", threads=(1, 2), repeat=3)  # doctest: +SKIP
>>> ThreadProfile.load(["prof.duckdb"]).get(qkey)                                          # doctest: +SKIP
{1: 612.0, 2: 330.5}
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import duckdb

from lqo.engine.db import connect_writable
from lqo.engine.harness import Harness
from lqo.engine.run_result import utcnow
from lqo.errors import LqoError, MissingFileError
from lqo.store.keys import query_key
from lqo.workloads.workload import Workload

PROFILE_FILE = "scheduler-profile.duckdb"
SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS latencies(
    query_key VARCHAR NOT NULL, workload VARCHAR, query_id VARCHAR, database VARCHAR,
    threads INTEGER NOT NULL, latency_ms DOUBLE NOT NULL, ok BOOLEAN NOT NULL, error VARCHAR,
    rows BIGINT, measured_at TIMESTAMP NOT NULL, session VARCHAR NOT NULL);
"""
_MEDIANS = """
SELECT query_key, threads, median(latency_ms) FROM latencies WHERE error IS NULL GROUP BY ALL
"""


def default_profile_path(workload: Workload) -> Path:
    """Where ``lqo profile-threads`` keeps a workload's profile."""
    return workload.root / PROFILE_FILE


def _open(path: str | os.PathLike, read_only: bool) -> duckdb.DuckDBPyConnection:
    path = str(path)
    if read_only and not os.path.exists(path):
        raise MissingFileError(f"thread profile not found: {path} (run `lqo profile-threads WORKLOAD` first)")
    try:
        con = connect_writable(path, read_only=read_only)
    except duckdb.Error as exc:
        raise LqoError(f"cannot open thread profile {path}: {str(exc).splitlines()[0]}") from None
    try:
        tables = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
        if "meta" in tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if not row or row[0] != SCHEMA_VERSION or "latencies" not in tables:
                raise LqoError(f"{path} is not a version-{SCHEMA_VERSION} lqo thread profile")
        elif tables:
            raise LqoError(f"{path} is not an lqo thread profile (it has tables {sorted(tables)[:5]})")
        elif read_only:
            raise LqoError(f"{path} is empty, not a thread profile")
        else:
            con.execute("BEGIN TRANSACTION")
            con.execute(_SCHEMA)
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            con.execute("COMMIT")
    except BaseException:
        con.close()
        raise
    return con


@dataclass
class ThreadProfile:
    """Median latency (ms) per query key and thread count, plus the simulator's fitted
    ``interference`` and latency ``scale`` (None when never calibrated).

    >>> p = ThreadProfile({"k": {1: 100.0, 2: 60.0}})
    >>> p.get("k")[2], p.get("other")
    (60.0, {})
    """

    latencies: dict[str, dict[int, float]] = field(default_factory=dict)
    interference: float | None = None
    scale: float | None = None
    oversubscription: float | None = None

    def get(self, qkey: str) -> dict[int, float]:
        """Latency per thread count of query ``qkey`` (empty if not profiled)."""
        return self.latencies.get(qkey, {})

    def __len__(self) -> int:
        return len(self.latencies)

    @classmethod
    def load(cls, paths: str | os.PathLike | Iterable[str | os.PathLike]) -> "ThreadProfile":
        """Merge one or more profile files (read-only); ``MissingFileError`` if one is missing."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        prof = cls()
        for path in paths:
            con = _open(path, read_only=True)
            try:
                for qk, t, ms in con.execute(_MEDIANS).fetchall():
                    prof.latencies.setdefault(qk, {})[int(t)] = float(ms)
                row = con.execute("SELECT value FROM meta WHERE key = 'interference'").fetchone()
                if row is not None:
                    fit = json.loads(row[0])
                    prof.interference = float(fit["value"])
                    prof.scale = float(fit["scale"]) if "scale" in fit else None
                    prof.oversubscription = float(fit.get("oversubscription", 0.0))
            finally:
                con.close()
        return prof


def save_calibration(path: str | os.PathLike, config: Any, fit: dict) -> None:
    """Record the fitted simulator ``config`` (a ``SimConfig``: interference and scale) and
    how it was fitted in the profile."""
    con = _open(path, read_only=False)
    try:
        con.execute("INSERT OR REPLACE INTO meta VALUES ('interference', ?)",
                    [json.dumps({"value": config.interference, "scale": config.scale,
                                 "oversubscription": config.oversubscription, **fit})])
    finally:
        con.close()


def parse_threads(text: str) -> tuple[int, ...]:
    """``"1,2"`` -> ``(1, 2)``; ``LqoError`` for anything but positive integers.

    >>> parse_threads("2, 1")
    (1, 2)
    """
    try:
        ts = tuple(sorted({int(x) for x in str(text).split(",") if x.strip()}))
    except ValueError:
        ts = ()
    if not ts or ts[0] < 1 or ts[-1] > 256:
        raise LqoError(f"bad thread counts {text!r}: expected a comma-separated list like 1,2")
    return ts


def profile_workload(
    workload: Workload,
    store_path: str | os.PathLike,
    threads: Sequence[int] = (1, 2),
    repeat: int = 3,
    warmup: int = 1,
    timeout_s: float | None = 300.0,
    queries: Sequence[str] | None = None,
    on_query: Callable[[str, dict[int, float | None]], None] | None = None,
) -> dict[str, dict[int, float | None]]:
    """Measure every query alone at each thread count and append the runs to the store.

    One query's runs go in in one transaction, so Ctrl-C keeps every finished query.
    Returns query id -> threads -> median ms of this session (None if none completed).
    """
    if repeat < 1 or warmup < 0:
        raise LqoError("--repeat must be >= 1 (and warm-up >= 0)")
    wl = workload.subset(queries) if queries else workload
    session = uuid.uuid4().hex[:12]
    store = _open(store_path, read_only=False)
    con = wl.connect()
    out: dict[str, dict[int, float | None]] = {}
    try:
        harness = Harness(con, timeout_s=timeout_s)
        for q in wl:
            runs: dict[int, list] = {t: [] for t in threads}
            dead: set[int] = set()
            for rnd in range(-warmup, repeat):
                for t in threads:
                    if t in dead:
                        continue
                    con.execute(f"SET threads = {int(t)}")
                    r = harness.run(q.sql, profile=False)
                    if not r.ok:
                        dead.add(t)  # a timeout or error will not improve: stop paying for it
                    if rnd >= 0 or not r.ok:
                        runs[t].append(r)
            qk = query_key(q.sql, str(wl.database))
            rows = [[qk, wl.name, q.id, str(wl.database), t, r.latency_ms if not r.timed_out else max(
                r.latency_ms, r.timeout_ms or 0), r.ok, r.error, r.rows if r.ok else None,
                utcnow(), session] for t, rs in runs.items() for r in rs]
            store.execute("BEGIN TRANSACTION")
            try:
                store.executemany("INSERT INTO latencies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                store.execute("COMMIT")
            except BaseException:
                store.execute("ROLLBACK")
                raise
            med: dict[int, float | None] = {}
            for t in runs:
                ms = sorted(row[5] for row in rows if row[4] == t and row[7] is None)
                med[t] = ms[len(ms) // 2] if len(ms) % 2 else (sum(ms[len(ms) // 2 - 1: len(ms) // 2 + 1]) / 2 if ms else None)
            out[q.id] = med
            if on_query is not None:
                on_query(q.id, med)
    finally:
        con.close()
        store.close()
    return out
