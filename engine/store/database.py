"""The DuckDB store: the public, versioned schema every result lands in.

DuckDB is the API of dissect-study: users query `results.duckdb` with SQL, the
analyses and the report read it.  So the schema is documented (README), stable,
and versioned in `schema_version`.

A run is written in ONE transaction at its end (`Store.write_run`): the
expensive work happens before, cached on disk, and only finished results are
inserted.  A crash, Ctrl-C or SIGKILL at any moment therefore leaves earlier runs
intact and no partial run visible -- DuckDB's WAL never replays an uncommitted
transaction.

Bounded memory (the per-layer tables of a paper-size run hold tens of millions of
rows): a run's record may carry a `Spill`, a private DuckDB file beside the
database (`<db>.staged/.<run_id>.<pid>.spill`).  The large per-layer tables
(`STREAMED_TABLES`) go there layer by layer as they are scored, so no more than one
layer's rows is ever held in memory; the final transaction copies them from the
attached spill file (DuckDB streams that copy) together with the small tables kept
in memory.  The spill is no result: nothing reads it, `write_run`'s transaction is
still the only moment a run becomes visible, and a spill left by a killed run
(its process gone) is deleted by the next write.

Only one process may write a DuckDB file, and none while another reads it.  A
finished run must not be lost to that: `write_run` waits for the lock (saying which
process holds it) up to `DISSECT_STUDY_LOCK_TIMEOUT` seconds, and if it never
comes, stores the run in a staging file beside the database
(`results.duckdb.staged/<run_id>.duckdb`) that the next access merges.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import time
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
    lines = [
        f"            {n} {t}{',' if i < len(cols) - 1 else ''}" + (f"  -- {d}" if d else "")
        for i, (n, t, d) in enumerate(cols)
    ]
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
            mean_label_cosine DOUBLE,
            bench VARCHAR,           -- 'measured' | 'perfect_neurons' | 'oracle_p' (ceilings; NULL in old runs = measured)
            top1_hit_lenient DOUBLE, -- as top1_hit, accepting every synonym the concept set holds
            top5_hit_lenient DOUBLE
        )""",
    "label_evidence": """
        CREATE TABLE IF NOT EXISTS label_evidence (
            run_id VARCHAR,
            model VARCHAR,
            layer VARCHAR,
            unit INTEGER,
            rank INTEGER,            -- 1 = the label
            concept_id INTEGER,
            concept VARCHAR,
            annotation VARCHAR,      -- the annotation(s) proving the concept present/absent
            n_images INTEGER,        -- images whose annotation is known
            n_positive INTEGER,
            base_rate DOUBLE,        -- n_positive / n_images: AUPRC at chance
            auprc DOUBLE,
            auprc_lift DOUBLE,       -- (auprc - base_rate) / (1 - base_rate)
            pearson DOUBLE,
            f1 DOUBLE,
            iou DOUBLE,
            binarisation VARCHAR,    -- how F1 / IoU binarised the activations
            p_value DOUBLE,          -- one-sided Mann-Whitney U
            q_value DOUBLE,          -- Benjamini-Hochberg over all tests of the run
            supported BOOLEAN        -- q < 0.05 and a positive effect
        )""",
    "known_neurons": """
        CREATE TABLE IF NOT EXISTS known_neurons (
            run_id VARCHAR,
            model VARCHAR,           -- a classifier target
            unit INTEGER,            -- its output neuron
            class VARCHAR,           -- the class that output predicts (density=A, mass ...)
            annotation VARCHAR,
            similarity VARCHAR,
            top1 VARCHAR,
            top5 VARCHAR[],
            top1_hit BOOLEAN,        -- top-1 label names the class (strict phrases)
            top5_hit BOOLEAN,
            top1_hit_lenient BOOLEAN,-- synonyms accepted
            top5_hit_lenient BOOLEAN,
            n_images INTEGER,
            base_rate DOUBLE,
            auprc DOUBLE,            -- of the output for its own class
            auprc_lift DOUBLE
        )""",
}

#: columns added to existing tables after they first shipped: added to older databases on open
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "calibration": (("bench", "VARCHAR"), ("top1_hit_lenient", "DOUBLE"), ("top5_hit_lenient", "DOUBLE")),
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


