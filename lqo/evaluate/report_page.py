"""Write a report directory: PNG figures, ``report.md`` and ``report.json``.

The directory appears complete or not at all: everything is written into a temporary
sibling that is renamed into place (replacing an earlier report there). What a report
holds is gathered by :func:`lqo.evaluate.report.build_report`.

>>> write_report(build_report("data/tpcds-sf1", "runs/tpcds"), "results")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from lqo.errors import LqoError
from lqo.evaluate.report import Report, optimizer_summary, schedule_summary

REPORT_JSON = "report.json"


def check_out(out: str | Path) -> Path:
    """``out`` may be created: absent, empty, or an earlier report (holding report.json)."""
    out = Path(out).expanduser().absolute()
    if out.exists():
        if not out.is_dir():
            raise LqoError(f"output path exists and is not a directory: {out}")
        if any(out.iterdir()) and not (out / REPORT_JSON).is_file():
            raise LqoError(f"refusing to write into {out}: it is not empty and holds no earlier report")
    return out


def write_report(report: Report, out: str | Path, dpi: int = 120) -> list[str]:
    """Write the report's PNGs, report.md and report.json into ``out``; the file names.

    >>> write_report(build_report("data/tpcds-sf1", "runs/tpcds"), "results")  # doctest: +SKIP
    """
    import matplotlib.pyplot as plt

    from lqo import plots  # noqa: F401  (first: it picks the headless backend before pyplot loads)

    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        files = []
        for name, fig in figures(report):
            fig.savefig(tmp / name, dpi=dpi)
            plt.close(fig)  # a report draws dozens of figures: free them as we go
            files.append(name)
        (tmp / "report.md").write_text(render_markdown(report, files))
        payload = {**report.to_json(), "figures": files}
        (tmp / REPORT_JSON).write_text(json.dumps(payload, indent=2, default=str))
        out = check_out(out)  # re-check: something may have appeared meanwhile
        old = out.with_name(f"{tmp.name}.old") if out.exists() else None
        if old is not None:
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files + ["report.md", REPORT_JSON]


def figures(report: Report) -> Iterator[tuple[str, Any]]:
    """The report's figures with their PNG file names (none for parts it lacks), one at
    a time so each can be saved and closed before the next is drawn."""
    from lqo import plots

    # A query lqo compare could not run has no latencies to draw.
    qs, reg = [q for q in report.compare["queries"] if not q.get("error")], 1.2
    if qs:
        title = f"lqo vs DuckDB native: {Path(report.workload).name}, {report.split} split"
        yield "speedup.png", plots.speedup_bars(qs, reg, title=title)
        yield "ratio_cdf.png", plots.ratio_cdf(qs, reg)
        yield "planning.png", plots.planning_overhead(qs)
    if report.history:
        yield "training.png", plots.training_curve(report.history)
    if report.lr and "skipped" not in report.lr:
        yield "lr_schedules.png", plots.lr_schedule_curves({k: report.lr[k] for k in ("greedy", "cosine")})
    for case in report.cases:
        yield f"trees_{case['query']}.png", plots.tree_case(case)
    if report.schedules:
        yield "sched_cdf.png", plots.completion_cdf(report.schedules)
        yield "sched_gantt.png", plots.gantt(report.schedules)


def _x(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def render_markdown(report: Report, files: list[str]) -> str:
    """``report.md``: headline figures with the commands that reproduce them, and the plots."""
    from lqo.plots import markdown_table

    s = optimizer_summary(report.compare)
    out = [f"# lqo results: {Path(report.workload).name}, {report.split} split", "",
           f"Reproduce: `{report.command}`" if report.command else "",
           f"(comparison: `{report.compare_command}`)" if report.compare_command else "", "",
           "## Optimizer vs DuckDB native", "",
           f"Measured on the {report.split_text or report.split + ' split'}.", "",
           f"- queries: {s['queries']} ({s['forced']} ran lqo's plan, the others DuckDB's)",
           f"- total time ratio lqo/native: **{_x(s['ratio'])}** (native {s['native_ms']:.1f} ms, lqo "
           f"{s['lqo_ms']:.1f} ms, planning included); geometric mean {_x(s['geomean_ratio'])}",
           f"- worst regression: **{_x(s['worst_ratio'], 2)}** ({s['worst_query']}); "
           f"{s['regressions']} queries above 1.2x; wrong results: {s['wrong_results']}",
           f"- planning overhead: median {s['planning_ms_median']} ms, p99 {s['planning_ms_p99']} ms, "
           f"{(s['planning_share'] or 0):.1%} of lqo's total time", ""]
    if report.compare.get("totals", {}).get("interrupted"):
        out += ["**The comparison was interrupted: these figures cover only the queries it finished.**", ""]
    out += [x for f in ("speedup.png", "ratio_cdf.png", "planning.png") if f in files for x in (f"![{f}]({f})", "")]
    if report.cases:
        out += ["## Join trees: biggest wins and worst regression", ""]
        for c in report.cases:
            f = f"trees_{c['query']}.png"
            why = f"native kept: {c['fallback']}" if c.get("fallback") else f"lqo/native {_x(c['ratio'], 2)}"
            out += [f"### {c['query']} ({c['kind']}, {why})", "", f"![{f}]({f})", ""]
    if report.history:
        last = report.history[-1]
        out += ["## Training", "", f"{len(report.history)} iterations; last: training workload "
                f"{_x(last.get('ratio'))} of native, val loss "
                f"{'-' if last.get('val_loss') is None else format(last['val_loss'], '.4g')}", "",
                "![training.png](training.png)" if "training.png" in files else "", ""]
    if report.lr:
        out += ["## GreedyLR vs cosine (refit on the model's own experience)", ""]
        if "skipped" in report.lr:
            out += [report.lr["skipped"], ""]
        else:
            rows = [{"schedule": k, **{c: report.lr[k][c] for c in ("final_val_loss", "best_val_loss", "best_epoch",
                                                                      "epochs", "stop_reason")}}
                    for k in ("greedy", "cosine")]
            out += [f"{report.lr['samples']} samples of {report.lr['queries']} queries, seed {report.lr['seed']}, "
                    f"{report.lr['time_budget_s']:g} s budget.", "", markdown_table(rows), "",
                    "![lr_schedules.png](lr_schedules.png)", ""]
    if report.schedules:
        out += ["## Scheduler: completion time per policy", "", markdown_table(schedule_summary(report.schedules)),
                "", "![sched_cdf.png](sched_cdf.png)", "", "![sched_gantt.png](sched_gantt.png)", ""]
    return "\n".join(out).replace("\n\n\n", "\n\n")
