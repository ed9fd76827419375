"""The join trees behind a comparison's biggest wins and worst regression.

For each case, native's and lqo's tree of the block lqo changed most, with DuckDB's
estimated and actual rows per node (one profiled run of each plan); ``lqo.plots.tree_case``
draws one. ``lqo report`` shows them; a notebook can call them on their own.

>>> cmp = run_compare("data/tpcds-sf1", "runs/tpcds", split="test", repeats=3)  # doctest: +SKIP
>>> cases = tree_cases("data/tpcds-sf1", "runs/tpcds", cmp)                     # doctest: +SKIP
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from lqo.engine.profile import profile_json
from lqo.engine.settings import forced_settings
from lqo.trees.native import PNode, explain_json, read_native_trees
from lqo.trees.physical import profile_nodes
from lqo.trees.plan import Join, Leaf, Plan, Tree, tree_to_json
from lqo.workloads.workload import Workload


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
