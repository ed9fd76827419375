"""Where ``lqo tune``'s measuring steps run: here, one at a time, or on Ray executors.

A step is a function of a :class:`~lqo.tune.trials.Trials` (connection, store, config)
and plain data (template, book entry, candidate) that returns plain data:

- ``baseline_step``: native runs of a template's tuning instances;
- ``trial_step``: screen a candidate and, if it screens as a win, its acceptance test,
  both on the same executor, so the paired, interleaved rounds against native never
  span two nodes;
- ``retest_step``: an acceptance test screening put off, run once everything is screened;
- ``accept_step``: an acceptance test alone (re-checks).

``LocalSteps`` runs a step at once on the driver's ``Trials`` (the sequential path,
writing the store directly). ``PoolSteps`` sends it to an executor, which builds a
``Trials`` on its own connection around a :class:`~lqo.store.journal.Journal`; the
driver replays the journal into its store under the step's task id (once).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import duckdb

from lqo.book.book import AcceptanceVerdict, BookEntry, Candidate, PlanBook
from lqo.sql.catalog import Catalog
from lqo.store.experience import ExperienceStore
from lqo.store.journal import Journal, replay
from lqo.tune.inputs import TemplateInstances, TuneConfig
from lqo.tune.trials import Trials, acceptance_bar

if TYPE_CHECKING:
    from lqo.distributed.pool import ExecutorPool


class Done(NamedTuple):
    """A finished step: what it was submitted under, its value, and where it ran."""

    key: Any  # what the caller submitted the step under
    value: Any  # the step's return value (None when ``error``)
    node: str | None  # where it ran (None: here)
    error: str | None = None  # the executor was lost twice: the step did not complete


def baseline_step(ctx: Trials, t: TemplateInstances, entry: BookEntry) -> dict[str, Any]:
    """Native runs of a template's tuning instances: the entry's native figures."""
    ctx.baseline(t, entry)
    return {"native_ms": entry.native_ms, "fingerprints": entry.fingerprints,
            "weight_ms": entry.weight_ms, "note": entry.note}


def trial_step(ctx: Trials, t: TemplateInstances, entry: BookEntry, c: Candidate) -> tuple[float, int, AcceptanceVerdict | None]:
    """(screening ratio, wrong results, the acceptance verdict or None if not tested)."""
    ratio, wrong = ctx.screen(t, entry, c)
    if ratio < acceptance_bar(entry, ctx.config.screen_below) and not wrong:
        return ratio, wrong, ctx.accept(t, entry, c)
    return ratio, wrong, None


def retest_step(ctx: Trials, t: TemplateInstances, entry: BookEntry, c: Candidate) -> tuple[float, int, AcceptanceVerdict]:
    """The acceptance test ``trial_step`` put off (``trials.acceptance_bar``), in its shape."""
    return entry.screened.get(c.id, float("inf")), 0, ctx.accept(t, entry, c)


def accept_step(ctx: Trials, t: TemplateInstances, entry: BookEntry, c: Candidate) -> AcceptanceVerdict:
    """An acceptance test alone (a re-check of an adopted choice)."""
    return ctx.accept(t, entry, c)


class Steps:
    """The interface the tuner drives: ``free()`` slots, ``submit``, then ``next()``."""

    def free(self) -> int:
        """How many more steps may be submitted now."""
        raise NotImplementedError

    def submit(self, key: Any, name: str, step: Callable[..., Any], *args: Any) -> None:
        """Run ``step(trials, *args)``; its result comes back from ``next`` under ``key``."""
        raise NotImplementedError

    def next(self) -> Done | None:
        """The next finished step, or None when none is pending."""
        raise NotImplementedError


class LocalSteps(Steps):
    """One step at a time on the driver's own connection: the sequential path."""

    def __init__(self, ctx: Trials) -> None:
        self.ctx = ctx
        self._done: deque[Done] = deque()

    def free(self) -> int:
        """One step at a time."""
        return 0 if self._done else 1

    def submit(self, key: Any, name: str, step: Callable[..., Any], *args: Any) -> None:
        """Run the step now."""
        self._done.append(Done(key, step(self.ctx, *args), None))

    def next(self) -> Done | None:
        """The step just run."""
        return self._done.popleft() if self._done else None


class PoolSteps(Steps):
    """Steps on Ray executors, as many at once as there are; results recorded here."""

    def __init__(self, pool: ExecutorPool, store: ExperienceStore, config: TuneConfig, workload: str) -> None:
        self.pool, self.store, self.config, self.workload = pool, store, config, workload
        self._keys: dict[str, Any] = {}

    def free(self) -> int:
        """Idle executors."""
        return self.pool.idle()

    def submit(self, key: Any, name: str, step: Callable[..., Any], *args: Any) -> None:
        """Send the step to an executor, under a task id that names the session, the step and its subject."""
        # The task id is the idempotency key of what it records: session, step, subject.
        task_id = f"{self.store.session}/{name}"
        self._keys[task_id] = key
        self.pool.submit(task_id, remote_step, step, self.config, self.workload, *args)

    def next(self) -> Done | None:
        """The next step to finish, its journal replayed into the store (once per task id)."""
        out = self.pool.next()
        if out is None:
            return None
        key = self._keys.pop(out.task_id)
        if out.error is not None:
            return Done(key, None, out.node, out.error)
        value, journal = out.value
        replay(self.store, journal, out.task_id, out.node, out.slot, out.attempts)
        return Done(key, value, out.node)


def remote_step(con: duckdb.DuckDBPyConnection, catalog: Catalog, step: Callable[..., Any], config: TuneConfig,
                workload: str, *args: Any) -> tuple[Any, Journal]:
    """Run ``step`` on an executor's connection; its store writes go into a Journal."""
    book = PlanBook(catalog.fingerprint)
    book.meta["workload"] = workload  # Trials labels the queries it records with it
    journal = Journal()
    ctx = Trials(con, catalog, None, journal, book, config)
    return step(ctx, *args), journal
