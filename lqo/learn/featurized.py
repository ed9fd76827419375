"""The boundary type between featurization and models: one plan as flat arrays.

A plan (all join blocks of a query) is one binary tree. Block trees are chained under
``BLOCK`` nodes so a whole-query plan is a single tree. Node 0 of every plan is the
all-zero *null* node: a missing child points at it (the Neo/Bao flat-tree layout, which
lets tree convolution gather children with one index operation per batch).

Node kinds (one-hot in the first ``N_KINDS`` features): ``SCAN`` (a base table, CTE or
derived table leaf), ``JOIN`` (hash join: left = probe, right = build), ``BLOCK``.

The query's join graph travels alongside: one vertex per relation of every block
(the same order as the SCAN nodes) and undirected key edges, for graph convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NULL, SCAN, JOIN, BLOCK = 0, 1, 2, 3
N_KINDS = 4


@dataclass
class FlatPlan:
    """One featurized plan.

    - ``x``: float32 [n_nodes, n_features]; row 0 is all zeros (the null node).
    - ``left`` / ``right``: int64 [n_nodes]; child indices, 0 for none. For a JOIN,
      ``left`` is the probe child and ``right`` the build child.
    - ``table``: int64 [n_nodes]; table-vocabulary id of SCAN nodes (0 = unknown/none),
      for a learned table embedding.
    - ``query``: float32 [n_query_features]; a per-query vector (join-graph summary).
    - ``rel_nodes``: int64 [n_rels]; the SCAN node index of each join-graph vertex.
    - ``edges``: int64 [2, n_edges]; join-graph edges between vertices (both directions).
    """

    x: np.ndarray
    left: np.ndarray
    right: np.ndarray
    table: np.ndarray
    query: np.ndarray
    rel_nodes: np.ndarray
    edges: np.ndarray

    @property
    def n_nodes(self) -> int:
        """Nodes in the flattened plan, the null node included."""
        return int(self.x.shape[0])

    def validate(self) -> None:
        """Assert the arrays' shapes, types and links are consistent (for tests and debugging)."""
        n = self.n_nodes
        assert self.x.ndim == 2 and self.x.dtype == np.float32 and not self.x[0].any()
        for a in (self.left, self.right, self.table):
            assert a.shape == (n,) and a.dtype == np.int64
        assert self.left.max(initial=0) < n and self.right.max(initial=0) < n
        assert self.edges.ndim == 2 and self.edges.shape[0] == 2
        assert self.rel_nodes.max(initial=0) < n


def example_join(a: float, b: float) -> FlatPlan:
    """A tiny plan for examples and tests: the null node, scans of ``a`` and ``b`` rows
    and their hash join, with two features per node (kind, rows).

    >>> example_join(1.0, 2.0).x.shape
    (4, 2)
    """
    return FlatPlan(np.array([[0, 0], [1, a], [1, b], [2, a + b]], np.float32),
                    left=np.array([0, 0, 0, 1]), right=np.array([0, 0, 0, 2]),
                    table=np.array([0, 1, 2, 0]), query=np.ones(3, np.float32),
                    rel_nodes=np.array([1, 2]), edges=np.array([[0, 1], [1, 0]]))
