"""Figures comparing lqo with DuckDB's native optimizer, and scheduling policies.

Every helper takes plain data (what ``lqo compare --json``, ``lqo schedule --json``,
a model directory's training history and ``lqo.evaluate.report`` hold, or the objects behind them) and returns a
matplotlib ``Figure``; nothing is shown or saved here. Importing selects the headless Agg
backend unless one is already chosen (a notebook keeps its inline backend).

>>> from lqo import plots
>>> fig = plots.speedup_bars([{"id": "q1", "native_ms": 10.0, "lqo_ms": 5.0},
...                           {"id": "q2", "native_ms": 10.0, "lqo_ms": 20.0}])
>>> fig.axes[0].get_xscale()
'log'
>>> fig.savefig("/tmp/speedup.png")  # doctest: +SKIP
"""

from lqo.plots.learned import lr_schedule_curves, planning_overhead, ratio_cdf, speedup_bars, training_curve
from lqo.plots.schedule import completion_cdf, gantt, markdown_table, table_figure
from lqo.plots.style import LOSS, LQO_C, NATIVE_C, NEUTRAL, WIN
from lqo.plots.trees import draw_tree, join_trees, tree_case

__all__ = [
    "speedup_bars", "ratio_cdf", "planning_overhead", "training_curve", "lr_schedule_curves",
    "draw_tree", "join_trees", "tree_case", "completion_cdf", "gantt", "markdown_table", "table_figure",
    "WIN", "LOSS", "NEUTRAL", "NATIVE_C", "LQO_C",
]
