"""The decision gate: leave DuckDB's native plan only for a clear, confident gain.

The model predicts latencies for the native plan and the search's best plan, with the
ensemble's spread (std of log1p(ms)) for each. The best plan is forced only when the
predicted gain is at least ``min_gain`` *and* the predicted log-margin exceeds ``z``
times the combined spread; otherwise native is kept and the reason says why.

>>> cfg = DecisionConfig(min_gain=0.10, z=1.0)
>>> gate(cfg, best_is_native=False, native_ms=100.0, best_ms=50.0, native_std=0.1, best_std=0.1) is None
True
>>> gate(cfg, best_is_native=False, native_ms=100.0, best_ms=95.0, native_std=0.0, best_std=0.0)
'predicted gain 5% is below 10%'
>>> print(gate(cfg, best_is_native=False, native_ms=100.0, best_ms=50.0, native_std=0.6, best_std=0.6))
predicted gain 50% is within the model's uncertainty
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class DecisionConfig:
    """When a planned tree replaces native: the predicted gain and confidence it needs."""

    min_gain: float = 0.10  # predicted gain needed to leave native (0.10 = 10% faster)
    z: float = 1.0  # and the gain must exceed z x the ensemble's uncertainty (log space)


def gate(config: DecisionConfig, *, best_is_native: bool, native_ms: float, best_ms: float,
         native_std: float, best_std: float) -> str | None:
    """None when the best plan should be forced, else why native is kept."""
    if best_is_native:
        return "the model ranks DuckDB's native plan best"
    gain = 1.0 - best_ms / native_ms if native_ms > 0 else 0.0
    if gain < config.min_gain:
        return f"predicted gain {gain:.0%} is below {config.min_gain:.0%}"
    margin = math.log1p(native_ms) - math.log1p(best_ms)
    if margin <= config.z * math.hypot(native_std, best_std):
        return f"predicted gain {gain:.0%} is within the model's uncertainty"
    return None
