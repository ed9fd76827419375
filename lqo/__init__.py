"""lqo: a learned query optimizer and scheduler for DuckDB.

The public face: everything a user needs is importable from ``lqo`` directly.

>>> import lqo                                                     # doctest: +SKIP
>>> con = lqo.connect_read_only("data/tpch-sf1/tpch.duckdb")        # doctest: +SKIP
>>> res = lqo.optimize(sql, con, model="runs/tpch")                 # doctest: +SKIP
>>> rows = res.execute(con)                                        # doctest: +SKIP
>>> opt = lqo.Optimizer.load("runs/tpch", con)                      # doctest: +SKIP

The package follows the data flow, one stage a folder:
``sql`` (SQL -> QueryGraph), ``trees`` (QueryGraph -> Plan, Plan -> SQL),
``estimates`` and ``learn`` (Plan -> features -> score), ``search`` / ``decision`` /
``optimizer`` (choose a Plan; a tuned plan ``book`` first), ``engine`` (run it on
DuckDB), ``store`` (what ran, how fast), ``train`` (experience -> model), ``tune``
(workload -> plan book, offline), ``workloads``, ``evaluate`` (lqo vs native), ``sched``
(concurrent queries), ``plots`` and ``cli`` (a thin layer over all of it).
"""

from __future__ import annotations

__version__ = "0.1.0"

# Names resolved on first use: `import lqo` stays fast and does not import torch.
_LAZY = {
    "connect": ("lqo.connection", "connect"),
    "wrap": ("lqo.connection", "wrap"),
    "Connection": ("lqo.connection", "Connection"),
    "optimize": ("lqo.optimizer", "optimize"),
    "Optimizer": ("lqo.optimizer", "Optimizer"),
    "Optimized": ("lqo.optimized", "Optimized"),
    "SearchConfig": ("lqo.search", "SearchConfig"),
    "DecisionConfig": ("lqo.decision", "DecisionConfig"),
    "prepare": ("lqo.trees.query", "prepare"),
    "PreparedQuery": ("lqo.trees.query", "PreparedQuery"),
    "Plan": ("lqo.trees.plan", "Plan"),
    "Join": ("lqo.trees.plan", "Join"),
    "Leaf": ("lqo.trees.plan", "Leaf"),
    "Harness": ("lqo.engine.harness", "Harness"),
    "RunResult": ("lqo.engine.run_result", "RunResult"),
    "forced_settings": ("lqo.engine.settings", "forced_settings"),
    "connect_read_only": ("lqo.engine.db", "connect_read_only"),
    "Workload": ("lqo.workloads.workload", "Workload"),
    "Scheduler": ("lqo.sched.scheduler", "Scheduler"),
    "LqoError": ("lqo.errors", "LqoError"),
    "SchemaMismatchError": ("lqo.errors", "SchemaMismatchError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lqo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
