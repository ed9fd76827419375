"""Planning must be earned: a first stage, well under a millisecond, that decides whether
a first-seen query is worth planning at all.

Planning a query lqo has never seen (parse, ``EXPLAIN``, featurize, search) costs 10-30 ms
on TPC-DS; a forced plan saves a share of the query's time, and only sometimes. So before
any of that, ``Triage`` reads a few facts from the text alone (which catalog tables it
names and how big they are, how many SELECTs, its length: no parse, no ``EXPLAIN``) and
predicts two things with linear models fitted at training time on measured runs: the
query's native latency and what planning it would cost. Only where the expected gain,
``expected_gain`` x predicted native time, is at least ``safety`` x the predicted planning
cost does lqo plan further; everything else runs as written. The search then gets a time
budget in proportion to the predicted native latency.

Before even those facts, a stage that reads only the text's length: an upper envelope
of native latency over length, fitted on the training queries (a line in log-log space
raised past the slowest of them, times ``ENVELOPE_MARGIN``). Where even that bound's
expected gain is below ``safety`` x the least planning measured for a training query with
joins to search (``planning_floor_ms``), the query runs as
written at the cost of one ``len``: on a small database (TPC-H sf 0.01: 2-6 ms queries,
planning 2+ ms) no first-seen query pays the facts.

>>> rows = {"orders": 1_500_000, "customer": 150_000, "nation": 25}
>>> facts = query_facts("SELECT count(*) FROM orders o, customer c WHERE o.o_custkey = c.c_custkey", rows)
>>> [round(x, 2) for x in facts]
[1.0, 2.0, 2.0, 14.32, 14.22, 1.0, 4.3]
>>> texts = ["SELECT * FROM nation", "SELECT * FROM orders, customer WHERE o_custkey = c_custkey"]
>>> t = Triage.fit(texts, native_ms=[1.0, 300.0], planning_ms=[5.0, 8.0], table_rows=rows)
>>> t.judge("SELECT n_name FROM nation").plan, t.judge(texts[1]).plan
(False, True)
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["FACT_NAMES", "NOT_WORTH_PLANNING", "Triage", "TriageConfig", "Verdict", "query_facts"]

ENVELOPE_MARGIN = 3.0  # the length envelope sits this far above the slowest training query
FACT_NAMES = ("bias", "tables", "table_refs", "log_rows_sum", "log_rows_max", "selects", "log_length")
NOT_WORTH_PLANNING = "not worth planning"  # how every triage reason starts
_WORD = re.compile(r"[a-z_][a-z0-9_]*")


def query_facts(sql: str, table_rows: Mapping[str, int]) -> tuple[float, ...]:
    """The text's facts, in ``FACT_NAMES`` order: distinct catalog tables it names, their
    mentions, log1p of their summed and largest row counts, SELECT count, log length.
    Plain Python floats: right after a query has run, one small numpy call costs ~30 us."""
    words = _WORD.findall(sql.lower())
    refs = [w for w in words if w in table_rows]
    named = set(refs)
    rows = [table_rows[t] for t in named]
    return (1.0, float(len(named)), float(len(refs)), math.log1p(sum(rows)), math.log1p(max(rows, default=0)),
            float(words.count("select")), math.log(len(sql) + 1))


@dataclass
class TriageConfig:
    """When a first-seen query is planned: the gain expected and the safety margin it needs."""

    enabled: bool = True  # False: plan every first-seen query (the search still runs)
    expected_gain: float = 0.10  # share of native time planning is expected to save where it is worth it
    safety: float = 2.0  # plan only where expected gain >= safety x predicted planning cost
    search_share: float = 0.02  # search time budget, as a share of predicted native latency


@dataclass(frozen=True)
class Verdict:
    """Whether to plan a query further, with the predictions behind it."""

    plan: bool
    native_ms: float
    planning_ms: float
    reason: str | None  # why the query runs as written; None when it is planned


@dataclass
class Triage:
    """Linear predictors of log native latency and log planning time from ``query_facts``."""

    table_rows: dict[str, int]
    latency_weights: list[float]
    planning_weights: list[float]
    config: TriageConfig = field(default_factory=TriageConfig)
    fitted_on: int = 0  # training queries the predictors were fitted on
    envelope: list[float] | None = None  # [a, b]: native ms <= exp(a + b log(len + 1)) on the training texts
    planning_floor_ms: float | None = None  # least planning measured in training (of a query with joins)

    @classmethod
    def fit(cls, texts: Sequence[str], native_ms: Sequence[float], planning_ms: Sequence[float],
            table_rows: Mapping[str, int], config: TriageConfig | None = None, ridge: float = 1.0,
            planning_floor_ms: float | None = None) -> "Triage":
        """Ridge regressions in log space on measured native and planning times; the
        length envelope's floor is ``planning_floor_ms`` (default: the least planning)."""
        rows = {k.lower(): int(v) for k, v in table_rows.items()}
        x = np.array([query_facts(t, rows) for t in texts], dtype=np.float64)
        y = np.log(np.maximum(native_ms, 0.01))
        return cls(rows, _ridge(x, y, ridge), _ridge(x, np.log(np.maximum(planning_ms, 0.01)), ridge),
                   config or TriageConfig(), len(texts), _envelope(x[:, -1], y),
                   planning_floor_ms if planning_floor_ms is not None
                   else float(min(planning_ms)) if len(planning_ms) else None)

    def predict(self, sql: str) -> tuple[float, float]:
        """Predicted native latency and planning cost of ``sql``, in ms."""
        x = query_facts(sql, self.table_rows)
        return (math.exp(sum(a * w for a, w in zip(x, self.latency_weights))),
                math.exp(sum(a * w for a, w in zip(x, self.planning_weights))))

    def __post_init__(self) -> None:
        self._short: tuple | None = None  # judge's length cut-off, cached: (inputs, limit, verdict)

    def judge(self, sql: str) -> Verdict:
        """Whether to plan ``sql``, with the predicted native and planning ms."""
        if not self.config.enabled:
            return Verdict(True, *self.predict(sql), None)
        limit, short = self._length_cutoff()
        if short is not None and len(sql) < limit:  # short is None only when limit <= 0
            return short
        native, planning = self.predict(sql)
        gain = self.config.expected_gain * native
        if gain >= self.config.safety * planning:
            return Verdict(True, native, planning, None)
        return Verdict(False, native, planning,
                       f"{NOT_WORTH_PLANNING}: predicted {native:.1f} ms native, a likely gain of "
                       f"{gain:.1f} ms is below {self.config.safety:g}x the {planning:.1f} ms planning would cost")

    def _length_cutoff(self) -> tuple[float, Verdict | None]:
        """The text length below which even the envelope's bound is not worth planning:
        ``expected_gain x exp(a + b log(len + 1)) < safety x floor`` solved for ``len`` once,
        so that judging a short text costs one ``len`` (cold, the formula cost ~40 us)."""
        c = self.config
        key = (c.expected_gain, c.safety, tuple(self.envelope or ()), self.planning_floor_ms)
        if self._short is not None and self._short[0] == key:
            return self._short[1], self._short[2]
        floor = self.planning_floor_ms or 0.0
        limit, bound = 0.0, 0.0  # texts shorter than ``limit`` ran at most ``bound`` ms natively
        if self.envelope is not None and self.planning_floor_ms is not None and c.safety * floor > 0:
            a, b = self.envelope
            if c.expected_gain <= 0:
                limit, bound = math.inf, math.inf
            else:
                bound = c.safety * floor / c.expected_gain  # the envelope at the limit
                if b > 0:
                    limit = math.exp((math.log(bound) - a) / b) - 1
                elif math.exp(a) < bound:
                    limit, bound = math.inf, math.exp(a)
        if limit <= 0:
            short = None
        elif c.expected_gain <= 0:
            short = Verdict(False, bound, floor, f"{NOT_WORTH_PLANNING}: no gain is expected from planning")
        else:
            length = "of any length" if limit == math.inf else f"this long (under {limit:.0f} characters)"
            short = Verdict(False, bound, floor,
                            f"{NOT_WORTH_PLANNING}: a text {length} ran at most {bound:.1f} ms natively in "
                            f"training (bound), too little to repay the {floor:.1f} ms planning costs at least")
        self._short = (key, limit, short)
        return limit, short

    def search_budget_ms(self, native_ms: float, cap_ms: float) -> float:
        """The search's time budget for a query of ``native_ms``, at most ``cap_ms``."""
        return max(1.0, min(cap_ms, self.config.search_share * native_ms))

    def to_json(self) -> dict:
        """The fitted triage as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Triage":
        """A triage from its JSON."""
        return cls(dict(d["table_rows"]), list(d["latency_weights"]), list(d["planning_weights"]),
                   TriageConfig(**d.get("config", {})), int(d.get("fitted_on", 0)), d.get("envelope"),
                   d.get("planning_floor_ms"))


def _envelope(log_length: np.ndarray, log_native: np.ndarray) -> list[float] | None:
    """``[a, b]`` with ``a + b x >= y + log(ENVELOPE_MARGIN)`` on every training point:
    a least-squares line, never falling with length, raised past the highest point."""
    if len(log_length) < 2 or np.ptp(log_length) == 0:
        return None
    b = max(0.0, float(np.polyfit(log_length, log_native, 1)[0]))
    a = float(np.max(log_native - b * log_length)) + math.log(ENVELOPE_MARGIN)
    return [a, b]


def _ridge(x: np.ndarray, y: np.ndarray, lam: float) -> list[float]:
    """Least squares with an L2 penalty on every weight but the bias."""
    penalty = lam * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ y).tolist()
