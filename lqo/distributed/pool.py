"""The driver's side of ``--ray``: connect, place executors, dispatch tasks, retry once.

Ray is imported here only, and only when a pool is made. One
:class:`~lqo.distributed.executor.MeasureExecutor` actor per node (``slots`` per node if asked),
pinned to its node, each with its own read-only connection to the database at the path
the workload names. A node whose database differs from the driver's (schema fingerprint,
row counts) is refused before any task runs.

Faults: an actor that dies mid-task is restarted by Ray (``max_restarts``) and the task
is sent once more; the restarted actor gets work only once it answers again (a task sent
to an actor still restarting fails without running, which would count as a second
death); a task that loses its executor twice comes back as an ``Outcome``
with ``error`` set (the caller reports it failed and goes on). A task may have run on
a dead actor without its result arriving, so callers record an outcome under its task
id, once (:func:`lqo.store.journal.replay`). ``close()`` kills every actor: Ctrl-C on
the driver stops them, and what was recorded stays.

>>> with ExecutorPool("tpch.duckdb", address="local", slots=2) as pool:   # doctest: +SKIP
...     pool.submit("t1", fn, arg)
...     for out in pool.results():
...         print(out.node, out.value)
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from lqo.distributed.executor import MeasureExecutor, database_fingerprint, fingerprint_difference
from lqo.engine.db import connect_read_only
from lqo.engine.failures import error_line
from lqo.errors import ClusterError

MAX_ATTEMPTS = 2  # a task is retried once after its executor died
ACTOR_RESTARTS = 3  # how often Ray may restart one executor
CONNECT_TIMEOUT_S = 3.0  # TCP probe of a cluster address before Ray is asked
GCS_WAIT_S = "5"  # Ray's own wait for a cluster that answers but is not Ray (default ~20 s)
START_TIMEOUT_S = 180.0  # executors opening their database and reporting back


@dataclass
class Outcome:
    """One finished task: ``value`` is what the task function returned (None on error)."""

    task_id: str
    value: Any
    node: str
    slot: int
    attempts: int
    seconds: float
    error: str | None = None


@dataclass
class _Task:
    task_id: str
    fn: Callable[..., Any]
    args: tuple
    attempts: int = 0


@dataclass
class _Slot:
    handle: Any
    node: str
    index: int
    threads: int = 0
    host: str = ""
    alive: bool = True
    busy: bool = False  # a task in flight on it, or it is restarting (its ready probe in flight)
    stats: dict[str, float] = field(default_factory=lambda: {"tasks": 0, "runs": 0, "retries": 0, "busy_s": 0.0})


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); ClusterError otherwise.

    >>> parse_address("10.0.0.5:6379")
    ('10.0.0.5', 6379)
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"bad Ray address {address!r}: expected HOST:PORT, 'auto' or 'local'")
    return host.strip("[]"), int(port)


def connect_ray(address: str = "local") -> bool:
    """Join a Ray cluster: ``local`` starts one on this machine, ``auto`` finds the one
    ``ray start`` runs here (or ``RAY_ADDRESS``), ``HOST:PORT`` is its head. Returns
    whether this call started Ray (then it is also the one to shut it down). An
    already-initialized Ray session (a notebook, a test) is used as it is."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address == "local":
        ray.init(address="local", **kwargs)
        return True
    target = _resolve(address)
    _probe(address, target)
    # A port that accepts TCP but is not a Ray head would make Ray retry ~20 s, and a
    # dead head can stall it for minutes: keep the wait short, the error one line.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", GCS_WAIT_S)
    try:
        with _quiet_stderr():
            # "auto" itself, not the address it found: only then does Ray use this
            # machine's token for a cluster with token authentication.
            ray.init(address="auto" if address == "auto" else target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, SystemExit) as err:
        hint = ""
        if address != "auto" and "RAY_AUTH_MODE" not in os.environ:
            hint = " (a cluster with token authentication also needs RAY_AUTH_MODE=token and its token)"
        raise ClusterError(f"cannot connect to the Ray cluster at {address}: "
                           f"{error_line(str(err)) or type(err).__name__}{hint}") from None
    return True


def _resolve(address: str) -> str:
    if address != "auto":
        host, port = parse_address(address)
        return f"{host}:{port}"
    try:  # where `ray start` left its address; Ray's own lookup, not a public API
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - any failure here means: no cluster found
        found = None
    if not found:
        raise ClusterError("cannot find a Ray cluster (--ray auto): none runs here and RAY_ADDRESS is not set; "
                           "start one with `ray start --head`, or use --ray without an address for a local one")
    return found


