"""``lqo train``: latency-feedback training of the learned optimizer.

1. Split the workload by template (the test templates are never run here).
2. Bootstrap: every training query gets native runs, the forced native tree and random
   trees, unless the experience stores already hold that many plans of it.
3. Iterate: fit the model on all experience; plan every training query with model-guided
   beam search plus exploration; execute the choices (timeout = factor x best known);
   append to experience; report the workload time lqo's decisions would take vs native.
A checkpoint is written after every iteration; rerunning the same command resumes.
Plans are run and recorded through :class:`lqo.train.runner.TrainingRunner`.

>>> Trainer(Recipe.load("training/tpch.toml")).run()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lqo.errors import LqoError, WorkloadError
from lqo.estimates.stats import DatabaseStats
from lqo.learn.feature_ranges import FeatureRanges
from lqo.learn.features import Featurizer
from lqo.learn.model_kinds import make_model
from lqo.lock import WriterLock, acquire
from lqo.model_dir import ModelDir, workload_store
from lqo.optimizer import Optimizer
from lqo.search import neighbours, star_plan
from lqo.sql.catalog import Catalog
from lqo.store.experience import ExperienceStore
from lqo.train.recipe import Recipe
from lqo.train.runner import TrainingRunner
from lqo.train.samples import Sample, collect_samples
from lqo.train.transfer import TransferredSamples, load_transferred
from lqo.trees.query import PreparedQuery, prepare_named
from lqo.triage import Triage, TriageConfig
from lqo.workloads.workload import Query, Workload


def split_templates(workload: Workload, test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Templates for (train, test): a seeded shuffle, ``test_fraction`` held out."""
    templates = sorted(workload.templates)
    rng = random.Random(seed)
    rng.shuffle(templates)
    n_test = int(round(test_fraction * len(templates)))
    return sorted(templates[n_test:]), sorted(templates[:n_test])


@dataclass
class TrainResult:
    """What a training run did: iterations, their history, why it stopped."""

    out: Path
    iterations: int
    history: list[dict] = field(default_factory=list)
    stopped: str = ""


