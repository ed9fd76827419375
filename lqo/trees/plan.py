"""Plan trees: one binary join-tree type, and a whole-query plan.

A ``Join`` has a *probe* child (left, streamed) and a *build* child (right, the hash
table), exactly as DuckDB executes a rendered tree with ``join_order`` and
``build_side_probe_side`` disabled. A ``Plan`` maps every join block of a query to a tree.

>>> t = Join(Join(Leaf("lineitem"), Leaf("orders")), Leaf("supplier"))
>>> str(t)
'((lineitem orders) supplier)'
>>> tree_from_json(tree_to_json(t)) == t
True
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Union


@dataclass(frozen=True)
class Leaf:
    """One relation of a block, by alias."""

    rel: str
    rels: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rels", frozenset((self.rel,)))

    def __str__(self) -> str:
        return self.rel


@dataclass(frozen=True, eq=False)
class Join:
    """A binary join: ``probe`` streams through the hash table built on ``build``."""

    probe: "Tree"
    build: "Tree"
    # Search hashes and compares thousands of trees: relation set and hash are computed
    # once per node instead of walking the subtree every time.
    rels: frozenset[str] = field(init=False, repr=False)
    _hash: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rels", self.probe.rels | self.build.rels)
        object.__setattr__(self, "_hash", hash((self.probe, self.build)))

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Join) and self._hash == other._hash
            and self.probe == other.probe and self.build == other.build
        )

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return f"({self.probe} {self.build})"


Tree = Union[Leaf, Join]


def leaves(tree: Tree) -> list[str]:
    """Relation aliases in left-to-right order."""
    if isinstance(tree, Leaf):
        return [tree.rel]
    return leaves(tree.probe) + leaves(tree.build)


def joins(tree: Tree) -> Iterator[Join]:
    """Join nodes in post-order (children before parents)."""
    if isinstance(tree, Join):
        yield from joins(tree.probe)
        yield from joins(tree.build)
        yield tree


def is_left_deep(tree: Tree) -> bool:
    """Whether every join's build side is a single relation."""
    return all(isinstance(j.build, Leaf) for j in joins(tree))


def shape(tree: Tree) -> Tree:
    """The tree with children unordered: for comparing join order regardless of sides."""
    if isinstance(tree, Leaf):
        return tree
    a, b = shape(tree.probe), shape(tree.build)
    return Join(a, b) if str(a) <= str(b) else Join(b, a)


def tree_to_json(tree: Tree) -> Any:
    """A leaf is its alias; a join is ``[probe, build]``."""
    if isinstance(tree, Leaf):
        return tree.rel
    return [tree_to_json(tree.probe), tree_to_json(tree.build)]


def tree_from_json(data: Any) -> Tree:
    """A tree from its JSON (a name, or a pair)."""
    if isinstance(data, str):
        return Leaf(data)
    if isinstance(data, list) and len(data) == 2:
        return Join(tree_from_json(data[0]), tree_from_json(data[1]))
    raise ValueError(f"not a join tree: {data!r}")


@dataclass(frozen=True)
class Plan:
    """A whole-query plan: a tree for every join block, keyed by block index.

    ``trees`` is a tuple of ``(block_index, tree)`` pairs sorted by block index, so a
    Plan is hashable and compares by value.
    """

    trees: tuple[tuple[int, Tree], ...]

    @classmethod
    def of(cls, trees: dict[int, Tree]) -> "Plan":
        """A plan from block index -> tree."""
        return cls(tuple(sorted(trees.items())))

    def tree(self, block: int) -> Tree:
        """The tree of block ``block``."""
        return dict(self.trees)[block]

    def replace(self, block: int, tree: Tree) -> "Plan":
        """The plan with block ``block``'s tree replaced."""
        d = dict(self.trees)
        d[block] = tree
        return Plan.of(d)

    def __str__(self) -> str:
        return "; ".join(f"#{i} {t}" for i, t in self.trees)

    def to_json(self) -> str:
        """The plan as compact JSON text (block index -> tree)."""
        return json.dumps({str(i): tree_to_json(t) for i, t in self.trees}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        """A plan from its JSON text."""
        data = json.loads(text)
        return cls.of({int(k): tree_from_json(v) for k, v in data.items()})

    @property
    def key(self) -> str:
        """A short stable hash of the plan."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
