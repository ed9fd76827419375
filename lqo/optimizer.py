"""The learned optimizer: plan a query with a trained model, or keep DuckDB's plan.

``Optimizer.load(model_dir)`` reads a model directory written by ``lqo train``;
``optimizer.optimize(sql, con)`` runs the planning path (parse, join graph, DuckDB's
native trees, model-guided beam search, decision) and returns an ``Optimized`` whose
``execute()`` applies and restores the settings a forced plan needs. Native is kept
unless the model predicts a clear, confident gain; the reason is recorded.

>>> opt = Optimizer.load("runs/tpch")                     # doctest: +SKIP
>>> res = opt.optimize(sql, con)                          # doctest: +SKIP
>>> rows = res.execute(con)                               # doctest: +SKIP
>>> res.fallback or res.chosen                            # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import duckdb

from lqo.book.book import PlanBook
from lqo.book.serve import BookServer
from lqo.book.template import tokens
from lqo.decision import DecisionConfig, gate
from lqo.engine.settings import disabled_optimizers, forced_settings
from lqo.errors import InvalidSQLError, LqoError, MissingFileError, NotSelectError, SchemaMismatchError
from lqo.estimates.stats import DatabaseStats
from lqo.learn.feature_ranges import FeatureRanges
from lqo.learn.features import Featurizer
from lqo.learn.model_kinds import load_model
from lqo.learn.models import PlanModel
from lqo.model_dir import ModelDir
from lqo.optimized import Optimized
from lqo.search import SearchConfig, SearchResult, beam_search, star_plan
from lqo.sql.catalog import Catalog
from lqo.sql.syntax import describe_parser_error
from lqo.trees.native import explain_json, read_native_trees
from lqo.trees.plan import Plan
from lqo.trees.query import PreparedQuery, prepare
from lqo.triage import Triage

_SELECT = duckdb.StatementType.SELECT  # looked up once: the check runs on every first-seen text
SHARED_SUBPLAN_REASON = ("DuckDB computes a join shared by several blocks once (a common-subplan CTE); "
                         "the chosen tree would compute it per block")



class Optimizer:
    """A trained model with what it needs to plan: statistics, catalog, settings."""

    def __init__(self, model: PlanModel | None, featurizer: Featurizer | None, schema: str,
                 search: SearchConfig | None = None, decision: DecisionConfig | None = None,
                 cache_size: int = 1024, book: PlanBook | None = None, feedback: Path | None = None,
                 triage: Triage | None = None, ranges: FeatureRanges | None = None) -> None:
        self.model = model
        # A plan whose features lie outside what the model was trained on is not forced.
        self.ranges = ranges
        # First-seen texts are planned only where the predicted gain pays for planning.
        self.triage = triage
        self.featurizer = featurizer
        self.book = book
        # Known templates are served from the verified plan book before anything else.
        self._server = BookServer(book, self._render_full, feedback=feedback) if book is not None else None
        self.schema = schema
        self.search = search or SearchConfig()
        self.decision = decision or DecisionConfig()
        # Connections (cursors included) whose schema was checked; weak: a new connection
        # that reuses a dropped one's id is checked again.
        self._checked: weakref.WeakSet[duckdb.DuckDBPyConnection] = weakref.WeakSet()
        self._catalog: Catalog | None = None
        # Callers on several threads share the caches below (and the book server's).
        self._lock = threading.Lock()
        # Recurring workloads repeat query texts: keep their parsed graph and native
        # trees (the EXPLAIN) instead of redoing them per call.
        self._cache: OrderedDict[str, PreparedQuery] = OrderedDict()
        self._decisions: OrderedDict[str, Optimized] = OrderedDict()
        self._cache_size = cache_size

    def _learned(self) -> tuple[PlanModel, Featurizer]:
        """The model and its featurizer; ``LqoError`` for an optimizer that has a plan book only."""
        if self.model is None or self.featurizer is None:
            raise LqoError("this optimizer has a plan book only, no trained model")
        return self.model, self.featurizer

    # ----- persistence -----------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], con: duckdb.DuckDBPyConnection | None = None,
             record: bool = False) -> "Optimizer":
        """Load a model directory; with ``con``, check it was trained for that schema.
        With ``record``, executions of plans served from its plan book append their
        latency to its feedback file (``lqo tune`` re-checks drifting choices)."""
        md = ModelDir(path)
        root = md.root
        if not root.exists():
            raise MissingFileError(f"model not found: {root}")
        book = PlanBook.load(md.book) if md.has_book() else None
        if book is not None and not md.has_model():
            # A tuned plan book without a model: known templates from the book, the
            # rest run as written.
            opt = cls(None, None, book.schema, book=book, feedback=md.feedback if record else None)
            if con is not None:
                opt.check_schema(con)
            return opt
        missing = md.missing_model_files()
        if missing:
            raise MissingFileError(f"model directory {root} lacks {missing[0]} (not trained, or trained elsewhere)")
        config = md.read_config()
        model = load_model(md.model)
        stats = DatabaseStats.load(md.stats)
        featurizer = Featurizer(stats, model.vocabulary_ or None,
                                forced_flag=model.n_query_ == len(Featurizer.query_feature_names()))
        schema = model.schema_ or config.get("schema", "")
        if book is not None and book.schema and schema and book.schema != schema:
            raise SchemaMismatchError(f"{root}: the plan book and the model were made for different schemas")
        triage = Triage.from_json(config["triage"]) if config.get("triage") else None
        ranges = FeatureRanges.from_json(config["feature_ranges"]) if config.get("feature_ranges") else None
        opt = cls(model, featurizer, schema,
                  SearchConfig(**config.get("search", {})), DecisionConfig(**config.get("decision", {})), book=book,
                  feedback=md.feedback if record else None, triage=triage, ranges=ranges)
        if con is not None:
            opt.check_schema(con)
        return opt

    def save(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
        """Write the model, its statistics and settings (plus ``extra``) as a model directory."""
        md = ModelDir(path)
        model, featurizer = self._learned()
        md.root.mkdir(parents=True, exist_ok=True)
        model.save(md.model, vocabulary=featurizer.vocabulary, schema=self.schema)
        featurizer.stats.save(md.stats)
        config = {"schema": self.schema, "search": vars(self.search), "decision": vars(self.decision),
                  "triage": self.triage.to_json() if self.triage is not None else None,
                  "feature_ranges": self.ranges.to_json() if self.ranges is not None else None, **(extra or {})}
        md.write_config(config)

    def check_schema(self, con: duckdb.DuckDBPyConnection) -> Catalog:
        """The connection's catalog; ``SchemaMismatchError`` if the model was trained for another schema."""
        catalog = Catalog.from_connection(con)
        if self.schema and catalog.fingerprint != self.schema:
            raise SchemaMismatchError(
                f"model was trained for schema {self.schema}, this database has schema {catalog.fingerprint}"
            )
        with self._lock:
            self._checked.add(con)
            self._catalog = catalog
        return catalog

    def _check_once(self, con: duckdb.DuckDBPyConnection) -> None:
        if con not in self._checked:
            self.check_schema(con)

    # ----- planning --------------------------------------------------------------------
    def prepare(self, sql: str, con: duckdb.DuckDBPyConnection) -> PreparedQuery:
        """``sql`` parsed, with DuckDB's native trees (cached per text)."""
        self._check_once(con)
        with self._lock:
            pq = self._cache.get(sql)
            if pq is not None:
                self._cache.move_to_end(sql)
                return pq
        with disabled_optimizers(con, ()):  # DuckDB's own trees: never read under another thread's rules
            pq = prepare(sql, con, self._catalog, explain_unforceable=False)
        with self._lock:
            self._cache[sql] = pq
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pq

    def seeds(self, pq: PreparedQuery) -> list[Plan]:
        """Starting points besides native: the star-shaped plan from lqo's estimates."""
        return [star_plan(pq, self._learned()[1].estimator(pq.graph))]

    def scorer(self, pq: PreparedQuery, spread: dict[Plan, float] | None = None) -> Any:
        """Predicted latency (ms) of plans of ``pq``, batched: the search's scorer.

        With ``spread``, the ensemble's spread of each scored plan is recorded there too,
        so the decision needs no second pass over the model.
        """
        native = pq.native_plan  # the one candidate not forced: keeping it runs the text
        model, featurizer = self._learned()

        def score(plans: Any):
            ms, std = model.predict_with_uncertainty([featurizer.featurize(pq.graph, p, p != native) for p in plans])
            if spread is not None:
                spread.update(zip(plans, std.tolist()))
            return ms
        return score

    def optimize(self, sql: str, con: duckdb.DuckDBPyConnection) -> Optimized:
        """Plan ``sql``: the plan book's verified choice for a known template; else the
        model's best plan if confidently faster, else native.

        Whatever the model directory holds, a text that is not one read-only SELECT is
        refused (``InvalidSQLError``, ``NotSelectError``) before anything runs, and the
        schema of ``con`` is checked on its first call. A recurring query text is planned
        once: later calls return the cached decision (``planning_ms`` then is the cost of
        the look-up).
        """
        start = time.perf_counter()
        self._check_once(con)
        if self._server is not None:
            served = self._server.serve(sql, lambda text: checked_select(text, con))
            if served is not None:
                return served
        if self.model is None:
            return self._checked_as_written(
                Optimized.as_written(sql, "template not in the plan book: run as written", _ms(start)), con)
        with self._lock:
            cached = self._decisions.get(sql)
            if cached is not None:
                self._decisions.move_to_end(sql)
        if cached is not None:
            return dataclasses.replace(cached, planning_ms=_ms(start))
        search = self.search
        if self.triage is not None:
            verdict = self.triage.judge(sql)
            if not verdict.plan:
                result = self._checked_as_written(
                    Optimized.as_written(sql, verdict.reason, _ms(start), predicted_native_ms=verdict.native_ms), con)
                self._remember(sql, result)
                return result
            search = dataclasses.replace(search, time_budget_ms=self.triage.search_budget_ms(
                verdict.native_ms, search.time_budget_ms))
        result = self._plan(sql, con, start, search)
        self._remember(sql, result)
        return result

    def _remember(self, sql: str, result: Optimized) -> None:
        with self._lock:
            self._decisions[sql] = result
            if len(self._decisions) > self._cache_size:
                self._decisions.popitem(last=False)

    def _checked_as_written(self, res: Optimized, con: duckdb.DuckDBPyConnection) -> Optimized:
        """``res``, which runs its text as written (natively or under a setting arm), once
        DuckDB's parser has confirmed the text is one SELECT: the parse travels with it,
        so running it costs no second parse."""
        if res.statement is None:
            res.statement = checked_select(res.original_sql, con)
        return res

    def _render_full(self, sql: str, plan: Plan) -> str:
        """A verified plan rendered for a text whose literals do not fit the book's slots."""
        from lqo.sql.join_graph import build_query_graph
        from lqo.trees.render import render

        if self._catalog is None:  # pragma: no cover - optimize() checks the connection first
            raise LqoError("the optimizer has not seen a connection yet")
        return render(build_query_graph(sql, self._catalog), plan)

    def forget(self, sql: str | None = None) -> None:
        """Drop cached plans (of one query text, or all): the next call plans afresh."""
        if sql is None:
            self._cache.clear()
            self._decisions.clear()
        else:
            self._cache.pop(sql, None)
            self._decisions.pop(sql, None)

    def _plan(self, sql: str, con: duckdb.DuckDBPyConnection, start: float,
              search: SearchConfig | None = None) -> Optimized:
        pq = self.prepare(sql, con)
        if not pq.forceable:
            return Optimized.planned(sql, None, None, _ms(start), fallback=pq.reason)
        native = pq.native_plan
        if not pq.free_blocks:
            return Optimized.planned(sql, native, native, _ms(start), fallback="no block lqo may reorder")
        result, fallback = self.decide(pq, search)
        best, native_ms, best_ms = result.best, result.native_score, result.best_score
        forced_sql = None if fallback else pq.render(best)
        if forced_sql is not None and pq.native.shared_subplan and not _keeps_shared_subplan(con, pq, forced_sql):
            fallback = SHARED_SUBPLAN_REASON
        return Optimized.planned(sql, best, native, _ms(start), forced_sql=None if fallback else forced_sql,
                                 predicted_ms=best_ms, predicted_native_ms=native_ms, fallback=fallback or None,
                                 candidates=len(result.scored))

    def decide(self, pq: PreparedQuery, search: SearchConfig | None = None) -> tuple[SearchResult, str | None]:
        """Search plans of a forceable ``pq``; the fallback reason is None when the best
        plan should be forced, else why native is kept."""
        spread: dict[Plan, float] = {}
        result = beam_search(pq, self.scorer(pq, spread), search or self.search, seeds=self.seeds(pq))
        native = pq.native_plan
        fallback = gate(self.decision, best_is_native=result.best == native,
                        native_ms=result.native_score, best_ms=result.best_score,
                        native_std=spread[native], best_std=spread[result.best])
        if fallback is None and self.ranges is not None:
            outside = self.ranges.outside(self._learned()[1].featurize(pq.graph, result.best, True))
            if outside:
                fallback = f"unlike what the model was trained on: {outside}"
        return result, fallback

    def predict_latency_ms(self, sql: str, con: duckdb.DuckDBPyConnection) -> float:
        """Predicted latency of the query's native plan (for scheduling)."""
        pq = self.prepare(sql, con)
        if not pq.forceable:
            raise LqoError(f"cannot featurize this query: {pq.reason}")
        model, featurizer = self._learned()
        return float(model.predict([featurizer.featurize(pq.graph, pq.native_plan, False)])[0])


