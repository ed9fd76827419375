"""SQL -> QueryGraph: the catalog, FROM-item relations and join graphs (sqlglot)."""
