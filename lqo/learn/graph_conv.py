"""Graph convolution over a plan plus its query's join graph (torch-geometric).

Each real plan node (the null node is dropped) is a graph vertex. Edges, typed by a
one-hot ``edge_attr``:

- ``EDGE_PROBE`` / ``EDGE_BUILD``: tree edges child -> parent, so information flows up
  the plan the way rows do, and the two sides of a hash join stay distinguishable;
- ``EDGE_JOIN``: the query's join-graph edges between the SCAN nodes of joined
  relations (both directions), so relations that share a key can exchange features
  even when the plan puts them far apart (that is what a bad join order does).

:func:`batch_graph` builds a ``torch_geometric.data.Batch`` straight from numpy
concatenations (no per-plan ``Data`` objects), which is several times faster than
``Batch.from_data_list`` for the ~50-plan batches that plan search scores.

Example::

    >>> from lqo.learn.featurized import example_join as toy
    >>> plans = [toy(1.0, 2.0), toy(2.0, 1.0)]
    >>> batch = batch_graph(plans)
    >>> net = GraphConvNet(n_features=batch.x.shape[1], n_query=batch.query.shape[1], n_tables=32)
    >>> net(batch).shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GATv2Conv, GINEConv, MessagePassing, global_max_pool, global_mean_pool

from lqo.learn.featurized import FlatPlan
from lqo.learn.tree_conv import NodeEncoder

EDGE_PROBE, EDGE_BUILD, EDGE_JOIN = 0, 1, 2
N_EDGE_TYPES = 3
CONV_KINDS = ("gine", "gatv2")


def _graph_arrays(plans: Sequence[FlatPlan]) -> dict[str, Tensor]:
    """The stacked graph of many plans, every plan's nodes shifted past the previous plans'."""
    if not plans:
        raise ValueError("batch_graph needs at least one plan")
    real = np.fromiter((p.n_nodes - 1 for p in plans), dtype=np.int64, count=len(plans))
    node_off = np.zeros(len(plans), dtype=np.int64)
    np.cumsum(real[:-1], out=node_off[1:])
    # A local index i >= 1 becomes node_off + i - 1 once row 0 (null) is dropped.
    shift = np.repeat(node_off - 1, real)
    parent = np.arange(int(real.sum()), dtype=np.int64)
    src, dst, kind = [], [], []
    for etype, attr in ((EDGE_PROBE, "left"), (EDGE_BUILD, "right")):
        child = np.concatenate([getattr(p, attr)[1:] for p in plans])
        has = child > 0
        src.append(child[has] + shift[has])
        dst.append(parent[has])
        kind.append(np.full(int(has.sum()), etype, dtype=np.int64))
    n_rels = np.fromiter((p.rel_nodes.shape[0] for p in plans), dtype=np.int64, count=len(plans))
    n_edges = np.fromiter((p.edges.shape[1] for p in plans), dtype=np.int64, count=len(plans))
    rel_global = np.concatenate([p.rel_nodes for p in plans]) + np.repeat(node_off - 1, n_rels)
    rel_off = np.zeros(len(plans), dtype=np.int64)
    np.cumsum(n_rels[:-1], out=rel_off[1:])
    jedges = np.concatenate([p.edges for p in plans], axis=1) + np.repeat(rel_off, n_edges)
    src.append(rel_global[jedges[0]])
    dst.append(rel_global[jedges[1]])
    kind.append(np.full(jedges.shape[1], EDGE_JOIN, dtype=np.int64))
    edge_type = torch.from_numpy(np.concatenate(kind))
    return {
        "x": torch.from_numpy(np.concatenate([p.x[1:] for p in plans]).astype(np.float32, copy=False)),
        "table": torch.from_numpy(np.concatenate([p.table[1:] for p in plans])),
        "query": torch.from_numpy(np.stack([p.query for p in plans]).astype(np.float32, copy=False)),
        "edge_index": torch.from_numpy(np.stack([np.concatenate(src), np.concatenate(dst)])),
        "edge_attr": nn.functional.one_hot(edge_type, N_EDGE_TYPES).to(torch.float32),
        "counts": torch.from_numpy(real),
    }


def plan_to_data(plan: FlatPlan) -> Data:
    """One plan as a ``torch_geometric.data.Data`` (``query`` has shape [1, Q] so it collates).

    Example::

        >>> from lqo.learn.featurized import example_join as toy
        >>> data = plan_to_data(toy(1.0, 2.0))
        >>> data.num_nodes, data.edge_attr.argmax(1).tolist()  # null dropped; probe, build, 2 join-graph edges
        (3, [0, 1, 2, 2])
        >>> plans = [toy(1.0, 2.0), toy(2.0, 1.0)]
        >>> Batch.from_data_list([plan_to_data(p) for p in plans]).num_edges == batch_graph(plans).num_edges
        True
    """
    arrays = _graph_arrays([plan])
    del arrays["counts"]
    return Data(**arrays)


def batch_graph(plans: Sequence[FlatPlan]) -> Batch:
    """Many plans as one ``Batch`` with ``x``, ``table``, ``edge_index``, ``edge_attr``,
    ``query`` [B, Q], ``batch`` and ``ptr``. Built without slice bookkeeping, so
    ``to_data_list()`` is not available on it; use :func:`plan_to_data` for that.

    Example::

        >>> from lqo.learn.featurized import example_join as toy
        >>> plans = [toy(1.0, 2.0), toy(2.0, 1.0), toy(3.0, 1.0)]
        >>> b = batch_graph(plans)
        >>> b.num_graphs == len(plans), b.ptr.tolist(), b.query.shape
        (True, [0, 3, 6, 9], torch.Size([3, 3]))
    """
    arrays = _graph_arrays(plans)
    counts = arrays.pop("counts")
    ptr = torch.zeros(len(plans) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=ptr[1:])
    batch = torch.repeat_interleave(torch.arange(len(plans)), counts)
    return Batch(**arrays, batch=batch, ptr=ptr)


class GraphConvNet(nn.Module):
    """Encoder -> graph convs (default 64-64-32, GINE or GATv2, each + optional LayerNorm
    + LeakyReLU) -> per-plan max and mean pooling -> MLP head -> one score per plan.

    GINE (sum aggregation) is the default: it can count, e.g. how many large inputs
    feed a join, which attention-normalized GATv2 cannot; both see the edge type.
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
        conv: str = "gine",
        norm: bool = False,
    ) -> None:
        super().__init__()
        if conv not in CONV_KINDS:
            raise ValueError(f"conv must be one of {CONV_KINDS}, got {conv!r}")
        self.encoder = NodeEncoder(n_features, n_query, n_tables, table_dim)
        dims = [self.encoder.out_channels, *channels]
        self.convs = nn.ModuleList()
        for a, b in zip(dims[:-1], dims[1:]):
            if conv == "gine":
                mlp = nn.Sequential(nn.Linear(a, b), nn.LeakyReLU(0.01), nn.Linear(b, b))
                self.convs.append(GINEConv(mlp, train_eps=True, edge_dim=N_EDGE_TYPES))
            else:
                self.convs.append(GATv2Conv(a, b, edge_dim=N_EDGE_TYPES, add_self_loops=True))
        self.norms = nn.ModuleList((nn.LayerNorm(b) if norm else nn.Identity()) for b in dims[1:])
        self.act = nn.LeakyReLU(0.01)
        self.head = nn.Sequential(
            nn.Linear(2 * dims[-1], hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise every layer."""
        self.encoder.reset_parameters()
        for conv, norm in zip(self.convs, self.norms):
            cast(MessagePassing, conv).reset_parameters()  # a ModuleList's items are typed Module
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()
        for layer in self.head:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def set_scaling(self, x_mean: Tensor, x_std: Tensor, q_mean: Tensor, q_std: Tensor) -> None:
        """Set the feature standardisation (means and deviations of the training data)."""
        self.encoder.set_scaling(x_mean, x_std, q_mean, q_std)

    def forward(self, batch: Batch) -> Tensor:
        """One score per plan of ``batch``."""
        n_plans = int(batch.num_graphs)
        h = self.encoder(batch.x, batch.table, batch.query, batch.batch)[0]
        for conv, norm in zip(self.convs, self.norms):
            h = self.act(norm(conv(h, batch.edge_index, batch.edge_attr)))
        pooled = torch.cat(
            [global_max_pool(h, batch.batch, size=n_plans), global_mean_pool(h, batch.batch, size=n_plans)], dim=1
        )
        return self.head(pooled).squeeze(1)


class GraphConvEnsemble(nn.ModuleList):
    """``members`` independent :class:`GraphConvNet` s; ``forward`` gives [members, B].

    PyG's message-passing layers cannot stack members' weights the way
    :class:`~lqo.learn.tree_conv.TreeConvNet` does, so the members simply run in turn.
    """

    def __init__(self, n_features: int, n_query: int, n_tables: int, *, members: int = 1, **kwargs: Any) -> None:
        super().__init__(GraphConvNet(n_features, n_query, n_tables, **kwargs) for _ in range(members))

    def set_scaling(self, x_mean: Tensor, x_std: Tensor, q_mean: Tensor, q_std: Tensor) -> None:
        """Set the feature standardisation of every member."""
        for net in self:
            cast(GraphConvNet, net).set_scaling(x_mean, x_std, q_mean, q_std)  # a ModuleList's items are typed Module

    def forward(self, batch: Batch) -> Tensor:
        """Every member's scores, stacked (members x plans)."""
        return torch.stack([net(batch) for net in self])
