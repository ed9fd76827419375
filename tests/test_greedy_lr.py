"""GreedyLR: direction, patience, bounds, threshold, cooldown/warmup, smoothing, checkpointing."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch

from lqo.learn.greedy_lr import GreedyLR


def make_opt(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs or (1.0,)]
    return torch.optim.SGD(groups)


def run(sched: GreedyLR, losses: list[float], group: int = 0) -> list[float]:
    """Step through ``losses``, returning the group's lr after each step."""
    out = []
    for loss in losses:
        sched.step(loss)
        out.append(sched.get_last_lr()[group])
        assert sched.get_last_lr() == [g["lr"] for g in sched.optimizer.param_groups]
    return out


def falling(n: int, start: float = 10.0) -> list[float]:
    return [start - i for i in range(n)]


def rising(n: int, start: float = 1.0) -> list[float]:
    return [start + i for i in range(n)]


def test_construction_keeps_rate_and_validates() -> None:
    opt = make_opt(0.3)
    sched = GreedyLR(opt)
    assert opt.param_groups[0]["lr"] == 0.3 and sched.get_last_lr() == [0.3]
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    for bad in ({"factor": 1.0}, {"factor": 0.0}, {"patience": 0}, {"window": 0},
                {"threshold_mode": "pct"}, {"min_lr": 2.0, "max_lr": 1.0}, {"min_lr": [0.1, 0.1]}):
        with pytest.raises(ValueError):
            GreedyLR(make_opt(0.3), **bad)


def test_rises_on_falling_loss_after_patience() -> None:
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=3, threshold=0, max_lr=100)
    # First call only sets the baseline; then every third improvement doubles the rate.
    assert run(sched, falling(7)) == [1, 1, 1, 2, 2, 2, 4]


def test_falls_on_rising_loss_after_patience() -> None:
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=3, threshold=0)
    assert run(sched, rising(7)) == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_bounds_respected() -> None:
    up = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, max_lr=3.0)
    assert run(up, falling(5)) == [1, 2, 3, 3, 3]
    down = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, min_lr=0.3)
    assert run(down, rising(5)) == [1, 0.5, 0.3, 0.3, 0.3]
    # Default ceiling is ten times the starting rate, so a long improving run cannot explode.
    default = GreedyLR(make_opt(0.1), factor=0.5, patience=1, threshold=0)
    assert max(run(default, falling(30, start=100.0))) == pytest.approx(1.0)


def test_threshold_ignores_tiny_changes() -> None:
    tiny = [1.0 - 1e-6 * i for i in range(6)]
    assert run(GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=1e-3), tiny) == [1] * 6
    assert run(GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, max_lr=100), tiny)[-1] == 32
    # rel: a 0.5 drop from 100 is 0.5%, under 1%; abs: it is over 0.1.
    steps = [100.0 - 0.5 * i for i in range(4)]
    rel = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0.01, threshold_mode="rel")
    abs_ = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0.1, threshold_mode="abs")
    assert run(rel, steps) == [1, 1, 1, 1]
    assert run(abs_, steps) == [1, 2, 4, 8]
    # A neutral step breaks the streak of improvements.
    streak = GreedyLR(make_opt(1.0), factor=0.5, patience=2, threshold=0.01, max_lr=100)
    assert run(streak, [10, 9, 9, 8, 7]) == [1, 1, 1, 1, 2]


def test_cooldown_holds_rate_and_resets_counters() -> None:
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, cooldown=2)
    assert run(sched, rising(5)) == [1, 0.5, 0.5, 0.5, 0.25]
    # Worsening seen during cooldown does not count toward the next decrease.
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=2, threshold=0, cooldown=1)
    assert run(sched, rising(6)) == [1, 1, 0.5, 0.5, 0.5, 0.25]


def test_warmup_holds_rate_but_keeps_counting() -> None:
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, warmup=2, max_lr=100)
    assert run(sched, falling(5)) == [1, 2, 2, 2, 4]
    # An increase that hurts during the hold is undone on the first step after it.
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=2, threshold=0, warmup=2, max_lr=100)
    assert run(sched, [10, 9, 8, 9, 10, 11]) == [1, 1, 2, 2, 2, 1]


def test_smoothing_absorbs_a_spike_and_delays_reaction() -> None:
    spike = [10, 9, 8, 7, 8.5, 5, 4, 3]
    raw = run(GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, max_lr=1e3), spike)
    smooth = run(GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, max_lr=1e3,
                          smooth=True, window=4), spike)
    assert raw[4] < raw[3]  # the spike alone cuts the raw-loss rate
    assert smooth == [2.0 ** i for i in range(8)]  # the moving average never worsens
    turn = [5, 4, 3, 2, 3, 4, 5, 6]
    first_cut = lambda lrs: next(i for i in range(1, len(lrs)) if lrs[i] < lrs[i - 1])  # noqa: E731
    raw = run(GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, max_lr=1e3), turn)
    smooth = run(GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, max_lr=1e3,
                          smooth=True, window=3), turn)
    assert (first_cut(raw), first_cut(smooth)) == (4, 5)