def optimize(sql: str, con: duckdb.DuckDBPyConnection, model: str | Path | Optimizer) -> Optimized:
    """Plan ``sql`` for ``con`` with a trained model (a directory or an ``Optimizer``).

    >>> res = lqo.optimize(sql, con, model="runs/tpch")  # doctest: +SKIP
    >>> rows = res.execute(con)                          # doctest: +SKIP
    """
    opt = model if isinstance(model, Optimizer) else _loaded(model, con)
    return opt.optimize(sql, con)


# ``optimize(sql, con, model=PATH)`` in a loop must not reload the directory per call
# (~9 ms): the last few directories loaded stay, each until one of its files changes.
_LOADED: OrderedDict[tuple[str, tuple[float, ...]], Optimizer] = OrderedDict()
_LOADED_LOCK = threading.Lock()


def _loaded(model: str | Path, con: duckdb.DuckDBPyConnection) -> Optimizer:
    root = Path(model).resolve()
    files = ModelDir(root)
    stamp = tuple(f.stat().st_mtime if f.is_file() else 0.0 for f in (files.book, files.model, files.config))
    key = (str(root), stamp)
    with _LOADED_LOCK:
        opt = _LOADED.get(key)
        if opt is not None:
            _LOADED.move_to_end(key)
            return opt
    opt = Optimizer.load(root, con)  # checks the schema of ``con`` on its first call, as every Optimizer
    with _LOADED_LOCK:
        _LOADED[key] = opt
        while len(_LOADED) > 4:
            _LOADED.popitem(last=False)
    return opt


