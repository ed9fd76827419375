"""Experience -> training samples: every executed plan of a query with its latency.

A sample is one plan of one query with the median of its runs (a timed-out run counts
as its timeout: a lower bound, so bad plans stay bad). Plans marked wrong are dropped. The
native plan run as written and the same tree forced are separate samples (``forced``).
Samples come from lqo's own experience store and, read-only, from any other store
(for example the workload's, filled by ``lqo explore``).

>>> samples = collect_samples([store_path], prepared)  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lqo.trees.plan import Plan
from lqo.trees.query import PreparedQuery


@dataclass
class Sample:
    """One measured plan of a query: its median latency over ``n_runs`` runs."""

    query_id: str
    plan: Plan
    latency_ms: float
    n_runs: int
    timed_out: bool
    forced: bool = True  # False: the native plan run as written (DuckDB's optimizer on)


# One row per plan of the given query texts: median censored latency over its runs.
_SAMPLES_SQL = """
SELECT q.sql, p.kind, p.plan_json,
       median(CASE WHEN r.timed_out THEN greatest(r.latency_ms, coalesce(r.timeout_ms, 0))
                   ELSE r.latency_ms END) AS ms,
       count(*) AS n, bool_and(r.timed_out) AS all_timed_out
FROM runs r JOIN plans p USING (plan_key) JOIN queries q ON q.query_key = p.query_key
WHERE r.error IS NULL AND p.plan_key NOT IN (SELECT plan_key FROM wrong_plans)
GROUP BY ALL
"""


def collect_samples(sources: list, prepared: dict[str, PreparedQuery]) -> list[Sample]:
    """Samples for the queries in ``prepared`` (id -> PreparedQuery), matched by SQL text.

    ``sources`` are experience stores: open ``ExperienceStore`` objects (read through
    their own connection) or paths of other stores (opened read-only, skipped if busy).
    """
    by_sql = {pq.sql: (qid, pq) for qid, pq in prepared.items()}
    merged: dict[tuple[str, Plan, bool], list[tuple[float, int, bool]]] = {}  # (query, plan, forced)
    for source in sources:
        rows = source.con.execute(_SAMPLES_SQL).fetchall() if hasattr(source, "con") else _read(source)
        for sql, kind, plan_json, ms, n, all_to in rows:
            hit = by_sql.get(sql)
            if hit is None or ms is None:
                continue
            qid, pq = hit
            plan = _plan_of(pq, kind, plan_json)
            # The native plan run as written and DuckDB's own tree forced are two samples:
            # forcing costs 1.09x median on TPC-DS SF1 by itself (14x on q06).
            if plan is not None:
                key = (qid, plan, plan_json is not None)
                merged.setdefault(key, []).append((float(ms), int(n), bool(all_to)))
    out = []
    for (qid, plan, forced), parts in merged.items():
        out.append(Sample(qid, plan, statistics.median(p[0] for p in parts), sum(p[1] for p in parts),
                          all(p[2] for p in parts), forced))
    return out


def _read(path: Path) -> list[tuple]:
    if not Path(path).is_file():
        return []
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return []  # held by a writer right now: its runs join the next round
    try:
        return con.execute(_SAMPLES_SQL).fetchall()
    except duckdb.CatalogException:
        return []  # not an experience store
    finally:
        con.close()


def _plan_of(pq: PreparedQuery, kind: str, plan_json: str | None) -> Plan | None:
    if plan_json is None:  # a native run: DuckDB's own trees
        return pq.native_plan if pq.forceable else None
    try:
        plan = Plan.from_json(plan_json)
    except (ValueError, KeyError):
        return None
    blocks = {b.index: b for b in pq.graph.blocks}
    for index, tree in plan.trees:
        b = blocks.get(index)
        if b is None or sorted(tree.rels) != sorted(b.aliases):
            return None  # recorded against another version of the query
    return plan