def test_non_finite_loss_counts_as_worsening_without_poisoning_window() -> None:
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, smooth=True, window=3)
    assert run(sched, [3.0, math.nan, 2.0, 1.0]) == [1, 0.5, 1, 2]


def test_accepts_tensor_loss() -> None:
    sched = GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0)
    assert run(sched, [torch.tensor(2.0), torch.tensor(1.0)]) == [1, 2]  # type: ignore[list-item]


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def test_state_dict_round_trip_reproduces_lrs() -> None:
    rng = random.Random(0)
    losses = [10.0 * 0.93 ** i + rng.uniform(0.0, 1.5) + (0.2 * i if i > 12 else 0) for i in range(30)]
    kwargs = dict(factor=0.8, patience=2, threshold=0.01, smooth=True, window=3,
                  cooldown=2, warmup=1, min_lr=0.05, max_lr=[2.0, 0.4])

    ref = GreedyLR(make_opt(0.5, 0.1), **kwargs)
    expected = [ref.get_last_lr() for _ in losses if ref.step(_) is None]

    opt = make_opt(0.5, 0.1)
    sched = GreedyLR(opt, **kwargs)
    for loss in losses[:10]:
        sched.step(loss)
    state = sched.state_dict()
    assert _plain(state)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": state}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    # The resumed scheduler is built with other settings; loading must override them.
    opt2 = make_opt(9.0, 9.0)
    resumed = GreedyLR(opt2, factor=0.5, patience=7, window=9)
    opt2.load_state_dict(ckpt["opt"])
    resumed.load_state_dict(ckpt["sched"])
    assert resumed.get_last_lr() == expected[9]
    got = [resumed.get_last_lr() for _ in losses[10:] if resumed.step(_) is None]
    assert got == expected[10:]
    # The tail must actually move, in both directions, or this test proves nothing.
    tail = [lr[0] for lr in expected[9:]]
    assert any(b > a for a, b in zip(tail, tail[1:])) and any(b < a for a, b in zip(tail, tail[1:]))
    # And the restored counters/window matter: a scheduler fresh at step 10 diverges.
    opt3 = make_opt(*expected[9])
    fresh = GreedyLR(opt3, **kwargs)
    assert [fresh.get_last_lr() for _ in losses[10:] if fresh.step(_) is None] != got

    with pytest.raises(KeyError):
        resumed.load_state_dict({"factor": 0.5})


def test_round_trip_keeps_smoothing_window() -> None:
    def make() -> GreedyLR:
        return GreedyLR(make_opt(1.0), factor=0.5, patience=1, threshold=0, smooth=True, window=3)

    sched = make()
    assert run(sched, [5.0, 5.0, 20.0]) == [1, 1, 0.5]  # window mean 5 -> 10
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    resumed = make()
    resumed.optimizer.param_groups[0]["lr"] = 0.5
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    # The spike stays in the restored window for two more steps, holding the mean at 10.
    assert run(resumed, [5.0, 5.0, 5.0]) == [0.5, 0.5, 1.0]


def test_two_param_groups_with_per_group_bounds() -> None:
    sched = GreedyLR(make_opt(1.0, 0.1), factor=0.5, patience=1, threshold=0,
                     min_lr=[0.5, 0.01], max_lr=[4.0, 0.2])
    for loss in falling(5):
        sched.step(loss)
    assert sched.get_last_lr() == [4.0, 0.2]
    lrs = [list(sched.get_last_lr()) for _ in rising(4) if sched.step(_ + 10) is None]
    assert lrs == [[2.0, 0.1], [1.0, 0.05], [0.5, 0.025], [0.5, 0.0125]]
    sched.step(100.0)
    assert sched.get_last_lr() == [0.5, 0.01]


def _train(use_sched: bool) -> tuple[float, float, float]:
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    y = x @ torch.randn(8, 1) + 0.05 * torch.randn(512, 1)
    x_tr, y_tr, x_va, y_va = x[:384], y[:384], x[384:], y[384:]
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = GreedyLR(opt, factor=0.7, patience=1, max_lr=0.2) if use_sched else None
    loss_fn = torch.nn.MSELoss()

    def val() -> float:
        with torch.no_grad():
            return loss_fn(model(x_va), y_va).item()

    first = val()
    for _ in range(40):
        for i in range(0, 384, 64):
            opt.zero_grad()
            loss_fn(model(x_tr[i:i + 64]), y_tr[i:i + 64]).backward()
            opt.step()
        if sched is not None:
            sched.step(val())
    return first, val(), opt.param_groups[0]["lr"]


def test_trains_real_regression() -> None:
    first, last, lr = _train(use_sched=True)
    _, last_const, _ = _train(use_sched=False)
    assert last < 0.05 * first
    assert lr > 1e-3  # the scheduler sped up the too-cautious start
    assert last < 0.5 * last_const  # ...and that beat keeping the rate fixed
