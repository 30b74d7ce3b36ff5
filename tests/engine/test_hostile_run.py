"""Regression tests for the hostile- and careless-input audit (issue 14), the run-side items.

Items 4, 7, 11, 12, 13, 14, 15 and 16 (tests/engine/test_hostile.py has the others).  Each test
reproduces the audited input, scaled down with the tiny models of tests/helpers/tiny.py where
the original only cost time, and asserts what must hold now; the item is in the name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from dissect_study.dsl import check_text
from dissect_study.dsl.checker import CONCEPT_SET_DIR
from dissect_study.dsl.vocabulary import SEED_MAX, min_probe_images
from dissect_study.engine.cli import cli
from dissect_study.engine.run import RunError, RunOptions, run_study
from dissect_study.engine.store import database as store

HEAD = """study "hostile"
concepts c = shipped("mammo_v1")
dissector d = demo()
target A = demo("G")
target B = demo("M")
"""


def _errors(diags) -> list[str]:
    return [d.code for d in diags if d.is_error]


def _check(text: str, tmp_path: Path):
    return check_text(text, str(tmp_path / "s.study"), env={})


def _run(tmp_path: Path, text: str, **kw):
    study, diags = _check(text, tmp_path)
    assert study is not None, [d.message for d in diags]
    opts = {"db": tmp_path / "r.duckdb", "cache_dir": tmp_path / "cache", "quiet": True, "reports": False, **kw}
    return run_study(study, RunOptions(**opts))


@pytest.fixture
def no_model_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any probe pass starts: what pre-flight refuses must cost no pass."""
    import dissect_study.engine.passes.execute as passes

    def forbidden(ex) -> None:
        raise AssertionError("a model pass ran before the problem was reported")

    monkeypatch.setattr(passes, "run_passes", forbidden)


