"""Admission for concurrent callers: order, limits, aging, cancellation, real results."""

from __future__ import annotations

import threading
import time

import duckdb
import pytest
from test_connection import ARM
from test_connection import _book as _connection_book

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


def _waiter(queue: AdmissionQueue, order: list[str], name: str, ms: float, mode: object,
            cancel: threading.Event | None = None) -> threading.Thread:
    """A thread that queues ``name`` (expected ``ms``, ``mode``) and records its admission;
    returned once it waits."""
    def job() -> None:
        try:
            with queue.admit(ms, cancel, mode):
                order.append(name)
        except duckdb.InterruptException:
            order.append(f"{name} cancelled")

    before = queue.waiting
    t = threading.Thread(target=job)
    t.start()
    while queue.waiting == before and not order:
        time.sleep(0.001)
    return t


def _hold_mode(queue: AdmissionQueue, mode: object) -> tuple[threading.Thread, threading.Event]:
    release = threading.Event()

    def blocker() -> None:
        with queue.admit(100.0, None, mode):
            release.wait(5)

    running = queue.running
    b = threading.Thread(target=blocker)
    b.start()
    while queue.running == running:
        time.sleep(0.001)
    return b, release


def test_sjf_fills_a_free_slot_with_a_near_statement_of_the_running_mode():
    queue = AdmissionQueue(2, "sjf")
    order: list[str] = []
    h, release = _hold_mode(queue, "A")
    other = _waiter(queue, order, "short-B", 1000.0, "B")  # the best, but would wait on mode A
    same = _waiter(queue, order, "near-A", 1500.0, "A")  # passes while short-B has waited < 2 s
    same.join(2)
    assert order == ["near-A"] and queue.waiting == 1  # admitted beside the holder
    release.set()
    for t in (h, other):
        t.join(2)
    assert order == ["near-A", "short-B"] and queue.mode_switches >= 1


def test_a_much_longer_statement_of_the_running_mode_does_not_pass():
    for policy, long_ms in (("sjf", 10_000.0), ("fifo", 1.0)):  # fifo never passes the head
        queue = AdmissionQueue(2, policy, demote=False)
        order: list[str] = []
        h, release = _hold_mode(queue, "A")
        other = _waiter(queue, order, "B", 100.0, "B")
        same = _waiter(queue, order, "A", long_ms, "A")
        time.sleep(0.05)
        assert order == [] and queue.running == 1, policy  # the free slot waits for the drain
        release.set()
        for t in (h, other, same):
            t.join(2)
        assert order == ["B", "A"], policy


def test_cancelling_the_statement_that_held_the_others_back_admits_them():
    queue = AdmissionQueue(2, "sjf", demote=False)
    order: list[str] = []
    cancel = threading.Event()
    h, release = _hold_mode(queue, "A")
    other = _waiter(queue, order, "B", 100.0, "B", cancel)
    same = _waiter(queue, order, "A", 10_000.0, "A")
    cancel.set()
    other.join(2)
    same.join(2)
    assert order == ["B cancelled", "A"]
    release.set()
    h.join(2)
    assert queue.running == 0 and queue.waiting == 0


def test_a_stream_of_the_running_mode_does_not_starve_another_mode():
    queue = AdmissionQueue(2, "sjf", demote=False)
    stop = threading.Event()
    admitted: list[float] = []

    def stream() -> None:  # same-mode statements, one after another, each 10 ms
        while not stop.is_set():
            with queue.admit(10.0, None, "A"):
                time.sleep(0.01)

    streams = [threading.Thread(target=stream) for _ in range(3)]
    for t in streams:
        t.start()
    time.sleep(0.05)
    start = time.perf_counter()
    with queue.admit(10.0, None, "B"):
        admitted.append(time.perf_counter() - start)
    stop.set()
    for t in streams:
        t.join(2)
    assert admitted and admitted[0] < 0.5 and queue.max_wait_ms < 500


def test_one_queue_shared_by_two_connections(tpch_db):
    queue = AdmissionQueue(1, "sjf")
    a = lqo.connect(tpch_db, admission=queue)
    b = lqo.connect(":memory:", admission=queue)
    assert a.serving.admission is queue and b.serving.admission is queue
    h, release = _hold(queue)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(b.cursor().execute("SELECT 42").fetchall()))
    t.start()
    while queue.waiting == 0:  # the other database's statement waits for the shared slot
        time.sleep(0.001)
    assert got == []
    release.set()
    for th in (h, t):
        th.join(2)
    assert got == [[(42,)]] and a.execute("SELECT count(*) FROM nation").fetchall() == [(25,)]
    a.close()
    b.close()


