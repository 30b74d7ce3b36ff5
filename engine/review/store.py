"""The `reviews` table: one row per (neuron, reviewer, imported file).

Why its own module and a CREATE IF NOT EXISTS: reviews arrive after a run, into a
database that may predate this feature, so the table is made on first import
instead of by the run's schema.  Rows are only ever added: a second reviewer, or
the same reviewer's corrected file, adds rows; the agreement statistics take each
reviewer's latest answer per neuron (section.py).
"""

from __future__ import annotations

import duckdb
import pandas as pd

TABLE = "reviews"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    run_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,
    unit INTEGER NOT NULL,
    label VARCHAR,              -- the label the card showed (neurons.label of the run)
    reviewer VARCHAR NOT NULL,
    verdict VARCHAR,            -- agree | disagree | unsure; NULL: a comment only
    comment VARCHAR,
    source_file VARCHAR NOT NULL,
    source_sha256 VARCHAR NOT NULL,
    imported_at TIMESTAMP NOT NULL,
    review_date VARCHAR         -- the date the reviewer wrote, as written
)
"""

COLUMNS = (
    "run_id",
    "model",
    "layer",
    "unit",
    "label",
    "reviewer",
    "verdict",
    "comment",
    "source_file",
    "source_sha256",
    "imported_at",
    "review_date",
)


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    rows = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'", [name]
    ).fetchall()
    return bool(rows[0][0])


def imported_hashes(con: duckdb.DuckDBPyConnection) -> set[str]:
    if not has_table(con, TABLE):
        return set()
    return {r[0] for r in con.execute(f"SELECT DISTINCT source_sha256 FROM {TABLE}").fetchall()}


def latest_reviews(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Each reviewer's latest answer per neuron of a run (a corrected file supersedes the earlier one)."""
    if not has_table(con, TABLE):
        return pd.DataFrame(columns=list(COLUMNS))
    return con.execute(
        f"""
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (
                PARTITION BY model, layer, unit, reviewer ORDER BY imported_at DESC, source_sha256) AS rn
            FROM {TABLE} WHERE run_id = ?)
        WHERE rn = 1 ORDER BY model, layer, unit, reviewer
        """,
        [run_id],
    ).df()


def insert(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame) -> None:
    """Add rows in one transaction (the caller validated them all first)."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(DDL)
        if len(rows):
            con.register("_new_reviews", rows[list(COLUMNS)])
            con.execute(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT * FROM _new_reviews")
            con.unregister("_new_reviews")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
