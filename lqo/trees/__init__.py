"""QueryGraph -> Plan: join trees, their enumeration, DuckDB's native trees, and rendering a
plan back to SQL that DuckDB executes as that tree."""