class Trainer:
    """Runs a recipe; ``log`` receives one line per step (the CLI prints them)."""

    def __init__(self, recipe: Recipe, log: Callable[[str], None] = print, progress: Any = None) -> None:
        self.recipe = recipe
        self.log = log
        self.progress = progress or (lambda items, desc="": items)
        self.out = Path(recipe.out)
        self.dir = ModelDir(recipe.out)
        self.start = time.perf_counter()
        self._held: WriterLock | None = None

    # ----- set-up ------------------------------------------------------------------------
    def _setup(self):
        r = self.recipe
        if not r.workload:
            raise LqoError("the recipe names no workload (set `workload` or pass --workload)")
        workload = Workload.load(r.workload)
        self.out.mkdir(parents=True, exist_ok=True)
        # One writer per model directory: a second `lqo train` or `lqo tune` on it stops
        # here with BusyError, before it reads or writes anything there. Held until run() ends.
        self._held = acquire(self.out, f"model directory {self.out}")
        try:
            return self._setup_locked(workload)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release()

    def _setup_locked(self, workload: Workload):
        r = self.recipe
        state = self._read_state()
        if state and state.get("workload") != str(workload.root):
            raise LqoError(f"{self.out} holds training for workload {state.get('workload')}; use another --out")
        con = workload.connect()
        catalog = Catalog.from_connection(con)
        stats = DatabaseStats.load_or_build(con, catalog, self.dir.stats)
        if state:
            train_t, test_t = state["train_templates"], state["test_templates"]
        elif r.split.by == "template":
            train_t, test_t = split_templates(workload, r.split.test_fraction, r.split.seed)
        else:
            train_t, test_t = sorted(workload.templates), []
        queries = [q for q in workload if q.template in set(train_t)]
        if not queries:
            raise WorkloadError("the split leaves no training queries")
        prepared = {q.id: prepare_named(f"{q.id} ({q.path})", q.sql, con, catalog) for q in queries}
        usable = {qid: pq for qid, pq in prepared.items() if pq.forceable and pq.free_blocks}
        self.log(f"workload {workload.name}: {len(queries)} training queries ({len(usable)} lqo may reorder), "
                 f"{len(test_t)} test templates held out: {', '.join(test_t)}")
        return workload, con, catalog, stats, state or {}, train_t, test_t, queries, usable

    def _read_state(self) -> dict | None:
        return self.dir.read_train_state()

    def _write_state(self, state: dict) -> None:
        self.dir.write_train_state(state)

    def _elapsed_min(self) -> float:
        return (time.perf_counter() - self.start) / 60

    def _out_of_time(self) -> bool:
        return self._elapsed_min() >= self.recipe.time_budget_min

    # ----- the loop ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Bootstrap, then plan-execute-retrain until the iterations or the time budget run out."""
        r = self.recipe
        workload, con, catalog, stats, state, train_t, test_t, queries, usable = self._setup()
        rng = random.Random(r.seed + int(state.get("iteration", 0)))
        store_paths = [self.dir.store, workload_store(workload.root)]
        featurizer = Featurizer(stats, None)
        transferred = (load_transferred(r.transfer, catalog.fingerprint, featurizer.vocabulary, self.log,
                                        held_out=set(test_t)) if r.transfer.from_models else None)
        result = TrainResult(self.out, int(state.get("iteration", 0)))
        try:
            with ExperienceStore.open(store_paths[0]) as store:
                runner = TrainingRunner(con, store, workload, r, log=self.log)
                self._bootstrap(runner, [store, store_paths[1]], queries, usable, featurizer, rng)
                start_it = int(state.get("iteration", 0))
                for it in range(start_it + 1, r.iterations + 1):
                    if self._out_of_time():
                        result.stopped = f"time budget of {r.time_budget_min} min reached"
                        break
                    samples = collect_samples([store, store_paths[1]], usable)
                    if not samples:
                        failed = ", ".join(sorted(runner.failed))
                        raise LqoError("nothing to learn from: no training query lqo may reorder has a successful run"
                                       + (f" (native runs failed: {failed})" if failed else ""))
                    optimizer = self._fit(samples, usable, featurizer, catalog, it, transferred)
                    optimizer.triage = fit_triage(optimizer, con, [(q.sql, runner.native_ms(q)) for q in queries
                                                                   if q.id not in runner.failed],
                                                  stats, self.recipe.triage)
                    line = self._iterate(it, optimizer, usable, runner, rng, queries)
                    line.update({"samples": len(samples), "transferred": len(transferred) if transferred else 0,
                                 "elapsed_min": round(self._elapsed_min(), 2)})
                    self._keep(it, optimizer, line, state, str(workload.root), train_t, test_t)
                    result.iterations = it
                    result.history.append(line)
                    self.log(_format_line(line))
        finally:
            con.close()
            self._release()
        if not self.dir.model.exists():
            raise LqoError("training stopped before the first model was fitted (raise time_budget_min)")
        return result

    def _bootstrap(self, runner: TrainingRunner, sources: list, queries: list[Query], usable: dict[str, PreparedQuery],
                   featurizer: Featurizer, rng: random.Random) -> None:
        """Measure native, the star-shaped and random plans of every training query (within
        the time budget) before the first fit."""
        for q in self.progress(queries, desc="bootstrap"):
            if self._out_of_time():
                break
            pq = usable.get(q.id)
            # The star-shaped plan is the structured alternative that wins most
            # often on star schemas: measure it for every query from the start.
            star = [star_plan(pq, featurizer.estimator(pq.graph))] if pq else []
            runner.bootstrap(q, pq, rng, collect_samples(sources, {q.id: pq}) if pq else [], star)

    def _keep(self, it: int, optimizer: Optimizer, line: dict, state: dict, workload: str, train_t: list[str],
              test_t: list[str]) -> None:
        """Save iteration ``it``'s model, and as the directory's model if it is the best so
        far; append its history line and write the resume state."""
        extra = {"recipe": self.recipe.to_dict(), "iteration": it,
                 "train_templates": train_t, "test_templates": test_t}
        optimizer.save(self.dir.iteration(it), extra=extra)
        # The model directory holds the best model so far, judged by what its
        # decisions did to the training workload (Bao keeps a model only if it
        # is not worse): a retrain that got worse does not replace it.
        best = state.get("best_ratio")
        line["selected"] = best is None or (line["ratio"] or 9.0) <= best
        if line["selected"]:
            optimizer.save(self.out, extra=extra)
            state["best_ratio"], state["best_iteration"] = line["ratio"] or 9.0, it
        self.dir.append_train_history(line)
        state.update({"workload": workload, "iteration": it,
                      "train_templates": train_t, "test_templates": test_t})
        self._write_state(state)

    def _fit(self, samples: list[Sample], usable: Any, featurizer: Featurizer, catalog: Catalog, it: int,
             transferred: TransferredSamples | None = None) -> Optimizer:
        m = self.recipe.model
        plans = [featurizer.featurize(usable[s.query_id].graph, s.plan, s.forced) for s in samples]
        y = np.array([s.latency_ms for s in samples], dtype=np.float64)
        names = [s.query_id for s in samples]
        if transferred is not None and len(transferred):
            plans, y, names = plans + transferred.plans, np.concatenate([y, transferred.latency_ms]), names + transferred.query
        group = {q: i for i, q in enumerate(sorted(set(names)))}
        g = np.array([group[q] for q in names])
        model = make_model(m.kind, loss=m.loss, lr_schedule=m.lr_schedule, lr=m.lr, epochs=m.epochs,
                           n_members=m.ensemble, channels=(m.hidden, m.hidden, m.hidden // 2),
                           seed=self.recipe.seed + it)
        model.fit(plans, y, g)
        search = dataclasses.replace(self.recipe.search, seed=self.recipe.seed)
        ranges = FeatureRanges.fit(plans, Featurizer.feature_names(),
                                   Featurizer.query_feature_names()[: plans[0].query.shape[0]], groups=names)
        return Optimizer(model, featurizer, catalog.fingerprint, search, dataclasses.replace(self.recipe.decision),
                         ranges=ranges)

    def _iterate(self, it: int, opt: Optimizer, usable: dict[str, PreparedQuery], runner: TrainingRunner,
                 rng: random.Random, queries: list[Query]) -> dict:
        total_lqo = total_native = 0.0
        runs = timeouts = errors = chosen_forced = 0
        for q in self.progress(queries, desc=f"iteration {it}"):
            if self._out_of_time():
                break
            native_ms = runner.native_ms(q)
            if q.id in runner.failed:  # fails as written: no latency to count or to beat
                continue
            pq = usable.get(q.id)
            if pq is None:
                total_lqo += native_ms
                total_native += native_ms
                continue
            result, fallback = opt.decide(pq)
            to_run = [result.best]
            ranked = sorted(result.scored, key=result.scored.__getitem__)
            to_run += [p for p in ranked if not runner.tried(q, p)][: self.recipe.exploration.extra_candidates]
            if rng.random() < self.recipe.exploration.epsilon:
                to_run.append(rng.choice(neighbours(result.best, pq.free_blocks) or [result.best]))
            measured = {}
            for plan in dict.fromkeys(to_run):
                if plan == pq.native_plan:
                    continue
                r = runner.run_plan(q, pq, plan, "model")
                runs += 1
                timeouts += int(runner.outcome == "timeout")
                errors += int(runner.outcome == "error")
                measured[plan] = r
            if fallback is None and result.best != pq.native_plan:
                chosen_forced += 1
                got = measured.get(result.best)
                total_lqo += got if got is not None else runner.timeout_ms(q)
            else:
                total_lqo += native_ms
            total_native += native_ms
        history = getattr(opt.model, "history_", [])  # the fitted model's epochs
        hist = history[-1] if history else {}
        return {"iteration": it, "workload_ms": round(total_lqo, 1), "native_ms": round(total_native, 1),
                "ratio": round(total_lqo / total_native, 4) if total_native else None,
                "forced": chosen_forced, "runs": runs, "timeouts": timeouts, "errors": errors,
                "failed_queries": sorted(runner.failed),
                "train_loss": hist.get("train_loss"), "val_loss": hist.get("val_loss"), "lr": hist.get("lr"),
                "model_history": history}


def fit_triage(optimizer: Optimizer, con: Any, measured: list[tuple[str, float]], stats: Any,
               config: TriageConfig) -> Triage | None:
    """The first-stage predictors, fitted on the training queries' measured native
    latencies and on this optimizer's planning time for each (timed here, cold); None
    with fewer than 3 queries to fit on (every first-seen query is then planned)."""
    texts, native, planning, searched = [], [], [], []
    for sql, ms in measured:
        optimizer.forget(sql)
        start = time.perf_counter()
        try:
            res = optimizer.optimize(sql, con)
        except LqoError:
            continue  # a query lqo cannot plan tells nothing about planning cost
        finally:
            optimizer.forget(sql)
        texts.append(sql)
        native.append(ms)
        planning.append((time.perf_counter() - start) * 1000)
        if res.candidates:
            searched.append(planning[-1])
    if len(texts) < 3:
        return None
    rows = {t: stats.rows(t) or 0 for t in stats.tables}
    # The least a query costs that planning could change (one with joins to search): a
    # query without joins is parsed and checked in well under a millisecond, and is
    # never forced.
    return Triage.fit(texts, native, planning, rows, config, planning_floor_ms=min(searched or planning))


def _format_line(line: dict) -> str:
    ratio = f"{line['ratio']:.3f}x" if line["ratio"] else "-"
    loss = f"{line['val_loss']:.4f}" if isinstance(line.get("val_loss"), (int, float)) else "-"
    return (f"iteration {line['iteration']}: training workload {line['workload_ms'] / 1000:.2f} s with lqo vs "
            f"{line['native_ms'] / 1000:.2f} s native ({ratio}), {line['forced']} queries forced, "
            f"{line['runs']} plans run ({line['timeouts']} timeouts"
            + (f", {line['errors']} failed" if line.get("errors") else "") + f"), {line['samples']} samples, "
            f"val loss {loss}, {line['elapsed_min']} min" + (" [kept]" if line.get("selected") else ""))
