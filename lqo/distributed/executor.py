"""One executor: a read-only DuckDB connection on one node, running measuring tasks.

Plain Python (no Ray import here): :mod:`lqo.distributed.pool` makes it a Ray actor.
A task is a library function ``fn(con, catalog, *args)`` that measures through the usual
:class:`~lqo.engine.harness.Harness` and writes into a
:class:`~lqo.store.journal.Journal`; it returns ``(result, journal)``, plain data the
driver replays into its store. The executor never writes anything.

>>> fingerprint_difference({"schema": "a", "rows": {"t": 3}}, {"schema": "a", "rows": {"t": 4}})
'table t has 4 rows, the driver 3'
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Callable

import duckdb

from lqo.engine.db import connect_read_only, one_value
from lqo.sql.catalog import Catalog


def database_fingerprint(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """What must match across nodes: the schema fingerprint and every table's row count
    (cheap: DuckDB answers ``count(*)`` from table metadata)."""
    catalog = Catalog.from_connection(con)
    rows = {}
    for table in sorted(catalog.tables):
        rows[table] = one_value(con, f'SELECT count(*) FROM "{table}"')
    return {"schema": catalog.fingerprint, "rows": rows}


def fingerprint_difference(reference: dict[str, Any], other: dict[str, Any]) -> str | None:
    """The first way ``other`` differs from the driver's ``reference``, in words; None if equal."""
    if reference["schema"] != other["schema"]:
        missing = sorted(set(reference["rows"]) - set(other["rows"]))
        extra = sorted(set(other["rows"]) - set(reference["rows"]))
        detail = (f"tables missing: {', '.join(missing)}" if missing else
                  f"extra tables: {', '.join(extra)}" if extra else "column names or types differ")
        return f"schema {other['schema']} is not the driver's {reference['schema']} ({detail})"
    for table, n in reference["rows"].items():
        if other["rows"].get(table) != n:
            return f"table {table} has {other['rows'].get(table)} rows, the driver {n}"
    return None


FAULT_RESTART_S = 2.0  # how long an executor restarted after an injected crash takes to start


class MeasureExecutor:
    """Holds one read-only connection (``threads`` DuckDB threads) and runs tasks on it.

    ``fault_file`` is for fault tests only: the first task run while that file does not
    exist creates it and ends this process before the task's result goes back, as a
    crash mid-task would; the restarted executor finds the file and runs normally, after
    a slow start (``FAULT_RESTART_S``, as on a loaded node): the window in which the
    driver could send work to an executor still restarting is then wide, not a matter
    of timing luck.
    """

    def __init__(self, database: str, threads: int | None = None, fault_file: str | None = None) -> None:
        self.database = database
        if fault_file and os.path.exists(fault_file):
            time.sleep(FAULT_RESTART_S)  # restarted after the injected crash
        self.con = connect_read_only(database, threads=threads)
        self.catalog = Catalog.from_connection(self.con)
        self.threads = int(one_value(self.con, "SELECT current_setting('threads')"))
        self.fault_file = fault_file
        self.tasks = 0

    def describe(self) -> dict[str, Any]:
        """Who this executor is and what database it sees (the driver compares it with its own)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "threads": self.threads,
                "database": self.database, "fingerprint": database_fingerprint(self.con)}

    def run(self, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
        """``fn(con, catalog, *args)`` and the seconds it took."""
        self.tasks += 1
        crash = self._arm_fault()
        t0 = time.perf_counter()
        value = fn(self.con, self.catalog, *args)
        if crash is not None:
            crash.wait()  # the work is done but its result never leaves: the worst case for duplicates
        return value, time.perf_counter() - t0

    def _arm_fault(self) -> threading.Event | None:
        if not self.fault_file:
            return None
        try:  # O_EXCL: of executors starting tasks at once, exactly one claims the crash
            fd = os.open(self.fault_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        done = threading.Event()

        def _die() -> None:
            os._exit(1)

        # Mid-task: 50 ms in, or at the latest when the task has finished.
        timer = threading.Timer(0.05, _die)
        timer.daemon = True
        timer.start()
        return done
