"""``lqo optimize "SQL" --db FILE --model M``: the plan lqo would run, and its SQL."""

from __future__ import annotations

import argparse
from typing import Any

from lqo.cli.options import add_model
from lqo.cli.output import add_json_flag, emit
from lqo.engine.db import connect_read_only


def register(sub: Any) -> None:
    p = sub.add_parser(
        "optimize",
        help="plan one query with a trained model and print the chosen plan and its SQL",
        description="Plan SQL with a trained model (lqo train): a known template is served from the "
        "model directory's plan book; otherwise the model's triage first judges from the text whether "
        "planning is likely to pay (if not, the query runs as written, with the reason), then "
        "model-guided beam search over join trees and the decision: lqo's plan if the model predicts a "
        "confident gain within what it was trained on, else DuckDB's native plan with the reason. Prints "
        "the plan and the SQL to run (with the settings it needs).",
    )
    p.add_argument("sql", help="a SELECT query (quote it)")
    p.add_argument("--db", required=True, help="DuckDB database file (opened read-only)")
    add_model(p, "model directory written by lqo train", required=True)
    p.add_argument("--no-triage", action="store_true",
                   help="plan the query even where the model's first stage predicts that planning costs "
                        "more than it is likely to save (by default such a query runs as written)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # torch is imported only when a command needs it: the CLI starts fast.
    from lqo.optimizer import Optimizer
    con = connect_read_only(args.db)
    try:
        opt = Optimizer.load(args.model, con)
        if args.no_triage:
            opt.triage = None
        res = opt.optimize(args.sql, con)
    finally:
        con.close()
    lines = [
        f"native plan:  {res.native or '-'}",
        f"lqo plan:     {res.chosen or '-'}",
        f"decision:     {'native (' + res.fallback + ')' if res.fallback else 'lqo plan'}",
        f"predicted:    lqo {_fmt(res.predicted_ms)} ms, native {_fmt(res.predicted_native_ms)} ms",
        f"planning:     {res.planning_ms:.2f} ms ({res.candidates} plans scored)",
    ]
    if res.rules or res.settings:  # a forced tree, or a setting arm's rules and settings
        sets = [f"SET disabled_optimizers='{','.join(res.rules)}';"] if res.rules else []
        lines.append("run with:     " + " ".join(sets + [f"SET GLOBAL {n} = '{v}';" for n, v in res.settings]))
    lines.append(res.sql)
    emit(args, "\n".join(lines), res.to_json())
    return 0


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}"
