"""Experience store: every query, plan and run lqo has seen, in one DuckDB file.

The file belongs to lqo (never the user's database). DuckDB lets ONE process open a file
for writing, and while it does no other process can open it at all, not even
read-only: run one writer per store (share the ``ExperienceStore`` inside a process,
or give each worker process its own file and merge them with plain SQL later).

The tables, their version and the check that a file is a store are :mod:`lqo.store.schema`.

Keys are ``lqo.store.keys`` (re-exported here): ``query_key`` of (database, sql),
``plan_key`` of (query_key, canonical plan_json, native-or-forced). Times are UTC. ``plans.sql`` is
NULL for a plan run natively (DuckDB's optimizer on). ``runs.rows`` is NULL unless the
run completed. Everything is append-only: a wrong plan gets a row in ``wrong_plans``
instead of an UPDATE, so history is never rewritten. Each write is one transaction:
a process killed at any point loses nothing committed and leaves no partial rows.

>>> with ExperienceStore.open(ModelDir(out).store) as store:  # doctest: +SKIP
...     qk = store.add_query(sql, database="tpch.duckdb", workload="tpch", query_id="q05")
...     pk = store.add_plan(qk, "native", None, None)
...     store.record_run(pk, Harness(con).run(sql))
...     store.best_plan(qk)["plan_key"]
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from lqo.engine.db import connect_writable, one_value
from lqo.engine.failures import error_line
from lqo.engine.run_result import RunResult, utcnow
from lqo.errors import LqoError, MissingFileError, PlanError
from lqo.lock import WriterLock, acquire
from lqo.store.keys import canonical_plan_json, plan_key, query_key
from lqo.store.schema import check_or_create_store, create_placement_tables

# Median per plan over completed and timed-out runs; a timeout counts as at least its
# timeout, so a plan that mostly times out cannot win on its one lucky run.
_PLAN_MEDIANS = """
SELECT p.plan_key, p.kind, p.plan_json, p.sql,
       median(CASE WHEN r.timed_out THEN greatest(r.latency_ms, coalesce(r.timeout_ms, 0))
                   ELSE r.latency_ms END) AS median_ms,
       count(*) AS n_runs, count(*) FILTER (WHERE r.timed_out) AS n_timeouts
FROM plans p JOIN runs r USING (plan_key)
WHERE p.query_key = ? AND r.error IS NULL
  AND p.plan_key NOT IN (SELECT plan_key FROM wrong_plans)
