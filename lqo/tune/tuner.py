"""``lqo tune``: explore candidate plans per template offline, adopt only verified wins.

Per template (instances that share a :func:`~lqo.book.template.template_key`), the
first ``tune_instances`` instances by id are tuned on; the others are held out and never
run here. The budget is spent on (template, candidate) pairs in order of expected
improvement x template weight (native time of its tuning instances):

1. *baseline*: native runs of every tuning instance (median, result fingerprint);
2. *screening*: one run of a candidate on the first tuning instance, cut at the
   native latency (the best known), result checked against native;
3. *acceptance*: a candidate that screened below ``screen_below`` x native gets paired,
   interleaved rounds against native on every tuning instance (put off until every
   candidate is screened where it screened well above the template's adopted plan:
   ``trials.acceptance_bar``), judged by
   :mod:`lqo.tune.accept`; it becomes the template's choice if accepted and better than
   the current one.

Candidates: setting arms (the native text with one DuckDB optimizer rule disabled, or
one DuckDB operator setting changed where that changes its plan, :mod:`lqo.tune.arms`;
no forced tree, no forcing penalty), the star-shaped plan from lqo's own estimates, the
C_out-cheapest tree by dynamic programming over those estimates and over the counts a
profiled native run recorded (a true-cardinality plan, :mod:`lqo.trees.dp`), every tree
of blocks of up to three relations, build-side flips and local moves of DuckDB's native
tree, and random trees. Once two
of a template's candidates have each screened below native, their combination joins
the queue (two rules disabled together, or a tree run with one more rule off;
``trials.combinations``).

``strategy="learned"`` (:mod:`lqo.tune.order`) orders candidates by what screening has
shown so far, across templates: each candidate origin (an arm's rule, ``star``, ``flip``, ``random``) keeps
a posterior of how often it screens as a win and by how much, and the next pair is the
one with the highest expected saving in ms (Thompson-style optimism for origins seldom
tried). ``strategy="random"`` draws pairs uniformly: the baseline learned exploration
must beat. The book is saved after every step, so Ctrl-C or a kill loses at most the
step under way, and a rerun resumes.

``Tuner(..., progress=callback)`` calls ``callback`` with a :class:`TuneProgress` after
every step (templates baselined, candidates screened and tested, the tuning instances'
time under the book so far, the budget left), and once more with phase ``"done"``; the
CLI draws it as a bar.
"""

from __future__ import annotations

import random
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import duckdb

from lqo.book.book import Candidate, PlanBook
from lqo.book.ranges import LiteralRanges
from lqo.book.serve import read_feedback
from lqo.book.template import template_key
from lqo.engine.interrupt import is_user_interrupt
from lqo.estimates.stats import DatabaseStats
from lqo.lock import writer_lock
from lqo.model_dir import ModelDir
from lqo.sql.catalog import Catalog
from lqo.store.experience import ExperienceStore
from lqo.tune.inputs import TemplateInstances, TuneConfig
from lqo.tune.order import OriginStats, pick, relative
from lqo.tune.steps import Done, LocalSteps, PoolSteps, Steps, accept_step, baseline_step, retest_step, trial_step
from lqo.tune.trials import COMBINED, Trials, combinations
from lqo.workloads.workload import Query, Workload

if TYPE_CHECKING:
    from lqo.distributed.pool import ExecutorPool

DRIFT = 1.5  # served latency above this x the verified figure triggers a re-check


@dataclass
class TuneResult:
    """What a tuning run did: counts, the learning curve, and (``--ray``) the nodes."""

    templates: int = 0
    screened: int = 0
    tested: int = 0
    adopted: int = 0
    wrong: int = 0
    rechecked: int = 0
    retested: int = 0  # acceptance tests put off at screening, run after it
    elapsed_s: float = 0.0
    interrupted: bool = False
    history: list = field(default_factory=list)
    nodes: list[dict] | None = None  # per node (``--ray``): what it ran; None when sequential


