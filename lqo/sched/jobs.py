"""What a policy may know about a waiting query, computed once per distinct query.

- ``est_cost``: the sum of DuckDB's estimated cardinalities over the join and scan
  operators of its physical plan (``EXPLAIN``): the SJF-on-estimates key.
- ``graph``: that physical plan as a graph for the learned policy: one vertex per
  operator (operator id from ``OPS``, log estimated cardinality), edges child -> parent.
- ``lat_ms``: measured latency per thread count (a thread profile, ``profile.py``).
- ``pred_ms``: the optimizer model's predicted latency.
- ``known_ms`` / ``known_source``: the best one-thread latency lqo knows before running
  the query and where it came from (``knowledge.LatencyKnowledge``: measured, template,
  book, predicted, estimate). Unlike ``lat_ms`` (the truth the simulator and the oracle
  run on) it is what a deployable policy may read.

Features come from the original query text even when a forced plan is executed: with
join ordering disabled DuckDB's join estimates are meaningless.

>>> jobs = build_jobs(stream, needs={"est", "graph"})  # doctest: +SKIP
>>> jobs[0].f.est_cost > 0                             # doctest: +SKIP
True
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from lqo.errors import LqoError
from lqo.sched.knowledge import LatencyKnowledge, book_latencies, template_id
from lqo.sched.stream import Stream, StreamQuery
from lqo.trees.native import JOIN_OPERATORS, PNode, explain_json

# Physical operators DuckDB 1.5 shows in EXPLAIN; anything else maps to OTHER. The order
# is part of a learned policy's checkpoint (its vocabulary): append, never reorder.
OPS: tuple[str, ...] = (
    "OTHER", "PROJECTION", "SEQ_SCAN", "HASH_JOIN", "FILTER", "HASH_GROUP_BY", "TOP_N",
    "UNGROUPED_AGGREGATE", "CTE_SCAN", "CTE", "CROSS_PRODUCT", "DELIM_SCAN", "WINDOW",
    "COLUMN_DATA_SCAN", "UNION", "ORDER_BY", "LEFT_DELIM_JOIN", "PERFECT_HASH_GROUP_BY",
    "RIGHT_DELIM_JOIN", "DUMMY_SCAN", "NESTED_LOOP_JOIN", "STREAMING_LIMIT", "LIMIT",
    "PIECEWISE_MERGE_JOIN", "IE_JOIN", "BLOCKWISE_NL_JOIN", "STREAMING_WINDOW", "EMPTY_RESULT",
    "CHUNK_SCAN", "TABLE_SCAN", "RECURSIVE_CTE", "RECURSIVE_CTE_SCAN", "INOUT_FUNCTION",
)
_OP_ID = {name: i for i, name in enumerate(OPS)}
# Some TPC-DS estimates overflow to 2^64; cap so one node cannot swamp a sum or a feature.
_EST_CAP = 1e15


@dataclass
class PlanGraph:
    """A physical plan as arrays: operator ids, log1p(estimate) per vertex, edges child->parent."""

    ops: list[int]
    log_est: list[float]
    edges: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.ops)


@dataclass
class QueryFeatures:
    """Everything known about one distinct query (see module docs)."""

    key: str
    est_cost: float | None = None
    graph: PlanGraph | None = None
    lat_ms: dict[int, float] = field(default_factory=dict)
    pred_ms: float | None = None
    known_ms: float | None = None
    known_source: str | None = None
    known_speedup: float | None = None

    def latency_s(self, threads: int) -> float:
        """Measured latency at ``threads``; for an unmeasured count, the one measured at the
        largest count below it (no speed-up assumed), else at the smallest count above."""
        if not self.lat_ms:
            raise LqoError(f"no thread profile for query {self.key}: run `lqo profile-threads` first")
        if threads in self.lat_ms:
            return self.lat_ms[threads] / 1000.0
        below = [t for t in self.lat_ms if t <= threads]
        return self.lat_ms[max(below) if below else min(self.lat_ms)] / 1000.0

    def parallelism(self, threads: int) -> float:
        """Cores the query keeps busy with ``threads``: its measured speed-up over one
        thread, clipped to [1, threads]. Imperfect scaling leaves room for others."""
        if threads <= 1 or not self.lat_ms:
            return 1.0
        return min(float(threads), max(1.0, self.latency_s(1) / self.latency_s(threads)))


@dataclass
class Job:
    """One arrival plus what is known about its query."""

    q: StreamQuery
    f: QueryFeatures

    @property
    def idx(self) -> int:
        """The query's index in its stream."""
        return self.q.idx

    @property
    def arrival_s(self) -> float:
        """When the query arrives (seconds from the stream's start)."""
        return self.q.arrival_s


