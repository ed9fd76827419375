"""Plan featurization: a ``Plan`` over a ``QueryGraph`` -> ``FlatPlan`` arrays.

Every node carries lqo's own estimates (``lqo.estimates.cardinality``), since DuckDB shows none
for a forced tree. Rows enter as ``ln(1 + rows) / 10`` (1e9 rows -> 2.1), ratios as
``ln(a / b) / 10``, small counts as they are.

Node layout (``feature_names()``): node 0 is the null node; node 1 is the root, the last
``BLOCK`` node; the BLOCK chain follows (``left`` = the previous block's BLOCK node,
``right`` = the block's tree), then each block's tree in pre-order (JOIN ``left`` =
probe, ``right`` = build). ``table`` holds vocabulary ids of base-table SCAN nodes
(0 = unknown, CTE or derived). Join-graph vertices are the SCAN nodes in node order;
edges join relations of one block that share a key class, both directions.

>>> fz = Featurizer(stats)  # doctest: +SKIP
>>> flat = fz.featurize(graph, plan)  # doctest: +SKIP
>>> flat.validate(); flat.x.shape  # doctest: +SKIP
(24, 22)
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from lqo.estimates.cardinality import Estimator
from lqo.estimates.stats import DatabaseStats
from lqo.learn.featurized import BLOCK, JOIN, N_KINDS, SCAN, FlatPlan
from lqo.sql.join_graph import JoinBlock, QueryGraph
from lqo.trees.plan import Join, Leaf, Plan, Tree, leaves

_NODE_FEATURES = [
    "kind_null", "kind_scan", "kind_join", "kind_block",
    "log_rows",  # estimated output rows of the node (SCAN: after filters; BLOCK: the block's join)
    "log_cost",  # sum of estimated join outputs in the subtree (BLOCK: the chain so far too)
    "scan_log_table_rows", "scan_selectivity", "scan_log_selectivity",
    "scan_is_table", "scan_is_cte", "scan_is_derived", "scan_n_filters",
    "join_log_probe_rows", "join_log_build_rows", "join_log_build_over_probe",
    "join_log_out_over_probe", "join_n_key_classes", "join_is_cross", "join_n_residuals",
    "block_n_relations", "block_n_key_classes",
]
_QUERY_FEATURES = [
    "log_n_blocks", "log_n_relations", "log_n_tables", "log_n_ctes", "log_n_derived",
    "log_n_key_classes", "log_n_filters", "log_n_residuals", "log_n_selects",
    "max_block_relations", "sum_log_table_rows", "max_log_table_rows",
    "sum_log_scan_rows", "mean_log_selectivity", "max_log_block_rows",
    "forced",  # 1: run with lqo's forcing settings; 0: the text as written (native kept)
]
_F = {name: i for i, name in enumerate(_NODE_FEATURES)}
N_NODE_FEATURES = len(_NODE_FEATURES)
N_QUERY_FEATURES = len(_QUERY_FEATURES)
_CACHED_GRAPHS = 256


def _lg(rows: float) -> float:
    return math.log1p(max(rows, 0.0)) * 0.1


class _GraphInfo:
    """What featurizing any plan of one graph shares: the estimator and per-block facts."""

    def __init__(self, graph: QueryGraph, est: Estimator, vocab: dict[str, int]) -> None:
        self.graph = graph
        self.est = est
        self.blocks = {b.index: b for b in graph.blocks}
        self.scan_rows: dict[tuple[int, str], list[float]] = {}
        self.table_id: dict[tuple[int, str], int] = {}
        self.class_sets: dict[int, list[frozenset[str]]] = {}
        self.pairs: dict[int, list[tuple[str, str]]] = {}
        self.query: dict[tuple[int, ...], np.ndarray] = {}
        self.fragments: dict[tuple[int, Tree], tuple] = {}  # (block, tree) -> featurized tree
        for b in graph.blocks:
            if b.unsafe:
                continue
            sets = [frozenset(c.rel for c in cls) for cls in b.classes]
            self.class_sets[b.index] = sets
            self.pairs[b.index] = sorted({(x, y) for s in sets for x in s for y in s if x < y})
            for r in b.relations:
                base, sel, rows = est.scan(b, r.alias)
                x = [0.0] * N_NODE_FEATURES
                x[SCAN] = 1.0
                x[_F["log_rows"]] = _lg(rows)
                x[_F["scan_log_table_rows"]] = _lg(base)
                x[_F["scan_selectivity"]] = sel
                x[_F["scan_log_selectivity"]] = math.log(max(sel, 1e-12)) * 0.1
                x[_F["scan_is_" + r.kind]] = 1.0
                x[_F["scan_n_filters"]] = float(len(b.filters.get(r.alias, [])))
                self.scan_rows[(b.index, r.alias)] = x
                self.table_id[(b.index, r.alias)] = vocab.get(r.name or "", 0) if r.kind == "table" else 0

    def query_vector(self, blocks: list[JoinBlock]) -> np.ndarray:
        key = tuple(b.index for b in blocks)
        hit = self.query.get(key)
        if hit is None:
            rels = [(b, r) for b in blocks for r in b.relations]
            scans = [self.est.scan(b, r.alias) for b, r in rels]
            lg = lambda n: math.log1p(n)  # noqa: E731
            q = [
                lg(len(blocks)), lg(len(rels)),
                lg(sum(r.kind == "table" for _, r in rels)), lg(sum(r.kind == "cte" for _, r in rels)),
                lg(sum(r.kind == "derived" for _, r in rels)),
                lg(sum(len(b.classes) for b in blocks)),
                lg(sum(len(f) for b in blocks for f in b.filters.values())),
                lg(sum(len(b.residuals) for b in blocks)), lg(self.graph.n_selects),
                float(max((len(b.relations) for b in blocks), default=0)),
                sum(_lg(s[0]) for s in scans), max((_lg(s[0]) for s in scans), default=0.0),
                sum(_lg(s[2]) for s in scans),
                sum(math.log(max(s[1], 1e-12)) * 0.1 for s in scans) / max(len(scans), 1),
                max((_lg(self.est.block_rows(b)) for b in blocks), default=0.0),
            ]
            hit = np.asarray(q, dtype=np.float32)
            self.query[key] = hit
        return hit


class Featurizer:
    """Turns plans into ``FlatPlan`` arrays using lqo's statistics and estimator.

    The table vocabulary defaults to the stats' table names, sorted, numbered from 1
    (0 = unknown); save ``vocabulary`` with a model and pass it back to reuse the ids.

    >>> fz = Featurizer(stats)  # doctest: +SKIP
    >>> flats = [fz.featurize(graph, p) for p in plans]  # doctest: +SKIP
    """

    def __init__(self, stats: DatabaseStats, table_vocab: dict[str, int] | None = None,
                 forced_flag: bool = True) -> None:
        self.stats = stats
        # Models trained before the ``forced`` query feature existed read one entry less.
        self.forced_flag = forced_flag
        if table_vocab is None:
            table_vocab = {t: i + 1 for i, t in enumerate(sorted(stats.tables))}
        self._vocab = dict(table_vocab)
        # Plans of one query are featurized many times over (search, training): keep
        # each graph's estimator and static features, keyed by identity.
        self._graphs: OrderedDict[int, _GraphInfo] = OrderedDict()

    @property
    def vocabulary(self) -> dict[str, int]:
        """The table vocabulary (name -> embedding index), a copy."""
        return dict(self._vocab)

    @staticmethod
    def feature_names() -> list[str]:
        """Names of the node feature columns of ``FlatPlan.x``."""
        return list(_NODE_FEATURES)

    @staticmethod
    def query_feature_names() -> list[str]:
        """Names of the entries of ``FlatPlan.query``; a featurizer with ``forced_flag``
        off (for checkpoints older than the ``forced`` feature) emits all but the last."""
        return list(_QUERY_FEATURES)

    def estimator(self, graph: QueryGraph) -> Estimator:
        """The (cached) estimator this featurizer uses for ``graph``."""
        return self._info(graph).est

    def _info(self, graph: QueryGraph) -> _GraphInfo:
        info = self._graphs.get(id(graph))
        if info is not None and info.graph is graph:
            self._graphs.move_to_end(id(graph))
            return info
        info = _GraphInfo(graph, Estimator(self.stats, graph), self._vocab)
        self._graphs[id(graph)] = info
        while len(self._graphs) > _CACHED_GRAPHS:
            self._graphs.popitem(last=False)
        return info

    def featurize(self, graph: QueryGraph, plan: Plan, forced: bool = True) -> FlatPlan:
        """Flatten ``plan`` (one tree per reorderable block of ``graph``); ``forced`` says
        whether it runs under lqo's forcing settings (False only for the native plan run
        as written: forcing DuckDB's own tree costs 1.09x median, 14x on TPC-DS q06).

        Raises ``ValueError`` if a tree names an unknown block or does not cover its block.
        """
        info = self._info(graph)
        blocks = _plan_blocks(info, plan)
        k = len(blocks)
        # Nodes: 0 null, 1..k the BLOCK chain (1 = root = last block), then each block's
        # tree in pre-order. A block's tree is a cached fragment: search scores many
        # plans that differ in one block only, and the others are copied, not rebuilt.
        xs: list[list[float]] = [[0.0] * N_NODE_FEATURES] + [None] * k  # type: ignore[list-item]
        left = [0] * (k + 1)
        right = [0] * (k + 1)
        table = [0] * (k + 1)
        vertex: dict[tuple[int, str], int] = {}
        rel_nodes: list[int] = []
        est = info.est
        chain_cost = 0.0
        for pos, (block, (_, tree)) in enumerate(zip(blocks, plan.trees)):
            frag = info.fragments.get((block.index, tree))
            if frag is None:
                frag = self._fragment(info, block, tree)
                info.fragments[(block.index, tree)] = frag
            rows, tables, lefts, rights, leaf_aliases, cost = frag
            base = len(xs)
            xs.extend(rows)
            table.extend(tables)
            left.extend(base + i if i >= 0 else 0 for i in lefts)
            right.extend(base + i if i >= 0 else 0 for i in rights)
            for i, alias in leaf_aliases:
                vertex[(block.index, alias)] = len(rel_nodes)
                rel_nodes.append(base + i)
            node = k - pos
            left[node] = node + 1 if pos > 0 else 0
            right[node] = base
            chain_cost += cost
            xs[node] = _block_features(est.block_rows(block), chain_cost, block)
        edges = [(vertex[(b.index, x)], vertex[(b.index, y)]) for b in blocks for x, y in info.pairs[b.index]]
        edge_arr = np.array(edges + [(v, u) for u, v in edges], dtype=np.int64).reshape(-1, 2).T
        return FlatPlan(
            x=np.array(xs, dtype=np.float32),
            left=np.array(left, dtype=np.int64),
            right=np.array(right, dtype=np.int64),
            table=np.array(table, dtype=np.int64),
            query=(np.append(info.query_vector(blocks), np.float32(forced)) if self.forced_flag
                   else info.query_vector(blocks).copy()),
            rel_nodes=np.array(rel_nodes, dtype=np.int64),
            edges=np.ascontiguousarray(edge_arr),
        )

    def _fragment(self, info: "_GraphInfo", block: JoinBlock, tree: Tree):
        """One block's tree in pre-order with child positions relative to its first node
        (-1 for none): (rows, table ids, lefts, rights, [(position, alias)], C_out cost)."""
        rows: list[list[float]] = []
        tables: list[int] = []
        lefts: list[int] = []
        rights: list[int] = []
        leaf_aliases: list[tuple[int, str]] = []

        def emit(t: Tree) -> tuple[int, float]:
            i = len(rows)
            rows.append([])
            lefts.append(-1)
            rights.append(-1)
            if isinstance(t, Leaf):
                key = (block.index, t.rel)
                rows[i] = info.scan_rows[key]
                tables.append(info.table_id[key])
                leaf_aliases.append((i, t.rel))
                return i, 0.0
            tables.append(0)
            lefts[i], pcost = emit(t.probe)
            rights[i], bcost = emit(t.build)
            rows[i], cost = self._join_row(info, block, t, pcost + bcost)
            return i, cost

        _, cost = emit(tree)
        return rows, tables, lefts, rights, leaf_aliases, cost

    @staticmethod
    def _join_row(info: _GraphInfo, block: JoinBlock, tree: Join, child_cost: float) -> tuple[list[float], float]:
        est = info.est
        lrels, rrels = tree.probe.rels, tree.build.rels
        out = est.join_rows(block, lrels | rrels)
        probe = est.join_rows(block, lrels)
        build = est.join_rows(block, rrels)
        n_keys = sum(1 for s in info.class_sets[block.index] if not s.isdisjoint(lrels) and not s.isdisjoint(rrels))
        both = lrels | rrels
        n_res = sum(1 for r in block.residuals if r.rels <= both and not r.rels <= lrels and not r.rels <= rrels)
        cost = child_cost + out
        x = [0.0] * N_NODE_FEATURES
        x[JOIN] = 1.0
        x[_F["log_rows"]] = _lg(out)
        x[_F["log_cost"]] = _lg(cost)
        x[_F["join_log_probe_rows"]] = _lg(probe)
        x[_F["join_log_build_rows"]] = _lg(build)
        x[_F["join_log_build_over_probe"]] = math.log(build / probe) * 0.1
        x[_F["join_log_out_over_probe"]] = math.log(out / probe) * 0.1
        x[_F["join_n_key_classes"]] = float(n_keys)
        x[_F["join_is_cross"]] = float(n_keys == 0 and n_res == 0)
        x[_F["join_n_residuals"]] = float(n_res)
        return x, cost


# The kind one-hot columns are indexed by featurized's kind constants.
assert N_KINDS == 4 and [_F["kind_scan"], _F["kind_join"], _F["kind_block"]] == [SCAN, JOIN, BLOCK]


def _plan_blocks(info: "_GraphInfo", plan: Plan) -> list[JoinBlock]:
    """The reorderable blocks ``plan``'s trees stand for, in its order; ``ValueError`` if a
    tree names an unknown block or does not cover its block."""
    blocks: list[JoinBlock] = []
    for index, tree in plan.trees:
        block = info.blocks.get(index)
        if block is None or block.unsafe:
            raise ValueError(f"plan names block {index}, which is not a reorderable block of the query")
        names = leaves(tree)
        if len(names) != len(block.relations) or set(names) != set(block.aliases):
            raise ValueError(f"tree {tree} does not cover block {index} ({', '.join(block.aliases)})")
        blocks.append(block)
    return blocks


def _block_features(rows: float, chain_cost: float, block: JoinBlock) -> list[float]:
    """A BLOCK chain node: its estimated rows, the cost of the chain so far, its size."""
    x = [0.0] * N_NODE_FEATURES
    x[BLOCK] = 1.0
    x[_F["log_rows"]] = _lg(rows)
    x[_F["log_cost"]] = _lg(chain_cost)
    x[_F["block_n_relations"]] = float(len(block.relations))
    x[_F["block_n_key_classes"]] = float(len(block.classes))
    return x
