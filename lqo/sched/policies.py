"""Scheduling policies by name: the baselines, and the registry that also loads the
learned one (the contract they all follow is ``policy.py``).

Resources: ``workers`` processes run one query each; running queries' threads may add up
to ``budget = max(cores, workers)``. Baselines give every query ``cores // workers``
threads (at least 1): the classic "W workers, cores/W threads each" set-up.

Baselines (``POLICIES``):

- ``fifo``: arrival order.
- ``all``: everything starts on arrival, each with ``cores`` threads, and DuckDB plus
  the OS share the cores (``shared = True``: no worker or thread limit).
- ``sjf-est``: shortest job first by DuckDB's estimated cost (sum of join/scan estimates).
- ``sjf-model``: shortest job first by the optimizer model's predicted latency.
- ``sjf-known``: shortest job first by the best latency lqo knows before running the
  query (``knowledge.py``: measured, else its template's, else predicted or estimated):
  the heuristic the learned policy must beat on the same information.
- ``oracle``: shortest job first by measured latency at the baseline thread count: a
  bound that needs a thread profile, not a deployable policy.
- ``learned``: the graph network of ``gnn_policy.py``.

>>> p = get_policy("fifo")
>>> p.pick([job_b, job_a], load)  # doctest: +SKIP
Assignment(index=1, threads=1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from lqo.sched.policy import Assignment, Load, Policy, PolicyError

if TYPE_CHECKING:
    from lqo.sched.jobs import Job

POLICIES: tuple[str, ...] = ("learned", "fifo", "all", "sjf-est", "sjf-known", "sjf-model", "oracle")


class FifoPolicy(Policy):
    """First come, first served."""

    name = "fifo"

    def pick(self, waiting: Sequence[Job], load: Load) -> Assignment | None:
        """The first arrived, with the default threads."""
        i = min(range(len(waiting)), key=lambda k: (waiting[k].arrival_s, waiting[k].idx))
        return Assignment(i, load.default_threads)


class AllAtOncePolicy(FifoPolicy):
    """Submit everything at once; DuckDB and the OS share the threads."""

    name = "all"
    shared = True

    def pick(self, waiting: Sequence[Job], load: Load) -> Assignment | None:
        """The first waiting, with every core."""
        return Assignment(0, load.cores)


class SjfPolicy(Policy):
    """Shortest job first by ``key(job, threads)``; ties by arrival."""

    def __init__(self, name: str, key: Callable[[Job, int], float], needs: set[str],
                 threads: int | None = None) -> None:
        self.name = name
        self.key = key
        self.needs = frozenset(needs)
        self.threads = threads  # None: the baseline cores // workers

    def pick(self, waiting: Sequence[Job], load: Load) -> Assignment | None:
        """The shortest by the policy's key, with its threads."""
        t = load.default_threads if self.threads is None else max(1, min(self.threads, load.free_threads))
        i = min(range(len(waiting)), key=lambda k: (self.key(waiting[k], t), waiting[k].arrival_s, waiting[k].idx))
        return Assignment(i, t)


def _est(job: Job, threads: int) -> float:
    return job.f.est_cost if job.f.est_cost is not None else float("inf")


def _pred(job: Job, threads: int) -> float:
    return job.f.pred_ms if job.f.pred_ms is not None else float("inf")


def _known(job: Job, threads: int) -> float:
    return job.f.known_ms if job.f.known_ms is not None else float("inf")


def _measured(job: Job, threads: int) -> float:
    return job.f.latency_s(threads)


def wide_oracle(threads: int, budget: int) -> SjfPolicy:
    """The oracle's order with ``threads`` threads per query and up to ``budget`` threads
    running at once (oversubscribing the cores when ``budget`` exceeds them): the learned
    policy's imitation teacher when it may oversubscribe, and a calibration run that
    shows the simulator what oversubscription costs. Not a deployable policy.

    >>> wide_oracle(2, 4).thread_budget
    4
    """
    policy = SjfPolicy("oracle-wide", _measured, {"lat"}, threads=threads)
    policy.thread_budget = budget
    return policy


def get_policy(name: str, scheduler_model: str | None = None) -> Policy:
    """A policy by name (``POLICIES``); ``learned`` loads ``scheduler_model``.

    >>> get_policy("sjf-est").needs
    frozenset({'est'})
    >>> get_policy("lifo")
    Traceback (most recent call last):
    ...
    lqo.sched.policy.PolicyError: unknown policy 'lifo' (choose from learned, fifo, all, sjf-est, sjf-known, sjf-model, oracle)
    """
    if name == "fifo":
        return FifoPolicy()
    if name == "all":
        return AllAtOncePolicy()
    if name == "sjf-est":
        return SjfPolicy("sjf-est", _est, {"est"})
    if name == "sjf-known":
        return SjfPolicy("sjf-known", _known, {"known"})
    if name == "sjf-model":
        return SjfPolicy("sjf-model", _pred, {"pred"})
    if name == "oracle":
        return SjfPolicy("oracle", _measured, {"lat"})
    if name == "learned":
        if not scheduler_model:
            raise PolicyError("policy 'learned' needs a trained scheduler model (--scheduler-model PATH)")
        from lqo.sched.gnn_policy import LearnedPolicy

        return LearnedPolicy.load(scheduler_model)
    raise PolicyError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
