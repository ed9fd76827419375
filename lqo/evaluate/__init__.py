"""lqo against DuckDB native: headroom exploration, comparisons and reports."""