def _png_folder(folder: Path, n_good: int, n_bad: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray((rng.random((64, 40)) * 255).astype("uint8")).save(folder / f"good{i}.png")
    for i in range(n_bad):
        (folder / f"bad{i}.png").write_bytes(b"not an image")
    return folder


# ================================================================== item 4: small probes


def test_item04_min_probe_images_matches_a_brute_force_search() -> None:
    """The rule `check` and pre-flight share: the fewest N with floor(N * top_fraction) >= 1, never below 2."""
    for fraction in (0.05, 0.1, 0.3, 1 / 3, 0.07, 0.5, 1.0, 0.001, 0.019):
        need, why = min_probe_images("rank_reorder", {"top_fraction": fraction})
        brute = next(n for n in range(2, 10_000) if math.floor(n * fraction) >= 1)
        assert need == brute, fraction
    assert min_probe_images("soft_wpmi", {"top_k": 100})[0] == 2
    assert "constant" in min_probe_images("cos", {})[1]


def test_item04_phantom_too_small_is_a_check_error(tmp_path: Path) -> None:
    """phantom(n=19) with rank_reorder's default top_fraction=0.05 ranks 0 images per neuron."""
    text = (
        HEAD
        + "probe p = phantom(n={n}, height=64)\ndissect A at layers all by d on p with concepts c using rank_reorder()\n"
    )
    study, diags = _check(text.format(n=19), tmp_path)
    assert study is None and _errors(diags) == ["probe-too-small"]
    assert "at least 20" in diags[0].message and "top_fraction >= 0.05263" in (diags[0].hint or "")
    study, diags = _check(text.format(n=20), tmp_path)
    assert study is not None and not _errors(diags)
    # one image: every neuron constant, for any function; a sample bounds an unknown probe too
    one = HEAD + "probe p = phantom(n=1)\ndissect A at layers all by d on p with concepts c\n"
    assert _errors(_check(one, tmp_path)[1]) == ["probe-too-small"]
    sampled = HEAD + 'probe p = folder("imgs") sample 1\ndissect A at layers all by d on p with concepts c\n'
    study, diags = _check(sampled, tmp_path)
    assert study is None and "at most 1 image" in diags[0].message
    union = HEAD + (
        "probe u = union(a, b)\nprobe a = phantom(n=9)\nprobe b = phantom(n=10)\n"
        "dissect A at layers all by d on u with concepts c using rank_reorder(top_fraction=0.05)\n"
    )
    study, diags = _check(union, tmp_path)
    assert study is None and "has 19 images" in diags[0].message  # 9 + 10, declared after the union


def test_item04_one_usable_image_is_refused_before_any_pass(tmp_path: Path, tiny_models, no_model_pass) -> None:
    """A folder of one image (its size unknown to `check`) is refused after building, before any pass."""
    folder = _png_folder(tmp_path / "one", 1)
    text = HEAD + f'probe p = folder("{folder}")\ndissect A at layers all by d on p with concepts c\n'
    with pytest.raises(RunError, match=r"probe p has 1 usable image, soft_wpmi needs at least 2.*constant"):
        _run(tmp_path, text)
    assert not (tmp_path / "r.duckdb").exists()


def test_item04_small_phantom_skips_the_optional_calibration_step(tmp_path: Path, tiny_models) -> None:
    """phantom(n=19): the study's own soft_wpmi runs; the bench's rank_reorder is skipped with a warning."""
    text = (
        HEAD
        + "probe p = phantom(n=19, height=64)\ndissect A at layers all by d on p with concepts c using soft_wpmi(top_k=5)\n"
    )
    result = _run(tmp_path, text)
    assert any("rank_reorder skipped" in w and "floor(19 * 0.05) = 0" in w for w in result.warnings)
    con = duckdb.connect(str(result.db), read_only=True)
    sims = {r[0] for r in con.execute("SELECT DISTINCT similarity FROM calibration").fetchall()}
    assert "rank_reorder" not in sims and "soft_wpmi" in sims
    assert con.execute("SELECT count(*) FROM neurons").fetchone()[0] == 6 + 8 + 2


# ================================================================== item 7: locks


def _hold(db: Path, read_only: bool = True) -> subprocess.Popen:
    """Another process holding DuckDB's lock on `db` until its stdin closes (an open `query`, say)."""
    code = (
        f"import duckdb, sys; c = duckdb.connect({str(db)!r}, read_only={read_only}); "
        "print('ready', flush=True); sys.stdin.read()"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _record(run_id: str, message: str) -> store.RunRecord:
    rec = store.RunRecord(run_id, {"study_title": message, "status": "ok"})
    rec.add("warnings", {"step": "test", "message": message})
    return rec


def test_item07_lock_held_by_query_is_waited_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run finishing while a query holds the database waits for it, names the PID, then stores."""
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record("run-1", "first"))
    holder = _hold(db)
    threading.Timer(1.5, holder.stdin.close).start()  # type: ignore[union-attr]
    caplog.set_level(logging.INFO, logger="dissect_study")
    t0 = time.monotonic()
    store.write_run(db, _record("run-2", "second"), wait=60)
    assert time.monotonic() - t0 >= 1.0  # it did wait
    holder.wait(timeout=30)
    assert f"held by PID {holder.pid} (" in caplog.text and "released" in caplog.text
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall() == [("run-1",), ("run-2",)]


def test_item07_lock_never_released_stages_the_run_and_the_next_access_merges_it(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record("run-1", "first"))
    holder = _hold(db, read_only=False)  # e.g. another run's session that outlives the wait
    try:
        with pytest.raises(store.RunStagedError) as err:
            store.write_run(db, _record("run-2", "second"), wait=0.5)
    finally:
        holder.stdin.close()  # type: ignore[union-attr]
        holder.wait(timeout=30)
    msg = err.value.user_message()
    assert f"PID {holder.pid}" in msg and "run-2" in msg and str(err.value.staged) in msg
    staged = err.value.staged
    assert staged.parent == store.staging_dir(db) and store.staged_runs(db) == [staged]
    # the staged file is a complete results database of its own
    side = duckdb.connect(str(staged), read_only=True)
    assert side.execute("SELECT message FROM warnings").fetchall() == [("second",)]
    side.close()
    # the next read merges it: nothing finished is lost
    res = CliRunner().invoke(
        cli, ["query", "SELECT run_id, message FROM warnings ORDER BY run_id", "--db", str(db), "--format", "csv"]
    )
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-2:] == ["run-1,first", "run-2,second"]
    assert store.staged_runs(db) == [] and not store.staging_dir(db).exists()


def test_item07_a_run_finishing_while_a_query_is_open_is_stored(
    tmp_path: Path,
    tiny_models,
    monkeypatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The audited case end to end: a `query` holds the database as the run finishes; it used to fail."""
    db = tmp_path / "r.duckdb"
    text = (
        HEAD
        + "probe p = phantom(n=8, height=64)\ndissect A at layers last by d on p with concepts c using soft_wpmi(top_k=3)\n"
    )
    _run(tmp_path, text, calibration=False)
    monkeypatch.setenv(store.LOCK_TIMEOUT_ENV, "60")
    holder = _hold(db)
    import dissect_study.engine.store.database as database

    real_write = database.write_run

    def write_then_release_soon(path, record, wait=None):  # the query ends while the run waits
        threading.Timer(1.0, holder.stdin.close).start()  # type: ignore[union-attr]
        return real_write(path, record, wait)

    monkeypatch.setattr(database, "write_run", write_then_release_soon)
    caplog.set_level(logging.INFO, logger="dissect_study")
    result = _run(tmp_path, text, calibration=False)
    holder.wait(timeout=30)
    assert f"PID {holder.pid}" in caplog.text
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM neurons WHERE run_id = ?", [result.run_id]).fetchone()[0] == 2


def test_item07_lock_timeout_must_be_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(store.LOCK_TIMEOUT_ENV, "soon")
    with pytest.raises(store.StoreError, match="DISSECT_STUDY_LOCK_TIMEOUT"):
        store.check_writable_database(tmp_path / "r.duckdb")
    monkeypatch.setenv(store.LOCK_TIMEOUT_ENV, "2.5")
    assert store.lock_timeout() == 2.5


# ================================================================== item 11: alias order


def test_item11_alias_naming_a_later_alias(tmp_path: Path) -> None:
    text = HEAD + (
        "probe p = phantom(n=30, height=64)\nlayer a = b, x.1\nlayer b = x.2, early\n"
        "dissect A at layers a by d on p with concepts c\n"
    )
    study, diags = _check(text, tmp_path)
    assert study is not None and not _errors(diags)
    names = [getattr(i, "text", None) for i in study.layer_aliases["a"]]
    assert names == ["x.2", "early", "x.1"]
    cycle = (
        HEAD + "probe p = phantom(n=30)\nlayer a = b\nlayer b = a\ndissect A at layers a by d on p with concepts c\n"
    )
    study, diags = _check(cycle, tmp_path)
    assert study is None and _errors(diags) == ["alias-cycle"] and "a -> b -> a" in diags[0].message


# ================================================================== item 12: query edge cases


def _query(db: Path, sql: str) -> subprocess.CompletedProcess:
    """`dissect-study query` in its own process: a statement that aborts must not take pytest with it."""
    code = "import sys; from dissect_study.engine.cli import main; sys.argv[0] = 'dissect-study'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "query", sql, "--db", str(db)], capture_output=True, text=True, timeout=120
    )


def test_item12_query_edge_cases(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record("run-1", "first"))
    for sql in ("", ";;;", "  ;\n; "):
        res = _query(db, sql)
        assert res.returncode == 1 and "no SQL statement" in res.stderr and "Traceback" not in res.stderr, sql
    for sql in (
        "CALL enable_logging(storage='file', storage_path='/x')",
        "CALL disable_logging()",
        "SET threads = 1",
        "CHECKPOINT",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS o",
    ):
        res = _query(db, sql)
        assert res.returncode == 1, (sql, res.returncode, res.stderr)
        assert "refused" in res.stderr and "Traceback" not in res.stderr, sql
    assert not (tmp_path / "other.duckdb").exists()
    ok = _query(db, "PRAGMA table_info('runs'); SELECT message FROM warnings")
    assert ok.returncode == 0 and "first" in ok.stdout


# ================================================================== item 13: check and run agree


def test_item13_similarity_parameters_run_refuses_are_check_errors(tmp_path: Path) -> None:
    base = HEAD + "probe p = phantom(n=100)\ndissect A at layers all by d on p with concepts c using {sim}\n"
    for sim, param in (("rank_reorder(top_fraction=0)", "top_fraction"), ("cos_cubed(min_norm=0)", "min_norm")):
        study, diags = _check(base.format(sim=sim), tmp_path)
        assert study is None and _errors(diags) == ["bounds"] and f"'{param}' must be > 0" in diags[0].message
    from dissect_study.engine.scores.similarity import SimilarityError, compute_similarity

    for name, params in (("rank_reorder", {"top_fraction": 0.0}), ("cos_cubed", {"min_norm": 0.0})):
        with pytest.raises(SimilarityError):  # what run would have said after the passes
            compute_similarity(name, torch.rand(40, 3), torch.rand(40, 2), params)
    assert _check(base.format(sim="rank_reorder(top_fraction=0.5)"), tmp_path)[0] is not None


def test_item13_union_declared_before_its_members_runs(tmp_path: Path, tiny_models) -> None:
    text = HEAD + (
        "probe mix = union(a, b)\nprobe a = phantom(n=6, seed=1, height=64)\n"
        "probe b = phantom(n=5, seed=2, height=64)\n"
        "dissect A at layers last by d on mix with concepts c using soft_wpmi(top_k=3)\n"
    )
    result = _run(tmp_path, text, calibration=False)
    con = duckdb.connect(str(result.db), read_only=True)
    assert con.execute("SELECT n_images FROM probes WHERE probe = 'mix'").fetchone()[0] == 11
    ids = [r[0] for r in con.execute("SELECT image_id FROM images WHERE probe = 'mix' ORDER BY image_idx").fetchall()]
    assert [i.split(":")[0] for i in ids] == ["a"] * 6 + ["b"] * 5  # the order the union names them


def test_item13_shipped_takes_names_not_paths(tmp_path: Path) -> None:
    outside = tmp_path / "x.csv"
    outside.write_text("concept,category\nsecret concept,Stolen\n", encoding="utf-8")
    escape = os.path.relpath(tmp_path / "x", CONCEPT_SET_DIR)
    assert (CONCEPT_SET_DIR / f"{escape}.csv").resolve() == outside.resolve()  # the audited escape
    for name, code, words in (
        ("mammo_v9", "unknown-shipped", "did you mean 'mammo_v1'"),
        (escape, "shipped-name", "shipped sets: mammo_v1"),
    ):
        text = (
            HEAD.replace('shipped("mammo_v1")', f'shipped("{name}")')
            + "probe p = phantom(n=30)\ndissect A at layers all by d on p with concepts c\n"
        )
        study, diags = _check(text, tmp_path)
        assert study is None and _errors(diags) == [code] and words in (diags[0].hint or ""), name
    from dissect_study.engine.concepts import ConceptSetError, load_concept_set

    with pytest.raises(ConceptSetError, match="no shipped concept set"):  # the loader refuses it too
        load_concept_set("c", "shipped", {"name": escape}, tmp_path)
    assert len(load_concept_set("c", "shipped", {"name": "mammo_v1"}, tmp_path)) > 700


# ================================================================== item 14: refused before the work


def test_item14_analysis_layer_typo_and_bad_unit_before_any_pass(tmp_path: Path, tiny_models, no_model_pass) -> None:
    """Both problems of the study at once, after building (layer names need the model), before any pass."""
    text = HEAD + (
        "probe p = phantom(n=30, height=64)\ndissect A, B at layers all by d on p with concepts c\n"
        "compare A vs B at layers x9\nshow neuron B.last[99] top 3\n"
    )
    with pytest.raises(RunError) as err:
        _run(tmp_path, text)
    msg = str(err.value)
    assert "2 problems found before any model pass" in msg
    assert "no layer 'x9'" in msg and "layer 6 of B has 2 neurons" in msg and "no unit 99" in msg
    assert not (tmp_path / "r.duckdb").exists()


def test_item14_bad_filter_before_any_pass(tmp_path: Path, tiny_models, no_model_pass) -> None:
    cats = tmp_path / "c.csv"
    cats.write_text("concept,category\nround mass,Findings\ndense breast,Anatomy\n", encoding="utf-8")
    text = HEAD.replace('shipped("mammo_v1")', f'csv("{cats}")') + (
        "probe p = phantom(n=30, height=64)\ndissect A, B at layers all by d on p with concepts c\n"
        "compare A vs B at layers last on category Findngs\n"
    )
    with pytest.raises(RunError, match=r"no category named 'Findngs'.*Findings"):
        _run(tmp_path, text)
    ok = text.replace("Findngs", "Findings")
    study, _ = _check(ok, tmp_path)
    assert study is not None  # the right name passes pre-flight (the run itself is covered elsewhere)


def test_item14_bad_db_cache_and_report_paths_before_building(tmp_path: Path, tiny_models) -> None:
    text = (
        HEAD
        + 'probe p = phantom(n=30, height=64)\ndissect A at layers all by d on p with concepts c\nreport "out" as html\n'
    )
    a_file = tmp_path / "plain.txt"
    a_file.write_text("not a folder", encoding="utf-8")
    (tmp_path / "out").write_text("a file where the report folder goes", encoding="utf-8")
    cases = [
        (dict(db=a_file / "sub" / "r.duckdb"), "cannot create the results database, .*plain.txt is a file"),
        (dict(db=tmp_path), "is a folder; --db names the results file"),
        (dict(db=a_file), "not a database DuckDB can open"),
        (dict(cache_dir=a_file / "cache"), "cache folder cannot be used: .*plain.txt is a file"),
        (dict(reports=True), "report 'out': .*out is a file, not a folder"),
    ]
    for opts, pattern in cases:
        with pytest.raises(RunError, match=pattern):
            _run(tmp_path, text, **opts)
    assert tiny_models == {"dissector": 0, "target": 0}  # nothing was built, let alone trained
    fresh = tmp_path / "new" / "deeper" / "r.duckdb"  # a folder that can be created is created
    result = _run(tmp_path, text, db=fresh, calibration=False)
    assert result.db == fresh and fresh.is_file()


def test_item14_newer_schema_is_refused_before_building(tmp_path: Path, tiny_models) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record("run-1", "first"))
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [store.SCHEMA_VERSION + 1])
    con.close()
    text = HEAD + "probe p = phantom(n=30, height=64)\ndissect A at layers all by d on p with concepts c\n"
    with pytest.raises(RunError, match="newer than this dissect-study writes"):
        _run(tmp_path, text)
    assert tiny_models["target"] == 0


