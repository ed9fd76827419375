"""The real executor: worker processes run a stream's queries as a policy dispatches them.

Why processes: DuckDB's ``threads`` setting is global to a database instance, so
per-query thread budgets need one instance per running query, i.e. one process per
worker (a second ``duckdb.connect`` to the same file in one process shares the instance).
Each worker opens every database of the stream ``read_only=True``; DuckDB lets any number
of processes do that.

Thread budgets: an exclusive worker runs one query at a time and sets ``SET threads = t``
on its instance before each query whose ``t`` differs from the last. No reconnect is
needed; the SET costs 0.5-3 ms (measured on the 2-core machines, DuckDB 1.5.5; a run's
meta reports ``thread_changes`` and ``set_threads_ms_max``), against ~0.5 s to spawn a
worker and reopen the files. Before time 0 every worker reads every table once
(``_warm``), as the profile was measured warm.

What a worker runs: each query comes with its SQL and its *mode* (``Mode``: the DuckDB
optimizer rules its decision must run with disabled, ``Optimized.rules``, and the operator
settings of a setting arm, ``Optimized.settings``; both empty for native). An exclusive
worker runs the query inside ``settings.disabled_optimizers(con, rules, settings)``
(restored after); the worker has no notion of "forced" of its own.

Shared policies (``all``): one *shared* worker per plan mode (per distinct mode in the
stream) runs every query as soon as it arrives, each on its own cursor in its own thread,
so all of them share that instance's ``cores`` DuckDB threads, as one DuckDB server
would. Rules and settings are global to a DuckDB instance, so a shared worker runs only
its mode's queries and sets its mode on each instance at start: every query's own
``disabled_optimizers(cursor, rules, settings)`` then finds it already set and changes
nothing, so concurrent queries never see a neighbour's save-set-restore.

Timing: workers time queries with ``time.monotonic`` (CLOCK_MONOTONIC, the same clock in
every process on Linux); time 0 is when all workers are ready. Ctrl-C: workers ignore
SIGINT; the dispatcher tells them to stop (they interrupt running queries), then
terminates and finally kills any that linger, and always joins them: no orphans.
A worker also exits when its pipe to the dispatcher closes (the dispatcher died).

>>> with Workers(databases=["tpch.duckdb"], workers=2, cores=2) as ex:   # doctest: +SKIP
...     result = ex.run(jobs, get_policy("fifo"))
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from lqo.engine.settings import NO_MODE, Mode
from lqo.errors import LqoError
from lqo.sched.dispatcher import Dispatcher
from lqo.sched.policy import Policy
from lqo.sched.result import QueryRecord, ScheduleResult

if TYPE_CHECKING:  # features pulls in sqlglot: keep it out of worker start-up
    from lqo.sched.jobs import Job

_READY_TIMEOUT_S = 120.0


def _warm(con: Any) -> None:
    """Read every column of every table once, so this instance's buffer pool holds the data.

    A fresh instance runs its first queries 1.5-2x slower (TPC-H SF1 q01 494 vs 207 ms)
    while it loads blocks; the thread profile was measured warm. Hashing forces real reads
    (count/min can be answered from statistics). About 2 s per SF1 database.
    """
    cols = con.execute("SELECT schema_name, table_name, list(column_name) FROM duckdb_columns() "
                       "WHERE database_name = current_database() GROUP BY ALL").fetchall()
    for schema, table, names in cols:
        exprs = ", ".join('bit_xor(hash("' + c.replace('"', '""') + '"))' for c in names)
        con.execute(f'SELECT {exprs} FROM "{schema}"."{table}"').fetchall()


def _worker_main(conn: Connection, databases: list[str], threads: int, shared: bool,
                 mode: Mode, timeout_s: float | None, warmup: bool = True) -> None:
    """A worker process: runs queries sent over ``conn`` until told to stop or orphaned.
    Every query runs under its own mode; a shared worker accepts only queries of its
    ``mode``, set instance-wide at start (an exclusive one ignores ``mode``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the dispatcher decides how to stop
    _WorkerProcess(conn, databases, threads, shared, mode, timeout_s, warmup).serve()


class _WorkerProcess:
    """The inside of one worker process: its connections, and a thread per query."""

    def __init__(self, conn: Connection, databases: list[str], threads: int, shared: bool,
                 mode: Mode, timeout_s: float | None, warmup: bool) -> None:
        import duckdb

        self.conn, self.shared, self.timeout_s = conn, shared, timeout_s
        cfg: dict[str, Any] = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                               "threads": threads}
        self.cons = {db: duckdb.connect(db, read_only=True, config=cfg) for db in databases}
        if warmup:
            for con in self.cons.values():
                _warm(con)
        self.mode: Mode | None = (tuple(mode[0]), tuple(mode[1])) if shared else None
        if self.mode is not None:  # the instance-wide baseline: every query of this worker needs exactly these
            rules, settings = self.mode
            for con in self.cons.values():
                if rules:
                    con.execute("SET disabled_optimizers = '" + ",".join(rules).replace("'", "''") + "'")
                for name, value in settings:  # names are checked plain identifiers (settings.setting_pairs)
                    con.execute(f"SET GLOBAL {name} = '" + str(value).replace("'", "''") + "'")
        self.current = {db: threads for db in databases}
        self.send_lock = threading.Lock()
        self.active: dict[int, Any] = {}  # idx -> connection or cursor running it
        self.threads_running: list[threading.Thread] = []

    def send(self, msg: tuple) -> None:
        """Answer the dispatcher (nothing if it is gone)."""
        with self.send_lock:
            try:
                self.conn.send(msg)
            except (OSError, EOFError):
                pass

    def run_one(self, idx: int, db: str, sql: str, q_mode: Mode, t: int) -> None:
        """Run one query with ``t`` threads under ``q_mode``; always answer "done"."""
        con = self.cons[db].cursor() if self.shared else self.cons[db]
        set_ms = 0.0
        timer = None
        try:
            if self.shared and q_mode != self.mode:
                raise RuntimeError(f"query needs mode {q_mode} but this shared worker runs {self.mode}")
            if not self.shared and self.current[db] != t:
                s0 = time.monotonic()
                con.execute(f"SET threads = {int(t)}")
                set_ms, self.current[db] = (time.monotonic() - s0) * 1000.0, t
            self.active[idx] = con
            if self.timeout_s:
                timer = threading.Timer(self.timeout_s, con.interrupt)
                timer.daemon = True
                timer.start()
            self._execute(idx, con, sql, q_mode, set_ms)
        except BaseException as exc:  # never leave the dispatcher waiting for an answer
            now = time.monotonic()
            self.send(("done", idx, now, now, False, f"worker: {type(exc).__name__}: {exc}", None, None, set_ms))
        finally:
            if timer is not None:
                timer.cancel()
            self.active.pop(idx, None)
            if self.shared:
                con.close()

    def _execute(self, idx: int, con: Any, sql: str, q_mode: Mode, set_ms: float) -> None:
        import duckdb

        from lqo.engine.run_result import fingerprint_rows
        from lqo.engine.settings import disabled_optimizers

        start = time.monotonic()
        try:
            if q_mode != NO_MODE:
                with disabled_optimizers(con, q_mode[0], q_mode[1]):
                    rows = con.execute(sql).fetchall()
            else:  # nothing to change: even an empty context manager costs ~1% of a 3 ms query
                rows = con.execute(sql).fetchall()
            end = time.monotonic()
            self.send(("done", idx, start, end, True, None, len(rows), fingerprint_rows(rows), set_ms))
        except duckdb.InterruptException:
            self.send(("done", idx, start, time.monotonic(), False, f"timeout after {self.timeout_s} s", None, None,
                       set_ms))
        except duckdb.Error as exc:
            self.send(("done", idx, start, time.monotonic(), False, f"{type(exc).__name__}: {exc}".splitlines()[0],
                       None, None, set_ms))

    def serve(self) -> None:
        """Take queries until "stop" or the dispatcher is gone; then interrupt, join, exit."""
        self.conn.send(("ready", os.getpid()))
        try:
            while True:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    break  # the dispatcher is gone: do not outlive it
                if msg[0] == "stop":
                    break
                # A thread per query keeps this loop free to hear "stop" while DuckDB runs.
                # The dispatcher sends an exclusive worker its next query only after "done".
                self.threads_running[:] = [t for t in self.threads_running if t.is_alive()]
                th = threading.Thread(target=self.run_one, args=msg[1:], daemon=True)
                self.threads_running.append(th)
                th.start()
        finally:
            for con in list(self.active.values()):
                try:
                    con.interrupt()
                except Exception:
                    pass
            for th in self.threads_running:
                th.join(timeout=2.0)
            os._exit(0)  # skip interpreter teardown while DuckDB threads may still unwind


