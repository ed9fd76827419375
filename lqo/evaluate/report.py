"""The data behind ``lqo report``: comparison, training history, join trees, schedules.

Join trees of the biggest wins and the worst regression come from
:mod:`lqo.evaluate.tree_cases`.

Gather what a results page shows (``build_report``); ``lqo.evaluate.report_page.write_report``
writes it as PNG figures plus ``report.md`` and ``report.json``. Every piece is usable on
its own from a notebook, with ``lqo.plots`` to draw it.

>>> cmp = run_compare("data/tpcds-sf1", "runs/tpcds", split="test", repeats=3)  # doctest: +SKIP
>>> rep = build_report("data/tpcds-sf1", "runs/tpcds", compare=cmp)              # doctest: +SKIP
>>> rep.to_json()["summary"]["ratio"]                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lqo.errors import LqoError, MissingFileError
from lqo.evaluate.tree_cases import tree_cases
from lqo.model_dir import ModelDir, workload_store
from lqo.workloads.workload import Query, Workload

if TYPE_CHECKING:
    from lqo.book.book import PlanBook

# ----- inputs --------------------------------------------------------------------------

def load_json(path: str | Path, what: str, keys: tuple[str, ...]) -> dict:
    """A JSON object from ``path`` holding ``keys``; ``LqoError`` naming ``what`` otherwise."""
    p = Path(path)
    if not p.exists():  # not is_file(): a pipe such as <(lqo compare ... --json) is fine too
        raise MissingFileError(f"{what} not found: {p}")
    try:
        data = json.loads(p.read_text())
    except OSError as err:
        raise LqoError(f"cannot read {p} ({what}): {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LqoError(f"{p} is not valid JSON ({what}): {err}") from None
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise LqoError(f"{p} is not {what}: it lacks {', '.join(k for k in keys if k not in data) or 'an object'}")
    return data


def load_compare(path: str | Path) -> dict:
    """The output of ``lqo compare --json`` (``queries`` and ``totals``)."""
    return load_json(path, "an `lqo compare --json` output", ("queries", "totals"))


def load_schedule(path: str | Path) -> dict:
    """The output of ``lqo schedule --json`` (``policy``, figures and ``queries``)."""
    return load_json(path, "an `lqo schedule --json` output", ("policy", "mean_s", "p95_s", "queries"))


def load_history(model: str | Path) -> list[dict]:
    """A model directory's training history: one dict per training iteration."""
    return ModelDir(model).read_train_history()


REUSED = "compare-json"  # the split of a reused comparison that matches none exactly
SPLIT_TEXT = {
    REUSED: "the queries of the reused `lqo compare --json` output",
    "all": "every query of the workload",
    "train": "the queries of the model's training templates",
    "test": "the queries of the model's test templates (never run while training)",
    "instances": "the held-out instances of the templates `lqo tune` tuned (never run while tuning)",
}


def default_split(model: str | Path) -> str:
    """The split a report measures unless told: a plan book alone is judged on its held-out
    instances (``instances``), a trained model on its test templates (``test``)."""
    return "instances" if ModelDir(model).holds() == "book" else "test"


def split_queries(workload: Workload, model: str | Path, split: str) -> list[Query]:
    """The workload's queries in a split of the model directory (``all``, the model's
    ``train``/``test`` templates, or the plan book's held-out ``instances``), as
    ``lqo compare --split`` takes them: :meth:`lqo.model_dir.ModelDir.split_queries`."""
    held_out = sorted(_book(model).held_out_ids()) if split == "instances" else None
    return ModelDir(model).split_queries(workload, split, held_out)


def _book(model: str | Path) -> PlanBook:
    from lqo.book.book import PlanBook

    return PlanBook.load(model)


def describe_split(model: str | Path, split: str, ids: list[str]) -> str:
    """What a report measured, in words: the split, and how many of its ``ids`` are
    instances ``lqo tune`` ran on (their wins were picked on them: no held-out evidence)."""
    text = f"{split} split: {SPLIT_TEXT.get(split, split)}, {len(ids)} queries"
    if split != "instances" and ModelDir(model).has_book():
        tuned = {i for e in _book(model).entries.values() for i in e.instances} & set(ids)
        if tuned:
            text += (f"; {len(tuned)} of them are instances `lqo tune` tuned on, whose plans were chosen on those very "
                     "runs (--split instances measures only held-out ones)")
    return text


