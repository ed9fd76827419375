"""Training the learned scheduler in the simulator: imitation of the oracle, then REINFORCE.

1. Imitation: on random streams the oracle (SJF on measured latency, baseline threads)
   acts; the network learns its choices by cross-entropy. From halfway on, a growing
   share of steps follows the student's own choice (DAgger-style), so it also learns
   the oracle's answer in the states its own mistakes lead to.
2. Policy gradient (REINFORCE with a baseline): per training stream, ``rollouts``
   sampled schedules. Total completion time is the integral of the number of queries in
   the system, so a decision taken at time t is credited with its reward-to-go
   ``R(t) = -sum_i max(0, end_i - max(arrival_i, t))`` (the completion time still to
   accrue after t); the baseline is the mean of R(t) over the rollouts of the same
   stream at the same t (Decima's time-based baseline): only the policy's own choices,
   not the stream's difficulty or the time left, drive the gradient. Advantages are
   scaled by their standard deviation; an entropy bonus keeps it exploring.
3. Every ``eval.every`` episodes the greedy policy is scored on fixed evaluation
   streams (its mean completion time over the oracle's); the best state is returned.

Recipes are TOML (``training/scheduler_tpch.toml`` documents every field); unknown
keys and wrong types are errors naming the key. Relative paths are relative to the file.

>>> recipe = SchedRecipe.load("training/scheduler_tpch.toml")        # doctest: +SKIP
>>> policy, history = train_policy(pool_jobs, recipe)                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lqo.config import dataclass_from_toml
from lqo.errors import LqoError, MissingFileError, RecipeError
from lqo.sched.gnn_policy import LearnedPolicy, SchedNet
from lqo.sched.jobs import Job
from lqo.sched.knowledge import LatencyKnowledge
from lqo.sched.policies import get_policy, wide_oracle
from lqo.sched.simulator import SimConfig, simulate
from lqo.sched.split import check_holdout
from lqo.sched.stream import parse_arrivals
from lqo.sched.training_pool import TrainingPool


@dataclass
class StreamSection:
    """``[stream]``: the training streams (queries, arrivals, workers, cores, thread options)."""

    queries: int = 40
    arrivals: list = field(default_factory=lambda: ["batch", "util:0.7"])
    workers: int = 2
    cores: int = 2
    threads: list = field(default_factory=lambda: [1, 2])
    thread_budget: int = 0  # threads running queries may hold at once; 0: the cores


@dataclass
class ModelSection:
    """``[model]``: the network and what latencies it reads."""

    hidden: int = 32
    layers: int = 2
    latency_source: str = "known"
    graph: bool = True
    sjf_prior: bool = True
    correct_known_only: bool = True
    hold: bool = True
    estimate_share: float = 0.3


@dataclass
class SplitSection:
    """``[split]``: which queries are held out of training."""

    holdout: str = "none"
    train_instances: int = 3


@dataclass
class ImitationSection:
    """``[imitation]``: episodes and learning rate of the imitation phase."""

    episodes: int = 100
    lr: float = 3e-3


@dataclass
class ReinforceSection:
    """``[reinforce]``: episodes, rollouts, learning rate and entropy bonus of policy gradient."""

    episodes: int = 200
    rollouts: int = 4
    lr: float = 3e-4
    entropy: float = 0.01


@dataclass
class EvalSection:
    """``[eval]``: evaluation streams and how often they are scored."""

    streams: int = 6
    every: int = 20


@dataclass
class SimulatorSection:
    """``[simulator]``: the interference the simulator assumes."""

    interference: float = -1.0  # < 0: take the profile's calibrated value (0 if none)


@dataclass
class SchedRecipe:
    """A scheduler training recipe (``lqo train-scheduler``), section by section."""

    workloads: list = field(default_factory=list)
    profiles: list = field(default_factory=list)
    out: str = "runs/scheduler"
    seed: int = 0
    time_budget_min: float = 10.0
    stream: StreamSection = field(default_factory=StreamSection)
    split: SplitSection = field(default_factory=SplitSection)
    model: ModelSection = field(default_factory=ModelSection)
    imitation: ImitationSection = field(default_factory=ImitationSection)
    reinforce: ReinforceSection = field(default_factory=ReinforceSection)
    eval: EvalSection = field(default_factory=EvalSection)
    simulator: SimulatorSection = field(default_factory=SimulatorSection)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SchedRecipe":
        """Read and validate a recipe file (``MissingFileError`` / ``RecipeError``)."""
        p = Path(path)
        if not p.is_file():
            raise MissingFileError(f"recipe not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise RecipeError(f"{p}: invalid TOML: {err}") from None
        try:
            recipe = dataclass_from_toml(cls, data)
            recipe.validate()
        except RecipeError as err:
            raise RecipeError(f"{p}: {err}") from None
        base = p.resolve().parent
        recipe.workloads = [w if Path(w).is_absolute() else os.path.normpath(base / w) for w in recipe.workloads]
        recipe.profiles = [w if Path(w).is_absolute() else os.path.normpath(base / w) for w in recipe.profiles]
        if recipe.out and not Path(recipe.out).is_absolute():
            recipe.out = os.path.normpath(base / recipe.out)
        return recipe

    def validate(self) -> None:
        """``RecipeError`` naming the first field out of range."""
        s, m = self.stream, self.model
        checks = [
            (bool(self.workloads) and all(isinstance(w, str) for w in self.workloads), "workloads: a non-empty list of paths"),
            (all(isinstance(w, str) for w in self.profiles), "profiles: a list of paths"),
            (self.time_budget_min > 0, "time_budget_min must be > 0"),
            (s.queries >= 2 and s.workers >= 1 and s.cores >= 1, "stream.queries >= 2, stream.workers and stream.cores >= 1"),
            (bool(s.arrivals) and all(isinstance(a, str) for a in s.arrivals), "stream.arrivals: a list of specs"),
            (bool(s.threads) and all(isinstance(t, int) and t >= 1 for t in s.threads), "stream.threads: positive integers"),
            (s.thread_budget == 0 or s.thread_budget >= s.cores, "stream.thread_budget: 0 (the cores) or >= stream.cores"),
            (m.hidden >= 4 and m.layers >= 1, "model.hidden >= 4 and model.layers >= 1"),
            # The simulator runs on measured latencies either way; this is what the policy
            # reads: "known" (what lqo knows before a query runs) or "measured" (the truth,
            # the old optimistic protocol).
            (m.latency_source in ("known", "measured"), "model.latency_source must be 'known' or 'measured'"),
            (0.0 <= m.estimate_share <= 1.0, "model.estimate_share must be in [0, 1]"),
            (self.split.train_instances >= 1, "split.train_instances must be >= 1"),
            (self.imitation.episodes >= 0 and self.reinforce.episodes >= 0, "episodes must be >= 0"),
            (self.reinforce.rollouts >= 2, "reinforce.rollouts must be >= 2 (they are each other's baseline)"),
            (self.imitation.lr > 0 and self.reinforce.lr > 0 and self.reinforce.entropy >= 0, "lr > 0, entropy >= 0"),
            (self.eval.streams >= 1 and self.eval.every >= 1, "eval.streams and eval.every must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RecipeError(msg)
        for a in s.arrivals:
            try:
                parse_arrivals(a)
            except LqoError as err:
                raise RecipeError(f"stream.arrivals: {err}") from None
        try:
            check_holdout(self.split.holdout)
        except LqoError as err:
            raise RecipeError(f"split.holdout: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- episodes

def _mean_completion(jobs: Sequence[Job], policy: Any, workers: int, cfg: SimConfig) -> float:
    return simulate(jobs, policy, workers, cfg).mean_s


def reward_to_go(spans: Sequence[tuple[float, float]], t: float) -> float:
    """Minus the completion time still to accrue after ``t``, for (arrival, end) spans.

    >>> reward_to_go([(0.0, 2.0), (1.0, 4.0)], 1.5)
    -3.0
    """
    return -sum(max(0.0, end - max(arr, t)) for arr, end in spans)


def _pg_loss(rollouts: list[tuple[list[tuple[float, float]], list]], entropy: float) -> torch.Tensor:
    """REINFORCE loss over rollouts of one stream with the time-based baseline."""
    terms = []
    for spans, trace in rollouts:
        for logp, ent, t in trace:
            base = sum(reward_to_go(other, t) for other, _ in rollouts) / len(rollouts)
            terms.append((reward_to_go(spans, t) - base, logp, ent))
    if not terms:
        return torch.zeros(())
    scale = math.sqrt(sum(a * a for a, _, _ in terms) / len(terms)) + 1e-8
    adv = torch.tensor([a / scale for a, _, _ in terms])
    logp = torch.stack([lp for _, lp, _ in terms])
    ent = torch.stack([e for _, _, e in terms])
    return -(adv * logp).mean() - entropy * ent.mean()


def train_policy(
    pool: TrainingPool | Sequence[Job],
    recipe: SchedRecipe,
    sim: SimConfig,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    net: SchedNet | None = None,
) -> tuple[LearnedPolicy, list[dict[str, Any]]]:
    """Train on streams drawn from ``pool`` (``pool.training_pool``; a plain list of jobs
    with graphs, measured latencies and, for ``latency_source = "known"``, known ones).

    Stops after the recipe's episodes or its time budget, whichever comes first; returns
    the best policy seen on the evaluation streams and the history (one dict per eval).
    """
    if not pool:
        raise LqoError("no training queries")
    if not isinstance(pool, TrainingPool):
        pool = TrainingPool(list(pool), list(pool), LatencyKnowledge())
    if recipe.model.latency_source == "known" and any(j.f.known_ms is None for j in pool.known):
        raise LqoError("training jobs carry no known latencies: build the pool with pool.training_pool()")
    run = _PolicyTraining(pool, recipe, sim, on_progress, net)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: threads only add overhead on a 2-core machine
    try:
        run.imitate()
        run.reinforce()
    finally:
        torch.set_num_threads(old_threads)
        run.policy.trace, run.policy.teacher, run.policy.greedy = None, None, True
    return run.finish()


class _PolicyTraining:
    """One ``train_policy`` run: the network, its policy, the evaluation streams and the
    best state seen so far, through the two phases (imitation, then REINFORCE)."""

    def __init__(self, pool: TrainingPool, recipe: SchedRecipe, sim: SimConfig,
                 on_progress: Callable[[dict[str, Any]], None] | None, net: SchedNet | None) -> None:
        s = recipe.stream
        self.pool, self.recipe, self.sim, self.on_progress = pool, recipe, sim, on_progress
        options = ([0] if recipe.model.hold else []) + list(s.threads)
        torch.manual_seed(recipe.seed)
        self.rng = random.Random(recipe.seed)
        self.net = net or SchedNet(hidden=recipe.model.hidden, layers=recipe.model.layers, n_threads=len(options),
                                   use_graph=recipe.model.graph, sjf_prior=recipe.model.sjf_prior,
                                   correct_known_only=recipe.model.correct_known_only)
        self.policy = LearnedPolicy(self.net, options, recipe.model.latency_source,
                                    meta={"workers": s.workers, "cores": s.cores, "interference": sim.interference,
                                          "thread_budget": s.thread_budget or None})
        self.oracle = get_policy("oracle")
        # The teacher orders like the oracle; with room to oversubscribe it gives each query
        # the most threads (in the simulator that beats both the baseline threads and
        # all-at-once at every load); policy gradient then learns where fewer pay.
        self.teacher = self.oracle if not s.thread_budget or s.thread_budget <= s.cores else \
            wide_oracle(max(s.threads), s.thread_budget)
        eval_rng = random.Random(f"eval-{recipe.seed}")
        self.evals = [self.draw(s.arrivals[k % len(s.arrivals)], eval_rng) for k in range(recipe.eval.streams)]
        self.oracle_means = [_mean_completion(e, self.oracle, s.workers, sim) for e in self.evals]
        self.started = time.monotonic()
        self.deadline = self.started + recipe.time_budget_min * 60.0
        self.history: list[dict[str, Any]] = []
        self.best: tuple[float, dict | None] = (math.inf, None)
        self.episode = 0

    def draw(self, arrivals: str, r: random.Random) -> list[Job]:
        """A training or evaluation stream from the pool."""
        s = self.recipe.stream
        return self.pool.draw(s.queries, arrivals, s.cores, r, self.recipe.model.estimate_share)

    def evaluate(self, phase: str) -> None:
        """Score the greedy policy on the evaluation streams; keep the best state."""
        s, policy, net = self.recipe.stream, self.policy, self.net
        policy.trace, policy.teacher, policy.greedy = None, None, True
        net.eval()
        ratio = sum(_mean_completion(e, policy, s.workers, self.sim) / o
                    for e, o in zip(self.evals, self.oracle_means)) / len(self.evals)
        net.train()
        rec = {"episode": self.episode, "phase": phase, "vs_oracle": ratio,
               "elapsed_s": round(time.monotonic() - self.started, 2)}
        self.history.append(rec)
        if ratio < self.best[0]:
            self.best = (ratio, {k: v.detach().clone() for k, v in net.state_dict().items()})
        if self.on_progress is not None:
            self.on_progress(rec)

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: bool, phase: str) -> None:
        opt.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        opt.step()
        self.episode += 1
        if self.episode % self.recipe.eval.every == 0:
            self.evaluate(phase)

    def imitate(self) -> None:
        """Phase 1: learn the teacher's choices, DAgger-style from halfway on."""
        s, policy = self.recipe.stream, self.policy
        opt = torch.optim.Adam(self.net.parameters(), lr=self.recipe.imitation.lr)
        n_imit = self.recipe.imitation.episodes
        for k in range(n_imit):
            if time.monotonic() > self.deadline:
                break
            jobs = self.draw(self.rng.choice(s.arrivals), self.rng)
            policy.trace, policy.teacher = [], self.teacher
            policy.student_mix = max(0.0, (k / max(1, n_imit) - 0.5)) if n_imit >= 4 else 0.0
            simulate(jobs, policy, s.workers, self.sim)
            self._step(opt, torch.stack([ce for ce, _, _ in policy.trace]).mean(), False, "imitation")
        if not self.history or self.history[-1]["episode"] != self.episode:
            self.evaluate("imitation")

    def reinforce(self) -> None:
        """Phase 2: REINFORCE over sampled rollouts of each stream (time-based baseline)."""
        s, rr, policy = self.recipe.stream, self.recipe.reinforce, self.policy
        opt = torch.optim.Adam(self.net.parameters(), lr=rr.lr)
        for _ in range(rr.episodes):
            if time.monotonic() > self.deadline:
                break
            jobs = self.draw(self.rng.choice(s.arrivals), self.rng)
            policy.teacher, policy.greedy, policy.student_mix = None, False, 0.0
            rollouts = []
            for _ in range(rr.rollouts):
                policy.trace = []
                res = simulate(jobs, policy, s.workers, self.sim)
                rollouts.append(([(r.arrival_s, r.end_s) for r in res.records], policy.trace))
            self._step(opt, _pg_loss(rollouts, rr.entropy), True, "reinforce")
        if not self.history or self.history[-1]["episode"] != self.episode:
            self.evaluate("final")

    def finish(self) -> tuple[LearnedPolicy, list[dict[str, Any]]]:
        """The best state seen, loaded into the policy, and the evaluation history."""
        if self.best[1] is not None:
            self.net.load_state_dict(self.best[1])
        self.net.eval()
        self.policy.meta["best_vs_oracle"] = self.best[0]
        return self.policy, self.history
