"""Scheduling policies and the dispatcher state they act on.

Every policy answers one question, whenever a worker and some threads are free:
``pick(waiting, load) -> Decision | None``: which waiting job runs next (an index into
``waiting``) and with how many threads. The real executor and the simulator share the
:class:`Dispatcher`, so a policy behaves identically in both.

Resources: ``workers`` processes run one query each; running queries' threads may add up
to ``budget = max(cores, workers)``. Baselines give every query ``cores // workers``
threads (at least 1): the classic "W workers, cores/W threads each" set-up.

Baselines (``POLICIES``):

- ``fifo``: arrival order.
- ``all``: everything starts on arrival, each with ``cores`` threads, and DuckDB plus
  the OS share the cores (``shared = True``: no worker or thread limit).
- ``sjf-est``: shortest job first by DuckDB's estimated cost (sum of join/scan estimates).
- ``sjf-model``: shortest job first by the optimizer model's predicted latency.
- ``oracle``: shortest job first by measured latency at the baseline thread count: a
  bound that needs a thread profile, not a deployable policy.
- ``learned``: the graph network of ``gnn_policy.py``.

>>> p = get_policy("fifo")
>>> p.pick([job_b, job_a], load)  # doctest: +SKIP
Decision(index=1, threads=1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from ..errors import LqoError

if TYPE_CHECKING:
    from .features import Job

POLICIES: tuple[str, ...] = ("learned", "fifo", "all", "sjf-est", "sjf-model", "oracle")


class PolicyError(LqoError):
    """Unknown policy, or a policy missing what it needs."""


@dataclass(frozen=True)
class Decision:
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
        return max(1, self.cores // max(1, self.workers))


class Policy:
    """Base class: ``needs`` names the features (``features.build_jobs``) it reads;
    ``shared`` policies start every job on arrival with no resource limit."""

    name = "base"
    needs: frozenset[str] = frozenset()
    shared = False

    def begin(self, jobs: Sequence[Job]) -> None:
        """Called once before a stream starts, with all its jobs (e.g. to precompute)."""

    def pick(self, waiting: Sequence[Job], load: Load) -> Decision | None:
        raise NotImplementedError


class FifoPolicy(Policy):
    """First come, first served."""

    name = "fifo"

    def pick(self, waiting: Sequence[Job], load: Load) -> Decision | None:
        i = min(range(len(waiting)), key=lambda k: (waiting[k].arrival_s, waiting[k].idx))
        return Decision(i, load.default_threads)


class AllAtOncePolicy(FifoPolicy):
    """Submit everything at once; DuckDB and the OS share the threads."""

    name = "all"
    shared = True

    def pick(self, waiting: Sequence[Job], load: Load) -> Decision | None:
        return Decision(0, load.cores)


class SjfPolicy(Policy):
    """Shortest job first by ``key(job, threads)``; ties by arrival."""

    def __init__(self, name: str, key: Callable[[Job, int], float], needs: set[str]) -> None:
        self.name = name
        self.key = key
        self.needs = frozenset(needs)

    def pick(self, waiting: Sequence[Job], load: Load) -> Decision | None:
        t = load.default_threads
        i = min(range(len(waiting)), key=lambda k: (self.key(waiting[k], t), waiting[k].arrival_s, waiting[k].idx))
        return Decision(i, t)


def _est(job: Job, threads: int) -> float:
    return job.f.est_cost if job.f.est_cost is not None else float("inf")


def _pred(job: Job, threads: int) -> float:
    return job.f.pred_ms if job.f.pred_ms is not None else float("inf")


def _measured(job: Job, threads: int) -> float:
    return job.f.latency_s(threads)


def get_policy(name: str, scheduler_model: str | None = None) -> Policy:
    """A policy by name (``POLICIES``); ``learned`` loads ``scheduler_model``.

    >>> get_policy("sjf-est").needs
    frozenset({'est'})
    >>> get_policy("lifo")
    Traceback (most recent call last):
    ...
    lqo.sched.policies.PolicyError: unknown policy 'lifo' (choose from learned, fifo, all, sjf-est, sjf-model, oracle)
    """
    if name == "fifo":
        return FifoPolicy()
    if name == "all":
        return AllAtOncePolicy()
    if name == "sjf-est":
        return SjfPolicy("sjf-est", _est, {"est"})
    if name == "sjf-model":
        return SjfPolicy("sjf-model", _pred, {"pred"})
    if name == "oracle":
        return SjfPolicy("oracle", _measured, {"lat"})
    if name == "learned":
        if not scheduler_model:
            raise PolicyError("policy 'learned' needs a trained scheduler model (--scheduler-model PATH)")
        from .gnn_policy import LearnedPolicy

        return LearnedPolicy.load(scheduler_model)
    raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")


@dataclass
class Dispatcher:
    """Waiting and running jobs, free workers and threads; asks the policy what to start.

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
        self.budget = max(self.cores, self.workers)
        self._free_workers = list(range(self.workers))

    @property
    def used_threads(self) -> int:
        return sum(t for _, t, _, _ in self.running.values())

    def load(self, now: float) -> Load:
        return Load(now, [(j, t, s) for j, t, s, _ in self.running.values()],
                    self.budget - self.used_threads, len(self._free_workers),
                    self.workers, self.cores, self.budget)

    def arrive(self, job: Job) -> None:
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