def _probe(address: str, target: str) -> None:
    host, port = parse_address(target)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        where = address if address == target else f"{address} ({target})"
        raise ClusterError(f"cannot reach the Ray cluster at {where}: {err.strerror or type(err).__name__}") from None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ client logs every failed connection attempt on stderr; the user gets
    one line from lqo instead."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class ExecutorPool:
    """Executors on every node of a Ray cluster, and the tasks in flight on them."""

    def __init__(self, database: str | os.PathLike, address: str = "local", slots: int = 1,
                 threads: int | None = None, reference: dict | None = None,
                 log: Callable[[str], None] = lambda line: None, executor_options: dict | None = None) -> None:
        if slots < 1 or (threads is not None and threads < 1):
            raise ClusterError("--ray-slots and --ray-threads must be >= 1")
        self.database = str(Path(database).absolute())
        self.log = log
        self._started = connect_ray(address)
        self._slots: list[_Slot] = []
        self._queue: deque[_Task] = deque()
        self._flight: dict[Any, tuple[_Slot, _Task | None]] = {}  # None: a restarted executor's ready probe
        try:
            if reference is None:
                con = connect_read_only(self.database)
                try:
                    reference = database_fingerprint(con)
                finally:
                    con.close()
            self._start(slots, threads, reference, executor_options or {})
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _start(self, slots: int, threads: int | None, reference: dict, options: dict) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(MeasureExecutor)
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
        if not nodes:
            raise ClusterError("the Ray cluster has no live node with CPUs")
        for n in nodes:
            cpus = int(n["Resources"]["CPU"])
            per = threads or max(1, cpus // slots)
            label = f"{n.get('NodeManagerAddress', '?')}/{n['NodeID'][:8]}"
            for _ in range(slots):
                # num_cpus=0: placement is explicit (one per node or per slot), and a node
                # with fewer CPUs than slots must still get its executors.
                handle = remote.options(
                    num_cpus=0, max_restarts=ACTOR_RESTARTS, max_task_retries=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                ).remote(self.database, per, **options)
                self._slots.append(_Slot(handle, label, len(self._slots), per))
        refs = [s.handle.describe.remote() for s in self._slots]
        for slot, ref in zip(self._slots, refs):
            try:
                info = ray.get(ref, timeout=START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise ClusterError(f"node {slot.node}: its executor did not start within {START_TIMEOUT_S:.0f} s") from None
            except ray.exceptions.RayError as err:
                raise ClusterError(f"node {slot.node}: cannot open the database {self.database}: "
                                   f"{_cause_line(err)}") from None
            diff = fingerprint_difference(reference, info["fingerprint"])
            if diff is not None:
                raise ClusterError(f"node {slot.node} ({info['host']}) refused: its database {self.database} differs "
                                   f"from the driver's: {diff}; every node needs the same database at that path")
            slot.threads, slot.host = info["threads"], info["host"]
        self.log(f"ray: {len(nodes)} node(s), {len(self._slots)} executor(s), "
                 f"{', '.join(sorted({str(s.threads) for s in self._slots}))} DuckDB thread(s) each")

    # ------------------------------------------------------------------ tasks
    @property
    def size(self) -> int:
        """Executors alive: how many tasks may run at once."""
        return sum(1 for s in self._slots if s.alive)

    def idle(self) -> int:
        """Executors with nothing in flight or queued for them."""
        return max(0, sum(1 for s in self._slots if s.alive and not s.busy) - len(self._queue))

    def pending(self) -> int:
        """Tasks queued or running (a restarted executor's ready probe does not count)."""
        return len(self._queue) + sum(1 for _, task in self._flight.values() if task is not None)

    def submit(self, task_id: str, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(con, catalog, *args)``; it runs on the next idle executor."""
        self._queue.append(_Task(task_id, fn, args))
        self._dispatch()

    def _dispatch(self) -> None:
        for slot in self._slots:
            if not self._queue:
                return
            if slot.alive and not slot.busy:
                task = self._queue.popleft()
                task.attempts += 1
                slot.busy = True
                self._flight[slot.handle.run.remote(task.fn, *task.args)] = (slot, task)

    def next(self) -> Outcome | None:
        """Wait for the next finished task (None when nothing is pending)."""
        import ray

        while True:
            self._dispatch()
            if not self.pending():
                return None  # ready probes still in flight are waited for with the next task
            if not self._flight:
                raise ClusterError("every Ray executor is lost; what finished is recorded")
            ready, _ = ray.wait(list(self._flight), num_returns=1)
            slot, task = self._flight.pop(ready[0])
            if task is None:
                self._back(slot, ready[0])
                continue
            # The slot stays busy until its task's outcome is known: an executor that died
            # must not be handed the next task while Ray is still restarting it.
            try:
                value, seconds = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                slot.stats["retries"] += 1
                if isinstance(err, ray.exceptions.ActorDiedError):
                    slot.alive = False  # no restart left (or its node is gone): others take its work
                    slot.busy = False
                else:
                    self._await_restart(slot)
                if task.attempts >= MAX_ATTEMPTS:
                    self.log(f"ray: task {task.task_id} lost its executor twice (node {slot.node}); reported failed")
                    return Outcome(task.task_id, None, slot.node, slot.index, task.attempts, 0.0,
                                   error=f"executor on node {slot.node} died twice")
                self.log(f"ray: executor {slot.index} on node {slot.node} died during {task.task_id}; "
                         f"restarted, task sent again")
                self._queue.appendleft(task)
                continue
            except ray.exceptions.RayTaskError as err:
                slot.busy = False
                cause = getattr(err, "cause", None)
                if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
                    raise cause from None  # e.g. an LqoError inside the task: the same one line as locally
                raise ClusterError(f"task {task.task_id} failed on node {slot.node}: {_cause_line(err)}") from None
            slot.busy = False
            self._dispatch()  # the executor takes its next task while the driver records this one
            slot.stats["tasks"] += 1
            slot.stats["busy_s"] += seconds
            slot.stats["runs"] += getattr(value[-1], "n_runs", 0) if isinstance(value, tuple) and value else 0
            return Outcome(task.task_id, value, slot.node, slot.index, task.attempts, seconds)

    def _await_restart(self, slot: _Slot) -> None:
        """Keep a died executor out of dispatch until Ray has restarted it: a probe that Ray
        holds (retries) while the actor restarts, answered by the restarted actor. A task
        sent in the meantime would fail without running (``ActorUnavailableError``: the
        actor is restarting), and be counted as its second death."""
        slot.busy = True
        self._flight[slot.handle.describe.options(max_task_retries=-1).remote()] = (slot, None)

    def _back(self, slot: _Slot, probe: Any) -> None:
        import ray

        try:
            ray.get(probe)
        except ray.exceptions.RayError as err:  # no restart left, or it could not start again
            slot.alive = False
            self.log(f"ray: executor {slot.index} on node {slot.node} did not come back "
                     f"({_cause_line(err)}); the others take its work")
        slot.busy = False

    def results(self) -> "_Results":
        """Every pending task's outcome as it finishes (sized, for a progress bar)."""
        return _Results(self, self.pending())

    # ------------------------------------------------------------------ summary, end
    def summary(self) -> list[dict[str, Any]]:
        """Per node: executors, DuckDB threads each, tasks, runs, retries, busy seconds."""
        out: dict[str, dict[str, Any]] = {}
        for s in self._slots:
            d = out.setdefault(s.node, {"node": s.node, "host": s.host, "executors": 0, "threads": s.threads,
                                        "tasks": 0, "runs": 0, "retries": 0, "busy_s": 0.0})
            d["executors"] += 1
            for k in ("tasks", "runs", "retries"):
                d[k] += int(s.stats[k])
            d["busy_s"] = round(d["busy_s"] + s.stats["busy_s"], 2)
        return list(out.values())

    def close(self) -> None:
        """Kill every executor (queued and running work stops), and Ray if this pool started it."""
        try:
            import ray
        except ImportError:  # pragma: no cover - the pool could not have been made
            return
        self._queue.clear()
        self._flight.clear()
        for s in self._slots:
            try:
                ray.kill(s.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone, or the cluster is: nothing left to stop
                pass
            s.alive = False
        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False

    def __enter__(self) -> "ExecutorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Results:
    def __init__(self, pool: ExecutorPool, total: int) -> None:
        self.pool, self.total = pool, total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[Outcome]:
        while True:
            out = self.pool.next()
            if out is None:
                return
            yield out


def _cause_line(err: BaseException) -> str:
    """One line for a remote failure: the original exception's message, not Ray's trace."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {error_line(str(cause))}"
    text = str(err)
    for line in reversed(text.splitlines()):  # Ray puts the original error last
        if line.strip() and not line.startswith(" "):
            return line.strip()
    return error_line(text) or type(err).__name__

