"""Training losses on standardized log latency.

Labels are ``(log1p(ms) - mean) / std``; predictions live on the same scale. A
prediction is [B] or, for an ensemble, [M, B]: every loss is a mean over plans,
summed over members, so each member gets exactly the gradient it would get alone.

- :func:`regression_loss`: MSE, so the model predicts latencies (needed to compare
  plans of different queries and to cap runs);
- :func:`ranking_loss`: pairwise logistic (RankNet) loss over plans of the same query,
  because choosing a plan only needs the right order within a query (Lero's point) and
  a ranking loss does not spend capacity on each query's absolute level;
- :func:`combined_loss`: both, ``regression + rank_weight * ranking``.

Example: two queries (``groups``) with two plans each, labels already standardized::

    >>> pred = torch.tensor([0.2, -0.1, 0.5, 0.0], requires_grad=True)
    >>> target = torch.tensor([0.0, -0.5, 1.0, 0.3])
    >>> groups = torch.tensor([0, 0, 1, 1])
    >>> loss = combined_loss(pred, target, groups, rank_weight=0.5)
    >>> round(loss.item(), 4)
    0.3921
    >>> loss.backward()
    >>> pred.grad.shape
    torch.Size([4])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

LOSS_KINDS = ("regression", "ranking", "combined")

# Label differences below this (in standardized log units, ~0.1% of latency at std 1)
# are timing noise, not an order worth learning.
TIE_MARGIN = 1e-3


def regression_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error on standardized log latency.

    Example::

        >>> regression_loss(torch.zeros(3), torch.ones(3))
        tensor(1.)
    """
    return (pred - target).square().mean(-1).sum()


def ranking_pairs(groups: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Index pairs ``(i, j)`` of plans in the same group with ``target[i] < target[j]``
    (i is faster), ties within :data:`TIE_MARGIN` left out."""
    same = groups.unsqueeze(0) == groups.unsqueeze(1)
    faster = (target.unsqueeze(1) + TIE_MARGIN) < target.unsqueeze(0)
    i, j = torch.nonzero(same & faster, as_tuple=True)
    return i, j


def ranking_loss(pred: Tensor, target: Tensor, groups: Tensor | None = None) -> Tensor:
    """RankNet loss: mean over same-group pairs (i faster than j) of ``softplus(pred[i] - pred[j])``,
    i.e. ``-log sigmoid(pred[j] - pred[i])``, the log-likelihood that the model orders the pair right.

    ``groups`` None puts all plans in one group. With no pair to compare the loss is
    a zero that still carries a gradient path, so a batch of singletons is harmless.

    Example::

        >>> ranking_loss(torch.tensor([0., 1.]), torch.tensor([0., 1.]), torch.tensor([7, 7]))
        tensor(0.3133)
    """
    if groups is None:
        groups = torch.zeros_like(target, dtype=torch.int64)
    i, j = ranking_pairs(groups, target)
    if i.numel() == 0:
        return pred.sum() * 0.0
    return F.softplus(pred[..., i] - pred[..., j]).mean(-1).sum()


def combined_loss(pred: Tensor, target: Tensor, groups: Tensor | None = None, rank_weight: float = 1.0) -> Tensor:
    """``regression_loss + rank_weight * ranking_loss``.

    Example::

        >>> pred, target = torch.tensor([0.2, -0.1]), torch.tensor([0.0, -0.5])
        >>> combined = combined_loss(pred, target, torch.tensor([0, 0]), rank_weight=1.0)
        >>> torch.isclose(combined, regression_loss(pred, target) + ranking_loss(pred, target)).item()
        True
    """
    return regression_loss(pred, target) + rank_weight * ranking_loss(pred, target, groups)


def plan_loss(kind: str, pred: Tensor, target: Tensor, groups: Tensor | None, rank_weight: float = 1.0) -> Tensor:
    """Dispatch on ``kind`` in :data:`LOSS_KINDS`.

    Example::

        >>> pred, target = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 1.0])
        >>> plan_loss("ranking", pred, target, torch.tensor([7, 7]))
        tensor(0.3133)
        >>> plan_loss("huber", pred, target, None)
        Traceback (most recent call last):
        ...
        ValueError: loss must be one of ('regression', 'ranking', 'combined'), got 'huber'
    """
    if kind == "regression":
        return regression_loss(pred, target)
    if kind == "ranking":
        return ranking_loss(pred, target, groups)
    if kind == "combined":
        return combined_loss(pred, target, groups, rank_weight)
    raise ValueError(f"loss must be one of {LOSS_KINDS}, got {kind!r}")


def split_groups(gid: np.ndarray, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` holding out ``frac`` of the groups (queries) whole, so
    validation measures unseen queries, not near-duplicates of training plans.

    Example::

        >>> query_ids = np.array([3, 3, 5, 5, 5, 8, 9, 9])
        >>> tr, va = split_groups(query_ids, 0.25, np.random.default_rng(0))
        >>> tr.tolist(), va.tolist()  # one of four queries held out, all its plans
        ([0, 1, 2, 3, 4, 5], [6, 7])
    """
    uniq = np.unique(gid)
    if frac <= 0 or len(uniq) < 2:
        return np.arange(len(gid)), np.arange(0)
    n_val = min(len(uniq) - 1, max(1, int(round(frac * len(uniq)))))
    val_groups = rng.choice(uniq, size=n_val, replace=False)
    is_val = np.isin(gid, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def group_batches(gid: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled minibatches of plan indices made of whole groups (each at least
    ``batch_size`` plans but the last), so every same-query pair the ranking loss
    needs lies inside one batch.

    Example::

        >>> query_ids = np.array([3, 3, 5, 5, 5, 8, 9, 9])
        >>> [idx.tolist() for idx in group_batches(query_ids, 3, np.random.default_rng(0))]
        [[5, 0, 1], [2, 3, 4], [6, 7]]
    """
    order = np.argsort(gid, kind="stable")
    _, starts = np.unique(gid[order], return_index=True)
    members = np.split(order, starts[1:])
    batches: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for g in rng.permutation(len(members)):
        current.append(members[g])
        size += len(members[g])
        if size >= batch_size:
            batches.append(np.concatenate(current))
            current, size = [], 0
    if current:
        batches.append(np.concatenate(current))
    return batches
