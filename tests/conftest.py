"""Shared fixtures: tiny TPC databases (sf 0.01) generated once per test session."""

from __future__ import annotations

import pytest

from lqo.engine.db import connect_writable, load_extension


def _generate(path, kind: str) -> None:
    con = connect_writable(path)
    try:
        load_extension(con, kind)
        con.execute(f"CALL {'dbgen' if kind == 'tpch' else 'dsdgen'}(sf=0.01)")
    finally:
        con.close()


@pytest.fixture(scope="session")
def tpch_db(tmp_path_factory):
    """Path of a TPC-H sf 0.01 database (read it read-only)."""
    path = tmp_path_factory.mktemp("tpch") / "tpch.duckdb"
    _generate(path, "tpch")
    return path


@pytest.fixture(scope="session")
def tpcds_db(tmp_path_factory):
    """Path of a TPC-DS sf 0.01 database (read it read-only)."""
    path = tmp_path_factory.mktemp("tpcds") / "tpcds.duckdb"
    _generate(path, "tpcds")
    return path


def tpc_queries(kind: str) -> dict[str, str]:
    """The benchmark's query texts by id (q01..), from the extension itself."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    load_extension(con, kind)
    rows = con.execute(f"SELECT query_nr, query FROM {kind}_queries() ORDER BY query_nr").fetchall()
    con.close()
    return {f"q{nr:02d}": sql for nr, sql in rows}
