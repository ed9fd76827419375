"""``lqo run WORKLOAD --plan native|random --repeat K``: execute and record."""

from __future__ import annotations

import argparse
import random
from typing import Any

from lqo.cli.options import add_repeat, add_seed, add_timeout
from lqo.cli.output import add_json_flag, emit, progress
from lqo.engine.failures import error_line
from lqo.engine.harness import Harness
from lqo.engine.interrupt import is_user_interrupt
from lqo.engine.run_result import median_latency
from lqo.errors import LqoError
from lqo.model_dir import STORE_FILE, workload_store
from lqo.sql.catalog import Catalog
from lqo.store.experience import ExperienceStore
from lqo.trees.query import prepare_named
from lqo.workloads.workload import Workload


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="execute a workload's queries natively or with random join trees and record the runs",
        description="Run every query of WORKLOAD K times with DuckDB's native plan, or with one random "
        "cross-product-free join tree per query (forced), and record the runs in the experience store.",
    )
    p.add_argument("workload", help="workload directory (with workload.toml)")
    p.add_argument("--plan", choices=["native", "random"], default="native", help="which plan to run (default native)")
    add_repeat(p, 1, "runs per query (default 1)")
    add_timeout(p)
    add_seed(p, "random seed for --plan random")
    p.add_argument("--store", help=f"experience store file (default WORKLOAD/{STORE_FILE})")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.timeout <= 0:
        raise LqoError("--repeat must be >= 1 and --timeout > 0")
    workload = Workload.load(args.workload)
    con = workload.connect()
    catalog = Catalog.from_connection(con)
    rng = random.Random(args.seed)
    harness = Harness(con, timeout_s=args.timeout)
    rows, interrupted = [], False
    try:
        # Bind every query first: a bad one fails the command before anything is written.
        prepared = {q.id: prepare_named(f"{q.id} ({q.path})", q.sql, con, catalog) for q in workload}
        store = ExperienceStore.open(args.store or workload_store(workload.root))  # BusyError if another writer has it
    except BaseException:
        con.close()
        raise
    with store:
        try:
            for q in progress(list(workload), total=len(workload), desc=f"run {args.plan}"):
                qk = store.add_query(q.sql, str(workload.database), workload.name, q.id, q.template)
                sql, forced, kind, plan_json, note = q.sql, False, "native", None, None
                if args.plan == "random":
                    pq = prepared[q.id]
                    plans = pq.random_plans(1, rng)
                    if plans:
                        sql, forced, kind, plan_json = pq.render(plans[0]), True, "random", plans[0].to_json()
                        note = str(plans[0])
                    else:
                        note = f"native: {pq.reason or 'no alternative tree'}"
                pk = store.add_plan(qk, kind, plan_json, sql if forced else None)
                runs = [harness.run(sql, forced=forced) for _ in range(args.repeat)]
                store.record_runs([(pk, r) for r in runs])
                # A run that failed (conversion error, out of memory, ...) is recorded
                # with its error; the query shows as failed, the others go on.
                error = next((error_line(r.error) for r in runs if r.error is not None), None)
                errors = sum(r.error is not None for r in runs)
                if error:
                    note = f"FAILED: {error}" if errors == len(runs) else f"{errors} of {len(runs)} runs failed: {error}"
                rows.append({
                    "id": q.id, "plan": kind, "median_ms": median_latency(runs),
                    "timeouts": sum(r.timed_out for r in runs), "errors": errors, "error": error, "note": note,
                })
        except (KeyboardInterrupt, RuntimeError) as err:
            if not is_user_interrupt(err):
                raise
            interrupted = True
        finally:
            con.close()
    total = sum(r["median_ms"] or 0 for r in rows)
    failed = sum(1 for r in rows if r["error"] and r["median_ms"] is None)
    text = "\n".join(
        [f"{'query':<10} {'plan':<7} {'median ms':>10}  note"]
        + [f"{r['id']:<10} {r['plan']:<7} {_ms(r['median_ms']):>10}  {(r['note'] or '')[:120]}" for r in rows]
        + [f"TOTAL {len(rows)} queries: {total:.0f} ms" + (f", {failed} failed (not in the total)" if failed else "")
           + (" (interrupted)" if interrupted else "")]
    )
    emit(args, text, {"queries": rows, "totals": {"queries": len(rows), "median_ms": total, "failed": failed,
                                                  "interrupted": interrupted}})
    return 130 if interrupted else 0


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"
