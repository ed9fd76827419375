"""The experience store's file format: its tables, their version, and the check that a
file is a store (:mod:`lqo.store.experience` reads and writes them).

Schema (version 1)::

    meta(key VARCHAR PRIMARY KEY, value VARCHAR)            -- schema_version = '1'
    queries(query_key VARCHAR PRIMARY KEY, workload VARCHAR, query_id VARCHAR,
            template VARCHAR, sql VARCHAR NOT NULL, database VARCHAR,
            created_at TIMESTAMP NOT NULL)
    plans(plan_key VARCHAR PRIMARY KEY, query_key VARCHAR NOT NULL, kind VARCHAR NOT NULL,
          plan_json VARCHAR, sql VARCHAR, created_at TIMESTAMP NOT NULL)
    runs(run_id BIGINT PRIMARY KEY, plan_key VARCHAR NOT NULL, query_key VARCHAR NOT NULL,
         started_at TIMESTAMP NOT NULL, latency_ms DOUBLE NOT NULL, timed_out BOOLEAN NOT NULL,
         timeout_ms DOUBLE, error VARCHAR, rows BIGINT, fingerprint VARCHAR,
         operators_json VARCHAR, threads INTEGER, session VARCHAR NOT NULL)
    wrong_plans(plan_key VARCHAR NOT NULL, reason VARCHAR, marked_at TIMESTAMP NOT NULL)
    VIEW plans_v = plans + wrong BOOLEAN + wrong_reason

Distributed runs (``--ray``) add ``tasks`` and ``run_nodes`` on their first write
(:func:`create_placement_tables`).
"""

from __future__ import annotations

import duckdb

from lqo.errors import LqoError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS queries(
    query_key VARCHAR PRIMARY KEY, workload VARCHAR, query_id VARCHAR, template VARCHAR,
    sql VARCHAR NOT NULL, database VARCHAR, created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS plans(
    plan_key VARCHAR PRIMARY KEY, query_key VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    plan_json VARCHAR, sql VARCHAR, created_at TIMESTAMP NOT NULL);
CREATE SEQUENCE IF NOT EXISTS run_id_seq START 1;
CREATE TABLE IF NOT EXISTS runs(
    run_id BIGINT PRIMARY KEY DEFAULT nextval('run_id_seq'), plan_key VARCHAR NOT NULL,
    query_key VARCHAR NOT NULL, started_at TIMESTAMP NOT NULL, latency_ms DOUBLE NOT NULL,
    timed_out BOOLEAN NOT NULL, timeout_ms DOUBLE, error VARCHAR, rows BIGINT,
    fingerprint VARCHAR, operators_json VARCHAR, threads INTEGER, session VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS wrong_plans(plan_key VARCHAR NOT NULL, reason VARCHAR, marked_at TIMESTAMP NOT NULL);
CREATE OR REPLACE VIEW plans_v AS
    SELECT p.*, w.plan_key IS NOT NULL AS wrong, w.reason AS wrong_reason
    FROM plans p LEFT JOIN (SELECT plan_key, min(reason) AS reason FROM wrong_plans GROUP BY plan_key) w
    USING (plan_key);
"""

# Where distributed runs ran (``--ray``), created on the first such write. ``task_id`` is the
# idempotency key: a task is recorded at most once, whatever retries came before.
_PLACEMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks(
    task_id VARCHAR PRIMARY KEY, node VARCHAR NOT NULL, slot INTEGER, attempts INTEGER NOT NULL,
    n_runs INTEGER NOT NULL, recorded_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS run_nodes(run_id BIGINT PRIMARY KEY, task_id VARCHAR NOT NULL, node VARCHAR NOT NULL);
"""


def check_or_create_store(con: duckdb.DuckDBPyConnection, path: str, read_only: bool) -> None:
    """Check that ``con``'s database is an experience store of this version, or create
    the tables in an empty one (unless ``read_only``); ``LqoError`` names what is wrong."""
    tables = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()").fetchall()}
    if "meta" in tables:
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = row[0] if row else None
        if version != SCHEMA_VERSION:
            raise LqoError(f"{path}: experience store schema version {version}, expected {SCHEMA_VERSION}")
        return
    if tables:
        raise LqoError(f"{path} is not an lqo experience store (it has tables {sorted(tables)[:5]})")
    if read_only:
        raise LqoError(f"{path} is empty, not an experience store")
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(_SCHEMA)
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def create_placement_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables of where distributed runs ran, if missing (inside the caller's transaction)."""
    con.execute(_PLACEMENT_SCHEMA)
