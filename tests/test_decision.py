"""The decision gate: force the search's best plan only for a clear, confident gain.

``gate`` returns None (force) exactly when the best plan is not native, the predicted
gain ``1 - best/native`` is at least ``min_gain`` and the log-margin
``log1p(native) - log1p(best)`` is more than ``z`` times ``hypot(native_std, best_std)``.
The module's own examples run in tests/test_doctests.py.
"""

from __future__ import annotations

import math

import pytest

from lqo.decision import DecisionConfig, gate

MARGIN_100_50 = math.log1p(100.0) - math.log1p(50.0)  # 0.6832...


def decide(cfg=None, *, native=False, native_ms=100.0, best_ms=50.0, native_std=0.0, best_std=0.0):
    return gate(cfg or DecisionConfig(), best_is_native=native, native_ms=native_ms, best_ms=best_ms,
                native_std=native_std, best_std=best_std)


def test_clear_confident_gain_forces():
    assert decide() is None
    assert decide(native_std=0.3, best_std=0.3) is None  # hypot 0.42 < margin 0.68
    assert decide(DecisionConfig(min_gain=0.0, z=0.0), best_ms=99.0) is None


def test_best_equal_to_native_never_forces():
    # whatever the predicted gain and however certain
    for best_ms in (1.0, 50.0, 100.0, 1000.0):
        reason = decide(DecisionConfig(min_gain=0.0, z=0.0), native=True, best_ms=best_ms)
        assert reason == "the model ranks DuckDB's native plan best"
    # the same numbers with another plan do force
    assert decide(DecisionConfig(min_gain=0.0, z=0.0), best_ms=1.0) is None


@pytest.mark.parametrize("best_ms, forced", [(75.0, True), (75.0 + 1e-9, False), (74.0, True), (80.0, False)])
def test_gain_boundary_is_inclusive(best_ms, forced):
    """gain >= min_gain forces (with z = 0 the margin only has to be positive);
    0.25 and 75/100 are exact in binary, so the boundary is exact too."""
    reason = decide(DecisionConfig(min_gain=0.25, z=0.0), best_ms=best_ms)
    assert (reason is None) == forced, reason
    if not forced:
        assert reason.startswith("predicted gain") and "is below 25%" in reason


def test_no_gain_never_forces():
    assert decide(DecisionConfig(min_gain=0.0, z=0.0), best_ms=100.0) is not None  # zero margin is not > 0
    assert decide(DecisionConfig(min_gain=0.0, z=0.0), best_ms=120.0) is not None  # slower
    assert "below" in decide(native_ms=0.0, best_ms=0.0)  # no native latency: no gain


@pytest.mark.parametrize("spread, forced", [
    (MARGIN_100_50, False),  # margin == z x spread: not more, native kept
    (math.nextafter(MARGIN_100_50, 0.0), True),  # just below: forced
    (2 * MARGIN_100_50, False),
])
def test_margin_must_exceed_the_spread(spread, forced):
    # hypot(spread, 0) == spread exactly, so this is margin vs z x spread, z = 1
    reason = decide(DecisionConfig(min_gain=0.1, z=1.0), native_std=spread, best_std=0.0)
    assert (reason is None) == forced, reason
    reason = decide(DecisionConfig(min_gain=0.1, z=1.0), native_std=0.0, best_std=spread)
    assert (reason is None) == forced, reason
    if not forced:
        assert reason == "predicted gain 50% is within the model's uncertainty"


def test_z_scales_the_spread():
    s = 0.4  # margin 0.68 > 1 x 0.4, < 2 x 0.4
    assert decide(DecisionConfig(z=1.0), native_std=s) is None
    assert "uncertainty" in decide(DecisionConfig(z=2.0), native_std=s)
    assert decide(DecisionConfig(z=0.0), native_std=100.0) is None  # z = 0: spread ignored


def test_spreads_combine_in_quadrature():
    """hypot, not the sum: two spreads of 0.45 give 0.64 < 0.68 (forced), though they add up to 0.9."""
    assert decide(native_std=0.45, best_std=0.45) is None
    assert "uncertainty" in decide(native_std=0.49, best_std=0.49)  # hypot 0.69 > 0.68


def test_gain_is_checked_before_the_spread():
    # both fail: the reason names the gain
    reason = decide(DecisionConfig(min_gain=0.6, z=1.0), native_std=5.0)
    assert reason == "predicted gain 50% is below 60%"


def test_default_config():
    cfg = DecisionConfig()
    assert (cfg.min_gain, cfg.z) == (0.10, 1.0)
    assert decide(cfg, best_ms=91.0) is not None and decide(cfg, best_ms=89.0) is None
