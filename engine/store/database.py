"""The DuckDB store: the public, versioned schema every result lands in.

DuckDB is the API of dissect-study: users query `results.duckdb` with SQL, the
analyses and the report read it.  So the schema is documented (README), stable,
and versioned in `schema_version`.

A run is written in ONE transaction at its end (`Store.write_run`): the
expensive work happens before, cached on disk, and only finished results are
inserted.  A crash, Ctrl-C or SIGKILL at any moment therefore leaves earlier runs
intact and no partial run visible -- DuckDB's WAL never replays an uncommitted
transaction.
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from dissect_study.dsl.vocabulary import ANALYSES, AnalysisSpec
from dissect_study.errors import DissectStudyError

SCHEMA_VERSION = 1


def _analysis_table(spec: AnalysisSpec) -> str:
    """DDL of an analysis's results table: run_id, analysis_id, then the spec's columns."""
    cols = [("run_id", "VARCHAR", ""), ("analysis_id", "INTEGER", "")] + [(c.name, c.type, c.doc) for c in spec.columns]
    lines = [f"            {n} {t}{',' if i < len(cols) - 1 else ''}" + (f"  -- {d}" if d else "")
             for i, (n, t, d) in enumerate(cols)]
    return f"\n        CREATE TABLE IF NOT EXISTS {spec.name} (\n" + "\n".join(lines) + "\n        )"


#: table name -> DDL.  Columns are documented in README.md ("The results database").
TABLES: dict[str, str] = {
    "schema_version": """
        CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER NOT NULL,
            applied_at TIMESTAMP NOT NULL
        )""",
    "runs": """
        CREATE TABLE IF NOT EXISTS runs (
            run_id VARCHAR PRIMARY KEY,
            study_path VARCHAR,
            study_title VARCHAR,
            study_sha256 VARCHAR,
            study_text VARCHAR,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            status VARCHAR,          -- 'ok' (only finished runs are ever written)
            tool_version VARCHAR,
            params JSON              -- command-line options, environment facts, device
        )""",
    "models": """
        CREATE TABLE IF NOT EXISTS models (
            run_id VARCHAR,
            model VARCHAR,           -- the study's name for it (M, C4, mammo ...)
            role VARCHAR,            -- 'dissector' | 'target'
            kind VARCHAR,            -- registry function (mammo_clip, classifier, demo ...)
            source JSON,             -- the validated parameters (paths, task, variant ...)
            sha256 VARCHAR,          -- content fingerprint of weights + config
            details JSON             -- describe(): parameter count, layers, training report ...
        )""",
    "probes": """
        CREATE TABLE IF NOT EXISTS probes (
            run_id VARCHAR,
            probe VARCHAR,
            n_images INTEGER,        -- images used (after de-dup, sampling and skips)
            n_skipped INTEGER,       -- unreadable images skipped
            manifest_sha256 VARCHAR,
            source JSON              -- describe(): kind, root, csv, split, counts
        )""",
    "images": """
        CREATE TABLE IF NOT EXISTS images (
            run_id VARCHAR,
            probe VARCHAR,
            image_idx INTEGER,       -- row of the probe; top_images.image_idx refers to it
            image_id VARCHAR,
            path VARCHAR,
            attributes JSON
        )""",
    "concepts": """
        CREATE TABLE IF NOT EXISTS concepts (
            run_id VARCHAR,
            concept_set VARCHAR,
            concept_id INTEGER,      -- 0-based position in the set (column of S)
            concept VARCHAR,
            category VARCHAR,        -- broad category (e.g. 'Findings and characterizations')
            subcategory VARCHAR,     -- e.g. 'Calcifications morphology'
            domain VARCHAR,          -- 'mammography' | 'non-mammography'
            tasks VARCHAR[]          -- explicit task tags: mass, calcification, density
        )""",
    "dissections": """
        CREATE TABLE IF NOT EXISTS dissections (
            run_id VARCHAR,
            model VARCHAR,           -- target name
            dissector VARCHAR,
            probe VARCHAR,
            concept_set VARCHAR,
            similarity VARCHAR,
            similarity_params JSON,  -- as used (top_k clamped to N is recorded here)
            pooling VARCHAR,
            options JSON,
            notes JSON               -- e.g. "top_k=100 > N=84: used top_k=84"
        )""",
    "layers": """
        CREATE TABLE IF NOT EXISTS layers (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,           -- canonical layer name (_blocks.38)
            layer_index INTEGER,     -- depth order: sort by this, never by name
            alias VARCHAR,           -- early / middle / last / a study alias, if any
            n_neurons INTEGER,
            tau DOUBLE,              -- under the study's statistic (tau_statistic)
            tau_statistic VARCHAR,
            tau_mean_top1 DOUBLE,
            tau_mean_all DOUBLE,
            tau_median_top1 DOUBLE
        )""",
    "similarities": """
        CREATE TABLE IF NOT EXISTS similarities (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            unit INTEGER,
            concept_id INTEGER,
            score FLOAT               -- the full S matrix, neurons x concepts
        )""",
    "neurons": """
        CREATE TABLE IF NOT EXISTS neurons (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            unit INTEGER,
            concept_id INTEGER,      -- top-1 concept
            label VARCHAR,
            score DOUBLE,            -- top-1 similarity
            constant BOOLEAN         -- activation constant over the probe (label meaningless)
        )""",
    "neuron_labels": """
        CREATE TABLE IF NOT EXISTS neuron_labels (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            unit INTEGER,
            rank INTEGER,            -- 1 = the label
            concept_id INTEGER,
            concept VARCHAR,
            score DOUBLE
        )""",
    "top_images": """
        CREATE TABLE IF NOT EXISTS top_images (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            unit INTEGER,
            rank INTEGER,
            image_idx INTEGER,
            activation DOUBLE
        )""",
    "neuron_images": """
        CREATE TABLE IF NOT EXISTS neuron_images (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            unit INTEGER,
            rank INTEGER,
            image_idx INTEGER,
            activation DOUBLE,
            png BLOB                 -- thumbnail with the unit's activation map overlaid
        )""",
    "sanity": """
        CREATE TABLE IF NOT EXISTS sanity (
            run_id VARCHAR,
            dissector VARCHAR,
            probe VARCHAR,
            attribute VARCHAR,
            metric VARCHAR,          -- 'auc' | 'accuracy'
            value DOUBLE,
            n INTEGER,
            chance DOUBLE,
            prompts JSON
        )""",
    "warnings": """
        CREATE TABLE IF NOT EXISTS warnings (
            run_id VARCHAR,
            step VARCHAR,
            message VARCHAR
        )""",
    # --- analyses: one row per analysis statement (the arguments its macros are called with)
    "analyses": """
        CREATE TABLE IF NOT EXISTS analyses (
            run_id VARCHAR,
            analysis_id INTEGER,     -- ordinal of the statement in the study
            kind VARCHAR,            -- compare | learned | gained | thresholds | keywords | show_neuron | analyze
            analysis_names VARCHAR[],
            statement VARCHAR,       -- the statement's source text
            line INTEGER,
            models VARCHAR[],
            layers VARCHAR[],        -- canonical names after alias resolution
            filter_level VARCHAR,
            filter_name VARCHAR,
            threshold_rule JSON,     -- {combine, statistic, value, op}
            count_unit VARCHAR,      -- concepts | neurons (headline unit)
            options JSON
        )""",
    # one table per stored analysis, its columns from the analysis's spec (dsl/vocabulary.py)
    **{name: _analysis_table(spec) for name, spec in ANALYSES.items() if spec.stored},
    "calibration": """
        CREATE TABLE IF NOT EXISTS calibration (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            similarity VARCHAR,
            n_selective INTEGER,
            top1_hit DOUBLE,
            top5_hit DOUBLE,
            mammi_hit_rate DOUBLE,
            precision DOUBLE,
            recall DOUBLE,
            f1 DOUBLE,
            mean_label_cosine DOUBLE
        )""",
}

#: views over the tables (the analyses' table macros come from engine/analyses/macros.py)
VIEWS: dict[str, str] = {
    "layer_thresholds": """
        CREATE OR REPLACE VIEW layer_thresholds AS
        SELECT run_id, model, layer, layer_index, alias, n_neurons,
               tau, tau_statistic, tau_mean_top1, tau_mean_all, tau_median_top1
        FROM layers""",
    "latest_run": """
        CREATE OR REPLACE VIEW latest_run AS
        SELECT * FROM runs ORDER BY finished_at DESC LIMIT 1""",
}


class StoreError(DissectStudyError):
    """A database that cannot be opened or has an incompatible schema."""


def connect(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"{path}: no results database here; run a study first (dissect-study run FILE.study)")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as e:  # locked, corrupt, not a DuckDB file
        raise StoreError(f"{path}: cannot open the results database: {e}") from None
    return con


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables/views; refuse a database written by a newer schema."""
    con.execute(TABLES["schema_version"])
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    current = row[0] if row else None
    if current is not None and current > SCHEMA_VERSION:
        raise StoreError(
            f"this database has schema version {current}, newer than this dissect-study "
            f"understands ({SCHEMA_VERSION}); upgrade dissect-study or use another --db"
        )
    for ddl in TABLES.values():
        con.execute(ddl)
    for ddl in VIEWS.values():
        con.execute(ddl)
    if current is None:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, _dt.datetime.now()])
    from dissect_study.engine.analyses import macros

    macros.install(con)


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass
class RunRecord:
    """Everything one run writes, gathered in memory and inserted at once.

    `frames[table]` is a list of DataFrames whose columns are a subset of the
    table's (missing columns become NULL); `run_id` is added on insert.
    `derive` are steps `(connection, run_id)` that compute further tables from the
    inserted ones inside the same transaction (the analyses: one implementation,
    in SQL, and stored results that cannot disagree with it).
    """

    run_id: str
    run: dict[str, Any]
    frames: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    derive: list[Callable[[duckdb.DuckDBPyConnection, str], None]] = field(default_factory=list)

    def add(self, table: str, df: pd.DataFrame | Mapping[str, Any] | list[Mapping[str, Any]]) -> None:
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        if isinstance(df, Mapping):
            df = pd.DataFrame([df])
        elif isinstance(df, list):
            df = pd.DataFrame(df)
        if len(df):
            self.frames.setdefault(table, []).append(df)