logger = logging.getLogger(__name__)


class StoreError(DissectStudyError):
    """A database that cannot be opened or has an incompatible schema."""


class StoreLockedError(StoreError):
    """Another process held the database's lock for longer than the wait allowed."""


class RunStagedError(StoreError):
    """The database stayed locked, so the finished run was written to a staging file instead."""

    def __init__(self, message: str, staged: Path) -> None:
        super().__init__(message)
        self.staged = staged


class ReadOnlySqlError(StoreError):
    """SQL that `query` refuses: empty, or a statement that could change anything (exit 1, as DuckDB's own refusals)."""


#: seconds to wait for another process's lock on the database (run, query, report)
LOCK_TIMEOUT_ENV = "DISSECT_STUDY_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 120.0
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def lock_timeout() -> float:
    """The lock wait: $DISSECT_STUDY_LOCK_TIMEOUT seconds (0: do not wait), else DEFAULT_LOCK_TIMEOUT."""
    text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise StoreError(f"{LOCK_TIMEOUT_ENV}={text!r} must be a number of seconds >= 0")
    return value


def lock_holder(message: str) -> str | None:
    """'PID n (command line)' of the process DuckDB's lock error names, or None when it names none."""
    m = _LOCK_HOLDER.search(message)
    if m is None:
        return None
    pid = m.group("pid")
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    except OSError:
        command = ""
    return f"PID {pid} ({command[:200] or m.group('exe')})"


def _is_lock_error(e: duckdb.Error) -> bool:
    return "Could not set lock" in str(e) or "Conflicting lock" in str(e)