def checked_select(sql: str, con: duckdb.DuckDBPyConnection) -> duckdb.Statement:
    """DuckDB's parse of ``sql``, if it is exactly one SELECT that cannot write; else
    ``InvalidSQLError`` or ``NotSelectError`` naming the problem. The one check of every
    text lqo runs as written."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.ParserException as err:
        raise InvalidSQLError(f"invalid SQL: {describe_parser_error(str(err), sql)}") from None
    if len(statements) != 1:
        raise InvalidSQLError(f"expected one SQL statement, got {len(statements)}")
    if statements[0].type != _SELECT:
        raise NotSelectError(f"not a SELECT query: {statements[0].type.name} statement")
    lowered = sql.lower()
    if ("nextval" in lowered or "setval" in lowered) and any(
            t[2].lower() in _WRITING_FUNCTIONS for t in tokens(sql) if not t[3]):
        raise NotSelectError("not a read-only SELECT: it advances a sequence (nextval/setval)")
    return statements[0]


_WRITING_FUNCTIONS = {"nextval", "setval"}


def _keeps_shared_subplan(con: duckdb.DuckDBPyConnection, pq: PreparedQuery, forced_sql: str) -> bool:
    """Whether DuckDB still shares a subplan between blocks in the forced plan: one
    EXPLAIN, paid only when forcing a query whose native plan shares one (losing it
    cost 1.1-1.8x on TPC-DS q61, q70, q83, q90)."""
    with forced_settings(con):
        return read_native_trees(pq.graph, explain_json(con, forced_sql)).shared_subplan


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000
