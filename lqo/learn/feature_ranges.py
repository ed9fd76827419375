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

A query can also lie within every range and still look like no trained query (each of
its features seen, never together). With ``groups`` (the query of each plan), ``fit``
keeps one query-feature vector per training query (scaled by the ranges; a ``forced``
flag left out) and a radius: the largest distance of a training query to its nearest
other one. A plan whose query lies farther than that from every training query is
"unlike any trained query".

>>> import dataclasses
>>> q = lambda *v: dataclasses.replace(example_join(1.0, 1.0), query=np.array(v, np.float32))
>>> known = FeatureRanges.fit([q(0, 0, 1), q(.1, .1, 1), q(.9, .9, 1), q(1, 1, 1)], ["kind", "rows"],
...                           ["a", "b", "forced"], groups=["q1", "q2", "q3", "q4"])
>>> round(known.radius, 3), known.outside(q(0.95, 0.95, 1)) is None
(0.141, True)
>>> known.outside(q(1, 0, 1))  # every feature within its range, but never together
'the query is unlike any trained query (nearest at 0.91, trained queries lie within 0.14 of each other)'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from lqo.learn.featurized import FlatPlan

__all__ = ["FeatureRanges"]


@dataclass
class FeatureRanges:
    """Per feature, the range the training plans spanned (widened): where the model was trained."""

    node_names: list[str]
    node_low: list[float]
    node_high: list[float]
    query_names: list[str]
    query_low: list[float]
    query_high: list[float]
    tolerance: float = 0.10  # share of a range's width a value may lie beyond it
    # One scaled query-feature vector per training query, and the radius around them
    # (None: fitted without groups, or saved before this existed; not checked then).
    query_points: list[list[float]] | None = None
    radius: float | None = None

    @classmethod
    def fit(cls, plans: Sequence[FlatPlan], node_names: Sequence[str], query_names: Sequence[str],
            tolerance: float = 0.10, groups: Sequence[str] | None = None) -> "FeatureRanges":
        """The ranges of ``plans``' node and query features, widened by ``tolerance``."""
        nodes = np.concatenate([p.x[1:] for p in plans])  # row 0 is the null node
        queries = np.stack([p.query for p in plans])
        r = cls(list(node_names), nodes.min(0).tolist(), nodes.max(0).tolist(),
                list(query_names), queries.min(0).tolist(), queries.max(0).tolist(), tolerance)
        if groups is not None:
            first: dict[str, np.ndarray] = {}
            for g, p in zip(groups, plans):
                first.setdefault(g, p.query)
            # the same query twice (its own runs and another directory's) is one point
            points = np.unique(np.stack([r._scaled(v) for v in first.values()]).round(4), axis=0)
            if len(points) >= 2:
                d = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
                np.fill_diagonal(d, np.inf)
                r.query_points, r.radius = points.tolist(), float(d.min(1).max())
        return r

    def _scaled(self, query: np.ndarray) -> np.ndarray:
        """The query features that say what the query is (not ``forced``), each divided by
        its trained range's width."""
        keep = [i for i, n in enumerate(self.query_names) if n != "forced"]
        lo, hi = np.asarray(self.query_low)[keep], np.asarray(self.query_high)[keep]
        return np.asarray(query, dtype=np.float64)[keep] / np.where(hi > lo, hi - lo, 1.0)

    def nearest(self, plan: FlatPlan) -> float | None:
        """Distance from ``plan``'s query to the nearest training query (scaled features)."""
        if not self.query_points or plan.query.shape[0] != len(self.query_names):
            return None
        return float(np.linalg.norm(np.asarray(self.query_points) - self._scaled(plan.query), axis=1).min())

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
        near = self.nearest(plan)
        if near is not None and self.radius is not None and near > self.radius * (1.0 + self.tolerance) + 1e-3:
            return (f"the query is unlike any trained query (nearest at {near:.2f}, "
                    f"trained queries lie within {self.radius:.2f} of each other)")
        return None

    def to_json(self) -> dict:
        """The ranges as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FeatureRanges":
        """Ranges from their JSON."""
        return cls(**d)
