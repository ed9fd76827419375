"""Shared pieces of ``lqo.plots``: backend choice, colours, axis helpers.

Importing this module selects matplotlib's headless Agg backend, unless a backend was
already chosen (a notebook kernel sets ``MPLBACKEND`` to its inline backend, or has
imported pyplot): switching it there would hide the figures.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Mapping, Sequence

import matplotlib

if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported to the plotting modules)
from matplotlib.figure import Figure  # noqa: E402,F401

WIN, LOSS, NEUTRAL = "#2a9d4b", "#d62728", "#9e9e9e"
NATIVE_C, LQO_C = "#4c72b0", "#dd8452"


def as_record(x: Any) -> dict:
    """A per-query record as a dict (dataclass instances and dicts alike)."""
    return dict(x) if isinstance(x, Mapping) else vars(x)


def as_schedule(x: Any) -> dict:
    """A schedule result as its ``--json`` dict (a ``ScheduleResult`` or the dict itself)."""
    return x.to_json() if hasattr(x, "to_json") else dict(x)


def log_axis(ax: Any, axis: str = "y", suffix: str = "") -> None:
    """Log scale with plain labels at 1-2-5 steps (``0.5x``, ``2x``) instead of ``5x10^-1``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    target.set_minor_formatter(NullFormatter())


def auto_scale(ax: Any, values: Sequence[float], axis: str = "y") -> str:
    """Log (plain labels) when values span 10x or more, else linear; the scale chosen."""
    vals = [v for v in values if v and v > 0]
    if vals and max(vals) / min(vals) >= 10:
        log_axis(ax, axis)
        return "log"
    return "linear"


def empty_axes(ax: Any, text: str) -> None:
    """An axes with nothing to show: ``text`` in its middle, no ticks."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def step_cdf(ax: Any, values: Sequence[float], **kw: Any) -> None:
    """The empirical CDF of ``values`` as a step line on ``ax``."""
    xs = sorted(values)
    ys = [(i + 1) / len(xs) for i in range(len(xs))]
    ax.step(xs, ys, where="post", **kw)


def table_cell(v: Any) -> str:
    """A value as a table cell: 4 significant digits, ``-`` for None or NaN."""
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return "-" if v is None else str(v)
