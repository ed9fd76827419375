"""The model kinds behind :class:`~lqo.learn.models.PlanModel`, and the registry.

A kind supplies its network and its batching; everything else (fit, predict, save,
load) is the shared estimator. Adding a kind is a subclass and a registry entry.

Example::

    >>> model = make_model("tree_conv", loss="combined", epochs=50)
    >>> type(model).__name__, model.epochs
    ('TreeConvModel', 50)
    >>> model = load_model("example.lqo", expected_schema=catalog.fingerprint)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from lqo.errors import LqoError
from lqo.learn.checkpoint import load_checkpoint
from lqo.learn.featurized import FlatPlan
from lqo.learn.models import PlanModel
from lqo.learn.tree_conv import TreeConvNet, batch_tree


class TreeConvModel(PlanModel):
    """Tree convolution (Neo/Bao style), see :class:`~lqo.learn.tree_conv.TreeConvNet`.

    Example (``fit`` / ``predict`` as in :mod:`lqo.learn.models`)::

        >>> model = TreeConvModel(channels=(64, 64, 32), loss="ranking")
        >>> model.kind, model.get_params()["channels"], model.get_params()["loss"]
        ('tree_conv', [64, 64, 32], 'ranking')
    """

    kind = "tree_conv"

    def _build_net(self) -> nn.Module:
        return TreeConvNet(self.n_features_, self.n_query_, self.n_tables_, **self._net_params())

    @staticmethod
    def _batch(plans: Sequence[FlatPlan]) -> Any:
        return batch_tree(plans)


class GraphConvModel(PlanModel):
    """Graph convolution over plan tree + join graph; ``conv`` is ``"gine"`` or ``"gatv2"``.

    Example (``fit`` / ``predict`` as in :mod:`lqo.learn.models`)::

        >>> model = GraphConvModel(conv="gatv2")
        >>> model.kind, model.get_params()["conv"]
        ('graph_conv', 'gatv2')
    """

    kind = "graph_conv"
    _EXTRA_PARAMS = ("conv",)

    def __init__(self, *, conv: str = "gine", **params: Any) -> None:
        super().__init__(**params)
        self.conv = conv

    def _build_net(self) -> nn.Module:
        # Imported here: torch_geometric adds ~4 s to startup, paid only by graph models.
        from lqo.learn.graph_conv import GraphConvEnsemble

        return GraphConvEnsemble(self.n_features_, self.n_query_, self.n_tables_, conv=self.conv, **self._net_params())

    @staticmethod
    def _batch(plans: Sequence[FlatPlan]) -> Any:
        from lqo.learn.graph_conv import batch_graph

        return batch_graph(plans)


MODEL_KINDS: dict[str, type[PlanModel]] = {"tree_conv": TreeConvModel, "graph_conv": GraphConvModel}


def make_model(kind: str, **params: Any) -> PlanModel:
    """A fresh, unfitted model of ``kind`` (a key of :data:`MODEL_KINDS`).

    Example::

        >>> model = make_model("graph_conv", channels=(64, 64, 32), lr_schedule="cosine")
        >>> make_model("mlp")
        Traceback (most recent call last):
        ...
        ValueError: model kind must be one of ('tree_conv', 'graph_conv'), got 'mlp'
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {tuple(MODEL_KINDS)}, got {kind!r}")
    return MODEL_KINDS[kind](**params)


def load_model(path: str | os.PathLike[str], expected_schema: str | None = None) -> PlanModel:
    """The model saved at ``path``, of whatever registered kind it holds. Raises
    MissingFileError, SchemaMismatchError (when ``expected_schema`` differs) or LqoError."""
    ckpt = load_checkpoint(path, expected_schema)
    kind_cls = MODEL_KINDS.get(ckpt.kind)
    if kind_cls is None:
        raise LqoError(f"{path} holds an unknown model kind {ckpt.kind!r} (known: {', '.join(MODEL_KINDS)})")
    return kind_cls.from_checkpoint(ckpt, path)
