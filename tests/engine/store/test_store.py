"""The DuckDB store: schema, all-or-nothing runs, survival of killed writers, read-only query."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

from dissect_study.engine.cli import cli
from dissect_study.engine.store import database as store


def _record(n_rows: int = 10, model: str = "M") -> store.RunRecord:
    rec = store.RunRecord(store.new_run_id(), {"study_path": "x.study", "status": "ok", "params": {"device": "cpu"}})
    rec.add(
        "layers",
        pd.DataFrame(
            {
                "model": [model],
                "layer": ["_blocks.38"],
                "layer_index": [38],
                "tau": [0.4],
                "tau_statistic": ["mean_top1"],
            }
        ),
    )
    rec.add(
        "similarities",
        pd.DataFrame({"model": model, "layer": "_blocks.38", "unit": range(n_rows), "concept_id": 0, "score": 0.5}),
    )
    rec.add(
        "concepts", pd.DataFrame({"concept_set": ["s"], "concept_id": [0], "concept": ["mass"], "tasks": [["mass"]]})
    )
    return rec


def test_schema_has_every_documented_table_and_version(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record())
    con = duckdb.connect(str(db), read_only=True)
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    for t in (
        "runs",
        "models",
        "probes",
        "images",
        "concepts",
        "layers",
        "similarities",
        "neurons",
        "top_images",
        "schema_version",
        "analyses",
        "calibration",
        "layer_thresholds",
    ):
        assert t in tables, t
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == store.SCHEMA_VERSION
    assert con.execute("SELECT tasks FROM concepts").fetchone()[0] == ["mass"]


def test_reruns_add_runs_and_keep_old_ones(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    a, b = _record(), _record()
    store.write_run(db, a)
    store.write_run(db, b)
    con = duckdb.connect(str(db), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()) == sorted([a.run_id, b.run_id])
    assert con.execute("SELECT count(*) FROM similarities").fetchone()[0] == 20


def test_exception_mid_write_rolls_back_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "r.duckdb"
    first = _record()
    store.write_run(db, first)
    calls = {"n": 0}
    real = store._insert

    def failing(con, table, df):
        calls["n"] += 1
        if calls["n"] == 3:  # after runs + layers are inserted
            raise RuntimeError("disk on fire")
        real(con, table, df)

    monkeypatch.setattr(store, "_insert", failing)
    with pytest.raises(RuntimeError):
        store.write_run(db, _record(model="C4"))
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id FROM runs").fetchall() == [(first.run_id,)]
    assert con.execute("SELECT DISTINCT model FROM layers").fetchall() == [("M",)]


def test_sigkill_during_write_leaves_earlier_runs_intact(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    first = _record()
    store.write_run(db, first)
    marker = tmp_path / "inside-transaction"
    script = textwrap.dedent(f"""
        import time, pandas as pd
        from pathlib import Path
        from dissect_study.engine.store import database as store
        real = store._insert
        def slow(con, table, df):
            real(con, table, df)
            if table == "similarities":
                Path({str(marker)!r}).write_text("x")
                time.sleep(60)
        store._insert = slow
        rec = store.RunRecord("killed-run", {{"study_path": "y", "status": "ok"}})
        rec.add("layers", pd.DataFrame({{"model": ["G"], "layer": ["l"], "tau": [1.0]}}))
        rec.add("similarities", pd.DataFrame({{"model": "G", "layer": "l", "unit": range(200000), "concept_id": 1, "score": 0.1}}))
        store.write_run({str(db)!r}, rec)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not marker.exists():
        assert proc.poll() is None, "writer exited before reaching the transaction"
        assert time.time() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id FROM runs").fetchall() == [(first.run_id,)]
    assert con.execute("SELECT count(*) FROM similarities").fetchone()[0] == 10
    assert con.execute("SELECT count(*) FROM layers WHERE model = 'G'").fetchone()[0] == 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record())
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [store.SCHEMA_VERSION + 1])
    con.close()
    with pytest.raises(store.StoreError, match="newer"):
        store.write_run(db, _record())


def test_query_reads_and_refuses_writes_and_file_access(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    rec = _record()
    store.write_run(db, rec)
    runner = CliRunner()
    ok = runner.invoke(cli, ["query", "SELECT model, tau FROM layer_thresholds", "--db", str(db), "--format", "csv"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines() == ["model,tau", "M,0.4"]
    js = runner.invoke(cli, ["query", "SELECT count(*) AS n FROM similarities", "--db", str(db), "--format", "json"])
    assert js.exit_code == 0 and '"n":10' in js.output
    for sql in (
        "DELETE FROM runs",
        "DROP TABLE layers",
        "CREATE TABLE x (a INT)",
        f"COPY runs TO '{tmp_path / 'leak.csv'}'",
        "SELECT * FROM read_csv('/etc/passwd')",
    ):
        res = runner.invoke(cli, ["query", sql, "--db", str(db)])
        assert res.exit_code == 1, (sql, res.output)
        assert "error:" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "leak.csv").exists()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_query_bad_sql_and_missing_db_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["query", "SELECT 1", "--db", str(tmp_path / "none.duckdb")])
    assert res.exit_code == 1 and "no results database" in res.output
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record())
    res = runner.invoke(cli, ["query", "SELEC nonsense", "--db", str(db)])
    assert res.exit_code == 1 and "Parser Error" in res.output


def test_item09_a_failed_store_write_is_one_line_and_keeps_earlier_runs(
    tmp_path: Path, monkeypatch, tiny_models
) -> None:
    """Issue 14 item 9 (store side): a full disk in the middle of the run's transaction."""
    import duckdb as ddb
    from click.testing import CliRunner
    from helpers.tiny import STUDY

    from dissect_study.engine.cli import cli
    from dissect_study.engine.store import database

    study = tmp_path / "s.study"
    study.write_text(STUDY.replace('report "out" as html\n', ""), encoding="utf-8")
    db = tmp_path / "r.duckdb"
    args = ["run", str(study), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), "-q"]
    assert CliRunner().invoke(cli, args).exit_code == 0

    real_insert = database._insert

    def disk_full(con, table, df, **kw):  # the spill's layer-by-layer writes, or the final transaction
        if table == "similarities":
            raise ddb.IOException("could not write file: No space left on device")
        return real_insert(con, table, df, **kw)

    monkeypatch.setattr(database, "_insert", disk_full)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    assert "Traceback" not in res.output and "No space left on device" in res.output
    assert "keeps exactly its earlier runs" in res.output
    with ddb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
        assert con.execute("SELECT count(DISTINCT run_id) FROM similarities").fetchone()[0] == 1
