"""Admission for concurrent callers: order, limits, aging, cancellation, real results."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

import lqo
from lqo.engine.admission import AdmissionQueue


def _hold(queue: AdmissionQueue) -> tuple[threading.Thread, threading.Event]:
    """A thread holding one slot until the returned event is set (started, holding)."""
    release = threading.Event()

    def blocker() -> None:
        with queue.admit(1.0):
            release.wait(5)

    b = threading.Thread(target=blocker)
    b.start()
    while queue.running == 0:
        time.sleep(0.001)
    return b, release


def _contend(queue: AdmissionQueue, jobs: list[tuple[str, float]]) -> list[str]:
    """One blocker holds the slot while ``jobs`` (name, expected ms) queue up in order;
    returns the order they were admitted in."""
    order: list[str] = []

    def job(name: str, ms: float) -> None:
        with queue.admit(ms):
            order.append(name)

    b, release = _hold(queue)
    threads = []
    for name, ms in jobs:
        t = threading.Thread(target=job, args=(name, ms))
        t.start()
        threads.append(t)
        while queue.waiting < len(threads):
            time.sleep(0.001)
    release.set()
    for t in [b, *threads]:
        t.join()
    return order


def test_sjf_admits_the_shortest_first_and_fifo_by_arrival():
    jobs = [("long", 1000.0), ("mid", 100.0), ("short", 1.0)]
    assert _contend(AdmissionQueue(1, "sjf"), jobs) == ["short", "mid", "long"]
    assert _contend(AdmissionQueue(1, "fifo"), jobs) == ["long", "mid", "short"]


def test_a_long_wait_outranks_a_short_newcomer():
    queue = AdmissionQueue(1, "sjf")
    order: list[str] = []

    def job(name: str, ms: float) -> None:
        with queue.admit(ms):
            order.append(name)

    h, release = _hold(queue)
    long_job = threading.Thread(target=job, args=("long", 10.0))
    long_job.start()
    time.sleep(0.3)  # waited 300 ms on a 10 ms estimate: ratio 31
    short = threading.Thread(target=job, args=("short", 1.0))  # ratio ~1
    short.start()
    while queue.waiting < 2:
        time.sleep(0.001)
    release.set()
    for t in (h, long_job, short):
        t.join()
    assert order == ["long", "short"]
    assert queue.max_wait_ms >= 300


def test_slots_bound_how_many_run_at_once():
    queue = AdmissionQueue(2, "sjf")
    peak, now, lock = [0], [0], threading.Lock()

    def job() -> None:
        with queue.admit(5.0):
            with lock:
                now[0] += 1
                peak[0] = max(peak[0], now[0])
            time.sleep(0.02)
            with lock:
                now[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2 and queue.running == 0 and queue.waiting == 0


def test_a_caller_interrupted_while_waiting_leaves_the_queue():
    queue = AdmissionQueue(1, "fifo")
    cancel = threading.Event()
    raised: list[BaseException] = []

    def waiter() -> None:
        try:
            with queue.admit(1.0, cancel):
                pass
        except duckdb.InterruptException as err:
            raised.append(err)

    h, release = _hold(queue)
    w = threading.Thread(target=waiter)
    w.start()
    while queue.waiting == 0:
        time.sleep(0.001)
    cancel.set()
    w.join(2)
    release.set()
    h.join()
    assert raised and queue.waiting == 0 and queue.running == 0
    with pytest.raises(ValueError, match="policy"):
        AdmissionQueue(1, "lifo")


def test_a_connection_with_admission_gives_duckdbs_results_from_many_threads(tpch_db):
    native = duckdb.connect(str(tpch_db), read_only=True)
    queries = [("SELECT count(*) FROM lineitem WHERE l_quantity > ?", [q]) for q in range(0, 50, 5)]
    queries += [("SELECT n_name FROM nation WHERE n_regionkey = ? ORDER BY 1", [r]) for r in range(5)]
    expected = [native.execute(sql, p).fetchall() for sql, p in queries]
    con = lqo.connect(tpch_db, admission="sjf", admission_slots=1)
    wrong: list[int] = []

    def work(t: int) -> None:
        cur = con.cursor()
        for i in range(t, len(queries), 3):
            if cur.execute(*queries[i]).fetchall() != expected[i]:
                wrong.append(i)
        cur.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue = con.serving.admission
    assert not wrong and queue is not None and queue.running == 0 and queue.waiting == 0
    # what it expects of a statement it has seen comes from what it measured
    assert con.serving.expected.expect(queries[0][0], [7]) > 0
    con.execute("SET threads = 2")  # not a SELECT: straight to DuckDB
    con.close()