# ================================================================== item 15: silent or degenerate results


def test_item15_json_category_map_refuses_null_and_objects(tmp_path: Path) -> None:
    from dissect_study.engine.concepts import ConceptSetError, load_concept_set

    cases = [
        ({"Findings": ["round mass", None]}, "'Findings' item 2: expected a concept .*found null"),
        ({"Findings": {"Mass": ["round mass", {"x": "y"}]}}, r"'Findings' -> 'Mass' item 2: .*found \{\"x\": \"y\"\}"),
        (["round mass", 3], "item 2: expected a concept .*found 3"),
    ]
    for data, pattern in cases:
        f = tmp_path / "cats.json"
        f.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ConceptSetError, match=f"cats.json: {pattern}"):
            load_concept_set("c", "json", {"path": str(f)}, tmp_path)
    (tmp_path / "c.txt").write_text("round mass\n", encoding="utf-8")
    (tmp_path / "tasks.json").write_text('{"mass": ["round mass", null]}', encoding="utf-8")
    with pytest.raises(ConceptSetError, match="task 'mass' item 2"):
        load_concept_set("c", "txt", {"path": "c.txt", "tasks": "tasks.json"}, tmp_path)
    good = tmp_path / "cats.json"
    good.write_text(json.dumps({"Findings": {"Mass": ["round mass"]}}), encoding="utf-8")
    cs = load_concept_set("c", "json", {"path": str(good)}, tmp_path)
    assert [(x.text, x.category, x.subcategory) for x in cs.concepts] == [("round mass", "Findings", "Mass")]


