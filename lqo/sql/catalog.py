"""The database schema as lqo needs it: tables, their columns, and a fingerprint.

Read once per database from ``information_schema`` so the planning path never asks
DuckDB for column lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import duckdb


@dataclass(frozen=True)
class Catalog:
    """Lower-cased table name -> {lower-cased column name: type}.

    >>> cat = Catalog({"t": {"a": "INTEGER"}})
    >>> cat.has_table("T")
    True
    """

    tables: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_connection(cls, con: duckdb.DuckDBPyConnection) -> "Catalog":
        """The tables and columns of the connection's current schema."""
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        ).fetchall()
        tables: dict[str, dict[str, str]] = {}
        for table, column, dtype in rows:
            tables.setdefault(table.lower(), {})[column.lower()] = dtype
        return cls(tables)

    def has_table(self, name: str) -> bool:
        """Whether the schema has table ``name`` (any case)."""
        return name.lower() in self.tables

    def columns(self, table: str) -> dict[str, str]:
        """Column name -> type of ``table``."""
        return self.tables[table.lower()]

    @property
    def fingerprint(self) -> str:
        """A stable hash of table and column names and types: identifies a schema."""
        text = ";".join(
            f"{t}:{','.join(f'{c} {ty}' for c, ty in cols.items())}" for t, cols in sorted(self.tables.items())
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]
