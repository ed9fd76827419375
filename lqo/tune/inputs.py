"""What ``lqo tune`` is told (:class:`TuneConfig`) and what it tunes (:class:`TemplateInstances`).

Shared by every tuning module (the tuner, its measuring steps, the exploration order),
so none of them imports another's private types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lqo.errors import LqoError
from lqo.tune.accept import AcceptRule
from lqo.workloads.workload import Query


@dataclass
class TuneConfig:
    """The knobs of one ``lqo tune`` run (its command-line options)."""

    budget_min: float = 10.0  # wall-clock minutes for this run (a rerun adds its own)
    tune_instances: int = 3  # instances per template tuned on; the rest are held out
    rounds: int = 5  # paired rounds per tuning instance in an acceptance test
    screen_below: float = 0.95  # a screening ratio below this earns an acceptance test
    random_trees: int = 3  # random trees per template among the candidates
    moves: int = 4  # local moves of the native tree (build-side flips first)
    exhaustive_relations: int = 3  # blocks this small get every tree as a candidate (0: none)
    true_cards: bool = True  # profile one native run per template for a true-cardinality plan
    range_guard: bool = False  # constant-sensitive templates served inside their verified ranges only
    rule_sets: bool = False  # grow winning pairs of disabled rules into sets of up to 4 (trials.grow_rule_set)
    perturbed_trees: int = 0  # trees from lqo's DP under perturbed join estimates per template (0: none)
    strategy: str = "learned"  # "learned" | "random"
    model: str | None = None  # a trained model directory (lqo train): scores tree candidates, adds its search's best
    seed: int = 0
    rule: AcceptRule = field(default_factory=AcceptRule)

    def validate(self) -> None:
        """``LqoError`` (one line, naming the option) for a setting no run can use."""
        if not self.budget_min > 0:
            raise LqoError("--budget must be > 0 minutes")
        if self.strategy not in ("learned", "random"):
            raise LqoError("--strategy must be 'learned' or 'random'")
        if self.perturbed_trees < 0:
            raise LqoError("--perturbed must be >= 0")
        if self.tune_instances < 1 or self.rounds < self.rule.min_rounds:
            raise LqoError(f"need >= 1 tuning instance and >= {self.rule.min_rounds} rounds")


@dataclass
class TemplateInstances:
    """One template's workload queries, split for tuning.

    ``key``: the template key (:func:`lqo.book.template.template_key`), the book's entry
    key; ``label``: the workload manifest's template label (``q07``); ``tune``: the
    instances tuned on; ``held_out``: the others, never run while tuning.
    """

    key: str
    label: str
    tune: list[Query]
    held_out: list[Query]