def test_item15_seeds_are_32_bit(tmp_path: Path) -> None:
    """The phantom folds seeds to 32 bits: 2**32 drew seed 0's images while the database said 2**32."""
    from dissect_study.engine.phantom.probe import PhantomProbe

    a, b = PhantomProbe(2, 0, 64), PhantomProbe(2, 2**32, 64)
    assert np.array_equal(a.load(0), b.load(0))  # why out-of-range seeds are refused
    base = (
        HEAD + "probe p = phantom(n=30, seed={seed})\ndissect A at layers all by d on p with concepts c using {sim}\n"
    )
    for seed in (-1, SEED_MAX + 1):
        for sim in ("soft_wpmi()", "rank_reorder(seed=0)"):
            study, diags = _check(base.format(seed=seed, sim=sim), tmp_path)
            assert study is None and _errors(diags) == ["bounds"]
    study, _ = _check(base.format(seed=SEED_MAX, sim=f"rank_reorder(seed={SEED_MAX})"), tmp_path)
    assert study is not None and study.probes["p"].params["seed"] == SEED_MAX
    study, diags = _check(base.format(seed=0, sim="rank_reorder(seed=-1)"), tmp_path)
    assert study is None and "must be >= 0" in diags[0].message


def test_item15_newer_schema_warns_on_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record("run-1", "first"))
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [store.SCHEMA_VERSION + 1])
    con.close()
    caplog.set_level(logging.WARNING, logger="dissect_study")
    store.connect(db, read_only=True).close()
    assert f"schema version {store.SCHEMA_VERSION + 1}, newer than this dissect-study reads" in caplog.text
    caplog.clear()
    db2 = tmp_path / "ok.duckdb"
    store.write_run(db2, _record("run-1", "first"))
    store.connect(db2, read_only=True).close()
    assert "newer" not in caplog.text