@dataclass(frozen=True)
class TuneProgress:
    """Where a tuning run stands, handed to ``Tuner(progress=...)`` after every step.

    ``phase``: ``"baseline"`` (native runs of the tuning instances, ``baselined`` of
    ``templates``), ``"tune"`` (screening and acceptance tests: ``screened`` so far in this
    run and ``to_screen`` still queued, a number that grows as combinations are proposed),
    then ``"done"`` once. ``book_ms`` / ``native_ms``: the tuning instances' time under the
    book's choices and natively, over the templates baselined so far (a template without
    an adopted plan counts at native), as in the learning curve (``ModelDir.tune_history``).

    >>> p = TuneProgress("tune", 22, 22, 30, 70, 4, 2, 900.0, 1000.0, 50.0, 240.0)
    >>> round(p.ratio, 2), p.left_s
    (0.9, 190.0)
    """

    phase: str
    templates: int
    baselined: int
    screened: int
    to_screen: int
    tested: int
    adopted: int
    book_ms: float
    native_ms: float
    elapsed_s: float
    budget_s: float

    @property
    def ratio(self) -> float | None:
        """Book time / native time of the tuning instances so far (None before a baseline)."""
        return self.book_ms / self.native_ms if self.native_ms else None

    @property
    def left_s(self) -> float:
        """Seconds of this run's budget left."""
        return max(0.0, self.budget_s - self.elapsed_s)


_Pair = tuple[TemplateInstances, Candidate]


@dataclass
class _Session:
    """What one tuning run works on, from its resume to its close."""

    start: float
    deadline: float
    con: duckdb.DuckDBPyConnection
    book: PlanBook
    history: list[dict]
    offset: float  # the learning curve's elapsed time before this run
    result: TuneResult
    store: ExperienceStore
    rng: random.Random
    origins: OriginStats
    ctx: Trials
    steps: Steps
    baselined: int = 0  # templates whose native runs are done (or failed), for the progress


