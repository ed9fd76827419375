"""Running SQL on DuckDB: read-only connections, forcing/profiling settings, the harness."""
