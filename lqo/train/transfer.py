"""Experience of other workloads joins training: the model sees more plan shapes.

A model trained on one workload has seen that workload's shapes only; an unseen template
of the same database often looks like none of them (and the feature-range guard then
refuses to force its plans). ``[transfer] from_models`` names other model directories
(``lqo train`` runs on other workloads, e.g. TPC-H beside TPC-DS): their measured plans,
featurized on *their* database with *its* statistics, are added to every fit.

What transfers is structure, not identity: a transferred plan's tables enter as unknown
(id 0), so TPC-H's ``customer`` does not teach the model anything about TPC-DS's
``customer``; where the other directory was trained on this very schema (another
instance set of the same database), table ids are kept and the queries of templates this
training holds out for testing are left out, so a held-out template stays unseen. The
source is read-only: its
database opened read-only, its experience read, its stats used (or rebuilt in memory when
they no longer match its data); nothing is written there.

>>> TransferConfig().from_models
[]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection

import numpy as np

from lqo.errors import LqoError, MissingFileError
from lqo.estimates.stats import DatabaseStats
from lqo.learn.features import Featurizer
from lqo.learn.featurized import FlatPlan
from lqo.model_dir import ModelDir, workload_store
from lqo.sql.catalog import Catalog
from lqo.train.samples import collect_samples
from lqo.trees.query import prepare_named
from lqo.workloads.workload import Workload

__all__ = ["TransferConfig", "TransferredSamples", "load_transferred"]


@dataclass
class TransferConfig:
    """``[transfer]``: other model directories whose experience joins training."""

    from_models: list[str] = field(default_factory=list)  # other model directories whose experience joins training


@dataclass(frozen=True)
class TransferredSamples:
    """Featurized plans of other workloads with their measured latencies, grouped by query."""

    plans: list[FlatPlan]
    latency_ms: np.ndarray  # (n,)
    query: list[str]  # (n,) "source:query id", the ranking loss's groups
    sources: list[str]  # one line per source model directory, for the log

    def __len__(self) -> int:
        return len(self.plans)


def load_transferred(config: TransferConfig, target_schema: str, target_vocab: dict[str, int],
                     log: Callable[[str], None] = print, held_out: Collection[str] = ()) -> TransferredSamples:
    """Samples of every model directory in ``config.from_models``; from a directory of
    the same schema, none of the templates in ``held_out`` (the target's test templates).

    A directory that is missing or holds no finished training is an error naming it
    (a recipe that asks for experience should not train silently without it).
    """
    plans: list[FlatPlan] = []
    ms: list[float] = []
    query: list[str] = []
    lines: list[str] = []
    for src in config.from_models:
        md = ModelDir(src)
        root = md.root
        state = md.read_train_state()
        if state is None:
            raise MissingFileError(f"transfer: {root} is not a trained model directory (no {md.train_state.name})")
        workload = Workload.load(state["workload"])
        con = workload.connect()
        try:
            catalog = Catalog.from_connection(con)
            stats = DatabaseStats.load_or_build(con, catalog, md.stats, save=False)
            same_schema = catalog.fingerprint == target_schema
            featurizer = Featurizer(stats, dict(target_vocab) if same_schema else {})
            prepared = {}
            for q in workload:
                if same_schema and q.template in held_out:
                    continue
                try:
                    pq = prepare_named(f"{q.id} ({q.path})", q.sql, con, catalog)
                except LqoError:  # a query lqo cannot read contributes nothing
                    continue
                if pq.forceable and pq.free_blocks:
                    prepared[q.id] = pq
            samples = collect_samples([md.store, workload_store(workload.root)], prepared)
        finally:
            con.close()
        for s in samples:
            plans.append(featurizer.featurize(prepared[s.query_id].graph, s.plan, s.forced))
            ms.append(s.latency_ms)
            query.append(f"{root.name}:{s.query_id}")
        n_queries = len({s.query_id for s in samples})
        lines.append(f"{root} ({workload.name}{', same schema' if same_schema else ''}): "
                     f"{len(samples)} plans of {n_queries} queries")
        log(f"transfer: {lines[-1]}")
    return TransferredSamples(plans, np.asarray(ms, dtype=np.float64), query, lines)

