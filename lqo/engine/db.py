"""Opening DuckDB: read-only connections, offline TPC extensions.

Extensions come from the ``duckdb-extension-tpch`` / ``duckdb-extension-tpcds`` pip
packages and are loaded by path, with autoinstall/autoload off, so nothing is fetched
from the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb

from lqo.errors import LqoError, MissingFileError

_EXTENSION_PACKAGES = {"tpch": "duckdb_extension_tpch", "tpcds": "duckdb_extension_tpcds"}


def extension_path(name: str) -> Path:
    """Path of the ``name`` extension file shipped by its pip package."""
    import importlib

    pkg = importlib.import_module(_EXTENSION_PACKAGES[name])
    if pkg.__file__ is None:  # a namespace package: no folder of its own to look in
        raise MissingFileError(f"extension package {pkg.__name__} has no files (duckdb {duckdb.__version__})")
    path = Path(pkg.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise MissingFileError(f"extension file not found: {path} (duckdb {duckdb.__version__})")
    return path


def _offline_config() -> dict:
    return {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def connect_read_only(db_path: str | os.PathLike, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open a user's database read-only; lqo never writes to it.

    >>> con = connect_read_only("tpch.duckdb")  # doctest: +SKIP
    """
    path = Path(db_path)
    if not path.is_file():
        raise MissingFileError(f"database file not found: {path}")
    config = _offline_config()
    if threads is not None:
        config["threads"] = threads
    try:
        return duckdb.connect(str(path), read_only=True, config=config)
    except duckdb.Error as err:
        first = str(err).strip().splitlines()[0]
        raise LqoError(f"cannot open database {path}: {first}") from None


def connect_writable(db_path: str | os.PathLike, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (or create) a database lqo owns: a generated TPC database, the experience
    store, a thread profile. Offline; DuckDB's own errors pass through."""
    return duckdb.connect(str(db_path), read_only=read_only, config=_offline_config())


def one_value(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The one value of ``sql``, a query that always yields one row (an aggregate,
    ``current_setting``, an ``INSERT .. RETURNING`` of one row)."""
    row = con.execute(sql, params).fetchone()
    if row is None:
        raise LqoError(f"query returned no row: {sql}")
    return row[0]


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load the bundled DuckDB extension ``name`` into ``con`` (never downloads)."""
    con.execute(f"LOAD '{extension_path(name)}'")
