"""Tree convolution over flat plans (the Neo/Bao value-network idea), vectorized per batch.

A batch of :class:`~lqo.learn.featurized.FlatPlan` s becomes one big node array: every
plan's rows are stacked and its child indices shifted by the plan's offset, so a missing
child (index 0) lands on that plan's own all-zero null row. One tree-conv layer is then
two gathers, one concat and one matmul for the whole batch, never a Python loop per node.

Example::

    >>> batch = batch_tree(plans)                      # plans: list[FlatPlan]
    >>> net = TreeConvNet(n_features=batch.x.shape[1], n_query=batch.query.shape[1], n_tables=32)
    >>> net(batch).shape                               # one score per plan
    torch.Size([len(plans)])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from lqo.learn.featurized import FlatPlan


class TreeBatch(NamedTuple):
    """Many plans in one index space (what :func:`batch_tree` returns).

    ``x`` [N, F] node features (null rows zero); ``nbr`` [N, 3] global indices of
    (node, left child, right child); ``table`` [N] table ids; ``query`` [B, Q];
    ``plan`` [N] the plan of each node; ``mask`` [N, 1] float, 0 on null rows;
    ``n_plans`` = B.
    """

    x: Tensor
    nbr: Tensor
    table: Tensor
    query: Tensor
    plan: Tensor
    mask: Tensor
    n_plans: int


def batch_tree(plans: Sequence[FlatPlan]) -> TreeBatch:
    """Stack plans into one :class:`TreeBatch`, offsetting child indices per plan.

    Example::

        >>> b = batch_tree([p1, p2])
        >>> int(b.mask.sum()) == p1.n_nodes + p2.n_nodes - 2   # the two null rows
        True
    """
    if not plans:
        raise ValueError("batch_tree needs at least one plan")
    sizes = np.fromiter((p.n_nodes for p in plans), dtype=np.int64, count=len(plans))
    offsets = np.zeros(len(plans), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    shift = np.repeat(offsets, sizes)
    nbr = np.empty((len(shift), 3), dtype=np.int64)
    nbr[:, 0] = np.arange(len(shift))
    nbr[:, 1] = np.concatenate([p.left for p in plans]) + shift
    nbr[:, 2] = np.concatenate([p.right for p in plans]) + shift
    mask = np.ones(int(sizes.sum()), dtype=np.float32)
    mask[offsets] = 0.0
    return TreeBatch(
        x=torch.from_numpy(np.concatenate([p.x for p in plans])),
        nbr=torch.from_numpy(nbr),
        table=torch.from_numpy(np.concatenate([p.table for p in plans])),
        query=torch.from_numpy(np.stack([p.query for p in plans]).astype(np.float32, copy=False)),
        plan=torch.from_numpy(np.repeat(np.arange(len(plans), dtype=np.int64), sizes)),
        mask=torch.from_numpy(mask).unsqueeze(1),
        n_plans=len(plans),
    )


class NodeEncoder(nn.Module):
    """Per-node input: standardized features, a table embedding and the plan's query vector.

    The query vector is repeated on every node (as in Neo) so each convolution can
    condition on the whole query, not only on the pooled head. Standardization stats
    are buffers set once at fit time (:meth:`set_scaling`) so they travel with the
    weights in a checkpoint. Table ids outside the vocabulary fall back to 0 (unknown).
    """

    def __init__(self, n_features: int, n_query: int, n_tables: int, table_dim: int = 8) -> None:
        super().__init__()
        self.n_features, self.n_query, self.n_tables = n_features, n_query, max(1, n_tables)
        self.table_emb = nn.Embedding(self.n_tables, table_dim)
        self.out_channels = n_features + table_dim + n_query
        self.register_buffer("x_mean", torch.zeros(n_features))
        self.register_buffer("x_std", torch.ones(n_features))
        self.register_buffer("q_mean", torch.zeros(n_query))
        self.register_buffer("q_std", torch.ones(n_query))

    def reset_parameters(self) -> None:
        # A small init keeps the embedding on the scale of the standardized features.
        nn.init.normal_(self.table_emb.weight, std=0.1)

    def set_scaling(self, x_mean: Tensor, x_std: Tensor, q_mean: Tensor, q_std: Tensor) -> None:
        self.x_mean.copy_(x_mean)
        self.x_std.copy_(x_std)
        self.q_mean.copy_(q_mean)
        self.q_std.copy_(q_std)

    def forward(self, x: Tensor, table: Tensor, query: Tensor, plan: Tensor) -> Tensor:
        table = torch.where(table < self.n_tables, table, torch.zeros_like(table))
        q = (query - self.q_mean) / self.q_std
        return torch.cat([(x - self.x_mean) / self.x_std, self.table_emb(table), q[plan]], dim=1)


class TreeConv(nn.Module):
    """One tree-convolution layer: a triangular filter over (node, left child, right child).

    ``out = act(norm(W · concat(x_node, x_left, x_right) + b))``, null rows reset to zero
    afterwards so the next layer still sees a missing child as zeros. ``nbr`` [N, 3]
    holds each node's (self, left, right) row, so the filter input is a single gather.

    Example::

        >>> conv = TreeConv(16, 64)
        >>> h = conv(x, batch.nbr, batch.mask)   # x: [N, 16] -> [N, 64]
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: bool = True, act: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin = nn.Linear(3 * in_channels, out_channels)
        self.norm = nn.LayerNorm(out_channels) if norm else None
        self.act = nn.LeakyReLU(0.01) if act else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, x: Tensor, nbr: Tensor, mask: Tensor | None = None) -> Tensor:
        # One flat gather viewed as [N, 3C] is concat(x_node, x_left, x_right); index_select
        # on the flat index is ~4x faster on CPU than advanced indexing with x[nbr].
        h = self.lin(x.index_select(0, nbr.view(-1)).view(nbr.shape[0], 3 * x.shape[1]))
        if self.norm is not None:
            h = self.norm(h)
        if self.act is not None:
            h = self.act(h)
        return h if mask is None else h * mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"


