"""Optimizer figures: per-query speedup, ratio CDF, planning overhead, training curves.

>>> from lqo.plots import speedup_bars
>>> fig = speedup_bars([{"id": "q1", "native_ms": 10.0, "lqo_ms": 5.0}])
>>> fig.axes[0].get_xscale()
'log'
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from lqo.plots.style import (
    LOSS,
    LQO_C,
    NATIVE_C,
    NEUTRAL,
    WIN,
    Figure,
    as_record,
    auto_scale,
    empty_axes,
    log_axis,
    plt,
    step_cdf,
)


def speedup_bars(queries: Iterable[Any], regression: float = 1.2, title: str = "lqo vs DuckDB native",
                 top: int = 10) -> Figure:
    """Speedup native/lqo per query at a size that does not grow with the queries: the
    ``top`` largest speedups (of the queries lqo made faster) and the ``top`` largest
    slowdowns (of those it made slower) by name, every query when there are at most
    ``2 * top``, as horizontal bars from 1 on a log axis, best first; beside them the CDF
    of every query's speedup.

    A bar right of 1 is a win (lqo faster, planning included). Bars of queries whose
    lqo/native ratio exceeds ``regression`` are red, hatched and labelled with the ratio.

    >>> fig = speedup_bars([{"id": "q1", "native_ms": 9.0, "lqo_ms": 3.0}])
    >>> fig.axes[0].get_xlabel(), fig.axes[1].get_ylabel()
    ('speedup native / lqo (log)', 'fraction of queries')
    """
    rows = sorted((as_record(q) for q in queries), key=lambda q: q["native_ms"] / max(q["lqo_ms"], 1e-9), reverse=True)
    fig, (ax, cdf) = plt.subplots(1, 2, figsize=(12.0, 5.6), layout="constrained", gridspec_kw={"width_ratios": [3, 2]})
    if not rows:
        empty_axes(ax, "no queries")
        empty_axes(cdf, "no queries")
        return fig
    speed = [q["native_ms"] / max(q["lqo_ms"], 1e-9) for q in rows]
    n_reg = sum(1 / v > regression for v in speed)
    fig.suptitle(f"{title}: {len(rows)} queries, {sum(s > 1 for s in speed)} faster, "
                 f"{n_reg} regressions (> {regression:g}x slower)", fontsize=11)
    _top_bars(ax, [q["id"] for q in rows], speed, regression, top)
    _speedup_cdf(cdf, speed, regression)
    return fig


def _top_bars(ax: Any, ids: list[str], speed: list[float], regression: float, top: int) -> None:
    """Horizontal bars of the largest speedups and slowdowns (``speed`` sorted best first)."""
    from matplotlib.patches import Patch

    n = len(ids)
    if n <= 2 * top:
        wins, losses = list(range(n)), []
    else:
        wins = [i for i in range(n) if speed[i] > 1][:top]
        losses = [i for i in range(n) if speed[i] < 1][-top:]
    shown, gap = wins + losses, int(n > 2 * top)  # an empty row between the groups: queries left out
    if not shown:
        empty_axes(ax, "no query faster or slower")
        return
    ys = list(range(len(wins))) + [len(wins) + gap + k for k in range(len(losses))]
    s = [speed[i] for i in shown]
    colors = [LOSS if 1 / v > regression else WIN if v > 1 else NEUTRAL for v in s]
    # Bars grow from 1 (no change): right for wins, left for losses, so a regression is a
    # bar left of the line whatever the axis limits.
    bars = ax.barh(ys, [v - 1 for v in s], left=1.0, color=colors, height=0.7)
    for bar, v in zip(bars, s):
        if 1 / v > regression:  # hatching survives grey-scale printing; colour alone does not
            bar.set_hatch("//")
            bar.set_edgecolor("black")
            ax.annotate(f"{1 / v:.2g}x slower", (v, bar.get_y() + bar.get_height() / 2), xytext=(-3, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=7, color=LOSS)
    ax.axvline(1.0, color="black", lw=0.8)
    log_axis(ax, "x", "x")
    lo, hi = min(s + [1.0]), max(s + [1.0])
    ax.set_xlim(lo / (3.0 if LOSS in colors else 1.6), hi * 1.6)  # room for "slower" labels
    ax.set_yticks(ys, [ids[i] for i in shown], fontsize=8)
    ax.set_ylim(max(ys) + 0.6, -0.6)  # best at the top
    if gap:
        ax.axhline(len(wins), color="0.6", lw=0.8, ls=":")
        ax.text(0.5, len(wins), f"{n - len(shown)} queries between these (see the CDF)",
                transform=ax.get_yaxis_transform(), ha="center", va="center", fontsize=8, color="0.35",
                backgroundcolor="white")
        faster, slower = sum(v > 1 for v in speed), sum(v < 1 for v in speed)
        ax.set_title(f"largest speedups ({len(wins)} of {faster} faster) and slowdowns "
                     f"({len(losses)} of {slower} slower)", fontsize=10)
    else:
        ax.set_title("every query, sorted by speedup", fontsize=10)
    ax.set_xlabel("speedup native / lqo (log)")
    ax.legend(handles=[Patch(color=WIN, label="lqo faster"), Patch(color=NEUTRAL, label="within threshold"),
                       Patch(facecolor=LOSS, hatch="//", edgecolor="black", label="regression")],
              loc="lower right", fontsize=8)


def _speedup_cdf(ax: Any, speed: list[float], regression: float) -> None:
    """The CDF of every query's speedup, wins right of 1 and the regression line left of it."""
    step_cdf(ax, speed, color=LQO_C, lw=2, label=f"native / lqo (n={len(speed)})")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(1 / regression, color=LOSS, lw=0.8, ls=":", label=f"regression: {regression:g}x slower")
    log_axis(ax, "x", "x")
    lo, hi = min(speed + [1 / regression]), max(speed + [1.0])
    ax.set_xlim(lo / 1.3, hi * 1.3)
    ax.set_ylim(0, 1.02)
    n = len(speed)
    faster, reg = sum(v > 1 for v in speed) / n, sum(1 / v > regression for v in speed) / n
    ax.set_xlabel("speedup native / lqo (log; > 1 = lqo faster)")
    ax.set_ylabel("fraction of queries")
    ax.set_title(f"all queries: {faster:.0%} faster, {reg:.0%} regressions, {1 - faster - reg:.0%} between", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)


