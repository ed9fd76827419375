"""Training recipes: plain dataclasses loaded from TOML (see ``training/*.toml``).

Every field has a default; a recipe names only what it changes. It composes the configs
its components own (``search.SearchConfig``, ``decision.DecisionConfig``,
``triage.TriageConfig``); unknown keys
and wrong types are errors naming the key (``lqo.config``).

>>> r = Recipe.from_toml_text('[model]\\nkind = "graph_conv"\\n[split]\\ntest_fraction = 0.3')
>>> r.model.kind, r.split.test_fraction, r.search.width
('graph_conv', 0.3, 4)
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lqo.config import dataclass_from_toml
from lqo.decision import DecisionConfig
from lqo.errors import MissingFileError, RecipeError
from lqo.search import SearchConfig
from lqo.train.transfer import TransferConfig
from lqo.triage import TriageConfig


@dataclass
class SplitConfig:
    """``[split]``: how training and test templates are chosen."""

    by: str = "template"  # train/test split unit: "template" (unseen templates) or "query"
    test_fraction: float = 0.3  # share of templates held out for testing
    seed: int = 0  # which templates are held out


@dataclass
class ModelConfig:
    """``[model]``: the model kind, loss, learning-rate schedule and size."""

    kind: str = "tree_conv"  # "tree_conv" | "graph_conv"
    loss: str = "combined"  # "regression" | "ranking" | "combined"
    lr_schedule: str = "greedy"  # "greedy" (GreedyLR) | "cosine"
    lr: float = 1e-3
    epochs: int = 60  # per training round (early stopping may end it sooner)
    ensemble: int = 3  # members, for the uncertainty behind the decision
    hidden: int = 64  # channel width of the network


@dataclass
class ExplorationConfig:
    """``[exploration]``: which plans run besides the model's choice."""

    bootstrap_plans: int = 10  # random trees per training query before the first model
    extra_candidates: int = 2  # besides the model's choice, best unexecuted candidates run per query
    epsilon: float = 0.1  # chance to run a random neighbour of the model's choice instead


@dataclass
class TimeoutConfig:
    """``[timeout]``: how long a run may take."""

    factor: float = 3.0  # a run may take this many times the best known latency
    min_s: float = 0.2  # floor for tiny queries


@dataclass
class Recipe:
    """A training recipe (``lqo train``), section by section."""

    workload: str = ""  # workload directory (relative to the recipe file, or absolute)
    out: str = "runs/model"  # model directory: checkpoints, experience, history
    iterations: int = 10  # plan-execute-retrain rounds after the bootstrap
    time_budget_min: float = 30.0  # stop training after this many minutes (wall clock)
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    triage: TriageConfig = field(default_factory=TriageConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        """Read a TOML recipe; relative paths in it are relative to the file."""
        p = Path(path)
        if not p.is_file():
            raise MissingFileError(f"recipe not found: {p}")
        try:
            recipe = cls.from_toml_text(p.read_text())
        except RecipeError as err:
            raise RecipeError(f"{p}: {err}") from None
        base = p.resolve().parent
        for name in ("workload", "out"):
            value = getattr(recipe, name)
            if value and not Path(value).is_absolute():
                setattr(recipe, name, os.path.normpath(base / value))
        recipe.transfer.from_models = [m if Path(m).is_absolute() else os.path.normpath(base / m)
                                       for m in recipe.transfer.from_models]
        return recipe

    @classmethod
    def from_toml_text(cls, text: str) -> "Recipe":
        """A recipe from TOML text; ``RecipeError`` for invalid TOML or fields."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"invalid TOML: {err}") from None
        recipe = dataclass_from_toml(cls, data)
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """``RecipeError`` naming the first field out of range."""
        checks = [
            (self.split.by in ("template", "query"), "split.by must be 'template' or 'query'"),
            (0.0 <= self.split.test_fraction < 1.0, "split.test_fraction must be in [0, 1)"),
            (self.model.kind in ("tree_conv", "graph_conv"), "model.kind must be 'tree_conv' or 'graph_conv'"),
            (self.model.loss in ("regression", "ranking", "combined"), "model.loss must be regression|ranking|combined"),
            (self.model.lr_schedule in ("greedy", "cosine"), "model.lr_schedule must be 'greedy' or 'cosine'"),
            (self.model.ensemble >= 1 and self.model.epochs >= 1, "model.ensemble and model.epochs must be >= 1"),
            (self.iterations >= 0 and self.time_budget_min > 0, "iterations >= 0 and time_budget_min > 0"),
            (self.timeouts.factor > 1.0, "timeouts.factor must be > 1"),
            (self.search.width >= 1, "search.width must be >= 1"),
            (0.0 <= self.exploration.epsilon <= 1.0, "exploration.epsilon must be in [0, 1]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise RecipeError(msg)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data."""
        return dataclasses.asdict(self)