class ExecutorError(LqoError):
    """A worker failed to start or died."""


class _Worker:
    def __init__(self, ctx: Any, wid: int, databases: list[str], threads: int, shared: bool,
                 mode: Mode, timeout_s: float | None, warmup: bool) -> None:
        self.wid = wid
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, databases, threads, shared, mode, timeout_s, warmup),
                                name=f"lqo-sched-worker-{wid}", daemon=True)
        # Start the child with SIGINT ignored (inherited across spawn's exec): a Ctrl-C
        # that lands while it is still importing must not print a traceback from it.
        main = threading.current_thread() is threading.main_thread()  # signal() needs it
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self.proc.start()
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        child.close()  # only the worker holds its end: EOF reaches it if we die
        self.pid: int | None = None


class Workers:
    """Worker processes plus the dispatch loop. Use as a context manager: workers are
    always stopped and reaped on exit, also on Ctrl-C and errors.

    ``workers`` exclusive workers (one query each); a shared policy uses shared workers
    instead, one per plan mode in ``modes`` (each a ``Mode``: rules and settings, see module docs).
    ``timeout_s`` caps every query (recorded as an error). ``warmup``: each worker reads
    every table once before time 0 (see ``_warm``).
    """

    def __init__(self, databases: Sequence[str], workers: int = 2, cores: int | None = None,
                 timeout_s: float | None = 300.0, shared: bool = False,
                 modes: Sequence[Mode] = (NO_MODE,), warmup: bool = True) -> None:
        self.databases = list(dict.fromkeys(str(d) for d in databases))
        self.workers = workers
        self.cores = cores or os.cpu_count() or 1
        self.timeout_s = timeout_s
        self.shared = shared
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []
        self._shared_for: dict[Mode, _Worker] = {}
        try:
            if shared:
                for i, mode in enumerate(sorted({(tuple(m[0]), tuple(m[1])) for m in modes})):
                    self._pool.append(_Worker(self._ctx, i, self.databases, self.cores, True, mode, timeout_s, warmup))
                    self._shared_for[mode] = self._pool[-1]
            else:
                start_threads = max(1, self.cores // max(1, workers))
                for i in range(workers):
                    self._pool.append(_Worker(self._ctx, i, self.databases, start_threads, False, NO_MODE, timeout_s,
                                                warmup))
            self._await_ready()
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [w.proc.pid for w in self._pool if w.proc.pid is not None]

    def _await_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        for w in self._pool:
            while not w.conn.poll(0.1):
                if not w.proc.is_alive():
                    raise ExecutorError(f"worker {w.wid} died while opening {self.databases} (exit {w.proc.exitcode})")
                if time.monotonic() > deadline:
                    raise ExecutorError(f"worker {w.wid} did not start within {_READY_TIMEOUT_S:.0f} s")
            try:
                w.pid = w.conn.recv()[1]
            except EOFError:
                raise ExecutorError(
                    f"worker {w.wid} died while starting (exit {w.proc.exitcode}); a script that runs the "
                    "scheduler must guard its entry point with `if __name__ == '__main__':` (spawned workers "
                    "re-import it)") from None

    def run(self, jobs: Sequence[Job], policy: Policy, on_done: Callable[[QueryRecord], None] | None = None) -> ScheduleResult:
        """Run ``jobs`` at their arrival times under ``policy``; returns every query's record."""
        if policy.shared != self.shared:
            raise ExecutorError(f"policy {policy.name} needs an executor with shared={policy.shared}")
        pending = sorted(jobs, key=lambda j: (j.arrival_s, j.idx))
        disp = Dispatcher(policy, self.workers, self.cores)
        policy.begin(pending)
        route = {w.wid: w for w in self._pool}
        missing = {j.q.mode for j in pending} - set(self._shared_for) if self.shared else set()
        if missing:
            raise ExecutorError(f"queries run in modes {sorted(missing)} but no shared worker holds them "
                                "(Workers modes)")
        records: list[QueryRecord] = []
        dispatched: dict[int, tuple[float, int]] = {}
        set_ms: list[float] = []
        busy: dict[Connection, int] = {}
        t0 = time.monotonic()
        i, n = 0, len(pending)
        while len(records) < n:
            now = time.monotonic() - t0
            while i < n and pending[i].arrival_s <= now:
                disp.arrive(pending[i])
                i += 1
            for job, threads, worker in disp.start_ready(now):
                w = route[worker] if worker >= 0 else self._shared_for[job.q.mode]
                q = job.q
                dispatched[q.idx] = (time.monotonic() - t0, w.wid)  # before send: start >= dispatch
                w.conn.send(("run", q.idx, q.database, q.exec_sql, q.mode, threads))
                busy[w.conn] = busy.get(w.conn, 0) + 1
            timeout = max(0.0, pending[i].arrival_s - (time.monotonic() - t0)) if i < n else None
            conns = [c for c, k in busy.items() if k > 0]
            if conns:
                ready = cast("list[Connection]", wait(conns, timeout))  # those of conns that are ready
            elif timeout is not None:
                time.sleep(timeout)
                ready = []
            else:
                raise ExecutorError(f"policy {policy.name} left {len(disp.waiting)} queries waiting on an idle machine")
            for c in ready:
                try:
                    msg = c.recv()
                except EOFError:
                    raise ExecutorError("a worker process died during the run") from None
                _, idx, start, end, ok, err, rows, fp, sms = msg
                busy[c] -= 1
                set_ms.append(sms)
                job, threads, _, _ = disp.finish(idx)
                d_s, wid = dispatched.pop(idx)
                q = job.q
                rec = QueryRecord(q.idx, q.workload, q.query_id, q.database, q.arrival_s,
                                  max(start - t0, d_s), max(end - t0, start - t0, d_s), threads, wid,
                                  ok, err, rows, fp, q.forced, d_s, job.f.known_source, q.rules,
                                  q.settings)
                records.append(rec)
                if on_done is not None:
                    on_done(rec)
        records.sort(key=lambda r: r.idx)
        changed = [x for x in set_ms if x > 0]
        meta = {"workers": self.workers, "cores": self.cores, "shared": self.shared,
                "set_threads_ms_max": max(changed) if changed else 0.0, "thread_changes": len(changed)}
        return ScheduleResult(policy.name, "real", records, meta)

    def close(self) -> None:
        """Stop every worker (interrupting its queries) and reap it; idempotent."""
        for w in self._pool:
            try:
                w.conn.send(("stop",))
            except (OSError, EOFError, ValueError):
                pass
        deadline = time.monotonic() + 3.0
        for w in self._pool:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in self._pool:
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(2.0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self._pool = []

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; normal paths call close()
        if getattr(self, "_pool", None):
            try:
                self.close()
            except Exception:
                pass