def test_item15_report_with_no_format_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    store.write_run(db, _record("run-1", "first"))
    res = CliRunner().invoke(cli, ["report", "--db", str(db), "--format", "", "--out", str(tmp_path / "rep")])
    assert res.exit_code != 0 and "format" in res.output and not (tmp_path / "rep").exists()


# ================================================================== item 16: cosmetic


def test_item16_timm_takes_positional_arguments(tmp_path: Path) -> None:
    text = HEAD + (
        'probe p = phantom(n=30)\ntarget T = timm("resnet50", "w.safetensors")\n'
        "dissect T at layers all by d on p with concepts c\n"
    )
    study, diags = _check(text, tmp_path)
    assert study is not None and not _errors(diags)
    assert study.targets["T"].params["model"] == "resnet50" and study.targets["T"].params["weights"] == "w.safetensors"


@pytest.mark.timeout(60)
def test_item16_fifo_concept_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    from dissect_study.engine.concepts import ConceptSetError, load_concept_set

    fifo = tmp_path / "concepts.txt"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    for func, params in (
        ("txt", {"path": "concepts.txt"}),
        ("csv", {"path": "concepts.txt"}),
        ("json", {"path": "concepts.txt"}),
        ("xlsx", {"path": "concepts.txt"}),
    ):
        with pytest.raises(ConceptSetError, match=r"named pipe \(FIFO\)"):
            load_concept_set("c", func, params, tmp_path)
    (tmp_path / "c.txt").write_text("round mass\n", encoding="utf-8")
    with pytest.raises(ConceptSetError, match="named pipe"):  # a category map or task map is a concept file too
        load_concept_set("c", "txt", {"path": "c.txt", "categories": "concepts.txt"}, tmp_path)
    with pytest.raises(ConceptSetError, match="is a folder"):
        load_concept_set("c", "txt", {"path": "."}, tmp_path)
    assert time.monotonic() - t0 < 30


