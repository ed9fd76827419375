"""Writes held back: a task that runs away from the experience store records into a
``Journal``, and the one process that owns the store replays it there.

A ``Journal`` has the writing interface of :class:`~lqo.store.experience.ExperienceStore`
that exploration and tuning use (``add_query``, ``add_plan``, ``record_run(s)``,
``mark_wrong``, ``is_wrong``), so the very same measuring code runs against either. Keys
are pure functions of their inputs (:func:`~lqo.store.keys.query_key`,
:func:`~lqo.store.keys.plan_key`), so a journal hands out the keys the store will
give. ``is_wrong`` answers from the plan keys the driver says are wrong, plus those the
task marked itself.

:func:`replay` applies a journal in ONE transaction together with the task's placement
row (``tasks``: its id, node, attempts), so a task is recorded whole or not at all, and
at most once: a task id already recorded is skipped, nothing written.

>>> from lqo.engine.run_result import RunResult
>>> j = Journal()
>>> qk = j.add_query("SELECT 1", database="db", query_id="q1")
>>> pk = j.add_plan(qk, "native")
>>> _ = j.record_runs([(pk, RunResult(1.5)), (pk, RunResult(1.4))])
>>> j.n_runs, j.is_wrong(pk)
(2, False)
>>> j.mark_wrong(pk, "differs"); j.is_wrong(pk)
True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lqo.engine.run_result import RunResult
from lqo.store.experience import ExperienceStore
from lqo.store.keys import canonical_plan_json, plan_key, query_key


@dataclass
class Journal:
    """The store writes of one task, in order (plain data: it travels back to the driver)."""

    wrong: set[str] = field(default_factory=set)
    ops: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        """Runs held in the journal."""
        return sum(len(args[0]) for name, args in self.ops if name == "record_runs")

    def add_query(self, sql: str, database: str | None = None, workload: str | None = None,
                  query_id: str | None = None, template: str | None = None) -> str:
        """Hold a query's registration; its ``query_key``."""
        self.ops.append(("add_query", (sql, database, workload, query_id, template)))
        return query_key(sql, database)

    def add_plan(self, query_key: str, kind: str, plan_json: Any = None, sql: str | None = None) -> str:
        """Hold a plan's registration; its ``plan_key``."""
        canon = canonical_plan_json(plan_json)
        self.ops.append(("add_plan", (query_key, kind, canon, sql)))
        return plan_key(query_key, canon, sql)

    def record_run(self, plan_key: str, result: RunResult, timeout_ms: float | None = None,
                   threads: int | None = None, session: str | None = None) -> int:
        """Hold one run; a placeholder id (-1)."""
        return self.record_runs([(plan_key, result)], timeout_ms, threads, session)[0]

    def record_runs(self, items: Iterable[tuple[str, RunResult]], timeout_ms: float | None = None,
                    threads: int | None = None, session: str | None = None) -> list[int]:
        """Held until replayed; the ids returned are placeholders (-1), as no row exists yet."""
        items = list(items)
        self.ops.append(("record_runs", (items, timeout_ms, threads, session)))
        return [-1] * len(items)

    def mark_wrong(self, plan_key: str, reason: str = "fingerprint differs from native") -> None:
        """Hold a plan's marking as wrong (and answer ``is_wrong`` for it from now on)."""
        self.wrong.add(plan_key)
        self.ops.append(("mark_wrong", (plan_key, reason)))

    def is_wrong(self, plan_key: str) -> bool:
        """Whether the driver or this task marked the plan wrong."""
        return plan_key in self.wrong


_REPLAYED = frozenset({"add_query", "add_plan", "record_runs", "mark_wrong"})


def replay(store: ExperienceStore, journal: Journal, task_id: str, node: str, slot: int | None = None,
           attempts: int = 1) -> list[int] | None:
    """Apply ``journal`` to ``store`` with the task's placement, all in one transaction.

    Returns the new run ids, or None when ``task_id`` was recorded before (then nothing
    is written: a retried task whose first result did arrive cannot add rows twice)."""
    if store.task_recorded(task_id):
        return None
    run_ids: list[int] = []
    try:
        with store.transaction():
            for name, args in journal.ops:
                if name not in _REPLAYED:  # data from another process: call only the writers
                    raise ValueError(f"unknown journal operation {name!r}")
                out = getattr(store, name)(*args)
                if name == "record_runs":
                    run_ids.extend(out)
            if not store.record_task(task_id, node, run_ids, slot, attempts):
                raise _Duplicate  # recorded meanwhile: roll the whole task back
    except _Duplicate:
        return None
    return run_ids


class _Duplicate(Exception):
    """Raised inside the transaction only to roll it back."""