def plan_graph(roots: Sequence[PNode]) -> PlanGraph:
    """The operator graph of an EXPLAIN plan (several roots: CTEs and the main plan).

    >>> g = plan_graph([PNode("PROJECTION", {}, [PNode("SEQ_SCAN", {"Estimated Cardinality": "99"}, [])])])
    >>> g.ops, [round(x, 2) for x in g.log_est], g.edges
    ([1, 2], [0.0, 4.61], [(1, 0)])
    """
    ops: list[int] = []
    est: list[float] = []
    edges: list[tuple[int, int]] = []

    def walk(node: PNode, parent: int) -> None:
        me = len(ops)
        ops.append(_OP_ID.get(node.name, 0))
        e = node.estimate
        est.append(math.log1p(min(max(e or 0.0, 0.0), _EST_CAP)))
        if parent >= 0:
            edges.append((me, parent))
        for child in node.children:
            walk(child, me)

    for root in roots:
        walk(root, -1)
    return PlanGraph(ops, est, edges)


def estimated_cost(roots: Sequence[PNode]) -> float:
    """Sum of estimated cardinalities of join and scan operators (each capped at 1e15).

    >>> estimated_cost([PNode("HASH_JOIN", {"Estimated Cardinality": "10"},
    ...                       [PNode("SEQ_SCAN", {"Estimated Cardinality": "5"}, [])])])
    15.0
    """
    total = 0.0

    def walk(node: PNode) -> None:
        nonlocal total
        if node.name in JOIN_OPERATORS or node.name.endswith("_SCAN"):
            total += min(max(node.estimate or 0.0, 0.0), _EST_CAP)
        for child in node.children:
            walk(child)

    for root in roots:
        walk(root)
    return total


