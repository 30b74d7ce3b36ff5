"""The DuckDB results store: schema, the run transaction, read-only queries."""
