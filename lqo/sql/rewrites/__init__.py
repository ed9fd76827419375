"""Query rewrites DuckDB's optimizer does not make, written with sqlglot: the registry.

Three families, one module each, all keeping one contract (:mod:`~lqo.sql.rewrites.contract`:
the same bag of rows as the original, duplicates and NULL keys included, or no rewrite):

- ``cte`` (:mod:`~lqo.sql.rewrites.cte`): one CTE marked ``MATERIALIZED`` or ``NOT MATERIALIZED``.
- ``decorrelate`` (:mod:`~lqo.sql.rewrites.decorrelate`): a correlated scalar subquery
  joined pre-aggregated (the one family ``lqo tune`` proposes and the plan book serves).
- ``eager_agg`` (:mod:`~lqo.sql.rewrites.eager_agg`): a grouped query's aggregated table
  pre-aggregated before its joins.

The registry reads a text once and refuses it for every family unless sqlglot writes it
back as DuckDB reads it and it names nothing like the names a rewrite adds; a nested
``WITH`` leaves only the ``cte`` family. :data:`REWRITE_GENERATION` names this
generator's version (kept in the plan book with each rewrite candidate).

>>> cat = {"t": {"a": "INTEGER", "b": "INTEGER"}, "u": {"k": "INTEGER", "v": "INTEGER"}}
>>> q = "SELECT a FROM t WHERE b > (SELECT avg(v) FROM u WHERE u.k = t.a)"
>>> [r.label for r in rewrites(q, cat)]
['decorrelate:1']
>>> rewrites("SELECT a FROM t WHERE b > (SELECT count(*) FROM u WHERE u.k = t.a)", cat)
[]
"""

from __future__ import annotations

from typing import Callable

from sqlglot import exp

from lqo.sql.rewrite_generation import REWRITE_GENERATION
from lqo.sql.rewrites.contract import Columns, Refused, Rewrite, faithful, parse, uses_reserved_names
from lqo.sql.rewrites.cte import cte_rewrites
from lqo.sql.rewrites.decorrelate import decorrelate_rewrites
from lqo.sql.rewrites.eager_agg import eager_rewrites

__all__ = ["FAMILIES", "REWRITE_GENERATION", "Columns", "Refused", "Rewrite", "apply_rewrite", "parse", "rewrites"]

# family -> its generator: (the parsed text, left untouched; column types) -> its rewrites
_GENERATORS: dict[str, Callable[[exp.Expr, Columns], list[Rewrite]]] = {
    "cte": cte_rewrites, "decorrelate": decorrelate_rewrites, "eager_agg": eager_rewrites}
FAMILIES = tuple(_GENERATORS)


def rewrites(sql: str, columns: Columns, families: tuple[str, ...] = FAMILIES) -> list[Rewrite]:
    """Every rewrite of ``sql`` of the given families that the generator can prove."""
    out: list[Rewrite] = []
    tree = parse(sql)
    if tree is None or not faithful(sql, tree) or uses_reserved_names(tree):
        return out
    if sum(1 for _ in tree.find_all(exp.With)) > 1:  # a nested WITH: names this scope reading does not track
        families = tuple(f for f in families if f == "cte")
    for fam in families:
        out.extend(_GENERATORS[fam](tree, columns))
    return out


def apply_rewrite(sql: str, label: str, columns: Columns) -> str | None:
    """The rewrite of ``sql`` named ``label`` (``family:site``), or None where the
    generator does not prove it for this text.

    >>> cat = {"t": {"a": "INTEGER", "b": "INTEGER"}, "u": {"k": "INTEGER", "v": "INTEGER"}}
    >>> out = apply_rewrite("SELECT a FROM t WHERE b > (SELECT max(v) FROM u WHERE u.k = t.a)", "decorrelate:1", cat)
    >>> head, _, tail = out.partition(" WHERE ")
    >>> head
    'SELECT a FROM t, (SELECT u.k AS lqo_sq1_k0, MAX(v) AS lqo_sq1_v FROM u GROUP BY u.k) AS lqo_sq1'
    >>> tail
    'b > lqo_sq1.lqo_sq1_v AND t.a = lqo_sq1.lqo_sq1_k0'
    """
    family = label.partition(":")[0]
    if family not in FAMILIES:
        return None
    return next((r.sql for r in rewrites(sql, columns, (family,)) if r.label == label), None)
