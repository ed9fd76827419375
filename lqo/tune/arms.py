"""Setting arms beyond single optimizer rules: DuckDB operator settings, and which arms
change a template's plan at all (one EXPLAIN each, no run).

A *settings arm* runs the text as written with a DuckDB operator setting changed for
the statement (``late_materialization_max_rows = 0``, ``merge_join_threshold``, ...):
a physical choice DuckDB makes by a fixed threshold. Like rule arms they force no
tree, every query is eligible, and results are DuckDB's own; they are screened and
accepted like any candidate. Such settings are instance-wide in lqo's use (set
``GLOBAL`` for the statement by :class:`lqo.engine.settings.RuleModes`, restored after).

An arm whose EXPLAIN equals native's runs native's plan, so it is not proposed
(:func:`plan_signature`: the physical plan as JSON with the estimates dropped), except
for settings that act only at run time (``RUNTIME_SETTINGS``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import duckdb

from lqo.book.book import Candidate, arm_id
from lqo.engine.settings import disabled_optimizers

# (setting, value): values away from DuckDB 1.5.5's defaults (in the comments). Measured
# on TPC-H / TPC-DS SF1 (docs/plan-book.md, Candidates; benchmarks/rule_sets.py): only
# perfect_ht_threshold = 20 won, on TPC-H q13 (0.82x native) and q15 (0.69x); the others
# never beat the placebo there, and are kept as cheap candidates the acceptance rule
# verifies (proposed only where EXPLAIN changes). perfect_ht_threshold 0 was 1.06x on
# q13 and 1.25x on q01; dynamic_or_filter_threshold = 1000 never won.
SETTING_ARMS: tuple[tuple[str, str], ...] = (
    ("late_materialization_max_rows", "0"),  # 50: no late materialization for a top-N
    ("merge_join_threshold", "0"),  # 1000: no merge join of small inputs
    ("nested_loop_join_threshold", "0"),  # 5: no nested-loop join of tiny inputs
    ("prefer_range_joins", "true"),  # false: range joins for mixed predicates
    # 12: perfect hash aggregates over group keys of up to 20 bits (a table of at most
    # 2^20 groups per thread: 24 and 32 were as fast on q13 / q15, with 16x-4096x the memory)
    ("perfect_ht_threshold", "20"),
    ("dynamic_or_filter_threshold", "0"),  # 50: no OR filters from hash join keys
)
# Settings that act while the query runs, invisible in EXPLAIN: always proposed.
RUNTIME_SETTINGS = frozenset({"dynamic_or_filter_threshold"})


def _drop_estimates(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_estimates(v) for k, v in node.items() if k != "Estimated Cardinality"}
    if isinstance(node, list):
        return [_drop_estimates(x) for x in node]
    return node


def plan_signature(con: duckdb.DuckDBPyConnection, sql: str, rules: Sequence[str] = (),
                   settings: Sequence[tuple[str, str]] = ()) -> str | None:
    """A hash of the physical plan DuckDB builds for ``sql`` with ``rules`` disabled and
    ``settings`` set (estimated cardinalities dropped: they do not change what runs);
    None where DuckDB does not plan it so.

    >>> con = duckdb.connect()
    >>> _ = con.execute("CREATE TABLE t AS SELECT range AS i FROM range(3)")
    >>> q = "SELECT * FROM t a, t b WHERE a.i < b.i"
    >>> plan_signature(con, q) == plan_signature(con, q, settings=(("nested_loop_join_threshold", "0"),))
    False
    """
    try:
        with disabled_optimizers(con, rules, settings):
            rows = con.execute("EXPLAIN (FORMAT JSON) " + sql).fetchall()
    except duckdb.Error:
        return None
    if not rows:
        return None
    try:
        plan = _drop_estimates(json.loads(rows[0][1]))
    except (TypeError, ValueError):
        return hashlib.sha1(str(rows[0][1]).encode()).hexdigest()
    return hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def setting_arms(con: duckdb.DuckDBPyConnection, sql: str, native: str | None = None) -> list[Candidate]:
    """The settings arms of ``SETTING_ARMS`` that change ``sql``'s plan (``native``: its
    native plan signature, if known), and those acting at run time."""
    if native is None:
        native = plan_signature(con, sql)
    out = []
    for name, value in SETTING_ARMS:
        pair = ((name, value),)
        if name not in RUNTIME_SETTINGS:
            sig = plan_signature(con, sql, settings=pair)
            if sig is None or sig == native:
                continue
        cid = arm_id((), pair)
        out.append(Candidate(cid, "arm", (), origin=cid, settings=pair))
    return out
