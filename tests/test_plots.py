"""Per-query figures keep a readable, bounded size whatever the number of queries."""

from __future__ import annotations

import io
import random
import struct

import matplotlib.pyplot as plt
import pytest

from lqo import plots


def queries(n: int, seed: int = 3) -> list[dict]:
    """``n`` compared queries: speedups spread both ways, a few regressions."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        native = rng.uniform(20, 2000)
        ratio = [0.4, 0.8, 1.0, 1.1, 1.6, 3.0][i % 6] * rng.uniform(0.97, 1.03)
        out.append({"id": f"q{i:03d}", "native_ms": native, "lqo_ms": native * ratio, "planning_ms": 1.0,
                    "ratio": ratio, "fallback": None})
    return out


def png_size(fig) -> tuple[int, int]:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    width, height = struct.unpack(">II", buf.getvalue()[16:24])
    return width, height


def speedup(q: dict) -> float:
    return q["native_ms"] / q["lqo_ms"]


def test_speedup_bars_name_every_query_when_few():
    qs = queries(12)
    fig = plots.speedup_bars(qs, regression=1.2)
    bars_ax, cdf_ax = fig.axes
    assert bars_ax.get_xscale() == "log" and "speedup" in bars_ax.get_xlabel()
    bars = bars_ax.patches
    assert len(bars) == len(qs)
    tips = [b.get_x() + b.get_width() for b in bars]  # bars grow from 1 to the speedup
    assert tips == sorted(tips, reverse=True)  # best first (at the top)
    marked = [b for b in bars if b.get_hatch()]
    assert len(marked) == sum(q["ratio"] > 1.2 for q in qs) > 0
    assert all(b.get_x() + b.get_width() < 1 for b in marked)
    assert [t.get_text() for t in bars_ax.get_yticklabels()] == [q["id"] for q in sorted(qs, key=speedup, reverse=True)]
    assert any("slower" in t.get_text() for t in bars_ax.texts)
    ys = cdf_ax.lines[0].get_ydata()
    assert len(ys) == len(qs) and ys[-1] == pytest.approx(1.0) and cdf_ax.get_xscale() == "log"


def test_speedup_plot_size_is_bounded_and_names_the_extremes_of_200_queries():
    qs = queries(200)
    by_speed = sorted(qs, key=speedup, reverse=True)
    fig = plots.speedup_bars(qs)
    bars_ax, cdf_ax = fig.axes
    labels = [t.get_text() for t in bars_ax.get_yticklabels()]
    assert labels == [q["id"] for q in by_speed[:10] + by_speed[-10:]]  # 10 largest wins, 10 largest losses
    assert len(bars_ax.patches) == 20
    assert any("180 queries between" in t.get_text() for t in bars_ax.texts)
    assert len(cdf_ax.lines[0].get_ydata()) == 200  # the distribution holds every query
    size = png_size(fig)
    assert size == png_size(plots.speedup_bars(queries(12))) == png_size(plots.speedup_bars(queries(2000)))
    assert size[0] <= 1600 and size[1] <= 800  # was 0.32 in per query: 7,700 px wide at 200


def test_speedup_plot_names_only_queries_that_changed_side():
    qs = queries(40)
    for q in qs[2:]:  # two wins; the others a hair slower (native kept, planning paid)
        q["lqo_ms"] = q["native_ms"] * 1.001
    bars_ax = plots.speedup_bars(qs).axes[0]
    tips = [b.get_x() + b.get_width() for b in bars_ax.patches]
    assert sum(t > 1 for t in tips) == 2 and len(tips) == 12
    assert "2 of 2 faster" in bars_ax.get_title() and "10 of 38 slower" in bars_ax.get_title()
    assert plots.speedup_bars([]).axes[0].texts  # no queries: says so


def test_gantt_height_is_bounded_for_many_concurrent_queries():
    def shared(n: int) -> dict:
        qs = [{"query_id": f"q{i}", "arrival_s": 0.0, "start_s": 0.01 * i, "end_s": 5.0 + 0.01 * i, "threads": 1,
               "worker": -1, "ok": True, "completion_s": 5.0} for i in range(n)]
        return {"policy": "all", "mean_s": 5.0, "p95_s": 5.0, "makespan_s": 7.0, "queries": qs}

    few, many = plots.gantt([shared(6)]), plots.gantt([shared(200)])
    assert len(few.axes[0].get_yticks()) == 6 and len(many.axes[0].patches) == 200
    assert len(many.axes[0].get_yticks()) <= 10 and not many.axes[0].texts  # no 200 names on top of each other
    assert png_size(many) == png_size(plots.gantt([shared(12)]))
    assert png_size(many)[1] <= 1000  # was 0.45 in per lane: 10,000 px tall at 200
