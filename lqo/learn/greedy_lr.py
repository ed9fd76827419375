"""GreedyLR: a learning-rate scheduler that follows the validation loss both ways.

After the GreedyLR idea (PRML 2023): where ReduceLROnPlateau only ever lowers the
rate, GreedyLR also raises it while the loss keeps improving, so a run that started
with too small a rate speeds up instead of crawling.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal, SupportsFloat

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

_STATE_KEYS = (
    "factor", "patience", "smooth", "window", "threshold", "threshold_mode",
    "cooldown", "warmup", "min_lrs", "max_lrs", "last_epoch", "history",
    "prev", "num_good", "num_bad", "cooldown_counter", "warmup_counter", "_last_lr",
)


class GreedyLR(LRScheduler):
    """Raise the learning rate while the validation loss improves, lower it when it worsens.

    Call :meth:`step` once per epoch with the validation loss. Each call compares the
    (optionally smoothed) loss with the previous call's: it is an improvement, a
    worsening, or, when the change is within ``threshold``, neither. After
    ``patience`` consecutive improvements every group's rate becomes ``lr / factor``
    (at most its ``max_lr``); after ``patience`` consecutive worsenings it becomes
    ``lr * factor`` (at least its ``min_lr``). A neutral step breaks both streaks.

    Args:
        optimizer: the wrapped optimizer.
        factor: multiplicative step in (0, 1); 0.9 means ``lr * 0.9`` on worsening
            and ``lr / 0.9`` on improvement.
        patience: consecutive improving (or worsening) steps needed before acting.
        smooth: compare a moving average of the last ``window`` losses instead of
            the raw loss, so a single noisy epoch counts for less.
        window: size of that moving average (used only when ``smooth``).
        threshold: changes not larger than this count as neither improvement nor
            worsening; relative to the previous loss when ``threshold_mode='rel'``,
            absolute when ``'abs'``.
        threshold_mode: ``'rel'`` or ``'abs'``.
        cooldown: steps after a decrease during which the rate is held and both
            streaks are reset.
        warmup: steps after an increase during which the rate is held; streaks keep
            counting, so a hold that hurt is undone as soon as it ends.
        min_lr: lower bound, one float or one per param group.
        max_lr: upper bound, one float or one per param group; ``None`` means ten
            times each group's starting rate.

    Example (in training, ``step`` gets each epoch's validation loss)::

        >>> import torch
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
        >>> sched = GreedyLR(opt, factor=0.5, patience=2, max_lr=0.5)
        >>> for val_loss in [1.0, 0.9, 0.8, 0.7, 0.6]:  # improving: x2 after every 2 improvements
        ...     sched.step(val_loss)
        >>> sched.get_last_lr()
        [0.04]
        >>> for val_loss in [0.7, 0.8]:  # worsening twice: halved
        ...     sched.step(val_loss)
        >>> sched.get_last_lr()
        [0.02]
        >>> state = {"opt": opt.state_dict(), "sched": sched.state_dict()}  # for torch.save(state, path)
        >>> again = GreedyLR(torch.optim.SGD(model.parameters(), lr=0.01), factor=0.5, patience=2, max_lr=0.5)
        >>> again.optimizer.load_state_dict(state["opt"]); again.load_state_dict(state["sched"])
        >>> again.get_last_lr(), again.optimizer.param_groups[0]["lr"]
        ([0.02], 0.02)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        factor: float = 0.9,
        patience: int = 2,
        smooth: bool = False,
        window: int = 5,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        warmup: int = 0,
        min_lr: float | list[float] = 0.0,
        max_lr: float | list[float] | None = None,
    ) -> None:
        # Like ReduceLROnPlateau we skip LRScheduler.__init__: it assumes an
        # epoch-indexed schedule and would step the rate once at construction.
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if patience < 1 or window < 1 or cooldown < 0 or warmup < 0 or threshold < 0:
            raise ValueError("need patience >= 1, window >= 1, and cooldown, warmup, threshold >= 0")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.optimizer = optimizer
        self.factor, self.patience, self.smooth, self.window = factor, patience, smooth, window
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.warmup = cooldown, warmup
        start = [float(group["lr"]) for group in optimizer.param_groups]
        self.min_lrs = self._per_group(min_lr, "min_lr")
        self.max_lrs = self._per_group([10.0 * lr for lr in start] if max_lr is None else max_lr, "max_lr")
        if any(lo > hi for lo, hi in zip(self.min_lrs, self.max_lrs)):
            raise ValueError(f"min_lr {self.min_lrs} exceeds max_lr {self.max_lrs}")
        self.last_epoch = 0
        self.history: deque[float] = deque(maxlen=window)
        self.prev: float | None = None
        self.num_good = self.num_bad = self.cooldown_counter = self.warmup_counter = 0
        self._last_lr = list(start)

    def _per_group(self, value: float | list[float], name: str) -> list[float]:
        n = len(self.optimizer.param_groups)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise ValueError(f"expected {n} values for {name}, got {len(value)}")
            return [float(v) for v in value]
        return [float(value)] * n

    def _classify(self, current: float) -> int:
        """+1 improvement, -1 worsening, 0 within threshold (or first observation)."""
        if self.prev is None:
            return 0
        margin = self.threshold * abs(self.prev) if self.threshold_mode == "rel" else self.threshold
        if current < self.prev - margin:
            return 1
        if current > self.prev + margin:
            return -1
        return 0

    def step(self, metrics: SupportsFloat) -> None:  # type: ignore[override]
        """Record one epoch's validation loss and adapt the learning rates."""
        raw = float(metrics)
        self.last_epoch += 1
        if math.isfinite(raw):
            self.history.append(raw)
            current = sum(self.history) / len(self.history) if self.smooth else raw
            verdict = self._classify(current)
            self.prev = current
        else:
            # A NaN/inf loss means the rate is too high; keep it out of the window
            # and the baseline so it cannot poison every later comparison.
            verdict = -1
        self.num_good = self.num_good + 1 if verdict > 0 else 0
        self.num_bad = self.num_bad + 1 if verdict < 0 else 0

        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_good = self.num_bad = 0
        elif self.warmup_counter > 0:
            self.warmup_counter -= 1
        elif self.num_bad >= self.patience:
            self._scale(self.factor)
            self.cooldown_counter, self.num_bad = self.cooldown, 0
        elif self.num_good >= self.patience:
            self._scale(1.0 / self.factor)
            self.warmup_counter, self.num_good = self.warmup, 0
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]

    def _scale(self, mult: float) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            raise RuntimeError(
                f"optimizer has {len(groups)} param groups, GreedyLR was built for {len(self.min_lrs)}"
            )
        for group, lo, hi in zip(groups, self.min_lrs, self.max_lrs):
            lr = float(group["lr"])
            # Clamp only in the direction of travel, so a rate the user set outside
            # the bounds is never pushed the wrong way by a step.
            new = min(lr * mult, max(hi, lr)) if mult > 1 else max(lr * mult, min(lo, lr))
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(new)
            else:
                group["lr"] = new

    def get_last_lr(self) -> list[float]:  # type: ignore[override]
        """The learning rate of each param group after the latest :meth:`step`."""
        return [float(lr) for lr in self._last_lr]  # floats only (LRScheduler's type allows tensors)

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers, strings and lists only, so ``torch.load(weights_only=True)`` can read it."""
        state = {key: getattr(self, key) for key in _STATE_KEYS}
        state["history"] = list(self.history)
        state["min_lrs"], state["max_lrs"] = list(self.min_lrs), list(self.max_lrs)
        state["_last_lr"] = list(self._last_lr)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; the rates themselves live in the optimizer's state."""
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise KeyError(f"GreedyLR state_dict lacks {missing}")
        for key in _STATE_KEYS:
            setattr(self, key, state_dict[key])
        self.history = deque((float(v) for v in state_dict["history"]), maxlen=self.window)
        self.min_lrs, self.max_lrs = list(self.min_lrs), list(self.max_lrs)
        self._last_lr = list(self._last_lr)
