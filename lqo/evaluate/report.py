"""The data behind ``lqo report``: comparison, training history, join trees, schedules.

Gather what a results page shows (``build_report``); ``lqo.evaluate.report_page.write_report``
writes it as PNG figures plus ``report.md`` and ``report.json``. Every piece is usable on
its own from a notebook, with ``lqo.plots`` to draw it.

>>> cmp = run_compare("data/tpcds-sf1", "runs/tpcds", split="test", repeats=3)  # doctest: +SKIP
>>> cases = tree_cases("data/tpcds-sf1", "runs/tpcds", cmp)                     # doctest: +SKIP
>>> rep = build_report("data/tpcds-sf1", "runs/tpcds", compare=cmp)              # doctest: +SKIP
>>> rep.to_json()["summary"]["ratio"]                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lqo.engine.profile import profile_json
from lqo.engine.settings import forced_settings
from lqo.errors import LqoError, MissingFileError
from lqo.model_dir import ModelDir, workload_store
from lqo.trees.native import PNode, explain_json, read_native_trees
from lqo.trees.physical import profile_nodes
from lqo.trees.plan import Join, Leaf, Plan, Tree, tree_to_json
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


# ----- join trees of the biggest wins and the worst regression -------------------------

def pick_cases(compare: dict, n_wins: int = 3) -> list[tuple[str, str]]:
    """``(query id, "win" | "regression")``: the ``n_wins`` lowest ratios below 1, then
    the highest ratio above 1."""
    qs = compare["queries"]
    wins = sorted((q for q in qs if q["ratio"] < 1), key=lambda q: q["ratio"])[:n_wins]
    worst = max((q for q in qs if q["ratio"] > 1), key=lambda q: q["ratio"], default=None)
    return [(q["id"], "win") for q in wins] + ([(worst["id"], "regression")] if worst else [])


_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def parse_plan(text: str) -> Plan:
    """A plan from its ``str()``, as ``lqo compare`` reports ``chosen``.

    >>> str(parse_plan("#0 ((a b) c); #2 (d e)"))
    '#0 ((a b) c); #2 (d e)'
    """
    trees: dict[int, Tree] = {}
    for part in text.split(";"):
        m = re.match(r"\s*#(\d+)\s+(.+?)\s*$", part)
        if not m:
            raise ValueError(f"not a plan: {text!r}")
        toks = _TOKEN.findall(m.group(2))
        tree, rest = _parse_tree(toks)
        if rest:
            raise ValueError(f"trailing text in plan: {text!r}")
        trees[int(m.group(1))] = tree
    return Plan.of(trees)


def _parse_tree(toks: list[str]) -> tuple[Tree, list[str]]:
    if not toks or toks[0] == ")":
        raise ValueError("truncated tree")
    if toks[0] != "(":
        return Leaf(toks[0]), toks[1:]
    a, rest = _parse_tree(toks[1:])
    b, rest = _parse_tree(rest)
    if not rest or rest[0] != ")":
        raise ValueError("unbalanced tree")
    return Join(a, b), rest[1:]


def _cards(graph: Any, roots: list[PNode], block: int) -> list[list]:
    nt = read_native_trees(graph, roots)
    est, act = nt.estimates.get(block, {}), nt.actuals.get(block, {})
    return [[sorted(r), est.get(r), act.get(r)] for r in est]


def _side(con: Any, pq: Any, plan: Plan, forced: bool, block: int, timeout_s: float) -> dict:
    sql = pq.render(plan) if forced else pq.sql
    roots = profile_nodes(profile_json(con, sql, forced, timeout_s))
    if roots is None:  # timed out: estimates from EXPLAIN under the same settings, no actuals
        with forced_settings(con) if forced else nullcontext():
            cards = [[r, e, None] for r, e, _ in _cards(pq.graph, explain_json(con, sql), block)]
    else:
        cards = _cards(pq.graph, roots, block)
    return {"tree": tree_to_json(plan.tree(block)), "plan": str(plan), "forced": forced,
            "cards": cards, "timed_out": roots is None}


def tree_cases(workload: str | Path | Workload, model: str | Path, compare: dict, n_wins: int = 3,
               timeout_factor: float = 5.0, queries: list[str] | None = None) -> list[dict]:
    """Native and lqo join trees, with estimated and actual rows per node, for the
    biggest wins and the worst regression of ``compare`` (or the given query ids).

    Each plan runs once with profiling (timeout: ``timeout_factor`` x the slower of its
    compare times). The drawn block is the largest one lqo changed (else the largest).
    A case: ``query``, ``kind``, ``ratio``, ``native_ms``, ``lqo_ms``, ``fallback``,
    ``block``, ``names`` (alias -> table) and ``native`` / ``lqo`` = ``{"tree", "cards":
    [[aliases, est, act], ...], ...}``; draw it with ``lqo.plots.tree_case``.
    """
    from lqo.sql.catalog import Catalog
    from lqo.trees.query import prepare

    wl = workload if isinstance(workload, Workload) else Workload.load(workload)
    by_id = {q["id"]: q for q in compare["queries"]}
    picks = [(qid, "selected") for qid in queries] if queries else pick_cases(compare, n_wins)
    out = []
    with wl.connect() as con:
        catalog = Catalog.from_connection(con)
        for qid, kind in picks:
            row = by_id.get(qid, {"id": qid, "ratio": None, "native_ms": None, "lqo_ms": None,
                                  "fallback": "not in the comparison", "chosen": None})
            pq = prepare(wl.query(qid).sql, con, catalog)
            if not pq.forceable:
                continue  # no native tree lqo can read: nothing to draw
            native = pq.native_plan
            chosen = _chosen(row, native, model, pq, con)
            changed = [i for i, t in native.trees if chosen.tree(i) != t]
            block = max(changed or dict(native.trees), key=lambda i: len(native.tree(i).rels))
            timeout = timeout_factor * max(row["native_ms"] or 1000.0, row["lqo_ms"] or 0.0) / 1000
            nat = _side(con, pq, native, False, block, max(1.0, timeout))
            lqo = _side(con, pq, chosen, True, block, max(1.0, timeout)) if chosen != native else dict(nat)
            rel = {r.alias: (r.name or r.alias) for b in pq.graph.blocks for r in b.relations}
            out.append({"query": qid, "kind": kind, "ratio": row["ratio"], "native_ms": row["native_ms"],
                        "lqo_ms": row["lqo_ms"], "fallback": row.get("fallback"), "block": block,
                        "blocks_changed": changed, "names": rel, "native": nat, "lqo": lqo})
    return out


def _chosen(row: dict, native: Plan, model: Any, pq: Any, con: Any) -> Plan:
    """The plan lqo ran for this query in the comparison (native when it fell back)."""
    if row.get("fallback") is not None or not row.get("chosen"):
        return native
    try:
        plan = parse_plan(row["chosen"])
        if [(i, t.rels) for i, t in plan.trees] == [(i, t.rels) for i, t in native.trees]:
            return plan
    except ValueError:
        pass
    from lqo.optimizer import Optimizer  # an alias lqo cannot parse back: plan it again

    res = Optimizer.load(model, con).optimize(pq.sql, con)
    return res.chosen if res.forced and res.chosen else native


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

