"""``lqo explain "SQL" --db FILE``: join graph, native trees, estimated vs actual rows."""

from __future__ import annotations

import argparse
import json
from typing import Any

import duckdb

from lqo.cli.output import add_json_flag, emit
from lqo.engine.db import connect_read_only
from lqo.engine.failures import RESULT_CONVERSION_ERRORS, runtime_error
from lqo.engine.interrupt import is_user_interrupt
from lqo.engine.settings import profiling_settings
from lqo.trees.native import PNode, read_native_trees
from lqo.trees.plan import joins
from lqo.trees.query import PreparedQuery, prepare

# A query that binds and plans and then fails while running (mypy reads no starred
# tuple in an except clause, so the classes are one named tuple).
_RUN_ERRORS: tuple[type[Exception], ...] = (duckdb.Error, *RESULT_CONVERSION_ERRORS)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="show a query's join graph, DuckDB's native join trees and per-join cardinalities",
        description="Parse SQL into lqo's join graph (relations, key classes, filters, residuals), "
        "read DuckDB's native join tree for every block, run the query once with profiling "
        "(read-only) and print estimated vs actual rows per join.",
    )
    p.add_argument("sql", help="a SELECT query (quote it)")
    p.add_argument("--db", required=True, help="DuckDB database file (opened read-only)")
    p.add_argument("--no-run", action="store_true", help="do not execute the query (no actual cardinalities)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    con = connect_read_only(args.db)
    try:
        pq = prepare(args.sql, con)
        actuals = None
        if not args.no_run:
            with profiling_settings(con):
                try:
                    con.execute(pq.sql).fetchall()
                except RuntimeError as err:
                    if is_user_interrupt(err):
                        con.interrupt()  # DuckDB may still be running the query
                        raise KeyboardInterrupt from err
                    raise
                except _RUN_ERRORS as err:
                    if is_user_interrupt(err):
                        raise KeyboardInterrupt from err
                    # Bound and planned, failed while running (conversion, overflow,
                    # out of memory, ...): one line naming the query, exit 2.
                    raise runtime_error(err, pq.sql) from err
                profile = json.loads(con.get_profiling_information(format="json"))
            actuals = read_native_trees(pq.graph, [PNode.from_json(c) for c in profile.get("children", [])])
    finally:
        con.close()
    payload = explain_payload(pq, actuals)
    emit(args, format_explain(payload), payload)
    return 0


def explain_payload(pq: PreparedQuery, actuals: Any) -> dict:
    blocks = []
    for b in pq.graph.blocks:
        entry: dict[str, Any] = {
            "block": b.index,
            "unsafe": b.unsafe,
            "relations": [{"alias": r.alias, "kind": r.kind, "name": r.name} for r in b.relations],
            "key_classes": [[str(c) for c in cls] for cls in b.classes],
            "filters": {a: [f.sql(dialect="duckdb") for f in fs] for a, fs in b.filters.items()},
            "residuals": [r.expr.sql(dialect="duckdb") for r in b.residuals],
            # relations a forced plan renders with their subquery / correlated predicates inside
            "placed_inside": sorted(set(b.placed) | b.correlated),
            "native_tree": None,
            "joins": [],
        }
        tree = pq.native.trees.get(b.index)
        if tree is not None:
            entry["native_tree"] = str(tree)
            est = pq.native.estimates.get(b.index, {})
            act = (actuals.actuals.get(b.index, {}) if actuals else {}) or {}
            for j in joins(tree):
                e, a = est.get(j.rels), act.get(j.rels)
                q_err = None
                if e and a is not None:
                    q_err = round(max(e, max(a, 1)) / max(min(e, max(a, 1)), 1), 2)
                entry["joins"].append({"join": str(j), "estimated": e, "actual": a, "q_error": q_err})
        elif b.index in pq.native.missing:
            entry["native_tree_missing"] = pq.native.missing[b.index]
        blocks.append(entry)
    return {"sql": pq.sql, "forceable": pq.forceable, "reason": pq.reason,
            "shared_subplan": pq.native.shared_subplan, "blocks": blocks}


def format_explain(p: dict) -> str:
    out = [f"forceable: {'yes' if p['forceable'] else 'no (' + str(p['reason']) + ')'}"]
    if p.get("shared_subplan"):
        out.append("shared subplan: DuckDB computes a join shared by several blocks once (a forced plan may lose it)")
    for b in p["blocks"]:
        out.append(f"\nblock {b['block']}" + (f"  [left as written: {b['unsafe']}]" if b["unsafe"] else ""))
        out.append("  relations: " + ", ".join(
            f"{r['alias']} ({r['kind']}{' ' + r['name'] if r['name'] and r['name'] != r['alias'] else ''})"
            for r in b["relations"]))
        for cls in b["key_classes"]:
            out.append("  keys: " + " = ".join(cls))
        for alias, fs in b["filters"].items():
            out.append(f"  filter {alias}: " + " AND ".join(fs))
        for r in b["residuals"]:
            out.append(f"  residual: {r}")
        if b["placed_inside"]:
            out.append("  placed inside (subquery or correlated predicates): " + ", ".join(b["placed_inside"]))
        if b["native_tree"]:
            out.append(f"  native tree (probe build): {b['native_tree']}")
            out.append(f"  {'join':<60} {'estimated':>12} {'actual':>12} {'q-error':>8}")
            for j in b["joins"]:
                est = "-" if j["estimated"] is None else f"{j['estimated']:.0f}"
                act = "-" if j["actual"] is None else str(j["actual"])
                qe = "-" if j["q_error"] is None else str(j["q_error"])
                out.append(f"  {j['join'][:60]:<60} {est:>12} {act:>12} {qe:>8}")
        elif b.get("native_tree_missing"):
            out.append(f"  native tree: not found ({b['native_tree_missing']})")
    return "\n".join(out)