GROUP BY ALL
"""


class ExperienceStore:
    """An append-only, transactional store of queries, plans and runs. See module docs."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: str, session: str | None = None) -> None:
        self.con = con
        self.path = path
        self.session = session or uuid.uuid4().hex[:12]
        self._lock = threading.RLock()  # one DuckDB connection: serialise threads on it
        self._depth = 0  # open transaction() blocks: writes inside one join the outer transaction
        self._held: WriterLock | None = None  # the writer lock of a store opened for writing

    @classmethod
    def open(cls, path: str | os.PathLike, read_only: bool = False, session: str | None = None) -> ExperienceStore:
        """Open (creating if missing) the store at ``path``.

        Raises LqoError if the file is another database, has another schema version, or
        is held by another process (``BusyError`` when another lqo process writes it).

        >>> store = ExperienceStore.open("runs.duckdb")  # doctest: +SKIP
        """
        path = str(path)
        if read_only and not os.path.exists(path):
            raise MissingFileError(f"experience store not found: {path}")
        # A writer first takes the store's advisory lock (STORE.lock): a second lqo
        # process stops here with BusyError naming the store and the holder.
        held = None if read_only else acquire(path, f"experience store {path}", "another store file")
        try:
            try:
                con = connect_writable(path, read_only=read_only)
            except duckdb.IOException as exc:
                raise LqoError(f"cannot open experience store {path} (one process at a time may open it): "
                               f"{error_line(str(exc))}") from exc
            try:
                check_or_create_store(con, path, read_only)
            except BaseException:
                con.close()
                raise
        except BaseException:
            if held is not None:
                held.release()
            raise
        store = cls(con, path, session)
        store._held = held
        return store

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One ``BEGIN ... COMMIT`` around the block; the write methods called inside it
        join it instead of committing on their own, so a group of writes (one distributed
        task's queries, plans and runs) is stored all-or-none."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.con
                finally:
                    self._depth -= 1
                return
            self.con.execute("BEGIN TRANSACTION")
            self._depth = 1
            try:
                yield self.con
            except BaseException:
                self._depth = 0
                self.con.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self.con.execute("COMMIT")
            except BaseException:
                # A failed COMMIT may leave the transaction open; never leave it dangling.
                try:
                    self.con.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                raise

    _transaction = transaction

    def _dicts(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.con.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def close(self) -> None:
        """Close the file (and release the writer lock); safe to call twice."""
        if self.con is not None:
            self.con.close()
            self.con = None  # type: ignore[assignment]
        if self._held is not None:
            self._held.release()
            self._held = None

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def add_query(
        self,
        sql: str,
        database: str | None = None,
        workload: str | None = None,
        query_id: str | None = None,
        template: str | None = None,
    ) -> str:
        """Register a query (idempotent) and return its ``query_key``.

        >>> qk = store.add_query("SELECT 1", database="/data/tpch.duckdb", workload="tpch", query_id="q01")  # doctest: +SKIP
        """
        qk = query_key(sql, database)
        with self._transaction() as con:
            con.execute(
                "INSERT INTO queries VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [qk, workload, query_id, template, sql, database, utcnow()],
            )
        return qk

    def add_plan(self, query_key: str, kind: str, plan_json: Any = None, sql: str | None = None) -> str:
        """Register a plan of a query (idempotent) and return its ``plan_key``.

        ``plan_json`` is opaque (a JSON string or a JSON-able object); ``sql`` is the
        rendered forced SQL, None for a native run. Adding the same plan again returns the
        same key and keeps the first ``kind``.

        >>> pk = store.add_plan(qk, "random", {"join": ["lineitem", "orders"]}, rendered_sql)  # doctest: +SKIP
        """
        canon = canonical_plan_json(plan_json)
        pk = plan_key(query_key, canon, sql)
        with self._transaction() as con:
            if con.execute("SELECT 1 FROM queries WHERE query_key = ?", [query_key]).fetchone() is None:
                raise PlanError(f"unknown query_key {query_key}: add_query first")
            con.execute(
                "INSERT INTO plans VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [pk, query_key, kind, canon, sql, utcnow()],
            )
        return pk

    def record_run(
        self,
        plan_key: str,
        result: RunResult,
        timeout_ms: float | None = None,
        threads: int | None = None,
        session: str | None = None,
    ) -> int:
        """Append one run of a plan in one transaction; return its ``run_id``.

        ``timeout_ms`` / ``threads`` default to the result's, ``session`` to the store's.

        >>> store.record_run(pk, harness.run(sql, timeout_s=5))  # doctest: +SKIP
        """
        return self.record_runs([(plan_key, result)], timeout_ms, threads, session)[0]

    def record_runs(
        self,
        items: Iterable[tuple[str, RunResult]],
        timeout_ms: float | None = None,
        threads: int | None = None,
        session: str | None = None,
    ) -> list[int]:
        """Append several ``(plan_key, result)`` runs in ONE transaction: all or none."""
        ids: list[int] = []
        with self._transaction() as con:
            for pk, r in items:
                row = con.execute("SELECT query_key FROM plans WHERE plan_key = ?", [pk]).fetchone()
                if row is None:
                    raise PlanError(f"unknown plan_key {pk}: add_plan first")
                completed = not r.timed_out and r.error is None
                tmo = timeout_ms if timeout_ms is not None else r.timeout_ms
                thr = threads if threads is not None else r.threads
                rid = one_value(
                    con,
                    "INSERT INTO runs (plan_key, query_key, started_at, latency_ms, timed_out, timeout_ms,"
                    " error, rows, fingerprint, operators_json, threads, session)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING run_id",
                    [pk, row[0], r.started_at, float(r.latency_ms), bool(r.timed_out), tmo, r.error,
                     r.rows if completed else None, r.fingerprint,
                     json.dumps(r.operators, separators=(",", ":")) if r.operators else None,
                     thr, session or self.session],
                )
                ids.append(int(rid))
        return ids

    def mark_wrong(self, plan_key: str, reason: str = "fingerprint differs from native") -> None:
        """Mark a plan as giving wrong results: it is never returned as a candidate again.

        Append-only: adds a ``wrong_plans`` row (marking twice keeps both rows).
        """
        with self._transaction() as con:
            con.execute("INSERT INTO wrong_plans VALUES (?, ?, ?)", [plan_key, reason, utcnow()])

    def record_task(self, task_id: str, node: str, run_ids: list[int], slot: int | None = None,
                    attempts: int = 1) -> bool:
        """Note that ``run_ids`` ran on ``node`` as task ``task_id``; False (and nothing
        written) when that task is already recorded. Call it inside ``transaction()``
        with the task's other writes, so a duplicate rolls them back too."""
        with self._transaction() as con:
            create_placement_tables(con)
            if con.execute("SELECT 1 FROM tasks WHERE task_id = ?", [task_id]).fetchone() is not None:
                return False
            con.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)",
                        [task_id, node, slot, attempts, len(run_ids), utcnow()])
            if run_ids:
                con.executemany("INSERT INTO run_nodes VALUES (?, ?, ?)", [[r, task_id, node] for r in run_ids])
        return True

    # ------------------------------------------------------------------ reads

    def task_recorded(self, task_id: str) -> bool:
        """Whether ``record_task(task_id, ...)`` has committed."""
        with self._lock:
            if self.con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'tasks'"
                                " AND database_name = current_database()").fetchone() is None:
                return False
            return self.con.execute("SELECT 1 FROM tasks WHERE task_id = ?", [task_id]).fetchone() is not None

    def wrong_plan_keys(self, query_key: str) -> set[str]:
        """Plan keys of ``query_key`` marked wrong: what a remote task must not run again."""
        with self._lock:
            rows = self.con.execute("SELECT DISTINCT w.plan_key FROM wrong_plans w JOIN plans p USING (plan_key)"
                                    " WHERE p.query_key = ?", [query_key]).fetchall()
        return {r[0] for r in rows}


    def is_wrong(self, plan_key: str) -> bool:
        """True once ``mark_wrong(plan_key)`` has been recorded."""
        with self._lock:
            return self.con.execute("SELECT 1 FROM wrong_plans WHERE plan_key = ? LIMIT 1", [plan_key]).fetchone() is not None

    def get_query(self, query_key: str) -> dict[str, Any] | None:
        """The ``queries`` row as a dict, or None."""
        rows = self._dicts("SELECT * FROM queries WHERE query_key = ?", [query_key])
        return rows[0] if rows else None

    def get_plan(self, plan_key: str) -> dict[str, Any] | None:
        """The plan (``plans_v`` row, with ``wrong``) as a dict, or None."""
        rows = self._dicts("SELECT * FROM plans_v WHERE plan_key = ?", [plan_key])
        return rows[0] if rows else None

    def plans_for_query(self, query_key: str) -> list[dict[str, Any]]:
        """All plans of a query (with ``wrong``), oldest first."""
        return self._dicts("SELECT * FROM plans_v WHERE query_key = ? ORDER BY created_at, plan_key", [query_key])

    def runs_for_query(self, query_key: str) -> list[dict[str, Any]]:
        """All runs of a query, oldest first, with the plan's ``kind``; operators parsed."""
        rows = self._dicts(
            "SELECT r.*, p.kind FROM runs r JOIN plans p USING (plan_key) WHERE r.query_key = ? ORDER BY r.run_id",
            [query_key],
        )
        for r in rows:
            r["operators"] = json.loads(r.pop("operators_json")) if r["operators_json"] else []
        return rows

    def best_plan(self, query_key: str) -> dict[str, Any] | None:
        """The non-wrong plan with the lowest median latency, or None.

        Returns ``plan_key, kind, plan_json, sql, median_ms, n_runs, n_timeouts``. Errored
        runs are ignored; a timed-out run counts as at least its timeout.
        """
        rows = self._dicts(_PLAN_MEDIANS + " ORDER BY median_ms, n_runs DESC, plan_key LIMIT 1", [query_key])
        return rows[0] if rows else None

    def native_latency(self, query_key: str) -> float | None:
        """Median latency (ms) over all runs of the query's native plan(s), timeouts as >= timeout."""
        with self._lock:
            m = one_value(
                self.con,
                "SELECT median(CASE WHEN r.timed_out THEN greatest(r.latency_ms, coalesce(r.timeout_ms, 0))"
                " ELSE r.latency_ms END) FROM runs r JOIN plans p USING (plan_key)"
                " WHERE p.query_key = ? AND p.kind = 'native' AND r.error IS NULL",
                [query_key],
            )
        return None if m is None else float(m)