def dynamic_pool(h: Tensor, plan: Tensor, mask: Tensor, n_plans: int) -> Tensor:
    """Max over the real (non-null) nodes of each plan: [N, C] -> [B, C].

    Null rows are pushed to -inf first, since after a LeakyReLU a real node's channel
    can be negative and a zero null row would otherwise win the max.
    """
    h = h.masked_fill(mask == 0, float("-inf"))
    out = h.new_full((n_plans, h.shape[1]), float("-inf"))
    return out.scatter_reduce(0, plan.unsqueeze(1).expand_as(h), h, reduce="amax", include_self=True)


class TreeConvNet(nn.Module):
    """Encoder -> TreeConv stack (default 64-64-32) -> dynamic max pooling -> MLP head -> 1.

    Returns one unbounded score per plan (the model is trained on standardized
    log latency). ``norm`` toggles the per-node LayerNorm inside every TreeConv.
    """

    def __init__(
        self,
        n_features: int,
        n_query: int,
        n_tables: int,
        *,
        channels: Sequence[int] = (64, 64, 32),
        table_dim: int = 8,
        hidden: int = 32,
        dropout: float = 0.0,
        norm: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = NodeEncoder(n_features, n_query, n_tables, table_dim)
        dims = [self.encoder.out_channels, *channels]
        self.convs = nn.ModuleList(TreeConv(a, b, norm=norm) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Sequential(
            nn.Linear(dims[-1], hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, batch: TreeBatch) -> Tensor:
        h = self.encoder(batch.x, batch.table, batch.query, batch.plan) * batch.mask
        for conv in self.convs:
            h = conv(h, batch.nbr, batch.mask)
        return self.head(dynamic_pool(h, batch.plan, batch.mask, batch.n_plans)).squeeze(1)