class Tuner:
    """Tunes a workload's plan book in a model directory (:func:`run`)."""

    def __init__(self, workload: Workload, out: str | Path, config: TuneConfig | None = None,
                 log: Callable[[str], None] = print, pool: "ExecutorPool | None" = None,
                 progress: Callable[[TuneProgress], None] | None = None) -> None:
        """``pool`` (:class:`lqo.distributed.ExecutorPool`): run the measuring steps on Ray
        executors; this process still decides the order and alone writes book and store.
        ``progress``: called with a :class:`TuneProgress` after every step."""
        self.pool, self.workload, self.out = pool, workload, Path(out)
        self.dir = ModelDir(out)
        self.config = config or TuneConfig()
        self.config.validate()
        self.log = log
        self.progress = progress

    # ------------------------------------------------------------------ set-up
    def _templates(self) -> list[TemplateInstances]:
        groups: dict[str, list[Query]] = defaultdict(list)
        for q in self.workload:
            groups[template_key(q.sql).key].append(q)
        out = []
        for key, qs in groups.items():
            qs = sorted(qs, key=lambda q: q.id)
            k = self.config.tune_instances
            out.append(TemplateInstances(key, qs[0].template, qs[:k], qs[k:]))
        return sorted(out, key=lambda t: t.tune[0].id)

    def run(self) -> TuneResult:
        """Tune within the budget. The model directory is locked for the whole run: a
        second writer (another ``lqo tune`` or ``lqo train`` on it) stops with
        ``BusyError`` before reading or writing anything there."""
        self.out.mkdir(parents=True, exist_ok=True)
        with writer_lock(self.out, f"model directory {self.out}"):
            return self._run()

    def _run(self) -> TuneResult:
        s = self._resume()
        pending: list[_Pair] = []
        try:
            templates = self._templates()
            s.result.templates = len(templates)
            self._recheck(s.steps, templates, s.book, s.result)
            s.book.save(self.dir.book)
            ready = self._baselines(s.steps, templates, s.book, self.dir.book, s.deadline,
                                    baselined=lambda n: self._baselined(s, n))
            pending, deferred = self._queue(s, ready)
            self._report(s, "tune", len(pending))
            self.log(f"tune: {len(templates)} templates, {len(pending)} candidates to try "
                     f"({self.config.strategy} order, budget {self.config.budget_min:g} min"
                     + ("" if self.pool is None else f", {self.pool.size} Ray executors") + ")")
            _record(s.history, s.offset, s.start, s.book, s.result)
            while True:
                # As many (template, candidate) pairs in flight as there are executors
                # (one without Ray): each is screened and, if it passes, tested on the
                # executor that screened it, and the next pick sees every result so far. Then
                # the tests put off, the best screening relative to its template's choice first.
                self._dispatch(s, pending, deferred)
                done = s.steps.next()
                if done is None:
                    break
                self._absorb(s, done, pending, deferred)
                self._report(s, "tune", len(pending))
                s.book.save(self.dir.book)
                _record(s.history, s.offset, s.start, s.book, s.result)
                self.dir.write_tune_history(s.history)
        except (KeyboardInterrupt, RuntimeError) as err:
            if not is_user_interrupt(err):
                raise
            s.result.interrupted = True
        finally:
            s.book.save(self.dir.book)
            _record(s.history, s.offset, s.start, s.book, s.result)
            self.dir.write_tune_history(s.history)
            s.store.close()
            s.con.close()
            if self.pool is not None:
                s.result.nodes = self.pool.summary()
        s.result.elapsed_s = time.perf_counter() - s.start
        self._report(s, "done", len(pending))
        return s.result

    def _baselined(self, s: _Session, n: int) -> None:
        s.baselined = n
        self._report(s, "baseline", 0)

    def _report(self, s: _Session, phase: str, to_screen: int) -> None:
        """Hand the progress callback where the run stands."""
        if self.progress is None:
            return
        book_ms, native_ms = _book_time(s.book)
        r = s.result
        self.progress(TuneProgress(phase, r.templates, s.baselined, r.screened, to_screen, r.tested, r.adopted,
                                   book_ms, native_ms, time.perf_counter() - s.start, self.config.budget_min * 60))

    def _resume(self) -> _Session:
        """Open what a run works on and read what earlier runs left: the book, the
        learning curve, the statistics, the store, and the origins' screening record."""
        cfg = self.config
        start = time.perf_counter()
        con = self.workload.connect()
        catalog = Catalog.from_connection(con)
        book = (PlanBook.load(self.dir.book, catalog.fingerprint) if self.dir.has_book()
                else PlanBook(catalog.fingerprint))
        book.meta.update({"workload": str(self.workload.root), "tune_instances": cfg.tune_instances,
                          "range_guard": cfg.range_guard})
        history = self.dir.read_tune_history()
        offset = history[-1]["elapsed_s"] if history else 0.0
        stats = DatabaseStats.load_or_build(con, catalog, self.dir.stats)
        store = ExperienceStore.open(self.dir.store)
        origins = OriginStats()
        for e in book.entries.values():  # what earlier runs learned
            for cid, ratio in e.screened.items():
                c = e.candidates.get(cid)
                if c is not None:
                    origins.update(c.origin, ratio, ratio < cfg.screen_below)
        optimizer = None
        if cfg.model:
            from lqo.optimizer import Optimizer  # torch only when a model guides the search

            optimizer = Optimizer.load(cfg.model, con)
        ctx = Trials(con, catalog, stats, store, book, cfg, optimizer)
        steps = LocalSteps(ctx) if self.pool is None else PoolSteps(self.pool, store, cfg, str(book.meta["workload"]))
        return _Session(start, start + cfg.budget_min * 60, con, book, history, offset, TuneResult(history=history),
                        store, random.Random(cfg.seed), origins, ctx, steps)

    def _queue(self, s: _Session, ready: list[TemplateInstances]) -> tuple[list[_Pair], list[_Pair]]:
        """The (template, candidate) pairs to screen, and the acceptance tests put off:
        candidates that screened as wins but were not tested (the bar was the template's
        adopted plan)."""
        cfg = self.config
        pending: list[_Pair] = []
        for t in ready:
            entry = s.book.entries[t.key]
            fresh = s.ctx.candidates(t, entry, random.Random(f"{cfg.seed}/{t.key}"))
            # combinations proposed by an earlier run and not screened before it stopped
            fresh += [c for c in entry.candidates.values() if c.origin in COMBINED and c not in fresh]
            pending += [(t, c) for c in fresh if c.id not in entry.screened]
        deferred = [(t, e.candidates[k]) for t in ready for e in [s.book.entries[t.key]]
                    for k, r in e.screened.items() if r < cfg.screen_below and k not in e.verdicts and k in e.candidates]
        return pending, deferred

    def _dispatch(self, s: _Session, pending: list[_Pair], deferred: list[_Pair]) -> None:
        """Submit pairs while executors are free and the budget lasts: the next pick by the
        exploration order, then the put-off tests, best relative screening first."""
        while s.steps.free() and (pending or deferred) and time.perf_counter() < s.deadline:
            if pending:
                t, c = pending.pop(pick(pending, s.book, s.origins, s.rng, s.ctx.predicted, self.config))
                s.steps.submit((t, c, True), f"tune/{t.key}/{c.id}", trial_step, t, s.book.entries[t.key], c)
            else:
                t, c = deferred.pop(min(range(len(deferred)), key=lambda k: relative(s.book, *deferred[k])))
                s.steps.submit((t, c, False), f"retest/{t.key}/{c.id}", retest_step, t, s.book.entries[t.key], c)

    def _absorb(self, s: _Session, done: Done, pending: list[_Pair], deferred: list[_Pair]) -> None:
        """Record one finished step in the book: its screening (and the combinations it
        proposes), its verdict, and the adoption a better verdict earns."""
        cfg = self.config
        t, c, screening = done.key
        if done.error is not None:  # its executor was lost twice: counted as not a win
            self.log(f"tune: {t.label}: {c.id} not tried: {done.error}")
            ratio, wrong, verdict = float("inf"), 0, None
        else:
            ratio, wrong, verdict = done.value
        if verdict is not None and done.node is not None:
            verdict = replace(verdict, node=done.node)  # paired rounds ran there, all of them
        entry = s.book.entries[t.key]
        if screening:
            s.result.screened += 1
            s.result.wrong += wrong
            entry.screened[c.id] = ratio
            s.origins.update(c.origin, ratio, ratio < cfg.screen_below)
            # parts that each helped, tried together (--rule-sets: sets grown where EXPLAIN shows a new plan)
            for extra in combinations(entry, c, partial(s.ctx.arm_plan, t) if cfg.rule_sets else None):
                entry.candidates.setdefault(extra.id, extra)
                pending.append((t, extra))
            if verdict is None and not wrong and ratio < cfg.screen_below:
                deferred.append((t, c))
        else:
            s.result.retested += 1
        if verdict is not None:
            s.result.tested += 1
            entry.verdicts[c.id] = verdict
            current = entry.verdicts.get(entry.choice)
            if verdict.accepted and (current is None or entry.choice == "native"
                                     or verdict.median_ratio < current.median_ratio):
                entry.adopt(c.id)
                s.result.adopted += 1
                self.log(f"tune: {t.label} adopts {c.id}: {verdict.median_ratio:.3f}x native "
                         f"(95% interval {verdict.ci_low:.3f}-{verdict.ci_high:.3f})")

    def _baselines(self, steps: Steps, templates: list[TemplateInstances], book: PlanBook, book_path: Path,
                   deadline: float, baselined: Callable[[int], None] = lambda n: None) -> list[TemplateInstances]:
        """Native runs of every template's tuning instances not measured yet (one step per
        template, as many at once as there are executors); the templates ready to try.
        ``baselined``: called with the number of templates done so far (measured now or
        by an earlier run, or failed) after each."""
        queue, ready, by_key = list(templates), [], {t.key: t for t in templates}
        done_n = 0
        while True:
            while steps.free() and queue and time.perf_counter() <= deadline:
                t = queue.pop(0)
                entry = book.entry(t.key, t.label, t.tune[0].sql)
                entry.instances, entry.held_out = [q.id for q in t.tune], [q.id for q in t.held_out]
                entry.ranges = LiteralRanges.build([template_key(q.sql) for q in t.tune]).to_json()
                if entry.native_ms:
                    ready.append(t)
                    done_n += 1
                    baselined(done_n)
                else:
                    steps.submit(t.key, f"baseline/{t.key}", baseline_step, t, entry)
            done = steps.next()
            if done is None:
                break
            entry = book.entries[done.key]
            if done.error is not None:
                entry.note = f"native runs not measured: {done.error}"
            else:
                fields = done.value
                entry.native_ms, entry.fingerprints = fields["native_ms"], fields["fingerprints"]
                entry.weight_ms, entry.note = fields["weight_ms"], fields["note"]
            book.save(book_path)
            if entry.native_ms:
                ready.append(by_key[done.key])
            else:  # failed as written: recorded, left native, the others go on
                self.log(f"tune: {entry.template}: {entry.note}; left native")
            done_n += 1
            baselined(done_n)
        order = {t.key: i for i, t in enumerate(templates)}
        return sorted(ready, key=lambda t: order[t.key])

    def _recheck(self, steps: Steps, templates: list[TemplateInstances], book: PlanBook, result: TuneResult) -> None:
        """Test again a verified choice whose recorded latencies (``Optimizer.load(...,
        record=True)``) drift above its verified figures; back to native if it fails."""
        feedback = read_feedback(self.dir.feedback)
        by_key = {t.key: t for t in templates}
        for e in book.entries.values():
            v = e.verdicts.get(e.choice)
            recs = feedback.get((e.key, e.choice), [])
            if (e.choice == "native" or v is None or v.median_ratio is None or len(recs) < 5 or e.key not in by_key
                    or not e.native_ms):
                continue
            expected = statistics.mean(e.native_ms.values()) * v.median_ratio
            if statistics.median(recs) <= DRIFT * expected:
                continue
            result.rechecked += 1
            steps.submit(e.key, f"recheck/{e.key}", accept_step, by_key[e.key], e, e.candidates[e.choice])
            done = steps.next()
            assert done is not None  # the step just submitted
            if done.error is not None:
                self.log(f"tune: {e.template}: re-check not run: {done.error}")
                continue
            verdict = done.value if done.node is None else replace(done.value, node=done.node)
            self.log(f"tune: {e.template}: served latency {statistics.median(recs):.1f} ms drifted above "
                     f"{DRIFT:g} x {expected:.1f} ms; re-check {'passes' if verdict.accepted else 'fails: ' + verdict.reason}")
            e.verdicts[e.choice] = verdict
            if not verdict.accepted:
                e.note = f"{e.choice} dropped after re-check: {verdict.reason}"
                e.adopt("native")


def _book_time(book: PlanBook) -> tuple[float, float]:
    """The tuning instances' time (ms) under the book's choices, and natively."""
    total = native = 0.0
    for e in book.entries.values():
        native += e.weight_ms
        total += e.weight_ms * e.adopted_ratio
    return total, native


def _record(history: list, offset: float, start: float, book: PlanBook, result: TuneResult) -> None:
    """One point of the learning curve: the tuning instances' time under the book."""
    total, native = _book_time(book)
    history.append({"elapsed_s": round(offset + time.perf_counter() - start, 2), "book_ms": round(total, 3),
                    "native_ms": round(native, 3), "screened": result.screened, "adopted": result.adopted})
