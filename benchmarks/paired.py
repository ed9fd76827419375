"""Paired, interleaved runs of a query's variants, for the benchmarks that compare them
(``rule_sets.py``, ``rewrites.py``, ``perturbed_plans.py``).

Every round runs each variant once, in turn, so a slow spell of a loaded machine falls on
all of them alike; a variant that fails or times out stops running (its failed run is
kept, so ``med`` gives None for it). Each run also records ``cpu_ms``, the process's CPU
time over it: the work a plan does, whatever else the machine runs.

>>> Variant("SELECT 1", disabled=("join_order",))
Variant(sql='SELECT 1', forced=False, disabled=('join_order',), settings=())
"""

from __future__ import annotations

import random
import resource
import statistics
from dataclasses import dataclass
from typing import Any

from lqo.engine.harness import Harness


@dataclass(frozen=True)
class Variant:
    """One way to run a query: its text, forced or not, rules disabled, settings set."""

    sql: str
    forced: bool = False
    disabled: tuple[str, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()


def cpu_s() -> float:
    """This process's user + system CPU seconds so far."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def interleave(con: Any, variants: list[Variant], rounds: int, warmup: int, timeout_s: float | None,
               shuffle: bool = False) -> list[list[Any]]:
    """``warmup`` unrecorded rounds, then ``rounds`` recorded ones, of every variant in turn
    (``shuffle``: in a new random order each round, so none always runs right after
    another); per variant its runs (``RunResult`` with ``cpu_ms``)."""
    h = Harness(con)
    out: list[list[Any]] = [[] for _ in variants]
    dead = [False] * len(variants)
    order = list(range(len(variants)))
    rng = random.Random(len(variants))
    for rnd in range(-warmup, rounds):
        if shuffle:
            rng.shuffle(order)
        for i in order:
            if dead[i]:
                continue
            v = variants[i]
            c0 = cpu_s()
            r = h.run(v.sql, forced=v.forced, timeout_s=timeout_s, profile=False, disabled=v.disabled,
                      settings=v.settings)
            r.cpu_ms = (cpu_s() - c0) * 1000
            if not r.ok:
                dead[i] = True
                out[i].append(r)
            elif rnd >= 0:
                out[i].append(r)
    return out


def med(runs: list[Any], metric: str) -> float | None:
    """Median wall (``"wall"``: latency) or CPU (``"cpu"``) ms of ``runs``; None if one
    failed or none ran."""
    ok = [r.cpu_ms if metric == "cpu" else r.latency_ms for r in runs if r.ok]
    return statistics.median(ok) if ok and len(ok) == len(runs) else None
