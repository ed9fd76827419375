"""The measuring steps of ``lqo tune``: baseline, candidates, screening, acceptance.

Every run goes through the harness (timeouts, result fingerprints) and is recorded in
the tuning directory's experience store; the steps decide nothing about order, which is
:mod:`lqo.tune.tuner`'s job.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import partial
from typing import Any, Callable

from lqo.book.book import AcceptanceVerdict, BookEntry, Candidate, PlanBook
from lqo.book.slots import SlotRendering
from lqo.book.template import template_key
from lqo.engine.failures import error_line
from lqo.engine.harness import run_interleaved
from lqo.engine.profile import profile_json
from lqo.engine.run_result import median_latency
from lqo.errors import LqoError, PlanError
from lqo.estimates.cardinality import Estimator
from lqo.estimates.stats import DatabaseStats
from lqo.search import neighbours, small_block_plans, star_plan
from lqo.sql.catalog import Catalog
from lqo.sql.join_graph import build_query_graph
from lqo.sql.relations import limit_in_from
from lqo.store.recorder import RunRecorder
from lqo.trees.dp import dp_plan, perturbation_plans, perturbed_plans, profiled_cards
from lqo.trees.native import read_native_trees
from lqo.trees.physical import profile_nodes
from lqo.trees.plan import Plan
from lqo.trees.query import prepare
from lqo.trees.render import render
from lqo.tune.accept import judge
from lqo.tune.arms import plan_signature, setting_arms
from lqo.tune.inputs import TemplateInstances, TuneConfig
from lqo.tune.rewrite_arms import rewrite_candidates, rewrite_text
from lqo.workloads.workload import Query

# DuckDB optimizer rules whose removal won on TPC-DS SF1 (see docs/duckdb-plan-control.md).
ARMS: tuple[str, ...] = ("join_filter_pushdown", "build_side_probe_side", "join_order",
                         "compressed_materialization", "cte_inlining")
# Rules a forced tree still leaves on (forcing disables join_order and build_side_probe_side).
TREE_ARMS: tuple[str, ...] = ("join_filter_pushdown", "compressed_materialization", "cte_inlining")
MAX_SMALL_BLOCK_TREES = 12  # every tree of a small block, at most this many per template
COMBINE_BELOW = 1.0  # both parts must have screened below this to be tried together
# Forcing takes DuckDB's join estimates away and compressed materialization then puts its
# projections above probe-side scans, where they stop runtime join filters (docs/cold-path.md:
# q73 1.24x -> 1.00x, q54 1.27x -> 0.86x with it off; 8 other queries slower). So a tree that
# screened near native is also tried with that rule off, whatever the rule does unforced.
RETRY_TREE_RULE = "compressed_materialization"
RETRY_TREE_BELOW = 1.10
COMBINED = frozenset({"arm-pair", "tree+arm", "arm-set"})  # origins of the candidates ``combinations`` makes
# Rule sets (AutoSteer-style; ``lqo tune --rule-sets``, off by default): a pair or set of
# rules that screened below native grows by one more rule, up to MAX_SET_RULES, where its
# EXPLAIN differs from every arm's plan tried on the template: first the ARMS whose single
# arm screened below native, then SET_RULES, rules never tried alone. Measured
# (docs/plan-book.md, Candidates; benchmarks/rule_sets.py), one template of 47 at SF1
# gained over the best pair: TPC-DS q27, {build_side_probe_side, join_filter_pushdown}
# 0.53x native, {build_side_probe_side, join_order, statistics_propagation, unused_columns}
# 0.49x; in lqo tune on q27 no set was adopted (a single arm, 0.53x, was verified first).
SET_RULES: tuple[str, ...] = ("unused_columns", "statistics_propagation", "expression_rewriter", "top_n",
                              "column_lifetime")
MAX_SET_RULES = 4
GROW_PER_SET = 3  # grown sets proposed per set that screened below native
# Perturbed-cardinality trees (``lqo tune --perturbed N``, off by default): lqo's DP over its
# own estimates with join estimates scaled by 10^k, k in -3..3, one join at a time and in this
# many random draws (lqo.trees.dp.perturbation_plans). Measured (docs/plan-book.md, Candidates;
# benchmarks/perturbed_plans.py): re-measured beyond the best current candidate on TPC-H SF1
# q10 (0.54x native against 0.66x), q02, and TPC-DS SF1 q31, q91, q23 (6-8%); as a family on
# TPC-DS no better than a placebo, at up to 24 more trees to screen per template.
PERTURB_DRAWS = 16
# A screening run is one cold run, noisier than a verdict's median: a candidate is tested
# against a template's current choice unless it screened this much slower than that choice.
BEAT_SLACK = 1.10


class Trials:
    """What the tuning steps share: connection, catalog, statistics, store, book.

    ``store`` is the experience store, or a remote step's journal; ``stats`` (lqo's
    statistics, for the estimated trees among the candidates) is None where a step only
    measures candidates proposed already (a remote step).
    """

    def __init__(self, con: Any, catalog: Catalog, stats: DatabaseStats | None, store: RunRecorder,
                 book: PlanBook, config: TuneConfig, optimizer: Any = None) -> None:
        self.con, self.catalog, self.stats, self.store, self.book, self.config = con, catalog, stats, store, book, config
        self.optimizer = optimizer
        # (template key, candidate id) -> (predicted gain over native, ensemble spread)
        self.predicted: dict[tuple[str, str], tuple[float, float]] = {}
        self._plans: dict[tuple[str, tuple[str, ...]], str | None] = {}  # (template, rules) -> EXPLAIN signature

    def arm_plan(self, t: TemplateInstances, rules: tuple[str, ...]) -> str | None:
        """The signature of the plan DuckDB builds for ``t``'s first tuning instance with
        ``rules`` disabled (one EXPLAIN, remembered); None where it does not plan."""
        key = (t.key, tuple(sorted(rules)))
        if key not in self._plans:
            self._plans[key] = plan_signature(self.con, t.tune[0].sql, key[1])
        return self._plans[key]

    def _record(self, q: Query, kind: str, plan_json: Any, sql: str | None, runs: Any) -> None:
        qk = self.store.add_query(q.sql, str(self.book.meta.get("workload", "")), None, q.id, q.template)
        pk = self.store.add_plan(qk, kind, plan_json, sql)
        self.store.record_runs([(pk, r) for r in runs])

    def baseline(self, t: TemplateInstances, entry: BookEntry) -> None:
        """Native runs of every tuning instance: medians, fingerprints and the template's weight."""
        for q in t.tune:
            runs = run_interleaved(self.con, [(q.sql, False)], repeats=3, warmup=1)[0]
            self._record(q, "native", None, None, runs)
            ok = [r for r in runs if r.ok]
            if not ok:
                entry.note = f"native run of {q.id} failed: {error_line(runs[-1].error) if runs else 'no run'}"
                continue
            ms, fingerprint = median_latency(ok), ok[0].fingerprint
            if ms is None or fingerprint is None:  # an ok run has both; kept honest for the type
                continue
            entry.native_ms[q.id] = ms
            entry.fingerprints[q.id] = fingerprint
        # The template's share of the workload: its mean native time x how often it runs
        # (every instance's weight, held-out ones included; 1 each unless from a query log).
        times_run = sum(q.weight for q in t.tune + t.held_out)
        entry.weight_ms = sum(entry.native_ms.values()) / len(entry.native_ms) * times_run if entry.native_ms else 0.0

    def candidates(self, t: TemplateInstances, entry: BookEntry, rng: random.Random) -> list[Candidate]:
        """Every candidate of ``t``, each recorded in ``entry.candidates`` (an adopted
        choice must be loadable from the book); none when the native text failed."""
        if not entry.native_ms:
            return []
        out = self._candidates(t, entry, rng)
        for c in out:
            entry.candidates.setdefault(c.id, c)
        return out

    def _candidates(self, t: TemplateInstances, entry: BookEntry, rng: random.Random) -> list[Candidate]:
        arms = ARMS
        if _limit_in_from(t.tune[0].sql):  # see relations.LIMIT_REASON: build sides must stay DuckDB's
            arms = tuple(a for a in ARMS if a not in ("build_side_probe_side", "join_order"))
        out = [Candidate(f"arm:{rule}", "arm", (rule,), origin=f"arm:{rule}") for rule in arms]
        native_sig = plan_signature(self.con, t.tune[0].sql)
        out += setting_arms(self.con, t.tune[0].sql, native_sig)  # those that change its plan (one EXPLAIN each)
        out += rewrite_candidates(self.con, self.catalog, t.tune[0].sql, native_sig)  # texts DuckDB does not write
        try:
            pq = prepare(t.tune[0].sql, self.con, self.catalog)
        except LqoError as err:
            entry.note = f"no trees (not planned: {err}); setting arms only"
            return out
        if not pq.forceable or not pq.free_blocks:
            entry.note = f"no trees ({pq.reason or 'no block lqo may reorder'}); setting arms only"
            return out  # arms need no tree: every query is eligible
        native = pq.native_plan
        plans: list[tuple[str, Plan]] = []
        if self.stats is None:
            raise ValueError("candidates need lqo's statistics: this Trials only measures")
        est = Estimator(self.stats, pq.graph)
        plans.append(("star", star_plan(pq, est)))
        # Cost-based trees (lqo's estimates; then the counts a profiled native run recorded).
        plans.append(("dp", dp_plan(native, pq.free_blocks, lambda b: partial(est.join_rows, b))))
        actual = self._profiled_cards(t, entry, pq) if self.config.true_cards else None
        if actual is not None:
            plans.append(("truecard", dp_plan(native, pq.free_blocks, lambda b: profiled_cards(
                b, partial(est.join_rows, b), actual.get(b.index, {})))))
        moves = neighbours(native, pq.free_blocks)
        rng.shuffle(moves)
        plans += [("flip", p) for p in moves[: self.config.moves]]
        small = small_block_plans(native, pq.free_blocks, self.config.exhaustive_relations)
        plans += [("small", p) for p in rng.sample(small, min(len(small), MAX_SMALL_BLOCK_TREES))]
        plans += [("random", p) for p in pq.random_plans(self.config.random_trees, rng)]
        if self.config.perturbed_trees:  # lqo tune --perturbed N: off by default (docs/plan-book.md)
            found = perturbation_plans(native, pq.free_blocks, lambda b: partial(est.join_rows, b), PERTURB_DRAWS, rng)
            plans += [("perturbed", p) for p in perturbed_plans(found, [native, *(p for _, p in plans)],
                                                                self.config.perturbed_trees)]
        scores = None
        if self.optimizer is not None:
            spread: dict[Plan, float] = {}
            result, _ = self.optimizer.decide(pq)
            plans.insert(0, ("model", result.best))
            scorer = self.optimizer.scorer(pq, spread)
            everything = [native] + [p for _, p in plans]
            scores = dict(zip(everything, scorer(everything).tolist()))
        seen = {native}
        for origin, plan in plans:
            if plan in seen:
                continue
            seen.add(plan)
            try:
                slots = SlotRendering.build(t.tune[0].sql, self.catalog, plan).to_json()
            except LqoError:
                slots = None
            cid = f"tree:{plan.key[:12]}"
            out.append(Candidate(cid, "tree", (), plan.to_json(), slots, origin))
            if scores is not None and scores[native] > 0:
                self.predicted[(t.key, cid)] = (1.0 - scores[plan] / scores[native], spread.get(plan, 0.0))
        return out

    def _profiled_cards(self, t: TemplateInstances, entry: BookEntry, pq: Any) -> dict | None:
        """Per block, the cardinalities a profiled native run of the first tuning instance
        recorded (relation set -> rows), or None if it timed out. Runtime join filters are
        off for this run: with them a probe-side scan reports the rows they let through,
        not the rows its own filters keep."""
        q = t.tune[0]
        timeout_s = max(1.0, 3 * entry.native_ms.get(q.id, 1000.0) / 1000)
        roots = profile_nodes(profile_json(self.con, q.sql, timeout_s=timeout_s, disabled=("join_filter_pushdown",)))
        return None if roots is None else read_native_trees(pq.graph, roots).actuals

    def _variant(self, c: Candidate, q: Query) -> tuple[str, bool, tuple[str, ...], tuple[tuple[str, str], ...]]:
        return variant(c, q.sql, self.catalog)

    def screen(self, t: TemplateInstances, entry: BookEntry, c: Candidate) -> tuple[float, int]:
        """Ratio of one run of ``c`` on the first tuning instance to its native median
        (inf when cut at the native latency or failed); 1 wrong result -> (inf, 1)."""
        q = t.tune[0]
        native_ms = entry.native_ms.get(q.id)
        if native_ms is None:
            return float("inf"), 0
        try:
            variant = self._variant(c, q)
        except LqoError:  # a rewrite that does not apply to this instance's text
            return float("inf"), 0
        timeout_s = max(0.05, native_ms / 1000)
        r = run_interleaved(self.con, [variant], repeats=1, warmup=0, timeout_s=timeout_s)[0][-1]
        self._record(q, c.kind, recorded_plan(c), variant[0] if variant[1] else None, [r])
        if r.ok and r.fingerprint != entry.fingerprints.get(q.id):
            return float("inf"), 1
        if not r.ok:
            return float("inf"), 0
        return r.latency_ms / native_ms, 0

    def accept(self, t: TemplateInstances, entry: BookEntry, c: Candidate) -> AcceptanceVerdict:
        """Paired, interleaved rounds of ``c`` against native on every tuning instance, judged."""
        pairs = {}
        failed = None
        for q in t.tune:
            if q.id not in entry.native_ms:
                continue
            try:
                variant = self._variant(c, q)
            except LqoError as err:
                failed = f"no text for {q.id}: {err}"
                break
            timeout_s = max(0.2, 3 * entry.native_ms[q.id] / 1000)
            native_runs, cand_runs = run_interleaved(self.con, [(q.sql, False), variant], repeats=self.config.rounds,
                                                     warmup=1, timeout_s=timeout_s)
            self._record(q, "native", None, None, native_runs)
            self._record(q, c.kind, recorded_plan(c), variant[0] if variant[1] else None, cand_runs)
            if any(not r.ok for r in cand_runs) or len(cand_runs) < len(native_runs):
                failed = f"failed or timed out on {q.id}"
                break
            if any(r.fingerprint != entry.fingerprints.get(q.id) for r in cand_runs):
                failed = f"wrong result on {q.id}"
                break
            pairs[q.id] = [(n.latency_ms, x.latency_ms) for n, x in zip(native_runs, cand_runs)]
        return judge(pairs, self.config.rule, failed)