def ratio_cdf(queries: Iterable[Any], regression: float = 1.2) -> Figure:
    """CDF of lqo/native time ratios (log x); with forced native times, that curve too.

    Left of 1 is a win. The forced-native curve shows what forcing DuckDB's own tree
    costs, i.e. the noise floor any forced plan starts from.

    >>> ratio_cdf([{"id": "q1", "native_ms": 9.0, "lqo_ms": 3.0, "ratio": 0.33}]).axes[0].get_xscale()
    'log'
    """
    rows = [as_record(q) for q in queries]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ratios = [q.get("ratio") or q["lqo_ms"] / q["native_ms"] for q in rows if q["native_ms"] > 0]
    if not ratios:
        empty_axes(ax, "no queries")
        return fig
    step_cdf(ax, ratios, color=LQO_C, lw=2, label=f"lqo / native (n={len(ratios)})")
    forced = [q["forced_native_ms"] / q["native_ms"] for q in rows if q.get("forced_native_ms") and q["native_ms"] > 0]
    if forced:
        step_cdf(ax, forced, color=NATIVE_C, lw=1.2, ls="--", label="forced native tree / native")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(regression, color=LOSS, lw=0.8, ls=":", label=f"regression threshold {regression:g}x")
    log_axis(ax, "x", "x")
    ax.set_xlabel("time ratio to native (log; < 1 = faster)")
    ax.set_ylabel("fraction of queries")
    ax.set_ylim(0, 1.02)
    ax.set_title("Distribution of per-query time ratios")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def planning_overhead(queries: Iterable[Any]) -> Figure:
    """Planning time vs native execution time per query (log-log), with 1x / 10% / 1% lines.

    >>> planning_overhead([{"id": "q1", "native_ms": 90.0, "planning_ms": 3.0}]).axes[0].get_xscale()
    'log'
    """
    rows = [as_record(q) for q in queries]
    fig, ax = plt.subplots(figsize=(8.4, 4.2), layout="constrained")
    if not rows:
        empty_axes(ax, "no queries")
        return fig
    x = [max(q["native_ms"], 1e-3) for q in rows]
    y = [max(q["planning_ms"], 1e-3) for q in rows]
    forced = [q.get("fallback") is None for q in rows]
    ax.scatter([a for a, f in zip(x, forced) if f], [b for b, f in zip(y, forced) if f], color=LQO_C,
               label="lqo plan used", zorder=3)
    ax.scatter([a for a, f in zip(x, forced) if not f], [b for b, f in zip(y, forced) if not f], color=NEUTRAL,
               marker="s", label="native kept", zorder=3)
    lo, hi = min(x) / 2, max(x) * 2
    ax.plot([lo, hi], [lo, hi], color="black", lw=0.8, label="planning = execution")
    ax.plot([lo, hi], [lo / 10, hi / 10], color="black", lw=0.8, ls="--", label="planning = 10% of execution")
    ax.plot([lo, hi], [lo / 100, hi / 100], color="black", lw=0.8, ls=":", label="planning = 1% of execution")
    log_axis(ax, "x")
    log_axis(ax, "y")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(y) / 3, max(y) * 3)  # the points decide; the reference lines just cross
    ax.set_xlabel("native execution time (ms, log)")
    ax.set_ylabel("lqo planning time (ms, log)")
    ys = sorted(y)
    ax.set_title(f"Planning overhead per query: median {ys[len(ys) // 2]:.1f} ms, max {ys[-1]:.1f} ms\n"
                 f"all planning = {sum(y) / max(sum(x), 1e-9):.1%} of native execution time", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # outside: never hides a point
    return fig


# ----- training ------------------------------------------------------------------------

def _epochs(history: Sequence[Mapping]) -> tuple[list[float], list[dict], list[float]]:
    """Per-epoch records over all iterations on one axis; iteration boundaries."""
    xs, recs, bounds, off = [], [], [], 0
    for line in history:
        mh = line.get("model_history") or []
        for e in mh:
            xs.append(off + e.get("epoch", 0))
            recs.append(e)
        off += len(mh)
        bounds.append(off - 0.5)
    return xs, recs, bounds[:-1]


def training_curve(history: Sequence[Mapping]) -> Figure:
    """Training from a model directory's history lines (``ModelDir.read_train_history``):
    workload time per iteration (lqo vs native), train/val loss per epoch and learning rate per epoch (iterations separated).

    >>> h = [{"iteration": 1, "workload_ms": 80, "native_ms": 100, "model_history":
    ...       [{"epoch": 0, "train_loss": 1.0, "val_loss": 1.2, "lr": 1e-3}]}]
    >>> [a.get_title() for a in training_curve(h).axes][0]
    'Training workload time'
    """
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    ax = axes[0]
    if history:
        it = [h["iteration"] for h in history]
        ax.plot(it, [h["native_ms"] / 1000 for h in history], "s--", color=NATIVE_C, mfc="none", ms=9, label="native")
        ax.plot(it, [h["workload_ms"] / 1000 for h in history], "o-", color=LQO_C, label="lqo's choices")
        for h in history:
            if h.get("ratio"):
                ax.annotate(f"{h['ratio']:.2f}x", (h["iteration"], h["workload_ms"] / 1000), xytext=(0, 6),
                            textcoords="offset points", ha="center", fontsize=8)
        ax.set_xticks(it)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    else:
        empty_axes(ax, "no iterations")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training workload time (s)")
    ax.set_title("Training workload time")
    xs, recs, bounds = _epochs(history)
    for ax, keys, label in ((axes[1], ("train_loss", "val_loss"), "loss"), (axes[2], ("lr",), "learning rate")):
        shown = []
        for k, style in zip(keys, ("-", "--")):
            pts = [(x, r[k]) for x, r in zip(xs, recs) if isinstance(r.get(k), (int, float)) and r[k] > 0]
            if pts:
                ax.plot(*zip(*pts), style, label=k.replace("_", " "))
                shown += [v for _, v in pts]
        if not xs:
            empty_axes(ax, "no per-epoch history")
            continue
        for b in bounds:
            ax.axvline(b, color="0.8", lw=0.8)
        scale = auto_scale(ax, shown)
        ax.set_xlabel("epoch, all iterations" + (" (grey lines separate them)" if bounds else ""))
        ax.set_ylabel(label + (" (log)" if scale == "log" else ""))
        if len(keys) > 1:
            ax.legend(fontsize=8)
    axes[1].set_title("Model loss")
    axes[2].set_title("Learning rate (GreedyLR or cosine)")
    return fig


def lr_schedule_curves(runs: Mapping[str, Any]) -> Figure:
    """Validation loss and learning rate per epoch for fits that differ only in the
    schedule, e.g. ``{"greedy": history, "cosine": history}`` (a history is a list of
    epoch dicts, or a dict with a ``history`` list).

    >>> f = lr_schedule_curves({"greedy": [{"epoch": 0, "val_loss": 1.0, "lr": 1e-3}],
    ...                         "cosine": [{"epoch": 0, "val_loss": 1.1, "lr": 1e-3}]})
    >>> [t.get_text() for t in f.axes[0].get_legend().get_texts()]
    ['GreedyLR', 'cosine']
    """
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    names = {"greedy": "GreedyLR", "cosine": "cosine"}
    for name, run in runs.items():
        hist = run.get("history", []) if isinstance(run, Mapping) else list(run)
        ep = [e["epoch"] for e in hist]
        val = [e.get("val_loss") if e.get("val_loss") is not None else e.get("train_loss") for e in hist]
        line, = a1.plot(ep, val, label=names.get(name, name))
        best = min(range(len(val)), key=lambda i: val[i]) if val else None
        if best is not None:
            a1.plot([ep[best]], [val[best]], "o", color=line.get_color())
        a2.plot(ep, [e["lr"] for e in hist], label=names.get(name, name), color=line.get_color())
    for ax, lab in ((a1, "validation loss"), (a2, "learning rate")):
        vals = [v for ln in ax.lines for v in ln.get_ydata()]
        scale = auto_scale(ax, vals)
        ax.set_xlabel("epoch")
        ax.set_ylabel(lab + (" (log)" if scale == "log" else ""))
        ax.legend(fontsize=8)
    a1.set_title("Same data, same seed: validation loss (dot = best epoch)")
    a2.set_title("Learning rate")
    return fig
