"""Generate a TPC-H or TPC-DS workload: database, one ``.sql`` file per query, manifest.

Data come from DuckDB's ``dbgen`` / ``dsdgen``, queries from ``tpch_queries()`` /
``tpcds_queries()``; the extensions are loaded from their pip packages (no network).
Everything is built in a temporary sibling of the output directory and renamed into
place at the end, so a failed or interrupted run leaves nothing half-written.

>>> w = create_workload("tpch", 0.01, "workloads/tpch-sf0.01")  # doctest: +SKIP
>>> len(w), w.database.name                                     # doctest: +SKIP
(22, 'tpch.duckdb')
"""

from __future__ import annotations

import math
import os
from typing import Callable

from lqo.engine.db import connect_writable, load_extension
from lqo.errors import WorkloadError
from lqo.workloads.workload import Workload, check_out_dir, staging_dir, write_workload

TPC_KINDS = {"tpch": ("dbgen", "tpch_queries", 22), "tpcds": ("dsdgen", "tpcds_queries", 99)}


def format_scale_factor(sf: float) -> str:
    """``1.0`` -> ``"1"``, ``0.01`` -> ``"0.01"``."""
    return str(int(sf)) if float(sf).is_integer() else repr(float(sf))


def validate_tpc_args(kind: str, scale_factor: float) -> float:
    """Check a TPC kind and scale factor before anything is written; return the sf as float."""
    if kind not in TPC_KINDS:
        raise WorkloadError(f"unknown workload kind {kind!r} (expected one of: {', '.join(TPC_KINDS)})")
    try:
        sf = float(scale_factor)
    except (TypeError, ValueError):
        raise WorkloadError(f"scale factor must be a number, not {scale_factor!r}") from None
    if not math.isfinite(sf) or sf <= 0:
        raise WorkloadError(f"scale factor must be a positive number, not {scale_factor!r}")
    return sf


def create_workload(
    kind: str,
    scale_factor: float,
    out: str | os.PathLike,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Workload:
    """Generate a ``kind`` ("tpch" or "tpcds") workload at ``scale_factor`` into ``out``.

    ``out`` must be absent or empty, or with ``force`` an existing workload directory
    (which is replaced). Query ids are ``q01``..``q22`` (TPC-H) / ``q01``..``q99``
    (TPC-DS); each query's template id is its query id. The database is written to
    ``out/<kind>.duckdb``. ``log``, if given, receives one line per step.

    >>> create_workload("tpcds", 1, "workloads/tpcds-sf1")  # doctest: +SKIP
    """
    sf = validate_tpc_args(kind, scale_factor)
    out_path = check_out_dir(out, force)
    gen_fn, queries_fn, expected = TPC_KINDS[kind]
    db_name = f"{kind}.duckdb"
    steps = ["load extension", f"generate data ({gen_fn}, sf={format_scale_factor(sf)})", "write queries"]

    with staging_dir(out_path, force) as tmp:
        db_path = tmp / db_name
        con = connect_writable(db_path)
        rows: list = []
        try:
            for i, step in enumerate(steps):
                if log:  # three steps, one of them long: a line each says where it is
                    log(f"create {kind}: {step} ({i + 1}/{len(steps)})")
                if step.startswith("load"):
                    load_extension(con, kind)
                elif step.startswith("generate"):
                    con.execute(f"CALL {gen_fn}(sf={sf!r})")
                    con.execute("CHECKPOINT")
                else:
                    rows = con.execute(f"SELECT query_nr, query FROM {queries_fn}() ORDER BY query_nr").fetchall()
        finally:
            con.close()
        if len(rows) != expected:
            raise WorkloadError(f"{queries_fn}() returned {len(rows)} queries, expected {expected}")
        queries = [(f"q{nr:02d}", f"q{nr:02d}", sql.strip()) for nr, sql in rows]
        write_workload(tmp, f"{kind}-sf{format_scale_factor(sf)}", db_path, queries, kind=kind,
                       scale_factor=int(sf) if sf.is_integer() else sf)
        Workload.load(tmp)  # validate before it becomes visible
    return Workload.load(out_path)