def combinations(entry: BookEntry, c: Candidate,
                 plan: Callable[[tuple[str, ...]], str | None] | None = None) -> list[Candidate]:
    """Candidates that pair ``c``, just screened, with what already screened well on its
    template: two rules disabled together (``arm:a,b``), or a tree run with one more rule
    off (``tree:<key>+<rule>``). Only parts that each screened below ``COMBINE_BELOW``
    are paired, so a template grows combinations only where single changes already help;
    ones tried or proposed before are not proposed again. With ``plan`` (rules -> the
    template's EXPLAIN signature under them), a pair or set of rules that screened below
    ``COMBINE_BELOW`` also grows by one rule (``grow_rule_set``).

    >>> e = BookEntry("k", "q1", "SELECT 1")
    >>> a, b = (Candidate(f"arm:{r}", "arm", (r,), origin=f"arm:{r}") for r in ARMS[:2])
    >>> e.candidates.update({a.id: a, b.id: b}); e.screened.update({a.id: 0.9, b.id: 0.97})
    >>> [x.id for x in combinations(e, b)]
    ['arm:build_side_probe_side,join_filter_pushdown']
    >>> e.screened[b.id] = 1.2  # slower than native alone: nothing to pair it with
    >>> combinations(e, b), combinations(e, a)
    ([], [])
    >>> t = Candidate("tree:ab12", "tree", plan="{}", origin="star")
    >>> e.candidates[t.id] = t; e.screened[t.id] = 1.05  # near native: retried unestimated
    >>> [(x.id, x.disabled) for x in combinations(e, t)]
    [('tree:ab12+compressed_materialization', ('compressed_materialization',))]
    """
    ratio = entry.screened.get(c.id, float("inf"))
    out: list[Candidate] = []
    if c.kind == "tree" and not c.disabled and ratio < RETRY_TREE_BELOW:
        retry = replace(c, id=f"{c.id}+{RETRY_TREE_RULE}", disabled=(RETRY_TREE_RULE,), origin="tree+arm")
        if retry.id not in entry.candidates and retry.id not in entry.screened:
            out.append(retry)
    if ratio >= COMBINE_BELOW or c.kind not in ("arm", "tree"):
        return out
    good = [entry.candidates[k] for k, r in entry.screened.items()
            if r < COMBINE_BELOW and k != c.id and k in entry.candidates]
    for other in good:
        arm, tree = (c, other) if c.kind == "arm" else (other, c)
        if arm.kind != "arm" or len(arm.disabled) != 1:
            continue
        if tree.kind == "arm" and len(tree.disabled) == 1:  # two single-rule arms
            rules = tuple(sorted({*arm.disabled, *tree.disabled}))
            new = Candidate("arm:" + ",".join(rules), "arm", rules, origin="arm-pair")
        elif tree.kind == "tree" and not tree.disabled and arm.disabled[0] in TREE_ARMS:
            new = replace(tree, id=f"{tree.id}+{arm.disabled[0]}", disabled=arm.disabled, origin="tree+arm")
        else:
            continue
        if new.id not in entry.candidates and new.id not in entry.screened and all(x.id != new.id for x in out):
            out.append(new)
    if plan is not None:
        out += grow_rule_set(entry, c, plan)
    return out


