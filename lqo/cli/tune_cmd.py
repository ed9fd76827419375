"""``lqo tune WORKLOAD --budget MINUTES --out DIR`` and ``lqo book show DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from lqo.cli.options import add_model, add_out, add_seed
from lqo.cli.output import add_json_flag, emit
from lqo.cli.ray_opts import add_ray_flags, format_nodes, ray_pool
from lqo.errors import LqoError
from lqo.model_dir import BOOK_FILE

if TYPE_CHECKING:
    from lqo.tune.tuner import TuneProgress


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="explore plans per query template and adopt only those measured faster than native",
        description="Spend the budget on candidate plans per template (setting arms, star, build-side flips, "
        "random trees, and combinations of two that each screened faster than native), screened once and then tested "
        "in paired, interleaved rounds against the native text on "
        "the template's tuning instances. A plan is adopted only when the acceptance rule holds; the result is a "
        f"plan book (DIR/{BOOK_FILE}) that lqo serves by template look-up. Rerun to resume; Ctrl-C keeps what was "
        "measured.",
    )
    p.add_argument("workload", nargs="?", help="workload directory (several instances per template: lqo workload "
                   "vary, lqo workload import); or none, with --log")
    p.add_argument("--log", metavar="LOG", help="tune from an application's query log instead (a capture .jsonl of "
                   "lqo.connect(..., capture=PATH), a .sql file or a directory): imported into DIR/workload first")
    p.add_argument("--db", metavar="DB", help="with --log: the DuckDB database the logged queries ran on")
    p.add_argument("--budget", type=float, required=True, metavar="MINUTES", help="wall-clock minutes for this run")
    add_out(p, f"model directory: {BOOK_FILE}, experience, history", required=True, metavar="DIR")
    p.add_argument("--tune-instances", type=int, default=3,
                   help="instances per template tuned on; the others are held out (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="paired rounds per instance in an acceptance test (default 5)")
    p.add_argument("--strategy", choices=["learned", "random"], default="learned",
                   help="what to try next: learned from screening so far, or uniformly random (default learned)")
    add_model(p, "a model trained by `lqo train`: its ensemble scores tree candidates (spread = uncertainty) "
              "and its search proposes one more per template", metavar="DIR")
    add_seed(p, None)
    p.add_argument("--range-guard", action="store_true",
                   help="serve the plan of a constant-sensitive template (tuning instances' native times more "
                   "than 2x apart) only inside the literal ranges it was verified on (off by default: measured "
                   "to cost more wins than it saved; docs/plan-book.md)")
    p.add_argument("--rule-sets", action="store_true",
                   help="also grow pairs of disabled rules that screened faster than native into sets of up to 4 "
                   "rules, where EXPLAIN shows a new plan (off by default: measured not to pay at SF1; "
                   "docs/plan-book.md)")
    p.add_argument("--perturbed", type=int, default=0, metavar="N",
                   help="also try up to N trees per template from lqo's cost-based search with its join estimates "
                   "scaled by 10^-3..10^3 (off by default: measured to win on a few templates, not as a family on "
                   "TPC-DS; docs/plan-book.md)")
    add_ray_flags(p)
    add_json_flag(p)
    p.set_defaults(handler=run)

    b = sub.add_parser("book", help="inspect a plan book")
    bsub = b.add_subparsers(dest="book_command", metavar="COMMAND")
    bsub.required = True
    show = bsub.add_parser("show", help="per template: choice, measured ratio and interval, instances, when verified")
    show.add_argument("model", metavar="MODEL", help=f"model directory (or a {BOOK_FILE})")
    add_json_flag(show)
    show.set_defaults(handler=run_show)


def run(args: argparse.Namespace) -> int:
    from lqo.tune.inputs import TuneConfig
    from lqo.tune.tuner import Tuner
    from lqo.workloads.workload import Workload

    if not args.budget > 0:
        raise LqoError("--budget must be > 0 minutes")
    config = TuneConfig(budget_min=args.budget, tune_instances=args.tune_instances, rounds=args.rounds,
                        strategy=args.strategy, model=args.model, seed=args.seed,
                        range_guard=args.range_guard, rule_sets=args.rule_sets, perturbed_trees=args.perturbed)
    config.validate()  # before a query log is imported or a workload read
    workload = _log_workload(args) if args.log else Workload.load(_workload_arg(args))
    bar = TuneBar()
    log = (lambda line: None) if args.json else bar.write
    try:
        with ray_pool(args, workload.database, quiet=args.json) as pool:
            result = Tuner(workload, args.out, config, log=log, pool=pool, progress=bar).run()
    finally:
        bar.close()
    last = result.history[-1] if result.history else {}
    ratio = last["book_ms"] / last["native_ms"] if last.get("native_ms") else None
    text = (f"tuned {result.templates} templates in {result.elapsed_s:.0f} s: {result.screened} candidates screened, "
            f"{result.tested} tested, {result.adopted} adopted, {result.wrong} wrong results; tuning instances under "
            f"the book: {'-' if ratio is None else f'{ratio:.3f}x'} native" + (" (interrupted)" if result.interrupted else "")
            + f"\nbook: {args.out}/{BOOK_FILE}" + ("\n" + format_nodes(result.nodes) if result.nodes else ""))
    payload = {"out": args.out, "templates": result.templates, "screened": result.screened,
               "tested": result.tested, "adopted": result.adopted, "wrong": result.wrong,
               "elapsed_s": round(result.elapsed_s, 1), "interrupted": result.interrupted,
               "tuning_ratio": ratio}
    if result.nodes is not None:
        payload["nodes"] = result.nodes
    emit(args, text, payload)
    return 130 if result.interrupted else 0


class TuneBar:
    """``lqo tune``'s progress on stderr, as lqo's other commands show theirs
    (:func:`lqo.cli.output.progress`): a bar on a terminal (templates baselined, then
    candidates screened, with tests, adoptions, the tuning instances' time under the book
    and the budget left), else the same as a plain line every ``every_s`` seconds."""

    def __init__(self, every_s: float = 10.0, tty: bool | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = every_s
        self.bar: Any = None
        self.phase = ""
        self.last = time.perf_counter()

    def __call__(self, p: TuneProgress) -> None:
        if p.phase == "done":
            self.close()
            return
        n, total, noun = ((p.baselined, p.templates, "templates baselined") if p.phase == "baseline"
                          else (p.screened, p.screened + p.to_screen, "candidates screened"))
        ratio = "-" if p.ratio is None else f"{p.ratio:.3f}x"
        left = f"{int(p.left_s) // 60}:{int(p.left_s) % 60:02d}"
        rest = f"{p.tested} tested, {p.adopted} adopted, book {ratio} native, {left} of the budget left"
        if not self.tty:
            now = time.perf_counter()
            if now - self.last >= self.every_s:
                self.last = now
                print(f"tune: {n}/{total} {noun}, {rest}", file=sys.stderr, flush=True)
            return
        if self.bar is None or p.phase != self.phase:
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, desc="tune", file=sys.stderr, leave=False, dynamic_ncols=True,
                            bar_format="{desc} |{bar:20}| {n_fmt}/{total_fmt} " + noun + "{postfix}")
        self.phase = p.phase
        self.bar.total, self.bar.n = total, n
        self.bar.set_postfix_str(rest, refresh=False)
        self.bar.refresh()

    def write(self, line: str) -> None:
        """A log line on stdout, above the bar if one is drawn."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def close(self) -> None:
        """Take the bar off the terminal."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _workload_arg(args: argparse.Namespace) -> str:
    if not args.workload:
        raise LqoError("name a workload directory, or a query log with --log LOG --db DB")
    if args.db:
        raise LqoError("--db goes with --log (a workload names its own database)")
    return str(args.workload)


def _log_workload(args: argparse.Namespace) -> Any:
    """``--log``: the query log imported into ``DIR/workload`` (a new model directory only:
    a book tuned before keeps the instance ids of the workload it was tuned on)."""
    from lqo.model_dir import ModelDir
    from lqo.tune.log_import import import_log

    if args.workload:
        raise LqoError("give a workload directory or --log, not both")
    if not args.db:
        raise LqoError("--log needs --db DB: the database the logged queries ran on")
    out = ModelDir(args.out)
    if out.has_book():
        from lqo.book.book import PlanBook

        tuned_on = PlanBook.load(out.book).meta.get("workload") or out.workload
        raise LqoError(f"{args.out} already holds a plan book; tune it again on its workload "
                       f"(lqo tune {tuned_on} --out {args.out}) or import the new log into another directory")
    res = import_log(args.log, args.db, out.workload, force=out.workload.exists())
    if not args.json:
        skipped = sum(res.skipped.values())
        print(f"imported {res.kept} of {res.statements} statements of {args.log}: {len(res.workload)} queries in "
              f"{len(res.workload.templates)} templates" + (f" ({skipped} skipped: lqo workload import shows why)"
                                                            if skipped else "") + f", workload {out.workload}",
              file=sys.stderr, flush=True)
    return res.workload


def run_show(args: argparse.Namespace) -> int:
    from lqo.book.book import PlanBook
    from lqo.book.ranges import guard_for

    book = PlanBook.load(args.model)
    rows: list[dict[str, Any]] = []
    for e in sorted(book.entries.values(), key=lambda e: e.template):
        v = e.verdicts.get(e.choice)
        rows.append({"template": e.template, "key": e.key, "choice": e.choice,
                     "ratio": None if v is None or v.median_ratio is None else round(v.median_ratio, 4),
                     "interval": (None if v is None or v.ci_low is None or v.ci_high is None
                                  else [round(v.ci_low, 4), round(v.ci_high, 4)]),
                     "instances": len(e.instances), "held_out": len(e.held_out),
                     "screened": len(e.screened), "tested": len(e.verdicts), "verified_at": e.verified_at,
                     "in_verified_ranges_only": guard_for(book, e) is not None, "note": e.note})
    w = max([34, *(len(r["choice"]) for r in rows)])  # combinations name two parts
    tw = max([10, *(len(r["template"]) for r in rows)])  # imported templates are named after their tables
    lines = [f"{'template':<{tw}} {'choice':<{w}} {'ratio':>7} {'95% interval':>15} {'inst':>4} {'tried':>5}  verified"]
    for r in rows:
        iv = "-" if r["interval"] is None else f"{r['interval'][0]:.3f}-{r['interval'][1]:.3f}"
        lines.append(f"{r['template']:<{tw}} {r['choice']:<{w}} {'-' if r['ratio'] is None else format(r['ratio'], '.3f'):>7} "
                     f"{iv:>15} {r['instances']:>4} {r['screened']:>5}  {r['verified_at'] or '-'}"
                     + ("  (constant-sensitive: served inside its verified literal ranges only)"
                        if r["in_verified_ranges_only"] else ""))
    adopted = sum(1 for r in rows if r["choice"] != "native")
    lines.append(f"{len(rows)} templates, {adopted} with a verified plan other than native")
    emit(args, "\n".join(lines), {"schema": book.schema, "templates": rows})
    return 0