def run_compare(workload: str | Path | Workload, model: str | Path, split: str | None = None, repeats: int = 5,
                progress: Callable | None = None) -> dict:
    """Run ``lqo compare`` (``lqo.evaluate.compare``) on a split (default
    :func:`default_split`) and return its ``--json`` dict."""
    from lqo.evaluate.compare import CompareConfig, compare_workload
    from lqo.optimizer import Optimizer

    wl = workload if isinstance(workload, Workload) else Workload.load(workload)
    queries = split_queries(wl, model, split or default_split(model))
    with wl.connect() as con:
        opt = Optimizer.load(model, con)
    return compare_workload(wl, opt, CompareConfig(repeats=repeats), queries, progress=progress).to_json()


# ----- GreedyLR vs cosine --------------------------------------------------------------

def compare_lr_schedules(workload: str | Path | Workload, model: str | Path, time_budget_s: float = 60.0,
                         epochs: int | None = None) -> dict:
    """Refit the model's architecture on its own experience with each LR schedule.

    Same samples, split, seed and hyperparameters (from the model's recipe); only
    ``lr_schedule`` differs. Each fit stops at ``time_budget_s / 2`` seconds. Returns
    ``{"samples", "greedy": {...}, "cosine": {...}}`` with per-epoch ``history``,
    ``final_val_loss``, ``best_val_loss``, ``best_epoch``, ``epochs``, ``stop_reason``;
    or ``{"skipped": reason}`` when there is too little experience.
    """
    import numpy as np

    from lqo.learn.model_kinds import make_model
    from lqo.optimizer import Optimizer
    from lqo.sql.catalog import Catalog
    from lqo.train.recipe import ModelConfig
    from lqo.train.samples import collect_samples
    from lqo.trees.query import prepare

    wl = workload if isinstance(workload, Workload) else Workload.load(workload)
    root = Path(model)
    if not ModelDir(root).has_model():
        return {"skipped": "no trained model in this directory (a plan book alone: nothing to refit)"}
    cfg = ModelDir(root).read_config()
    recipe = cfg.get("recipe") or {}
    m = ModelConfig(**{k: v for k, v in (recipe.get("model") or {}).items() if k in vars(ModelConfig())})
    seed = int(recipe.get("seed", 0)) + int(cfg.get("iteration", 0))
    train_t = set(cfg.get("train_templates") or wl.templates)
    with wl.connect() as con:
        opt = Optimizer.load(root, con)
        catalog = Catalog.from_connection(con)
        usable = {}
        for q in wl:
            if q.template in train_t:
                pq = prepare(q.sql, con, catalog)
                if pq.forceable and pq.free_blocks:
                    usable[q.id] = pq
    samples = collect_samples([ModelDir(root).store, workload_store(wl.root)], usable)
    qids = sorted({s.query_id for s in samples})
    if len(samples) < 4 or len(qids) < 2:
        return {"skipped": f"too little experience to refit ({len(samples)} samples of {len(qids)} queries)"}
    assert opt.featurizer is not None  # the directory holds a trained model
    plans = [opt.featurizer.featurize(usable[s.query_id].graph, s.plan, s.forced) for s in samples]
    y = np.array([s.latency_ms for s in samples], dtype=np.float64)
    g = np.array([qids.index(s.query_id) for s in samples])
    out: dict[str, Any] = {"samples": len(samples), "queries": len(qids), "seed": seed, "time_budget_s": time_budget_s}
    # The first fit in a process pays torch's one-time start-up (seconds): pay it here,
    # or whichever schedule is fitted first loses epochs of its budget to it.
    make_model(m.kind, epochs=1, n_members=1, channels=(m.hidden, m.hidden, m.hidden // 2), seed=seed).fit(plans, y, g)
    for schedule in ("greedy", "cosine"):
        fitted = make_model(m.kind, loss=m.loss, lr_schedule=schedule, lr=m.lr, epochs=epochs or m.epochs,
                            n_members=m.ensemble, channels=(m.hidden, m.hidden, m.hidden // 2), seed=seed)
        fitted.fit(plans, y, g, time_budget_s=time_budget_s / 2)
        hist = [{k: e.get(k) for k in ("epoch", "train_loss", "val_loss", "lr")} for e in fitted.history_]
        out[schedule] = {"history": hist, "final_val_loss": hist[-1]["val_loss"] if hist else None,
                         "best_val_loss": fitted.best_loss_, "best_epoch": fitted.best_epoch_,
                         "epochs": len(hist), "stop_reason": fitted.stop_reason_, "fit_s": round(fitted.fit_time_s_, 2)}
    return out


# ----- summaries -----------------------------------------------------------------------

def optimizer_summary(compare: dict) -> dict:
    """The headline figures of a comparison: totals, worst regression, planning share."""
    t, qs = compare["totals"], compare["queries"]
    worst = max(qs, key=lambda q: q["ratio"], default=None)
    planning = sum(q["planning_ms"] for q in qs)
    return {"queries": t.get("queries"), "native_ms": t.get("native_ms"), "lqo_ms": t.get("lqo_ms"),
            "ratio": t.get("ratio"), "geomean_ratio": t.get("geomean_ratio"),
            "worst_ratio": worst["ratio"] if worst else None, "worst_query": worst["id"] if worst else None,
            "regressions": len(t.get("regressions", [])), "forced": t.get("forced"),
            "wrong_results": t.get("wrong_results"), "planning_ms_median": t.get("planning_ms_median"),
            "planning_ms_p99": t.get("planning_ms_p99"),
            "planning_share": round(planning / t["lqo_ms"], 4) if t.get("lqo_ms") else None}


def schedule_summary(results: list[dict]) -> list[dict]:
    """One row per schedule: mean / p95 / makespan, and mean and p95 relative to FIFO
    (the FIFO run of the same mode, where one is given)."""
    fifo = {r.get("mode"): r for r in results if r["policy"] == "fifo"}
    rows = []
    for r in results:
        base = fifo.get(r.get("mode"))
        rows.append({"policy": r["policy"], "mode": r.get("mode"), "queries": len(r["queries"]),
                     "mean_s": r["mean_s"], "p95_s": r["p95_s"], "makespan_s": r.get("makespan_s"),
                     "mean_vs_fifo": r["mean_s"] / base["mean_s"] if base and base["mean_s"] else None,
                     "p95_vs_fifo": r["p95_s"] / base["p95_s"] if base and base["p95_s"] else None})
    return rows


# ----- the report ----------------------------------------------------------------------

@dataclass
class Report:
    """Everything a results page shows; ``command`` reproduces it."""

    workload: str
    model: str
    split: str
    compare: dict
    split_text: str = ""  # what was measured, in words (describe_split)
    history: list[dict] = field(default_factory=list)
    cases: list[dict] = field(default_factory=list)
    lr: dict | None = None
    schedules: list[dict] = field(default_factory=list)
    command: str = ""
    compare_command: str = ""

    def to_json(self) -> dict:
        """The report as plain JSON data, with its summaries."""
        d = asdict(self)
        d["summary"] = optimizer_summary(self.compare)
        d["scheduler"] = schedule_summary(self.schedules)
        d["history"] = [{k: v for k, v in h.items() if k != "model_history"} for h in self.history]
        return d


def build_report(workload: str | Path, model: str | Path, split: str | None = None, repeats: int = 5,
                 compare: dict | None = None, schedules: list[dict] | None = None, trees: bool = True,
                 lr_budget_s: float = 0.0, progress: Callable | None = None) -> Report:
    """Gather a report: run the comparison unless ``compare`` is given, read the training
    history, profile the tree cases, and (``lr_budget_s`` > 0) refit with both schedules.

    ``split`` (default :func:`default_split`): the queries compared. A ``compare`` given
    must hold only queries of that split (``LqoError`` otherwise); with ``split`` None
    it is reported as the split whose queries it holds exactly, else as its own."""
    wl = Workload.load(workload)
    if compare is None:
        split = split or default_split(model)
        cmp = run_compare(wl, model, split, repeats, progress)
    else:
        cmp = compare
        split = _compare_split(wl, model, split, [q["id"] for q in cmp["queries"]])
    return Report(
        workload=str(wl.root), model=str(Path(model).absolute()), split=split, compare=cmp,
        split_text=describe_split(model, split, [q["id"] for q in cmp["queries"]]),
        history=load_history(model), cases=tree_cases(wl, model, cmp) if trees else [],
        lr=compare_lr_schedules(wl, model, lr_budget_s) if lr_budget_s > 0 else None,
        schedules=list(schedules or []),
        compare_command="" if split == REUSED else f"lqo compare {workload} --model {model} --split {split} "
                        f"--repeat {repeats} --json > compare.json",
    )


def _compare_split(wl: Workload, model: str | Path, split: str | None, ids: list[str]) -> str:
    """The split a reused comparison measured: ``split`` if every one of its queries is
    in it (``LqoError`` if not), else the split it covers exactly, else ``REUSED``."""
    def members(s: str) -> set[str] | None:
        try:
            return {q.id for q in split_queries(wl, model, s)}
        except LqoError:  # the directory has no such split
            return None

    if split is not None:
        outside = sorted(set(ids) - {q.id for q in split_queries(wl, model, split)})
        if outside:
            raise LqoError(f"the comparison holds {len(outside)} queries outside the {split} split "
                           f"({', '.join(outside[:5])}{', ...' if len(outside) > 5 else ''})")
        return split
    for s in ("instances", "test", "train", "all"):
        if members(s) == set(ids):
            return s
    return REUSED