def grow_rule_set(entry: BookEntry, c: Candidate, plan: Callable[[tuple[str, ...]], str | None]) -> list[Candidate]:
    """Rule sets one rule larger than ``c``, an arm of two or more rules that screened below
    ``COMBINE_BELOW``: the rule from the ARMS whose single arm screened below it (best
    first), then from ``SET_RULES``; a grown set is proposed only where its plan (``plan``:
    rules -> EXPLAIN signature) differs from native's and from every arm of the template
    so far (so from each of its subsets tried), at most ``GROW_PER_SET`` of them.

    >>> e = BookEntry("k", "q1", "SELECT 1")
    >>> pair = Candidate("arm:build_side_probe_side,join_order", "arm", ("build_side_probe_side", "join_order"))
    >>> e.candidates[pair.id] = pair; e.screened[pair.id] = 0.6
    >>> same = ("build_side_probe_side", "join_order", "statistics_propagation")  # the pair's plan again
    >>> plan = lambda rules: ",".join(pair.disabled if rules == same else rules)
    >>> [x.id for x in grow_rule_set(e, pair, plan)]  # doctest: +NORMALIZE_WHITESPACE
    ['arm:build_side_probe_side,join_order,unused_columns',
     'arm:build_side_probe_side,expression_rewriter,join_order',
     'arm:build_side_probe_side,join_order,top_n']
    """
    if (c.kind != "arm" or c.settings or not 2 <= len(c.disabled) < MAX_SET_RULES
            or entry.screened.get(c.id, float("inf")) >= COMBINE_BELOW):
        return []
    singles = sorted((r, a.disabled[0]) for k, r in entry.screened.items()
                     if r < COMBINE_BELOW and (a := entry.candidates.get(k)) is not None
                     and a.kind == "arm" and len(a.disabled) == 1 and not a.settings)
    pool = [rule for _, rule in singles] + [r for r in SET_RULES if r not in ARMS]
    seen = {plan(())} | {plan(tuple(sorted(a.disabled))) for a in entry.candidates.values()
                         if a.kind == "arm" and not a.settings and a.disabled}
    out: list[Candidate] = []
    for rule in dict.fromkeys(pool):
        if rule in c.disabled:
            continue
        rules = tuple(sorted({*c.disabled, rule}))
        cid = "arm:" + ",".join(rules)
        if cid in entry.candidates or cid in entry.screened:
            continue
        sig = plan(rules)
        if sig is None or sig in seen:
            continue
        seen.add(sig)
        out.append(Candidate(cid, "arm", rules, origin="arm-set"))
        if len(out) >= GROW_PER_SET:
            break
    return out


