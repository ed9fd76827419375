"""lqo: a learned query optimizer and scheduler for DuckDB.

>>> import lqo                                                  # doctest: +SKIP
>>> res = lqo.optimize(sql, con, model="runs/tpcds")             # doctest: +SKIP
>>> rows = res.execute(con)                                     # doctest: +SKIP
>>> opt = lqo.Optimizer.load("runs/tpcds")                       # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

# Names resolved on first use: `import lqo` stays fast and does not import torch.
_LAZY = {
    "optimize": ("lqo.optimizer", "optimize"),
    "Optimizer": ("lqo.optimizer", "Optimizer"),
    "Optimized": ("lqo.optimizer", "Optimized"),
    "prepare": ("lqo.query", "prepare"),
    "Workload": ("lqo.workload", "Workload"),
    "Scheduler": ("lqo.sched.scheduler", "Scheduler"),
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
