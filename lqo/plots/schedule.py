"""Scheduling figures (completion-time CDF, Gantt chart) and small table helpers.

>>> from lqo.plots import completion_cdf
>>> fig = completion_cdf([{"policy": "fifo", "queries": [{"completion_s": 1.0}]}])
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from lqo.plots.style import LOSS, Figure, as_schedule, log_axis, plt, step_cdf, table_cell


def completion_cdf(results: Iterable[Any]) -> Figure:
    """CDF of completion times (end - arrival) per policy; ``results`` are
    ``ScheduleResult`` objects or their ``--json`` dicts.

    >>> r = {"policy": "fifo", "queries": [{"completion_s": 1.0}, {"completion_s": 2.0}]}
    >>> completion_cdf([r]).axes[0].get_xlabel()
    'completion time (s, log)'
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for res in map(as_schedule, results):
        comp = [q["completion_s"] for q in res["queries"]]
        if comp:
            label = f"{res['policy']}" + (f" ({res['mode']})" if res.get("mode") else "")
            step_cdf(ax, comp, lw=2, label=f"{label}: mean {sum(comp) / len(comp):.3g} s")
    log_axis(ax, "x")
    ax.set_xlabel("completion time (s, log)")
    ax.set_ylabel("fraction of queries")
    ax.set_ylim(0, 1.02)
    ax.set_title("Completion time (end - arrival) per policy")
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    return fig


def _shared(queries: Sequence[Mapping]) -> bool:
    """Whether queries ran side by side outside worker slots (e.g. policy ``all``)."""
    if any(q.get("worker", -1) < 0 for q in queries):
        return True
    by_worker: dict[int, list[tuple[float, float]]] = {}
    for q in queries:
        by_worker.setdefault(int(q["worker"]), []).append((q["start_s"], q["end_s"]))
    return any(b[0] < a[1] - 1e-6 for spans in by_worker.values() for a, b in zip(sorted(spans), sorted(spans)[1:]))


def _lanes(queries: Sequence[Mapping]) -> list[int]:
    """A row per query: its worker, or for shared runs (worker -1, or queries that overlap
    on one worker) the first lane free at its start."""
    if not _shared(queries):
        return [int(q["worker"]) for q in queries]
    ends: list[float] = []  # per lane: when its current query ends
    lane_of: dict[int, int] = {}
    for i in sorted(range(len(queries)), key=lambda i: queries[i]["start_s"]):
        q = queries[i]
        lane = next((k for k, e in enumerate(ends) if e <= q["start_s"] + 1e-9), None)
        if lane is None:
            lane = len(ends)
            ends.append(q["end_s"])
        else:
            ends[lane] = q["end_s"]
        lane_of[i] = lane
    return [lane_of[i] for i in range(len(queries))]


def gantt(results: Iterable[Any], label_min_frac: float = 0.04, max_lanes_drawn: int = 12) -> Figure:
    """One Gantt panel per policy: workers x time, one bar per query (start to end, its
    thread count as shade), a thin grey line for its wait since arrival. Shared runs
    (``all``: no workers) get one lane per concurrently running query. A panel is as tall
    as ``max_lanes_drawn`` lanes at most, whatever the number of queries (more lanes are
    drawn thinner, without per-lane ticks or query names).

    >>> r = {"policy": "fifo", "queries": [{"query_id": "q1", "arrival_s": 0, "start_s": 0,
    ...      "end_s": 1, "worker": 0, "threads": 1}]}
    >>> gantt([r]).axes[0].get_ylabel()
    'worker'
    """
    res = [as_schedule(r) for r in results]
    lanes = [_lanes(r["queries"]) for r in res]
    rows = [max(ls, default=0) + 1 for ls in lanes]
    drawn = [min(n, max_lanes_drawn) for n in rows]
    fig, axes = plt.subplots(len(res) or 1, 1, figsize=(11, 1.0 + sum(0.45 * n + 0.6 for n in drawn)),
                             sharex=True, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [n + 1 for n in drawn] or [1]})
    span = max((q["end_s"] for r in res for q in r["queries"]), default=1.0) or 1.0
    cmap = plt.get_cmap("viridis")
    max_thr = max((q.get("threads", 1) for r in res for q in r["queries"]), default=1)
    for ax, r, ls, n in zip(axes[:, 0], res, lanes, rows):
        for q, lane in zip(r["queries"], ls):
            ax.plot([q["arrival_s"], q["start_s"]], [lane, lane], color="0.75", lw=1, zorder=1)
            shade = cmap(0.25 + 0.6 * (q.get("threads", 1) - 1) / max(1, max_thr - 1))
            ax.barh(lane, q["end_s"] - q["start_s"], left=q["start_s"], height=0.7, zorder=2,
                    color=shade if q.get("ok", True) else LOSS, edgecolor="white",
                    lw=0.6 if n <= 2 * max_lanes_drawn else 0)  # thin lanes: a white edge would hide the bar
            if (q["end_s"] - q["start_s"]) / span >= label_min_frac and n <= 2 * max_lanes_drawn:
                ax.text((q["start_s"] + q["end_s"]) / 2, lane, q.get("query_id", ""), ha="center", va="center",
                        fontsize=7, color="white", zorder=3)
        if n <= max_lanes_drawn:
            ax.set_yticks(range(n))
        else:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.set_ylim(-0.6, max(ls, default=0) + 0.6)
        ax.invert_yaxis()
        ax.set_ylabel("concurrent\nquery" if _shared(r["queries"]) else "worker")
        comp = [q["end_s"] - q["arrival_s"] for q in r["queries"]]
        mean = sum(comp) / len(comp) if comp else float("nan")
        ax.set_title(f"{r['policy']}: mean completion {mean:.3g} s, makespan {r.get('makespan_s', span):.3g} s",
                     fontsize=9, loc="left")
    from matplotlib.patches import Patch
    threads = sorted({q.get("threads", 1) for r in res for q in r["queries"]})
    axes[0, 0].legend(handles=[Patch(color=cmap(0.25 + 0.6 * (t - 1) / max(1, max_thr - 1)), label=f"{t} thread"
                                     + ("s" if t > 1 else "")) for t in threads],
                      loc="upper right", fontsize=7, ncols=len(threads))
    axes[-1, 0].set_xlabel("time since stream start (s); grey line = waiting since arrival")
    return fig


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table of dict rows (floats to 4 significant digits).

    >>> print(markdown_table([{"policy": "fifo", "mean_s": 1.23456}]))
    | policy | mean_s |
    | --- | --- |
    | fifo | 1.235 |
    """
    cols = list(columns or (rows[0].keys() if rows else []))
    lines = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    lines += ["| " + " | ".join(table_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def table_figure(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> Figure:
    """The same table drawn as a figure (for a PNG next to the plots).

    >>> len(table_figure([{"policy": "fifo", "mean_s": 1.0}]).axes[0].tables)
    1
    """
    cols = list(columns or (rows[0].keys() if rows else ["-"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 1, 0.3 * (len(rows) + 1) + 0.5), layout="constrained")
    ax.axis("off")
    tab = ax.table(cellText=[[table_cell(r.get(c)) for c in cols] for r in rows] or [["-"] * len(cols)],
                   colLabels=cols, loc="center", cellLoc="center")
    tab.scale(1, 1.3)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