def acceptance_bar(entry: BookEntry, screen_below: float) -> float:
    """The screening ratio below which a candidate earns an acceptance test: ``screen_below``,
    or lower once the template has adopted a plan, since a candidate is adopted only if it
    beats that plan, and one that screened well above it will not (the test would cost
    ``2 x rounds`` runs per tuning instance to learn so).

    >>> e = BookEntry("k", "q1", "SELECT 1")
    >>> acceptance_bar(e, 0.95)
    0.95
    >>> e.verdicts["arm:x"] = AcceptanceVerdict(True, "accepted", median_ratio=0.6); e.adopt("arm:x")
    >>> round(acceptance_bar(e, 0.95), 3)
    0.66
    """
    return min(screen_below, entry.adopted_ratio * BEAT_SLACK)


def recorded_plan(c: Candidate) -> Any:
    """What the experience store keeps as the candidate's plan: a tree's JSON; for an arm,
    or a tree run with rules off, a record no Plan parser takes for a plain tree (training
    reads only plain trees: the extra rule changes what the tree's runs mean); a settings
    arm's record names its settings."""
    if c.kind == "tree" and not c.disabled and not c.settings:
        return c.plan
    if c.kind == "rewrite":
        return {"rewrite": c.id.removeprefix("rewrite:")}
    out: dict[str, Any] = {"arm": list(c.disabled)} if c.kind == "arm" else {"tree": c.plan, "arm": list(c.disabled)}
    if c.settings:
        out["settings"] = dict(c.settings)
    return out


def _limit_in_from(sql: str) -> bool:
    import sqlglot

    try:
        return limit_in_from(sqlglot.parse_one(sql, read="duckdb"))
    except sqlglot.errors.ParseError:
        return True  # unknown shape: keep only the arms that leave build sides alone


def variant(c: Candidate, sql: str, catalog: Catalog) -> tuple[str, bool, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """How to run candidate ``c`` for the instance ``sql``: ``(text, forced, disabled
    rules, settings)``, the form ``run_interleaved`` takes. A tree is filled from its slot
    rendering where the instance's slot shape fits, else rendered for this text."""
    if c.kind == "arm":
        return (sql, False, c.disabled, c.settings)
    if c.kind == "rewrite":
        return (rewrite_text(c, sql, catalog), False, (), ())
    if c.slots is not None:
        key = template_key(sql)
        filled = SlotRendering.from_json(c.slots).fill(key.literals, key.shape)
        if filled is not None:
            return (filled, True, c.disabled, c.settings)
    if c.plan is None:
        raise PlanError(f"candidate {c.id} is a tree without a plan")
    return (render(build_query_graph(sql, catalog), Plan.from_json(c.plan)), True, c.disabled, c.settings)