def _predictor(model: Any):
    """``model.predict_latency_ms`` as f(sql, con): accepts ``(sql)`` and ``(sql, con)`` forms."""
    fn = getattr(model, "predict_latency_ms", None)
    if fn is None:
        raise LqoError(f"model {type(model).__name__} has no predict_latency_ms(sql)")
    try:
        n = len([p for p in inspect.signature(fn).parameters.values()
                 if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        n = 1
    return (lambda sql, con: fn(sql, con)) if n >= 2 else (lambda sql, con: fn(sql))


def build_jobs(
    stream: Stream | Iterable[StreamQuery],
    needs: Iterable[str] = (),
    profile: Any = None,
    model: Any = None,
    knowledge: Any = None,
) -> list[Job]:
    """Jobs for a stream's queries, computing only the features in ``needs``
    (``est``, ``graph``, ``lat``, ``pred``, ``known``). ``profile`` is a ``ThreadProfile``;
    ``model`` anything with ``predict_latency_ms``; ``knowledge`` a ``LatencyKnowledge``
    (``known`` without it: nothing is known, every query falls to its estimate).
    Opens each database read-only for EXPLAIN.

    A query the model cannot predict (``LqoError``) gets the median of the others'
    predictions: neutral in an SJF order rather than first or last.
    """
    needs = set(needs)
    if "known" in needs:
        needs.add("est")  # the last resort of the knowledge
    queries = list(stream)
    predict = _predictor(model) if "pred" in needs and model is not None else None
    if "pred" in needs and predict is None:
        raise LqoError("this policy needs the optimizer's model (--model) for predicted latencies")
    feats = _query_features(queries, needs, profile, predict)
    if "lat" in needs and profile is not None:
        missing = sorted({f.key for f in feats.values() if not f.lat_ms})
        if missing:
            raise LqoError(f"the thread profile has no latencies for {len(missing)} queries "
                           f"(e.g. {missing[0]}): run `lqo profile-threads` on their workload")
    if predict is not None:
        known = sorted(f.pred_ms for f in feats.values() if f.pred_ms is not None)
        fill = known[len(known) // 2] if known else 1.0
        for f in feats.values():
            if f.pred_ms is None:
                f.pred_ms = fill
    if "known" in needs:
        _know(queries, feats, knowledge)
    return [Job(q, feats[q.query_key]) for q in queries]



def _query_features(queries: Sequence[StreamQuery], needs: set[str], profile: Any,
                    predict: Callable[[str, Any], float] | None) -> dict[str, QueryFeatures]:
    """Per distinct query: profiled latencies, DuckDB's estimate and plan graph (one
    EXPLAIN on a read-only connection per database), and the model's prediction."""
    from lqo.engine.db import connect_read_only

    feats: dict[str, QueryFeatures] = {}
    cons: dict[str, Any] = {}
    try:
        for q in queries:
            qk = q.query_key
            if qk in feats:
                continue
            f = feats[qk] = QueryFeatures(q.key)
            if "lat" in needs and profile is not None:
                f.lat_ms = dict(profile.get(qk))
            if needs & {"est", "graph", "pred"}:
                con = cons.get(q.database)
                if con is None:
                    con = cons[q.database] = connect_read_only(q.database)
                if needs & {"est", "graph"}:
                    roots = explain_json(con, q.sql)
                    f.est_cost = estimated_cost(roots)
                    f.graph = plan_graph(roots)
                if predict is not None:
                    try:
                        f.pred_ms = float(predict(q.sql, con))
                    except LqoError:
                        f.pred_ms = None
    finally:
        for con in cons.values():
            con.close()
    return feats


def _know(queries: Sequence[StreamQuery], feats: dict[str, QueryFeatures], knowledge: Any) -> None:
    """Fill ``known_ms``/``known_source``; a query no source knows gets the median of the
    known ones (neutral in an order), with source ``none``."""
    knowledge = knowledge if knowledge is not None else LatencyKnowledge()
    for q in queries:
        f = feats[q.query_key]
        if f.known_source is None:
            tid = template_id(q.sql, q.database)
            f.known_ms, f.known_source = knowledge.lookup(q.query_key, tid, f.pred_ms, f.est_cost)
            f.known_speedup = knowledge.speedup(q.query_key, tid)
    known = sorted(f.known_ms for f in feats.values() if f.known_ms is not None)
    for f in feats.values():
        if f.known_ms is None:
            f.known_ms, f.known_source = (known[len(known) // 2] if known else 1000.0), "none"


def knowledge_rows(jobs: Sequence[Job]) -> dict[str, tuple]:
    """Per distinct query of ``jobs`` (with ``lat`` and ``est``), the row
    ``LatencyKnowledge.from_latencies`` reads: (query key, template id, one-thread ms,
    estimated cost, speed-up at the most threads profiled)."""
    rows: dict[str, tuple] = {}
    for j in jobs:
        if j.q.query_key not in rows:
            rows[j.q.query_key] = (j.q.query_key, template_id(j.q.sql, j.q.database), j.f.latency_s(1) * 1000.0,
                                   j.f.est_cost, j.f.parallelism(max(j.f.lat_ms)))
    return rows


def build_knowledge(queries: Iterable, profile: Any, book: str | None = None) -> LatencyKnowledge:
    """What lqo knows after running ``queries`` (``StreamQuery``-like: ``sql``,
    ``database``, ``query_key``): their profiled one-thread latencies, their templates'
    medians, the estimate line over them (one ``EXPLAIN`` each), and a tuned model's plan
    book (``book``: a model directory or book file) for templates none of them share.
    Queries the profile does not cover are skipped."""
    qs = [q for q in queries if profile is not None and profile.get(q.query_key)]
    rows = knowledge_rows(build_jobs(qs, {"est", "lat"}, profile)) if qs else {}
    return LatencyKnowledge.from_latencies(rows.values(), book_latencies(book, profile) if book else None)
