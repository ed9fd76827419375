"""``lqo train RECIPE``: latency-feedback training of the learned optimizer."""

from __future__ import annotations

import argparse
from typing import Any

from lqo.cli.options import add_out, add_seed
from lqo.cli.output import add_json_flag, emit, progress
from lqo.errors import LqoError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the learned optimizer on a workload (resumes where it stopped)",
        description="Train a plan-scoring model on the training templates of a workload: bootstrap "
        "with native and random plans, then iterate plan -> execute -> record -> retrain. A checkpoint "
        "is written after every iteration; rerunning the same command resumes. Recipes: training/*.toml.",
    )
    p.add_argument("recipe", help="TOML recipe (see training/README.md)")
    p.add_argument("--workload", help="override the recipe's workload directory")
    add_out(p, "override the model directory")
    p.add_argument("--time-budget", type=float, metavar="MINUTES", help="override the time budget")
    p.add_argument("--iterations", type=int, help="override the number of iterations")
    add_seed(p, "override the seed", default=None)
    add_json_flag(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # torch is imported only when a command needs it: the CLI starts fast.
    from lqo.train.recipe import Recipe
    from lqo.train.trainer import Trainer
    recipe = Recipe.load(args.recipe)
    if args.workload:
        recipe.workload = args.workload
    if args.out:
        recipe.out = args.out
    if args.time_budget is not None:
        recipe.time_budget_min = args.time_budget
    if args.iterations is not None:
        recipe.iterations = args.iterations
    if args.seed is not None:
        recipe.seed = args.seed
    recipe.validate()
    log = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    trainer = Trainer(recipe, log=log, progress=lambda items, desc="": progress(items, total=len(items), desc=desc))
    try:
        result = trainer.run()
    except KeyboardInterrupt:
        raise LqoError(f"interrupted; experience and the last checkpoint are kept in {recipe.out}: "
                       "rerun the same command to resume") from None
    payload = {"out": str(result.out), "iterations": result.iterations, "stopped": result.stopped,
               "history": [{k: v for k, v in h.items() if k != "model_history"} for h in result.history]}
    text = f"model saved in {result.out} after {result.iterations} iterations" + (
        f" ({result.stopped})" if result.stopped else "")
    emit(args, text, payload)
    return 0
