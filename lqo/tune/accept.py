"""The acceptance rule: a candidate replaces native only when paired runs prove it faster.

Input: for each tuning instance of a template, paired, interleaved rounds of
``(native_ms, candidate_ms)`` measured on one machine. A candidate is accepted when:

- every instance has at least ``min_rounds`` paired rounds, and the candidate never
  failed, timed out or returned another result (the caller passes ``failed``);
- the median over instances of the per-instance median ratio candidate/native is at
  most ``max_median`` (0.95);
- the upper end of a bootstrap 95% interval of that statistic (instances resampled,
  then each instance's rounds) is below ``max_upper`` (1.0);
- no instance's median ratio exceeds ``max_instance`` (1.05).

>>> rule = AcceptRule()
>>> fast = {"i1": [(100, 80)] * 5, "i2": [(50, 41), (52, 40), (49, 42), (51, 40), (50, 39)]}
>>> v = judge(fast, rule)
>>> v.accepted, round(v.median_ratio, 3), v.reason
(True, 0.792, 'accepted')
>>> judge({"i1": [(100, 80)] * 5, "i2": [(50, 60)] * 5}, rule).reason
'instance i2 runs 1.20x native'
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence

from lqo.book.book import AcceptanceVerdict


@dataclass(frozen=True)
class AcceptRule:
    """The acceptance rule's thresholds (see the module docs) and its bootstrap."""

    min_rounds: int = 5
    max_median: float = 0.95
    max_upper: float = 1.0
    max_instance: float = 1.05
    resamples: int = 2000
    seed: int = 0


def judge(pairs: Mapping[str, Sequence[tuple[float, float]]], rule: AcceptRule = AcceptRule(),
          failed: str | None = None) -> AcceptanceVerdict:
    """Apply ``rule`` to paired rounds per instance; ``failed`` rejects outright."""
    if failed:
        return AcceptanceVerdict(False, failed)
    if not pairs:
        return AcceptanceVerdict(False, "no paired runs")
    ratios = {}
    for inst, rounds in pairs.items():
        r = [c / n for n, c in rounds if n > 0]
        if len(r) < rule.min_rounds:
            return AcceptanceVerdict(False, f"instance {inst} has {len(r)} paired rounds, fewer than {rule.min_rounds}")
        ratios[inst] = r
    per_instance = {i: statistics.median(r) for i, r in ratios.items()}
    med = statistics.median(per_instance.values())
    lo, hi = _bootstrap(list(ratios.values()), rule)
    worst_inst, worst = max(per_instance.items(), key=lambda kv: kv[1])
    n_rounds = sum(len(r) for r in ratios.values())

    def verdict(accepted: bool, reason: str) -> AcceptanceVerdict:
        return AcceptanceVerdict(accepted, reason, median_ratio=med, ci_low=lo, ci_high=hi, worst_instance=worst,
                                 instances=len(ratios), rounds=n_rounds)

    if worst > rule.max_instance:
        return verdict(False, f"instance {worst_inst} runs {worst:.2f}x native")
    if med > rule.max_median:
        return verdict(False, f"median ratio {med:.3f} is above {rule.max_median}")
    if hi >= rule.max_upper:
        return verdict(False, f"95% interval reaches {hi:.3f} (must stay below {rule.max_upper})")
    return verdict(True, "accepted")


def _bootstrap(ratios: list[list[float]], rule: AcceptRule) -> tuple[float, float]:
    """2.5% and 97.5% percentiles of the median of instance medians, resampling
    instances and, within each, its rounds."""
    rng = random.Random(rule.seed)
    k = len(ratios)
    stats = []
    for _ in range(rule.resamples):
        meds = []
        for _ in range(k):
            r = ratios[rng.randrange(k)]
            meds.append(statistics.median(rng.choices(r, k=len(r))))
        stats.append(statistics.median(meds))
    stats.sort()
    return stats[int(0.025 * (len(stats) - 1))], stats[int(0.975 * (len(stats) - 1))]