def _open(path: Path, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried while another process holds the lock, for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    pause = 0.1
    waiting = False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as e:  # locked, corrupt, not a DuckDB file
            if not _is_lock_error(e):
                raise StoreError(f"{path}: cannot open the results database: {e}") from None
            holder = lock_holder(str(e)) or "another process"
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreLockedError(
                    f"{path} is locked by {holder}"
                    + (f", still after {wait:.0f}s" if wait else "")
                    + f"; let it finish (or close it), or raise {LOCK_TIMEOUT_ENV}"
                ) from None
            if not waiting:
                waiting = True
                logger.warning(
                    f"waiting for the lock on {path} held by {holder} "
                    f"(up to {wait:.0f}s; {LOCK_TIMEOUT_ENV} sets the wait)"
                )
            time.sleep(min(pause, left))
            pause = min(pause * 2, 2.0)
            continue
        if waiting:
            logger.info(f"lock on {path} released")
        return con


def connect(path: str | Path, read_only: bool = False, wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the results database, waiting up to `wait` seconds (default: `lock_timeout()`) for a lock.

    Read-only opens (query, report) first merge runs staged beside the database when
    it can be written, and warn about a database written by a newer schema.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"{path}: no results database here; run a study first (dissect-study run FILE.study)")
    wait = lock_timeout() if wait is None else wait
    if read_only and staged_runs(path):
        _merge_before_reading(path)
    con = _open(path, read_only, wait)
    if read_only:
        _warn_if_newer(con, path)
    return con


def check_writable_database(path: str | Path) -> None:
    """Refuse now a database `write_run` would refuse at the end of a run (engine/preflight.py).

    A folder that cannot be created, a folder or a non-DuckDB file in its place, a
    read-only file or a newer schema; a bad $DISSECT_STUDY_LOCK_TIMEOUT too.  A lock
    held right now is no reason: `write_run` waits for it.
    """
    lock_timeout()
    p = Path(path).expanduser()
    if not p.exists():
        folder = p.parent.resolve()
        existing = next(a for a in (folder, *folder.parents) if a.exists())
        if not existing.is_dir():
            raise StoreError(
                f"{p}: cannot create the results database, {existing} is a file, not a folder; choose another --db"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StoreError(f"{p}: cannot create the results database, the folder {existing} is not writable")
        return
    if p.is_dir():
        raise StoreError(f"{p} is a folder; --db names the results file, e.g. {p / 'results.duckdb'}")
    if not p.is_file():
        raise StoreError(f"{p} is not a regular file; --db names a DuckDB results file")
    if not os.access(p, os.W_OK):
        raise StoreError(f"{p} is not writable; choose another --db")
    try:
        con = duckdb.connect(str(p), read_only=True)
    except duckdb.Error as e:
        if _is_lock_error(e) or "different configuration" in str(e):
            return  # busy now (another process, or this one): write_run waits for it
        raise StoreError(f"{p}: not a database DuckDB can open ({e}); choose another --db") from None
    try:
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    except duckdb.Error:
        row = None  # a DuckDB file without our tables: write_run adds them
    finally:
        con.close()
    if row and row[0] is not None and row[0] > SCHEMA_VERSION:
        raise StoreError(
            f"{p} has schema version {row[0]}, newer than this dissect-study writes "
            f"({SCHEMA_VERSION}); upgrade dissect-study or choose another --db"
        )


def _warn_if_newer(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    except duckdb.Error:
        return  # not a results database (yet): the caller's query says so
    if row and row[0] is not None and row[0] > SCHEMA_VERSION:
        logger.warning(
            f"{path} has schema version {row[0]}, newer than this dissect-study reads "
            f"({SCHEMA_VERSION}): tables may have changed meaning and what is shown may be wrong; "
            "upgrade dissect-study to read it"
        )


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
    for table, added in ADDED_COLUMNS.items():
        for col, typ in added:
            con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {typ}")
    for ddl in VIEWS.values():
        con.execute(ddl)
    if current is None:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, _dt.datetime.now()])
    from dissect_study.engine.analyses import macros

    macros.install(con)


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


#: the per-layer tables a `Spill` takes as they are produced (the bulk of a run's rows)
STREAMED_TABLES = frozenset({"similarities", "neurons", "neuron_labels", "top_images", "neuron_images"})
_SPILL_SUFFIX = ".spill"
#: rows a spill gathers per commit: few commits, and a bounded transaction
SPILL_COMMIT_ROWS = 3_000_000


class Spill:
    """A run's private DuckDB file that the large per-layer tables stream into (module docstring).

    Opened lazily on the first append; `close()` before the final transaction attaches it,
    `discard()` deletes it (the run is stored, failed, or staged elsewhere).
    """

    def __init__(self, db_path: str | Path, run_id: str) -> None:
        self.db_path = Path(db_path)
        self.path = staging_dir(db_path) / f".{run_id}.{os.getpid()}{_SPILL_SUFFIX}"
        self._con: duckdb.DuckDBPyConnection | None = None
        self.tables: set[str] = set()
        self.rows = 0
        self._pending = 0  # rows appended since the last commit

    def append(self, table: str, df: pd.DataFrame, run_id: str) -> None:
        if self._con is None:
            remove_stale_spills(self.db_path)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.unlink(missing_ok=True)
                self._con = duckdb.connect(str(self.path))
                ensure_schema(self._con)
                # a commit (WAL flush) per few million rows, not per layer: nothing reads the spill
                # before close(), and a bounded transaction keeps its memory bounded
                self._con.execute("BEGIN TRANSACTION")
                self._pending = 0
            except (OSError, duckdb.Error) as e:
                raise StoreError(f"{self.path}: cannot write the run's spill file beside the database ({e})") from None
        try:
            _insert(self._con, table, df, run_id=run_id)
        except (duckdb.Error, OSError) as e:  # a full disk, a folder gone read-only
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise StoreError(
                f"{self.db_path}: run {run_id} could not be written to its spill file {self.path} ({first}); "
                "nothing was stored, so the database keeps exactly its earlier runs. Free space or fix the "
                "folder's permissions, then run again (the model passes come from the cache)."
            ) from None
        self.tables.add(table)
        self.rows += len(df)
        self._pending += len(df)
        if self._pending >= SPILL_COMMIT_ROWS:
            self._con.execute("COMMIT")
            self._con.execute("BEGIN TRANSACTION")
            self._pending = 0

    def read(self, table: str, where: Mapping[str, Any]) -> pd.DataFrame | None:
        """Rows of `table` appended so far that match `where` (column = value), or None if none were."""
        if self._con is None or table not in self.tables:
            return None
        cond = " AND ".join(f"{c} = ?" for c in where) or "TRUE"
        return self._con.execute(f"SELECT * FROM {table} WHERE {cond}", list(where.values())).df()

    def close(self) -> None:
        if self._con is not None:
            try:
                self._con.execute("COMMIT")
            finally:
                self._con.close()
                self._con = None

    def discard(self) -> None:
        self.close()
        if self.path.parent.is_dir():  # never created when the run stopped before its first layer
            for f in (self.path, self.path.with_name(self.path.name + ".wal")):
                f.unlink(missing_ok=True)
            _remove_if_empty(self.path.parent)


def remove_stale_spills(db_path: str | Path) -> None:
    """Delete spill files of `db_path` whose run's process is gone (a killed run leaves one)."""
    folder = staging_dir(db_path)
    try:
        files = list(folder.glob(f".*{_SPILL_SUFFIX}")) + list(folder.glob(f".*{_SPILL_SUFFIX}.wal"))
    except OSError:
        return
    for f in files:
        pid = f.name.split(_SPILL_SUFFIX)[0].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            f.unlink(missing_ok=True)
            logger.info(f"removed {f}, left by a run that did not finish")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_if_empty(folder: Path) -> None:
    try:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    except OSError:
        pass  # another run's spill appeared meanwhile: the folder stays


@dataclass
class RunRecord:
    """Everything one run writes, gathered in memory and inserted at once.

    `frames[table]` is a list of DataFrames whose columns are a subset of the
    table's (missing columns become NULL); `run_id` is added on insert.
    `derive` are steps `(connection, run_id)` that compute further tables from the
    inserted ones inside the same transaction (the analyses: one implementation,
    in SQL, and stored results that cannot disagree with it).  With a `spill`, the
    `STREAMED_TABLES` go to it at once instead of `frames` (bounded memory).
    """

    run_id: str
    run: dict[str, Any]
    frames: dict[str, list[pd.DataFrame]] = field(default_factory=dict)
    derive: list[Callable[[duckdb.DuckDBPyConnection, str], None]] = field(default_factory=list)
    spill: Spill | None = None

    def add(self, table: str, df: pd.DataFrame | Mapping[str, Any] | list[Mapping[str, Any]]) -> None:
        if table not in TABLES:
            raise KeyError(f"unknown table {table!r}")
        if isinstance(df, Mapping):
            df = pd.DataFrame([df])
        elif isinstance(df, list):
            df = pd.DataFrame(df)
        if not len(df):
            return
        if self.spill is not None and table in STREAMED_TABLES:
            self.spill.append(table, df, self.run_id)
        else:
            self.frames.setdefault(table, []).append(df)

    def rows(self, table: str, **where: Any) -> pd.DataFrame | None:
        """What the run has recorded in `table` so far, matching `where` (column = value); None if nothing.

        Why: a later stage (a review packet picks neurons by their labels) must see
        rows an earlier stage recorded, wherever they went (memory or the spill).
        """
        parts = [df for df in self.frames.get(table, [])]
        if self.spill is not None:
            spilled = self.spill.read(table, where)
            if spilled is not None and len(spilled):
                parts.append(spilled.drop(columns=["run_id"], errors="ignore"))
        parts = [df.loc[(df[list(where)] == pd.Series(where)).all(axis=1)] if where else df for df in parts]
        parts = [df for df in parts if len(df)]
        return pd.concat(parts, ignore_index=True) if parts else None


def _jsonify(df: pd.DataFrame, con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame:
    """Serialise dict/list values bound for JSON columns."""
    types = dict(
        con.execute(
            f"SELECT column_name, data_type FROM information_schema.columns WHERE table_name = '{table}'"
        ).fetchall()
    )
    if not any(types.get(c) == "JSON" for c in df.columns):
        return df  # nothing to serialise: no copy of a large frame
    out = df.copy()
    for col in out.columns:
        if types.get(col) == "JSON":
            # a str is taken as already-serialised JSON (never encoded twice)
            out[col] = out[col].map(
                lambda v: v if v is None or isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
            )
    return out


def write_run(db_path: str | Path, record: RunRecord, wait: float | None = None) -> Path:
    """Insert a finished run in one transaction (all or nothing); returns the database.

    While another process holds the lock, waits up to `wait` seconds (default:
    `lock_timeout()`), saying who holds it.  If the lock never comes, the run goes to a
    staging file beside the database and `RunStagedError` says where: finished work is
    never lost to a lock.  Runs staged earlier are merged first.
    """
    db_path = Path(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)  # --db may name a new folder
    except OSError as e:
        raise StoreError(f"{db_path}: cannot create its folder ({e.strerror or e})") from None
    try:
        _write_run(db_path, record, wait)
    finally:
        if record.spill is not None:
            record.spill.discard()  # stored, staged or failed: the spill has served
    return db_path


def _write_run(db_path: Path, record: RunRecord, wait: float | None) -> None:
    try:
        con = connect(db_path, wait=wait)
    except StoreLockedError as e:
        staged = stage_run(db_path, record)
        raise RunStagedError(
            f"{e}.\nThe finished run {record.run_id} is saved in {staged}; the next dissect-study run, query or "
            f"report on {db_path} merges it (or render it now: dissect-study report --db {staged})",
            staged,
        ) from None
    try:
        ensure_schema(con)
        _merge_staged(con, db_path)
        _insert_run(con, record)
    except (duckdb.Error, OSError) as e:  # a full disk, a file gone read-only, a damaged database
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StoreError(
            f"{db_path}: run {record.run_id} could not be stored ({first}); the transaction was rolled back, "
            "so the database keeps exactly its earlier runs. Free space or fix the file's permissions, then run again "
            "(the model passes come from the cache)."
        ) from None
    finally:
        con.close()


def _insert_run(con: duckdb.DuckDBPyConnection, record: RunRecord) -> None:
    spill = record.spill
    attached = spill is not None and bool(spill.tables)
    if spill is not None and attached:
        spill.close()
        con.execute(f"ATTACH '{_sql_str(str(spill.path))}' AS run_spill (READ_ONLY)")
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            run = dict(record.run)
            run["run_id"] = record.run_id
            _insert(con, "runs", pd.DataFrame([run]))
            if spill is not None and attached:
                for table in sorted(spill.tables):
                    con.execute(
                        f'INSERT INTO main."{table}" BY NAME SELECT * FROM run_spill."{table}" WHERE run_id = ?',
                        [record.run_id],
                    )
            for table, frames in record.frames.items():
                for df in frames:
                    _insert(con, table, df.assign(run_id=record.run_id))
            for step in record.derive:
                step(con, record.run_id)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        if attached:
            con.execute("DETACH run_spill")


# ----------------------------------------------------------------------------- staged runs


def staging_dir(db_path: str | Path) -> Path:
    """Where runs wait that could not be written to `db_path`: `<db>.staged/` beside it."""
    p = Path(db_path)
    return p.with_name(p.name + ".staged")


def staged_runs(db_path: str | Path) -> list[Path]:
    """Complete staged run files of `db_path`, oldest run first (run ids sort by time)."""
    folder = staging_dir(db_path)
    try:
        return sorted(f for f in folder.glob("*.duckdb") if f.is_file())
    except OSError:
        return []


def stage_run(db_path: str | Path, record: RunRecord) -> Path:
    """Write one finished run into its own DuckDB file beside `db_path` (complete or absent)."""
    folder = staging_dir(db_path)
    final = folder / f"{record.run_id}.duckdb"
    tmp = folder / f".{record.run_id}.duckdb.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        try:
            ensure_schema(con)
            _insert_run(con, record)
        finally:
            con.close()
        os.replace(tmp, final)
    except (OSError, duckdb.Error) as e:
        raise StoreError(
            f"{db_path} is locked and the finished run {record.run_id} could not be staged in {folder} either: {e}"
        ) from None
    return final


def _merge_staged(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    """Move every staged run of `db_path` into it (one transaction per file), then delete the file."""
    for i, f in enumerate(staged_runs(db_path)):
        alias = f"staged_{i}"
        try:
            con.execute(f"ATTACH '{_sql_str(str(f))}' AS {alias} (READ_ONLY)")
        except duckdb.Error as e:
            logger.warning(f"staged run {f} cannot be read ({e}); it is left where it is")
            continue
        try:
            version = con.execute(f"SELECT max(version) FROM {alias}.schema_version").fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                logger.warning(
                    f"staged run {f} has schema version {version and version[0]}, not {SCHEMA_VERSION}; "
                    "it is left where it is"
                )
                continue
            ids = [
                r[0]
                for r in con.execute(
                    f"SELECT run_id FROM {alias}.runs WHERE run_id NOT IN (SELECT run_id FROM main.runs)"
                ).fetchall()
            ]
            con.execute("BEGIN TRANSACTION")
            try:
                for table in TABLES:
                    if table != "schema_version" and ids:
                        con.execute(
                            f'INSERT INTO main."{table}" BY NAME SELECT * FROM {alias}."{table}" '
                            f"WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
                            [ids],
                        )
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.execute(f"DETACH {alias}")
        f.unlink(missing_ok=True)
        logger.info(f"merged staged run(s) {', '.join(ids) or '(already present)'} from {f} into {db_path}")
    folder = staging_dir(db_path)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _merge_before_reading(path: Path) -> None:
    """Merge staged runs before a read, if the database can be written now; else say they wait."""
    try:
        con = _open(path, read_only=False, wait=0)
    except StoreError as e:
        logger.warning(
            f"{len(staged_runs(path))} finished run(s) wait in {staging_dir(path)} and are not in "
            f"{path} yet ({e}); the next access that can write merges them"
        )
        return
    try:
        _merge_staged(con, path)
    except duckdb.Error as e:  # not a results database: the read says so
        logger.warning(f"finished run(s) in {staging_dir(path)} could not be merged into {path}: {e}")
    finally:
        con.close()


def _sql_str(text: str) -> str:
    return text.replace("'", "''")


# ----------------------------------------------------------------------------- read-only SQL

#: statements `query` runs: reads.  CALL/PRAGMA only of the read-only table functions below.
_READ_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
_READ_CALLS = re.compile(
    r"\s*(CALL|PRAGMA)\s+(pragma_\w+|table_info|show_tables(_expanded)?|show_databases|database_size|"
    r"storage_info|version|platform|duckdb_\w+)\s*(\(|;|$)",
    re.IGNORECASE,
)


def check_read_only_sql(sql: str, con: duckdb.DuckDBPyConnection) -> str:
    """`sql` if every statement only reads; locks `con`'s settings; else ReadOnlySqlError.

    Why both: the statement types refuse writes with a clear message before anything
    runs, and locking the configuration (after the caller's `SET`s) stops what a
    statement type cannot show -- `CALL enable_logging(storage='file', ...)` used to
    abort the process.  A parse error is DuckDB's own (duckdb.Error).
    """
    statements = con.extract_statements(sql)
    if not statements:
        raise ReadOnlySqlError('no SQL statement given; for example: dissect-study query "SELECT * FROM runs"')
    for st in statements:
        if st.type in _READ_TYPES or (
            st.type in (duckdb.StatementType.CALL, duckdb.StatementType.PRAGMA) and _READ_CALLS.match(st.query)
        ):
            continue
        text = " ".join(st.query.split())
        raise ReadOnlySqlError(
            f"query only reads: {st.type.name} statements are refused ({text[:80]}{'...' if len(text) > 80 else ''}); "
            "use SELECT (or DESCRIBE, SHOW, EXPLAIN); a run writes the database"
        )
    con.execute("SET lock_configuration = true")
    return sql


def _insert(con: duckdb.DuckDBPyConnection, table: str, df: pd.DataFrame, run_id: str | None = None) -> None:
    """Insert `df` into `table` (missing columns NULL); `run_id`, when given, fills that column
    (without copying a large frame to add it)."""
    df = _jsonify(df, con, table)
    con.register("_incoming", df)
    try:
        names = [c for c in df.columns if not (run_id is not None and c == "run_id")]
        cols = ", ".join(f'"{c}"' for c in names)
        if run_id is None:
            con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM _incoming')
        else:
            con.execute(f'INSERT INTO "{table}" (run_id, {cols}) SELECT ?, {cols} FROM _incoming', [run_id])
    finally:
        con.unregister("_incoming")


def latest_run_id(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 1").fetchone()
    return row[0] if row else None
