"""What the model was trained on: per-feature ranges, so a plan outside them is not forced.

A model fitted on one workload's plans extrapolates on a template unlike anything it saw
(more relations, bigger intermediate results, deeper trees). ``FeatureRanges`` records,
for every node feature and query feature, the range over the training plans; the
optimizer forces a plan only when its features lie within those ranges (widened by a
``tolerance`` share of each range's width). Otherwise native is kept, and the reason
names the feature.

>>> from lqo.learn.featurized import example_join
>>> r = FeatureRanges.fit([example_join(10.0, 20.0), example_join(30.0, 5.0)],
...                       node_names=["kind", "rows"], query_names=["a", "b", "c"])
>>> r.outside(example_join(12.0, 25.0)) is None
True
>>> r.outside(example_join(12.0, 400.0))
'node feature rows = 400.0 is outside the trained range [5.0, 35.0]'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from lqo.learn.featurized import FlatPlan

__all__ = ["FeatureRanges"]


@dataclass
class FeatureRanges:
    node_names: list[str]
    node_low: list[float]
    node_high: list[float]
    query_names: list[str]
    query_low: list[float]
    query_high: list[float]
    tolerance: float = 0.10  # share of a range's width a value may lie beyond it

    @classmethod
    def fit(cls, plans: Sequence[FlatPlan], node_names: Sequence[str], query_names: Sequence[str],
            tolerance: float = 0.10) -> "FeatureRanges":
        nodes = np.concatenate([p.x[1:] for p in plans])  # row 0 is the null node
        queries = np.stack([p.query for p in plans])
        return cls(list(node_names), nodes.min(0).tolist(), nodes.max(0).tolist(),
                   list(query_names), queries.min(0).tolist(), queries.max(0).tolist(), tolerance)

    def outside(self, plan: FlatPlan) -> str | None:
        """Why ``plan`` lies outside the trained ranges (the first feature found), or None."""
        for kind, names, low, high, values in (
            ("node", self.node_names, self.node_low, self.node_high, plan.x[1:]),
            ("query", self.query_names, self.query_low, self.query_high, plan.query[None, :]),
        ):
            lo, hi = np.asarray(low), np.asarray(high)
            if values.shape[1] != lo.shape[0]:
                return f"{kind} features differ from the trained ones ({values.shape[1]} vs {lo.shape[0]})"
            slack = self.tolerance * (hi - lo)
            bad = (values < lo - slack - 1e-6) | (values > hi + slack + 1e-6)
            if bad.any():
                row, col = np.argwhere(bad)[0]
                return (f"{kind} feature {names[col]} = {float(values[row, col]):.1f} is outside the trained range "
                        f"[{lo[col]:.1f}, {hi[col]:.1f}]")
        return None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FeatureRanges":
        return cls(**d)
