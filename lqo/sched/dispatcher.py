"""The dispatcher: waiting and running jobs, free workers and threads, and the policy
that picks what starts. Shared by the real executor and the simulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lqo.sched.policy import Load, Policy, PolicyError

if TYPE_CHECKING:
    from lqo.sched.jobs import Job


@dataclass
class Dispatcher:
    """Waiting and running jobs, free workers and threads; asks the policy what to start.

    >>> from lqo.sched.policies import get_policy
    >>> d = Dispatcher(get_policy("fifo"), workers=2, cores=2)
    >>> d.arrive(job); d.start_ready(now=0.0)   # doctest: +SKIP
    [(job, 1, 0)]
    """

    policy: Policy
    workers: int
    cores: int
    waiting: list[Job] = field(default_factory=list)
    running: dict[int, tuple[Job, int, float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cores < 1:
            raise PolicyError(f"workers and cores must be >= 1 (got {self.workers}, {self.cores})")
        self.budget = self.policy.thread_budget or max(self.cores, self.workers)
        self._free_workers = list(range(self.workers))

    @property
    def used_threads(self) -> int:
        """Threads the running queries hold."""
        return sum(t for _, t, _, _ in self.running.values())

    def load(self, now: float) -> Load:
        """The state a policy decides on at time ``now``."""
        return Load(now, [(j, t, s) for j, t, s, _ in self.running.values()],
                    self.budget - self.used_threads, len(self._free_workers),
                    self.workers, self.cores, self.budget)

    def arrive(self, job: Job) -> None:
        """A query arrives: it waits until the policy picks it."""
        self.waiting.append(job)

    def start_ready(self, now: float) -> list[tuple[Job, int, int]]:
        """Start what the policy picks while resources allow: ``(job, threads, worker)``
        each; worker is -1 under a shared policy (the executor routes those itself)."""
        started = []
        while self.waiting:
            shared = self.policy.shared
            if not shared and (not self._free_workers or self.used_threads >= self.budget):
                break
            load = self.load(now)
            d = self.policy.pick(self.waiting, load)
            if d is None:
                break
            if not 0 <= d.index < len(self.waiting):
                raise PolicyError(f"policy {self.policy.name} picked index {d.index} of {len(self.waiting)}")
            job = self.waiting.pop(d.index)
            threads = max(1, int(d.threads)) if shared else max(1, min(int(d.threads), load.free_threads))
            worker = -1 if shared else self._free_workers.pop(0)
            self.running[job.idx] = (job, threads, now, worker)
            started.append((job, threads, worker))
        return started

    def finish(self, idx: int) -> tuple[Job, int, float, int]:
        """Mark job ``idx`` done; frees its worker and threads."""
        job, threads, start, worker = self.running.pop(idx)
        if worker >= 0:
            self._free_workers.append(worker)
            self._free_workers.sort()
        return job, threads, start, worker
