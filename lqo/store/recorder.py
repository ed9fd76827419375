"""The writing interface measuring code records through (:class:`RunRecorder`).

Both :class:`~lqo.store.experience.ExperienceStore` (the one process that owns the file)
and :class:`~lqo.store.journal.Journal` (a task running away from it, replayed later)
implement it, so exploration and tuning measure the same way in either place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from lqo.engine.run_result import RunResult


class RunRecorder(Protocol):
    """Registers queries and plans (returning their stable keys) and records runs."""

    def add_query(self, sql: str, database: str | None = None, workload: str | None = None,
                  query_id: str | None = None, template: str | None = None) -> str:
        """Register a query (idempotent); its ``query_key``."""
        ...

    def add_plan(self, query_key: str, kind: str, plan_json: Any = None, sql: str | None = None) -> str:
        """Register a plan of a query (idempotent); its ``plan_key``."""
        ...

    def record_run(self, plan_key: str, result: RunResult, timeout_ms: float | None = None,
                   threads: int | None = None, session: str | None = None) -> int:
        """Append one run of a plan; its run id."""
        ...

    def record_runs(self, items: Iterable[tuple[str, RunResult]], timeout_ms: float | None = None,
                    threads: int | None = None, session: str | None = None) -> list[int]:
        """Append several ``(plan_key, result)`` runs, all or none; their run ids."""
        ...

    def mark_wrong(self, plan_key: str, reason: str = "fingerprint differs from native") -> None:
        """Mark a plan as giving wrong results."""
        ...

    def is_wrong(self, plan_key: str) -> bool:
        """Whether a plan is known to give wrong results."""
        ...