def test_item15_degenerate_scores_are_a_warning(tmp_path: Path, tiny_models) -> None:
    """cos_cubed(min_norm=1e30) zeroes every score: the run must say the labels are arbitrary."""
    text = HEAD + (
        "probe p = phantom(n=24, seed=1, height=64)\n"
        "dissect A at layers last by d on p with concepts c using cos_cubed(min_norm=1e30)\n"
    )
    res = _run(tmp_path, text)
    assert any("score every concept alike" in w and "min_norm" in w for w in res.warnings), res.warnings
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        stored = con.execute("SELECT message FROM warnings WHERE run_id = ?", [res.run_id]).fetchall()
    assert any("score every concept alike" in m for (m,) in stored)


def test_item15_ordinary_scores_raise_no_such_warning(tmp_path: Path, tiny_models) -> None:
    text = HEAD + (
        "probe p = phantom(n=24, seed=1, height=64)\n"
        "dissect A at layers last by d on p with concepts c using cos_cubed()\n"
    )
    assert not [w for w in _run(tmp_path, text).warnings if "alike" in w]


def test_item16_layer_list_in_messages_never_repeats_a_layer() -> None:
    from dissect_study.engine.build import _layer_list

    assert _layer_list(["blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"]) == (
        "blocks.0, blocks.1, blocks.2, blocks.3, blocks.4"
    )
    many = [f"_blocks.{i}" for i in range(39)]
    shown = _layer_list(many).replace("...", "").replace(" ", "").split(",")
    shown = [s for s in shown if s]
    assert len(shown) == len(set(shown)) == 6 and shown[-1] == "_blocks.38"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_item16_fifo_probe_manifest_is_refused_not_waited_on(tmp_path: Path) -> None:
    from dissect_study.engine.probes import ProbeError
    from dissect_study.engine.probes.manifest import read_csv_text

    fifo = tmp_path / "probe.csv"
    os.mkfifo(fifo)
    done: list[BaseException] = []

    def read() -> None:
        try:
            read_csv_text(fifo, "probe p")
        except BaseException as e:  # noqa: BLE001 -- whatever it raises is what we check
            done.append(e)

    th = threading.Thread(target=read, daemon=True)
    th.start()
    th.join(5)
    assert not th.is_alive(), "reading a FIFO manifest hung"
    assert done and isinstance(done[0], ProbeError), done


def test_item04_too_few_readable_images_stop_at_the_pass(tmp_path: Path, tiny_models) -> None:
    """Two images of which one is unreadable: the pre-flight counted two, the pass reads one."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((40, 30), 120, np.uint8)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png at all")
    text = HEAD + f'probe p = folder("{folder}")\ndissect A at layers last by d on p with concepts c\n'
    with pytest.raises(RunError, match=r"only 1 of 2 images could be read"):
        _run(tmp_path, text)
    assert (
        not (tmp_path / "r.duckdb").exists()
        or not duckdb.connect(str(tmp_path / "r.duckdb")).execute("SELECT count(*) FROM runs").fetchone()[0]
    )
