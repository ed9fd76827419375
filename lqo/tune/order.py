"""The order ``lqo tune`` tries (template, candidate) pairs in, and the put-off tests.

``strategy="learned"``: each candidate origin (an arm's rule, ``star``, ``dp``, ``flip``,
``random``, ...) keeps a posterior of how often it screens as a win and by how much
(:class:`OriginStats`); :func:`pick` takes the pair with the highest expected saving per
second of tuning, Thompson-style, so origins seldom tried still get tried; a trained
model's predicted gain, where there is one, counts half. ``strategy="random"``: uniform.

>>> s = OriginStats()
>>> s.update("star", 0.7, True); s.update("star", 1.2, False)
>>> round(s.draw("star", random.Random(0))[1], 2)  # mean gain of its wins
0.3
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from lqo.book.book import Candidate, PlanBook
from lqo.tune.inputs import TemplateInstances, TuneConfig


class OriginStats:
    """Per candidate origin: screening outcomes seen so far (the learned prior)."""

    def __init__(self) -> None:
        self.tries: dict[str, int] = defaultdict(int)
        self.wins: dict[str, int] = defaultdict(int)
        self.gain: dict[str, float] = defaultdict(float)

    def update(self, origin: str, ratio: float, win: bool) -> None:
        """Count one screening of a candidate of ``origin``: its ratio, and whether it was a win."""
        self.tries[origin] += 1
        if win:
            self.wins[origin] += 1
            self.gain[origin] += max(0.0, 1.0 - ratio)

    def draw(self, origin: str, rng: random.Random) -> tuple[float, float]:
        """A Beta(1 + wins, 1 + losses) draw for the chance to pass screening, and the mean
        gain of wins so far (0.15 before any): optimistic for origins seldom tried."""
        n, w = self.tries[origin], self.wins[origin]
        return rng.betavariate(1 + w, 1 + n - w), (self.gain[origin] / w if w else 0.15)


def pick(pending: Sequence[tuple[TemplateInstances, Candidate]], book: PlanBook, origins: OriginStats,
         rng: random.Random, predicted: dict[tuple[str, str], tuple[float, float]], config: TuneConfig) -> int:
    """Index in ``pending`` of the pair to try next."""
    if config.strategy == "random":
        return rng.randrange(len(pending))
    # Expected workload saving per second of tuning. Saving: the template's weight x
    # what is left to win x the expected gain. Cost: one screening run plus, with the
    # chance to pass it, an acceptance test of 2 x rounds runs on every tuning
    # instance, all about the template's native time. The template's time cancels:
    # what is cheap to test is tried first, whatever its size (ordering by saving
    # alone, big templates first, reached each workload time later than random order
    # on TPC-DS SF1).
    accept_runs = 2 * config.rounds * config.tune_instances
    best, best_i = -1.0, 0
    for i, (t, c) in enumerate(pending):
        # Saving still on offer: a template already sped up has less left to win.
        left = book.entries[t.key].adopted_ratio
        p, g = origins.draw(c.origin, rng)
        gain = p * g
        model = predicted.get((t.key, c.id))
        if model is not None:  # the ensemble's predicted gain, optimistic by its spread
            gain = 0.5 * gain + 0.5 * max(0.0, model[0] + model[1])
        score = left * gain * config.tune_instances / (1.0 + accept_runs * p)
        if score > best:
            best, best_i = score, i
    return best_i


def relative(book: PlanBook, t: TemplateInstances, c: Candidate) -> float:
    """A candidate's screening ratio over its template's adopted ratio (1 for native):
    the order of the acceptance tests put off at screening, lowest first."""
    e = book.entries[t.key]
    return e.screened.get(c.id, float("inf")) / max(e.adopted_ratio, 1e-9)
