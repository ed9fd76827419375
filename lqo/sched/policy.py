"""The scheduling policy contract: what a policy sees and what it answers.

Every policy answers one question, whenever a worker and some threads are free:
``pick(waiting, load) -> Assignment | None``: which waiting job runs next (an index into
``waiting``) and with how many threads. The real executor and the simulator share the
:class:`~lqo.sched.dispatcher.Dispatcher`, so a policy behaves identically in both.
Kinds (``policies.py``: baselines; ``gnn_policy.py``: learned) import this module; the
registry (``policies.get_policy``) sits above them.

>>> Assignment(index=1, threads=2)
Assignment(index=1, threads=2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from lqo.errors import LqoError

if TYPE_CHECKING:
    from lqo.sched.jobs import Job


class PolicyError(LqoError):
    """Unknown policy, or a policy missing what it needs."""


@dataclass(frozen=True)
class Assignment:
    """Run ``waiting[index]`` with ``threads`` threads."""

    index: int
    threads: int


@dataclass
class Load:
    """The machine as a policy sees it at ``now``: ``running`` holds (job, threads, start)."""

    now: float
    running: list[tuple[Job, int, float]]
    free_threads: int
    free_workers: int
    workers: int
    cores: int
    budget: int

    @property
    def default_threads(self) -> int:
        """The cores shared evenly among the workers (at least 1)."""
        return max(1, self.cores // max(1, self.workers))


class Policy:
    """Base class: ``needs`` names the features (``jobs.build_jobs``) it reads;
    ``shared`` policies start every job on arrival with no resource limit."""

    name = "base"
    needs: frozenset[str] = frozenset()
    shared = False
    # Threads all running queries may hold at once; None: max(cores, workers). A policy
    # trained to oversubscribe the cores (the learned one may) says how far.
    thread_budget: int | None = None

    def begin(self, jobs: Sequence[Job]) -> None:
        """Called once before a stream starts, with all its jobs (e.g. to precompute)."""

    def pick(self, waiting: Sequence[Job], load: Load) -> Assignment | None:
        """The waiting query to start and its threads, or None to wait."""
        raise NotImplementedError
