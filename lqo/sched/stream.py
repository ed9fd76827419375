"""Query streams: which queries arrive, and when.

A stream is a list of :class:`StreamQuery` sorted by arrival time. Queries are sampled
(seeded) from one or more workloads; a query carries its database path, so one stream
may mix databases (TPC-H and TPC-DS are two files) and every worker opens each file.

Arrival specs (``parse_arrivals``):

- ``batch``: everything arrives at time 0;
- ``poisson:RATE``: exponential inter-arrival times, RATE queries per second;
- ``util:U``: Poisson at the rate that loads the machine to utilisation U (0 < U), given
  each query's measured 1-thread latency (needs a thread profile, see ``profile.py``):
  rate = U x cores / mean 1-thread latency.

>>> from lqo.workloads.workload import Workload                                   # doctest: +SKIP
>>> s = make_stream([Workload.load("ws/tpch-sf1")], n=30, arrivals="poisson:2", seed=1)  # doctest: +SKIP
>>> s.queries[0].key, round(s.queries[-1].arrival_s, 1)                 # doctest: +SKIP
('tpch-sf1/q07', 14.2)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

from lqo.engine.settings import FORCE_DISABLED_OPTIMIZERS, Mode, Settings
from lqo.errors import LqoError
from lqo.store.keys import query_key as _query_key
from lqo.workloads.workload import Query, Workload

_ARRIVALS_RE = re.compile(r"^(batch|poisson:(?P<rate>[0-9.eE+-]+)|util:(?P<util>[0-9.eE+-]+))$")


class StreamError(LqoError):
    """A stream or arrivals specification is malformed."""


@dataclass(frozen=True)
class Arrivals:
    """A parsed arrivals spec: ``kind`` is ``batch``, ``poisson`` (with ``rate``/s) or ``util``."""

    kind: str
    rate: float | None = None
    util: float | None = None

    def __str__(self) -> str:
        if self.kind == "batch":
            return "batch"
        return f"poisson:{self.rate:g}" if self.kind == "poisson" else f"util:{self.util:g}"


def parse_arrivals(spec: str) -> Arrivals:
    """Parse ``batch``, ``poisson:RATE`` or ``util:U``; ``StreamError`` otherwise.

    >>> parse_arrivals("poisson:2.5").rate
    2.5
    """
    m = _ARRIVALS_RE.match(str(spec).strip())
    if not m:
        raise StreamError(f"bad arrivals spec {spec!r}: expected 'batch', 'poisson:RATE' or 'util:U'")
    try:
        if m.group("rate") is not None:
            rate = float(m.group("rate"))
            if not rate > 0 or rate == float("inf"):
                raise ValueError
            return Arrivals("poisson", rate=rate)
        if m.group("util") is not None:
            util = float(m.group("util"))
            if not 0 < util < 100:
                raise ValueError
            return Arrivals("util", util=util)
    except ValueError:
        raise StreamError(f"bad arrivals spec {spec!r}: the rate / utilisation must be a positive number") from None
    return Arrivals("batch")


@dataclass(frozen=True)
class StreamQuery:
    """One arrival. ``sql`` is the query text; ``run_sql`` what to execute (an optimizer
    decision's ``Optimized.sql``), None for ``sql`` itself; ``rules`` the DuckDB optimizer
    rules it must run with disabled (the decision's ``Optimized.rules``: the forcing rules
    for a forced tree plus a setting arm's; empty for native); ``settings`` the DuckDB
    operator settings it runs under (a setting arm's ``Optimized.settings``). ``run_sql``,
    ``rules`` and ``settings`` together are the whole decision a worker runs. ``key`` names the query
    (workload/id); the same query may occur several times in a stream, ``idx`` is its
    position."""

    idx: int
    workload: str
    query_id: str
    template: str
    sql: str
    database: str
    arrival_s: float
    run_sql: str | None = None
    rules: tuple[str, ...] = ()
    settings: Settings = ()

    def __post_init__(self) -> None:
        # hashable: shared workers are keyed by the mode
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "settings", tuple((str(k), str(v)) for k, v in self.settings))

    @property
    def mode(self) -> Mode:
        """What the query runs under: (rules disabled, settings)."""
        return (self.rules, self.settings)

    @property
    def forced(self) -> bool:
        """Whether the joins run as written: every forcing rule is among ``rules``."""
        return all(r in self.rules for r in FORCE_DISABLED_OPTIMIZERS)

    @property
    def key(self) -> str:
        """``workload/query id``."""
        return f"{self.workload}/{self.query_id}"

    @property
    def query_key(self) -> str:
        """The experience store's key of (sql, database): also the profile's key."""
        return _query_key(self.sql, self.database)

    @property
    def exec_sql(self) -> str:
        """The text to run: the optimizer's, else the query's own."""
        return self.run_sql if self.run_sql is not None else self.sql


@dataclass
class Stream:
    """Queries in arrival order, with how they were made (for reports and re-runs)."""

    queries: list[StreamQuery]
    arrivals: str = "batch"
    seed: int = 0
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.queries)

    def __iter__(self) -> Iterator[StreamQuery]:
        return iter(self.queries)

    @property
    def databases(self) -> list[str]:
        """The databases the stream's queries run on, in first-use order."""
        return list(dict.fromkeys(q.database for q in self.queries))

    def with_arrivals(self, times: Sequence[float]) -> "Stream":
        """The same queries with other arrival times (re-sorted)."""
        qs = [replace(q, arrival_s=float(t)) for q, t in zip(self.queries, times, strict=True)]
        qs.sort(key=lambda q: (q.arrival_s, q.idx))
        return Stream(qs, self.arrivals, self.seed, dict(self.meta))


def sample_queries(workloads: Sequence[Workload], n: int | None, rng: random.Random) -> list[tuple[Workload, Query]]:
    """``n`` queries from the pooled workloads: shuffled passes over the pool, so no query
    repeats before every query has been drawn once (None: each query once)."""
    pool = [(w, q) for w in workloads for q in w.queries]
    if not pool:
        raise StreamError("no queries to build a stream from")
    n = len(pool) if n is None else n
    if n < 1:
        raise StreamError(f"--queries must be >= 1, not {n}")
    out: list[tuple[Workload, Query]] = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def arrival_times(n: int, arrivals: Arrivals, rng: random.Random, rate: float | None = None) -> list[float]:
    """Arrival times for ``n`` queries: zeros for a batch, else a Poisson process.

    ``rate`` overrides the spec's (the ``util`` kind needs it resolved by the caller).
    The first query arrives at 0 so that runs start busy and the makespan is comparable.
    """
    if arrivals.kind == "batch":
        return [0.0] * n
    r = rate if rate is not None else arrivals.rate
    if r is None or not r > 0:
        raise StreamError(f"arrivals {arrivals}: no rate (utilisation needs a thread profile)")
    t, out = 0.0, []
    for i in range(n):
        if i:
            t += rng.expovariate(r)
        out.append(t)
    return out


def make_stream(
    workloads: Workload | Sequence[Workload],
    n: int | None = None,
    arrivals: str | Arrivals = "batch",
    seed: int = 0,
    rate: float | None = None,
) -> Stream:
    """A seeded stream of ``n`` queries from ``workloads`` (default: each query once).

    The sample and the arrival times use separate generators seeded from ``seed``, so the
    same seed gives the same queries under ``batch`` and ``poisson`` arrivals. ``rate``
    resolves a ``util:U`` spec (see :func:`rate_for_utilisation`).

    >>> s = make_stream(wl, n=10, arrivals="batch", seed=0)  # doctest: +SKIP
    >>> [q.arrival_s for q in s][:3]                         # doctest: +SKIP
    [0.0, 0.0, 0.0]
    """
    wls = [workloads] if isinstance(workloads, Workload) else list(workloads)
    arr = arrivals if isinstance(arrivals, Arrivals) else parse_arrivals(arrivals)
    picked = sample_queries(wls, n, random.Random(f"sample-{seed}"))
    times = arrival_times(len(picked), arr, random.Random(f"arrivals-{seed}"), rate)
    qs = [
        StreamQuery(i, w.name, q.id, q.template, q.sql, str(w.database), t)
        for i, ((w, q), t) in enumerate(zip(picked, times))
    ]
    meta = {"rate": rate if rate is not None else arr.rate, "workloads": [w.name for w in wls]}
    return Stream(qs, str(arr), seed, meta)


def rate_for_utilisation(util: float, mean_latency_s: float, cores: int) -> float:
    """The Poisson rate that keeps ``cores`` busy a ``util`` share of the time when a query
    needs ``mean_latency_s`` of one core (its 1-thread latency).

    >>> rate_for_utilisation(0.7, 0.5, 2)
    2.8
    """
    if not mean_latency_s > 0:
        raise StreamError("cannot derive a rate: mean latency must be > 0")
    return round(util * cores / mean_latency_s, 12)
