"""Bounded memory: a run's per-layer tables stream to a spill file and are committed at the end,
all or nothing -- also when the driver is SIGKILLed while layers stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from dissect_study.engine.store import database as store


def _sims(model: str, layer: str, k: int, m: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        dict(
            model=model,
            layer=layer,
            unit=np.repeat(np.arange(k, dtype=np.int32), m),
            concept_id=np.tile(np.arange(m, dtype=np.int32), k),
            score=rng.random(k * m, dtype=np.float32),
        )
    )


def _record(db: Path, run_id: str, layers: int = 3) -> tuple[store.RunRecord, list[pd.DataFrame]]:
    rec = store.RunRecord(run_id, {"study_title": run_id, "status": "ok"}, spill=store.Spill(db, run_id))
    parts = []
    for i in range(layers):
        df = _sims("M", f"l{i}", 50 + i, 40, i)
        rec.add("similarities", df)
        rec.add("layers", {"model": "M", "layer": f"l{i}", "layer_index": i, "n_neurons": 50 + i})
        parts.append(df)
    return rec, parts


def _stored(db: Path, run_id: str) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT model, layer, unit, concept_id, score FROM similarities WHERE run_id = ? ORDER BY layer, unit, concept_id",
            [run_id],
        ).df()


@pytest.mark.parametrize("commit_rows", [3_000_000, 1_000])  # one spill transaction; a commit every 1,000 rows
def test_streamed_tables_leave_memory_at_once_and_are_stored_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, commit_rows: int
) -> None:
    monkeypatch.setattr(store, "SPILL_COMMIT_ROWS", commit_rows)
    db = tmp_path / "r.duckdb"
    rec, parts = _record(db, "run-1")
    assert "similarities" not in rec.frames and rec.frames["layers"]  # the big table is not held in memory
    assert rec.spill is not None and rec.spill.path.exists() and rec.spill.rows == sum(map(len, parts))
    with duckdb.connect(str(db)) as con:  # nothing is in the database before the run is written
        store.ensure_schema(con)
        assert con.execute("SELECT count(*) FROM similarities").fetchone()[0] == 0
    store.write_run(db, rec)
    expected = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(_stored(db, "run-1"), expected, check_dtype=False)
    assert not rec.spill.path.exists() and not store.staging_dir(db).exists()


def test_a_locked_database_stages_the_whole_streamed_run(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record(db, "run-1")[0])
    code = f"import duckdb, sys; c = duckdb.connect({str(db)!r}); print('ready', flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        rec, parts = _record(db, "run-2")
        with pytest.raises(store.RunStagedError) as err:
            store.write_run(db, rec, wait=0.2)
    finally:
        p.stdin.close()  # type: ignore[union-attr]
        p.wait(timeout=30)
    staged = err.value.staged
    pd.testing.assert_frame_equal(_stored(staged, "run-2"), pd.concat(parts, ignore_index=True), check_dtype=False)
    assert not rec.spill.path.exists()  # type: ignore[union-attr]
    store.write_run(db, _record(db, "run-3")[0])  # the next write merges the staged run
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall() == [("run-1",), ("run-2",), ("run-3",)]


@pytest.mark.slow
def test_driver_sigkilled_while_layers_stream_leaves_the_database_as_it_was(tmp_path: Path, tiny_models) -> None:
    from helpers.tiny import STUDY, _run

    study = STUDY.replace('report "out" as html\n', "")
    first, db = _run(tmp_path, study)
    before = {t: _count(db, t) for t in ("runs", "similarities", "neurons", "layers")}
    marker = tmp_path / "streaming"
    tests_dir = str(Path(__file__).resolve().parents[2])
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {tests_dir!r})
        import pytest
        from helpers import tiny
        from dissect_study.engine.store import database as store
        real = store.Spill.append
        def slow(self, table, df, run_id):
            real(self, table, df, run_id)
            if table == "similarities" and self.rows > 500:  # a few layers are in the spill
                Path({str(marker)!r}).write_text(str(self.path))
                time.sleep(60)
        store.Spill.append = slow
        mp = pytest.MonkeyPatch()
        tiny.tiny_models.__wrapped__(mp)
        tiny._run(Path({str(tmp_path)!r}), {study!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, "the run ended before its layers streamed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spill = Path(marker.read_text())
    assert spill.exists()  # the killed driver's spill is left behind ...
    assert {t: _count(db, t) for t in before} == before  # ... and the database is exactly as it was
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT run_id FROM runs").fetchall() == [(first.run_id,)]
    second, _ = _run(tmp_path, study)  # the next run stores normally and removes the dead run's spill
    assert _count(db, "runs") == 2 and not spill.exists() and not store.staging_dir(db).exists()


def _count(db: Path, table: str) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_a_later_stage_reads_back_what_the_run_recorded_wherever_it_went(tmp_path: Path) -> None:
    """`RunRecord.rows` sees spilled rows (before any commit) and in-memory rows alike, filtered."""
    db = tmp_path / "r.duckdb"
    rec, parts = _record(db, "run-r", layers=2)
    rec.add("similarities", _sims("G", "l0", 7, 40, 9))
    got = rec.rows("similarities", model="M", layer="l1")
    assert got is not None
    want = parts[1].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns.tolist()].reset_index(drop=True), want, check_dtype=False)
    assert len(rec.rows("similarities", model="G")) == 7 * 40
    layers = rec.rows("layers", model="M")  # not streamed: read from memory
    assert layers is not None and layers["layer"].tolist() == ["l0", "l1"]
    assert rec.rows("similarities", model="nobody") is None
    assert rec.rows("warnings") is None
    rec.spill.discard()