def test_latency_memory_finds_the_books_time_of_a_parameterized_text():
    from types import SimpleNamespace

    from lqo.book.expected import LatencyMemory

    entry = SimpleNamespace(sample_sql="SELECT * FROM t WHERE x = 5 AND d >= '2000-01-01'",
                            native_ms={"a": 80.0}, adopted_ratio=0.5)
    other = SimpleNamespace(sample_sql="SELECT 1 FROM u WHERE y = 3", native_ms={"a": 200.0}, adopted_ratio=1.0)
    memory = LatencyMemory(SimpleNamespace(entries={"k": entry, "o": other}))
    import datetime as dt
    text = "SELECT * FROM t WHERE x = ? AND d >= ?"
    assert memory.expect(text, [7, dt.date(2001, 1, 1)]) == 40.0
    assert memory.expect(text, None) == 40.0  # remembered under its own text now
    memory.forget(text)
    memory.forget(entry.sample_sql)
    assert memory.expect(text, [7, dt.date(2001, 1, 1)]) == 200.0  # unknown: the median of the rest


def test_a_statement_of_a_mode_runs_in_it_alone_and_is_demoted_beside_others():
    queue = AdmissionQueue(2, "sjf")
    with queue.admit(10.0, None, "M") as granted:  # nothing else runs or waits
        assert granted == "M"
    h, release = _hold(queue)  # DuckDB's own rules run in one slot
    with queue.admit(10.0, None, "M") as granted:
        assert granted is None and queue.running == 2  # runs beside it, as written
    release.set()
    h.join(2)
    assert queue.demoted == 1
    one = AdmissionQueue(1, "sjf")  # one slot: nothing overlaps, nothing to demote
    h, release = _hold(one)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(one.admit(10.0, None, "M").__enter__()))
    t.start()
    while one.waiting == 0:
        time.sleep(0.001)
    release.set()
    for th in (h, t):
        th.join(2)
    assert got == ["M"] and one.demoted == 0


def test_a_demoted_statement_runs_as_written_with_duckdbs_result(tpch_db, tmp_path):
    native = duckdb.connect(str(tpch_db), read_only=True)
    _connection_book(tmp_path, native)
    queue = AdmissionQueue(2, "sjf")
    con = lqo.connect(tpch_db, book=tmp_path, admission=queue)
    (s, n), = con.execute(ARM.format(7)).fetchall()  # alone: under its arm
    assert s == "join_filter_pushdown" and con.last is not None
    h, release = _hold(queue)
    (s2, n2), = con.execute(ARM.format(7)).fetchall()  # beside another statement: as written
    release.set()
    h.join(2)
    assert s2 == "" and n2 == n == native.execute(ARM.format(7)).fetchone()[1]
    assert con.last is None and queue.demoted == 1
    con.close()
    native.close()


def test_without_admission_a_plan_with_rules_of_its_own_runs_as_written_beside_others(tpch_db, tmp_path):
    """DuckDB's rules are per instance: a verified arm that took them while another
    thread's statement ran would hold every other statement back until it finished
    (lqo.connect ran 1.3-1.5x native under open-loop load). Beside a running statement
    it runs as written, with DuckDB's result; alone, under its arm."""
    from lqo.engine.settings import disabled_optimizers

    native = duckdb.connect(str(tpch_db), read_only=True)
    _connection_book(tmp_path, native)
    con = lqo.connect(tpch_db, book=tmp_path)
    (s, n), = con.execute(ARM.format(7)).fetchall()
    assert s == "join_filter_pushdown" and con.last is not None
    other = con.cursor()
    running, release = threading.Event(), threading.Event()

    def statement_of_another_thread() -> None:
        with disabled_optimizers(other.duckdb, ()):  # what every statement through lqo holds while it runs
            running.set()
            release.wait(10)

    t = threading.Thread(target=statement_of_another_thread)
    t.start()
    assert running.wait(10)
    try:
        (s2, n2), = con.execute(ARM.format(7)).fetchall()
        demoted = con.last
    finally:
        release.set()
        t.join(10)
    assert s2 == "" and n2 == n == native.execute(ARM.format(7)).fetchone()[1]
    assert demoted is None and con.serving.demoted == 1
    (s3, n3), = con.execute(ARM.format(7)).fetchall()  # alone again: under its arm
    assert s3 == "join_filter_pushdown" and n3 == n and con.serving.demoted == 1
    other.close()
    con.close()
    native.close()
