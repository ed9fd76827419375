"""Which queries a scheduling policy trains on and which it is judged on.

A policy judged on the queries it trained on proves nothing: it may have memorised them.
``split_workloads`` holds some out, by the same rules as ``lqo tune`` (templates are
grouped by :func:`~lqo.book.template.template_key`, instances sorted by id):

- ``none``: train and test on everything (the old, optimistic protocol);
- ``instances``: the first ``train_instances`` instances of every template train, the
  others are held out: a recurring workload's new constants;
- ``templates:K`` (K = 0 or 1): every other template (by first instance id, those at an
  index with parity K) is held out whole, the first ``train_instances`` instances of the
  rest train. The held-out side keeps only instances past ``train_instances`` as well,
  so both protocols test on instances that no step of training could have run.

A template with one instance (or none past ``train_instances``) has nothing to hold out
under ``instances``; its instances then only train.

>>> HOLDOUTS
('none', 'instances', 'templates:0', 'templates:1')
>>> check_holdout("templates:2")
Traceback (most recent call last):
...
lqo.errors.LqoError: bad holdout 'templates:2' (choose from none, instances, templates:0, templates:1)
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from lqo.book.template import template_key
from lqo.errors import LqoError
from lqo.workloads.workload import Query, Workload

HOLDOUTS: tuple[str, ...] = ("none", "instances", "templates:0", "templates:1")


def check_holdout(holdout: str) -> str:
    """``holdout`` if it is one of ``HOLDOUTS``; ``LqoError`` naming the choices otherwise."""
    if holdout not in HOLDOUTS:
        raise LqoError(f"bad holdout {holdout!r} (choose from {', '.join(HOLDOUTS)})")
    return holdout


def template_groups(workload: Workload) -> list[list[Query]]:
    """The workload's queries grouped by template key, each group sorted by id, the groups
    ordered by their first id (the order ``templates:K`` counts parity in)."""
    groups: dict[str, list[Query]] = defaultdict(list)
    for q in workload:
        groups[template_key(q.sql).key].append(q)
    return sorted((sorted(g, key=lambda q: q.id) for g in groups.values()), key=lambda g: g[0].id)


def split_workload(workload: Workload, holdout: str, train_instances: int = 3) -> tuple[Workload, Workload | None]:
    """(train, test) subsets of ``workload`` under ``holdout``; test is None for ``none``
    or when nothing is left to hold out."""
    check_holdout(holdout)
    if train_instances < 1:
        raise LqoError(f"train_instances must be >= 1, not {train_instances}")
    if holdout == "none":
        return workload, None
    train: list[str] = []
    test: list[str] = []
    for i, group in enumerate(template_groups(workload)):
        head, tail = group[:train_instances], group[train_instances:]
        if holdout == "instances":
            train += [q.id for q in head]
            test += [q.id for q in tail]
        elif i % 2 == int(holdout.split(":")[1]):
            test += [q.id for q in tail]
        else:
            train += [q.id for q in head]
    if not train:
        raise LqoError(f"holdout {holdout!r} leaves no training query in {workload.name}")
    return workload.subset(train), (workload.subset(test) if test else None)


def split_workloads(workloads: Sequence[Workload], holdout: str,
                    train_instances: int = 3) -> tuple[list[Workload], list[Workload]]:
    """``split_workload`` over several workloads: (train workloads, test workloads)."""
    train: list[Workload] = []
    test: list[Workload] = []
    for w in workloads:
        tr, te = split_workload(w, holdout, train_instances)
        train.append(tr)
        if te is not None:
            test.append(te)
    return train, test
