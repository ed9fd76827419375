"""Query scheduling for DuckDB: which waiting query runs next, and with how many threads.

Public API (imported lazily, so worker processes start without torch or sqlglot):

- :class:`Scheduler` (``lqo.sched.scheduler``): ``run(stream)`` on real worker processes,
  ``simulate(stream)`` in the simulator; both return a :class:`ScheduleResult`.
- :func:`make_stream` (``lqo.sched.stream``): batch or Poisson streams from workloads.
- :func:`get_policy`, ``POLICIES`` (``lqo.sched.policies``).

>>> from lqo.sched import Scheduler, make_stream                   # doctest: +SKIP
>>> s = make_stream(wl, n=20, arrivals="poisson:4", seed=1)         # doctest: +SKIP
>>> Scheduler(policy="sjf-est", workers=2).run(s).mean_s            # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Scheduler": "scheduler", "ScheduleResult": "result", "QueryRecord": "result",
    "make_stream": "stream", "Stream": "stream", "StreamQuery": "stream", "parse_arrivals": "stream",
    "get_policy": "policies", "POLICIES": "policies", "Policy": "policy", "Assignment": "policy",
    "SimConfig": "simulator", "ThreadProfile": "thread_profile",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{mod}"), name)
