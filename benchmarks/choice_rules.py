"""Choice rules that might hold on instances never tuned, evaluated offline on held-out runs.

    python benchmarks/choice_rules.py RESULTS.json [RESULTS2.json ..] --json OUT.json

RESULTS.json is ``benchmarks/plan_book.py``'s output: per held-out instance, native's
median, the served plan's, and the median of every candidate of its template that earned
an acceptance test (``candidate_ms``: measured in the same interleaved rounds; None where
it failed, timed out or gave another result), with the ones the rule verified named
(``verified``). Nothing is run: this reads those figures.

The tuning-side figures of each verified plan (its per-instance ratios) are not in those
files, so a rule is judged by cross-validation over the held-out instances themselves:
per template, for each of its held-out instances, the rule chooses on the *other*
held-out instances (what more tuning instances would have shown) and is scored on this
one, so no instance both chooses and scores. Execution time only (look-up time left out),
as a ratio of totals to native's:

- ``single``: what the book served (its one verified choice, measured in those rounds);
- ``confirm<m>``: the book's choice, kept only if it ran at most ``m`` x native on every
  other held-out instance (the choice judged on more instances), else native;
- ``minimax_verified``: among native and the verified plans, the one whose worst ratio
  over the other instances is lowest;
- ``total_verified``: among native and the verified plans, the lowest total over the others;
- ``margin<m>_verified``: among the verified plans that ran at most ``m`` x native on every
  other instance, the lowest worst ratio; native where none does;
- the same three over every tested candidate, verified or not (``_tested``): a looser
  acceptance judged on more instances;
- ceilings known only after the fact: ``template_best_verified`` (the best one option per
  template among native and the verified plans, on these instances: no rule that picks
  one of those per template, from whatever figures, does better), ``template_best_tested``
  (the same among every tested candidate),
  ``best_verified`` (per instance), ``oracle`` (per instance, every tested candidate).

Also counts the instances each rule serves above 1.10x native.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

Ratios = dict[str, list[float]]  # option -> its ratio to native on each choosing instance
Rule = Callable[[str, list[str], list[str], Ratios], str]  # (choice, verified, tested, ratios) -> option


def _ms(row: dict, option: str) -> float | None:
    return row["native_ms"] if option == "native" else row["candidate_ms"].get(option)


def _lowest(options: list[str], ratios: Ratios, key: Callable[[list[float]], float]) -> str:
    ok = [o for o in options if o in ratios]
    return min(ok, key=lambda o: (key(ratios[o]), o != "native")) if ok else "native"


def confirm(m: float) -> Rule:
    return lambda choice, verified, tested, r: choice if choice in r and max(r[choice]) <= m else "native"


def minimax(pool: str) -> Rule:
    return lambda choice, verified, tested, r: _lowest(["native", *(verified if pool == "verified" else tested)], r, max)


def total(pool: str) -> Rule:
    return lambda choice, verified, tested, r: _lowest(["native", *(verified if pool == "verified" else tested)], r, sum)


def margin(m: float, pool: str) -> Rule:
    def rule(choice: str, verified: list[str], tested: list[str], r: Ratios) -> str:
        good = [o for o in (verified if pool == "verified" else tested) if o in r and max(r[o]) <= m]
        return _lowest(good, r, max) if good else "native"
    return rule


RULES: dict[str, Rule] = {
    "confirm1.00": confirm(1.00), "confirm0.95": confirm(0.95), "confirm1.05": confirm(1.05),
    "minimax_verified": minimax("verified"), "total_verified": total("verified"),
    "margin0.95_verified": margin(0.95, "verified"), "margin0.90_verified": margin(0.90, "verified"),
    "minimax_tested": minimax("tested"), "total_tested": total("tested"),
    "margin0.95_tested": margin(0.95, "tested"), "margin0.90_tested": margin(0.90, "tested"),
}


def evaluate(rows: list[dict]) -> dict:
    """Every rule's ratio to native over ``rows`` (one book's held-out instances)."""
    by_t: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_t[r["template"]].append(r)
    tot: dict[str, float] = defaultdict(float)
    above: dict[str, int] = defaultdict(int)
    changed: dict[str, int] = defaultdict(int)

    def add(name: str, row: dict, ms: float) -> None:
        tot[name] += ms
        above[name] += ms > 1.10 * row["native_ms"]

    for rs in by_t.values():
        choice = rs[0]["choice"]
        verified = [c for c in rs[0]["verified"] if all(_ms(r, c) is not None for r in rs)]
        tested = [c for c in rs[0]["candidate_ms"] if all(_ms(r, c) is not None for r in rs)]
        served = [_ms(r, choice) if _ms(r, choice) is not None else r["lqo_exec_ms"] for r in rs]
        per_t = {o: sum(_ms(r, o) for r in rs) for o in ["native", *tested]}
        t_best = min((o for o in per_t if o == "native" or o in verified), key=per_t.get)
        t_best_tested = min(per_t, key=per_t.get)
        for i, row in enumerate(rs):
            tot["native"] += row["native_ms"]
            add("single", row, served[i])
            add("best_verified", row, min(_ms(row, o) for o in ["native", *verified]))
            add("template_best_verified", row, _ms(row, t_best))
            add("template_best_tested", row, _ms(row, t_best_tested))
            add("oracle", row, row["oracle_ms"])
            others = [r for j, r in enumerate(rs) if j != i]
            if not others:
                for name in RULES:
                    add(name, row, served[i])
                continue
            ratios = {o: [_ms(r, o) / r["native_ms"] for r in others] for o in ["native", *tested]}
            for name, rule in RULES.items():
                pick = rule(choice, verified, tested, ratios)
                ms = _ms(row, pick)
                add(name, row, served[i] if ms is None else ms)
                changed[name] += pick != choice
    native = tot.pop("native")
    return {"instances": len(rows), "templates": len(by_t),
            "templates_served_a_plan": sum(rs[0]["choice"] != "native" for rs in by_t.values()),
            "ratio_to_native": {k: round(v / native, 4) for k, v in tot.items()},
            "above_1_10": dict(above), "instances_where_rule_differs_from_book": dict(changed)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = []
    for path in args.results:
        for held in json.loads(Path(path).read_text())["held_out"]:
            rows = held["queries"]
            if not all("candidate_ms" in r for r in rows):
                print(f"{path}: written before plan_book.py recorded per-candidate times; skipped", file=sys.stderr)
                continue
            res = {"results": path, "model": held["model"], **evaluate(rows)}
            out.append(res)
            print(json.dumps({k: res[k] for k in ("results", "model", "ratio_to_native")}))
    keys = out[0]["ratio_to_native"] if out else {}
    mean = {k: round(sum(o["ratio_to_native"][k] for o in out) / len(out), 4) for k in keys}
    print(json.dumps({"mean_over_books": mean}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"books": out, "mean_over_books": mean}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
