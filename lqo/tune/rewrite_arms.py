"""Rewrite candidates: the template's text rewritten (:mod:`lqo.sql.rewrites`), run as
written by DuckDB, no tree forced.

Only the ``decorrelate`` family is proposed: measured on TPC-H / TPC-DS SF1
(docs/plan-book.md, "Rewrites, measured"; ``benchmarks/rewrites.py``), a correlated
scalar subquery joined pre-aggregated beat DuckDB's delim join on TPC-DS q01, q06 and
q81 and lost on the six other templates it applies to (the acceptance rule tells them
apart; on those three a forced tree verified faster still); per-CTE materialization and
eager aggregation never beat the placebo.

A candidate is proposed only where its physical plan differs from native's (one EXPLAIN)
and its rewrite has a slot rendering (:meth:`SlotRendering.of_rewrite`): every instance
is rewritten by filling in its own literals, and one the rendering does not fit runs as
written. The rewrite keeps the bag of rows by construction; like every candidate its
results are checked against native's on every tuning run. Each candidate is stamped with
the generator's generation (:data:`~lqo.sql.rewrite_generation.REWRITE_GENERATION`): the
book serves it only while that is the current generation.
"""

from __future__ import annotations

from functools import partial

import duckdb

from lqo.book.book import Candidate
from lqo.book.slots import SlotRendering
from lqo.book.template import template_key
from lqo.errors import LqoError, PlanError
from lqo.sql.catalog import Catalog
from lqo.sql.rewrite_generation import REWRITE_GENERATION
from lqo.sql.rewrites import Columns, apply_rewrite, rewrites
from lqo.tune.arms import plan_signature

REWRITE_FAMILIES: tuple[str, ...] = ("decorrelate",)


def rewrite_candidates(con: duckdb.DuckDBPyConnection, catalog: Catalog, sql: str,
                       native: str | None = None) -> list[Candidate]:
    """The rewrites of ``sql`` (families ``REWRITE_FAMILIES``) with a plan of their own
    and a slot rendering; ``native``: the native plan signature, if known."""
    out: list[Candidate] = []
    columns = rewrite_columns(con, catalog)
    found = rewrites(sql, columns, REWRITE_FAMILIES)
    if not found:
        return out
    if native is None:
        native = plan_signature(con, sql)
    for rw in found:
        sig = plan_signature(con, rw.sql)
        if sig is None or sig == native:
            continue
        try:
            slots = SlotRendering.of_rewrite(sql, partial(apply_rewrite, label=rw.label, columns=columns))
        except LqoError:
            continue  # no per-instance rendering: it could not be served
        out.append(Candidate(f"rewrite:{rw.label}", "rewrite", slots=slots.to_json(), origin="rewrite",
                             generation=REWRITE_GENERATION))
    return out


def rewrite_columns(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> Columns:
    """The catalog's column types with a collation made visible: every VARCHAR column of
    a table or view whose definition names a collation typed ``VARCHAR COLLATE`` (the
    catalog's types omit it; the generator refuses such a key, whose ``=`` equates
    values its GROUP BY keeps apart)."""
    rows = con.execute("SELECT table_name, sql FROM duckdb_tables() WHERE schema_name = current_schema() "
                       "UNION ALL SELECT view_name, sql FROM duckdb_views() "
                       "WHERE schema_name = current_schema() AND NOT internal").fetchall()
    collated = {str(name).lower() for name, text in rows if "COLLATE" in str(text or "").upper()}
    return {t: {c: f"{ty} COLLATE" if t in collated and ty.upper().startswith("VARCHAR") else ty
                for c, ty in cols.items()} for t, cols in catalog.tables.items()}


def rewrite_text(c: Candidate, sql: str, catalog: Catalog) -> str:
    """The text candidate ``c`` (a rewrite) runs for the instance ``sql``: its slot
    rendering filled, else the rewrite made anew; ``PlanError`` where neither applies."""
    if c.slots is not None:
        key = template_key(sql)
        filled = SlotRendering.from_json(c.slots).fill(key.literals, key.shape)
        if filled is not None:
            return filled
    text = apply_rewrite(sql, c.id.removeprefix("rewrite:"), catalog.tables)
    if text is None:
        raise PlanError(f"the rewrite {c.id} does not apply to this text")
    return text
