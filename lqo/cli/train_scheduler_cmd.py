"""``lqo train-scheduler RECIPE``: train the learned scheduling policy in the simulator."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from lqo.cli.options import add_out, add_seed
from lqo.cli.output import add_json_flag, emit
from lqo.errors import LqoError

CHECKPOINT = "scheduler.lqo"
LOG = "train_log.json"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train-scheduler",
        help="train the learned scheduler (graph network) in the simulator from a recipe",
        description="Read RECIPE (TOML, see training/scheduler_tpch.toml), build each workload query's "
        "plan graph and measured latencies (thread profile), train the graph-convolution policy by "
        "imitating the oracle and then by policy gradient in the simulator, and write "
        f"OUT/{CHECKPOINT} (weights + JSON metadata) and OUT/{LOG}. Nothing is written before "
        "training ends; Ctrl-C stops without writing.",
    )
    p.add_argument("recipe", help="recipe file (TOML)")
    add_out(p, "output directory (default: the recipe's `out`)")
    add_seed(p, "override the recipe's seed", default=None)
    p.add_argument("--time-budget", type=float, metavar="MINUTES", help="override the recipe's time budget")
    p.add_argument("--holdout", help="override the recipe's [split] holdout: none | instances | templates:0 | "
                   "templates:1 (held-out queries never train; the closing figures are simulated on them)")
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    recipe = _recipe(args)
    out = Path(args.out or recipe.out)
    if out.exists() and not out.is_dir():
        raise LqoError(f"output path exists and is not a directory: {out}")
    setup = _setup(recipe)
    t0 = time.monotonic()
    policy, history = _train(setup, recipe)
    pool, train_wls, test_wls = setup["pool"], setup["train_wls"], setup["test_wls"]
    train_keys = sorted({j.q.query_key for j in pool.known})
    # Judged on held-out queries, with what the training queries taught.
    figures = simulated_figures(test_wls or train_wls, setup["profile"], pool.knowledge, policy, recipe, setup["sim"])
    if test_wls:
        judged_on = "held-out queries (" + recipe.split.holdout + ")"
    elif recipe.split.holdout == "none":
        judged_on = "the training queries (no holdout)"
    else:
        judged_on = f"the training queries (holdout {recipe.split.holdout} left nothing out: one instance per template?)"
    out.mkdir(parents=True, exist_ok=True)
    info = {"recipe": recipe.to_dict(), "history": history, "sim_mean_s": figures, "judged_on": judged_on,
            "train_s": round(time.monotonic() - t0, 1), "profiles": setup["profiles"],
            "interference": setup["interference"]}
    path = policy.save(out / CHECKPOINT, extra={"trained_on": [w.name for w in setup["workloads"]],
                                                "holdout": recipe.split.holdout,
                                                "train_instances": recipe.split.train_instances,
                                                "train_query_keys": train_keys})
    tmp = out / (LOG + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str))
    tmp.replace(out / LOG)
    lines = [f"trained in {info['train_s']} s on {len(train_keys)} distinct queries; best greedy policy at "
             f"{policy.meta.get('best_vs_oracle', float('nan')):.3f}x the oracle's mean completion time "
             "(simulated, training streams)",
             f"simulated mean completion on {judged_on}: " + ", ".join(f"{k} {v:.3f} s" for k, v in figures.items()),
             f"wrote {path} and {out / LOG}"]
    emit(args, "\n".join(lines), {"checkpoint": str(path), "log": str(out / LOG), "sim_mean_s": figures,
                                  "judged_on": judged_on, "best_vs_oracle": policy.meta.get("best_vs_oracle"),
                                  "train_s": info["train_s"]})
    return 0


def _recipe(args: argparse.Namespace) -> Any:
    """The recipe file with the command line's overrides."""
    from lqo.sched.train_policy import SchedRecipe

    recipe = SchedRecipe.load(args.recipe)
    if args.seed is not None:
        recipe.seed = args.seed
    if args.time_budget is not None:
        if not args.time_budget > 0:
            raise LqoError("--time-budget must be > 0 minutes")
        recipe.time_budget_min = args.time_budget
    if args.holdout is not None:
        recipe.split.holdout = args.holdout
        recipe.validate()
    return recipe


def _setup(recipe: Any) -> dict[str, Any]:
    """Workloads, thread profile, the train/held-out split, the training pool, the simulator."""
    from lqo.cli.schedule_cmd import resolve_profiles
    from lqo.sched.simulator import SimConfig
    from lqo.sched.split import split_workloads
    from lqo.sched.thread_profile import ThreadProfile
    from lqo.sched.training_pool import training_pool
    from lqo.workloads.workload import Workload

    workloads = [Workload.load(w) for w in recipe.workloads]
    profiles = resolve_profiles(recipe.profiles, workloads)
    if not profiles:
        raise LqoError("no thread profile: run `lqo profile-threads WORKLOAD` or name `profiles` in the recipe")
    profile = ThreadProfile.load(profiles)
    train_wls, test_wls = split_workloads(workloads, recipe.split.holdout, recipe.split.train_instances)
    pool = training_pool(train_wls, profile, recipe.seed, graph=recipe.model.graph)
    interference = recipe.simulator.interference
    if interference < 0:
        interference = profile.interference or 0.0
    sim = SimConfig(recipe.stream.cores, interference, profile.scale or 1.0, profile.oversubscription or 0.0)
    return {"workloads": workloads, "profiles": profiles, "profile": profile, "train_wls": train_wls,
            "test_wls": test_wls, "pool": pool, "interference": interference, "sim": sim}


def _train(setup: dict[str, Any], recipe: Any) -> tuple[Any, list[dict]]:
    """``train_policy`` with a progress bar of its episodes."""
    from lqo.cli.schedule_cmd import Counter
    from lqo.sched.train_policy import train_policy

    bar = Counter(recipe.imitation.episodes + recipe.reinforce.episodes, "train-scheduler")
    last = [0]

    def on_progress(rec: dict) -> None:
        bar.update(rec["episode"] - last[0], phase=rec["phase"], vs_oracle=f"{rec['vs_oracle']:.3f}")
        last[0] = rec["episode"]

    try:
        return train_policy(setup["pool"], recipe, setup["sim"], on_progress)
    finally:
        bar.close()


def simulated_figures(workloads: Any, profile: Any, knowledge: Any, policy: Any, recipe: Any, sim: Any,
                      streams: int = 4) -> dict[str, float]:
    """Mean completion time per policy over ``streams`` simulated streams of ``workloads``
    (another seed than training and model selection)."""
    from lqo.sched.jobs import build_jobs
    from lqo.sched.policies import get_policy
    from lqo.sched.scheduler import Scheduler
    from lqo.sched.simulator import simulate

    s = recipe.stream
    maker = Scheduler("fifo", s.workers, s.cores, profile)  # resolves util:U with the profile
    tests = []
    for k in range(streams):
        stream = maker.make_stream(workloads, s.queries, s.arrivals[k % len(s.arrivals)], 10_000 + recipe.seed * 100 + k)
        tests.append(build_jobs(stream, {"graph", "lat", "known"}, profile, knowledge=knowledge))
    figures = {}
    for name in ("fifo", "all", "sjf-est", "sjf-known", "oracle", "learned"):
        pol = policy if name == "learned" else get_policy(name)
        figures[name] = sum(simulate(jobs, pol, s.workers, sim).mean_s for jobs in tests) / len(tests)
    return figures