def _jsonify(df: pd.DataFrame, con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame:
    """Serialise dict/list values bound for JSON columns."""
    types = dict(con.execute(f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{table}'").fetchall())
    out = df.copy()
    for col in out.columns:
        if types.get(col) == "JSON":
            # a str is taken as already-serialised JSON (never encoded twice)
            out[col] = out[col].map(lambda v: v if v is None or isinstance(v, str)
                                    else json.dumps(v, default=str, sort_keys=True))
    return out


def write_run(db_path: str | Path, record: RunRecord) -> None:
    """Insert a finished run in one transaction (all or nothing)."""
    con = connect(db_path)
    try:
        ensure_schema(con)
        con.execute("BEGIN TRANSACTION")
        try:
            run = dict(record.run)
            run["run_id"] = record.run_id
            _insert(con, "runs", pd.DataFrame([run]))
            for table, frames in record.frames.items():
                for df in frames:
                    df = df.copy()
                    df["run_id"] = record.run_id
                    _insert(con, table, df)
            for step in record.derive:
                step(con, record.run_id)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()


def _insert(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame) -> None:
    df = _jsonify(df, con, table)
    con.register("_incoming", df)
    try:
        cols = ", ".join(f'"{c}"' for c in df.columns)
        con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM _incoming')
    finally:
        con.unregister("_incoming")


def latest_run_id(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 1").fetchone()
    return row[0] if row else None

