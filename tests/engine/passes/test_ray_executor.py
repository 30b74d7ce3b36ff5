"""`run --executor ray`: the passes sharded on a local 2-CPU Ray cluster give the local run's
results bit for bit, survive a killed worker, and a missing Ray is one clear error.

One cluster is shared by the module's Ray tests (starting Ray is the slow part).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import torch
from helpers.tiny import STUDY, TinyDissector, TinyTarget, _run

from dissect_study.engine import models as model_factories
from dissect_study.engine.passes.activations import embed_images, extract_activations
from dissect_study.engine.passes.shards import make_passes, merge_activations, merge_embeddings, shard_rows
from dissect_study.engine.phantom.probe import PhantomProbe
from dissect_study.errors import DissectStudyError

COMPARED = ("neurons", "layers", "similarities")
# the tiny study without its report (rendering is not what these tests are about)
STUDY_NO_REPORT = STUDY.replace('report "out" as html\n', "")


@pytest.fixture(scope="module")
def ray_cluster():
    # no skip without Ray: `make test` installs the [ray] extra, and a missing one must show
    from helpers.ray_cluster import start_cluster

    yield from start_cluster(num_cpus=2)


def _tables(db: Path) -> dict[str, pd.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL").df() for t in COMPARED}


def _assert_identical(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    for t in COMPARED:
        assert len(ta[t]) > 0
        pd.testing.assert_frame_equal(ta[t], tb[t], check_exact=True, obj=t)


# ----------------------------------------------------------------------------- the seam, no Ray


def test_shards_fall_on_batch_boundaries_and_cover_the_rows_in_order() -> None:
    rows = list(range(3, 40))  # 37 rows
    for bs in (1, 4, 8, 50):
        for n in (1, 2, 3, 7, 100):
            parts = shard_rows(rows, bs, n)
            assert [r for p in parts for r in p] == rows
            assert len(parts) == min(n, -(-len(rows) // bs))
            assert all(len(p) % bs == 0 for p in parts[:-1])
            sizes = [-(-len(p) // bs) for p in parts]  # batches per shard
            assert max(sizes) - min(sizes) <= 1
    assert shard_rows([], 8, 4) == []
    with pytest.raises(ValueError):
        shard_rows(rows, 0, 2)


def test_merged_shards_equal_the_whole_pass_bit_for_bit() -> None:
    probe = PhantomProbe(30, 5, 64)
    target, diss = TinyTarget("B", 2), TinyDissector()
    rows = list(range(1, 29))
    whole = extract_activations(target, probe, ["0", "2"], batch_size=4, indices=rows, progress=False, keep_output=True)
    parts = [
        extract_activations(target, probe, ["0", "2"], batch_size=4, indices=p, progress=False, keep_output=True)
        for p in shard_rows(rows, 4, 3)
    ]
    merged = merge_activations(parts, 1.0)
    assert merged.indices == whole.indices == rows
    for layer in ("0", "2"):
        assert torch.equal(merged.acts[layer], whole.acts[layer])
    assert merged.output is not None and whole.output is not None and torch.equal(merged.output, whole.output)
    e_whole = embed_images(diss, probe, batch_size=4, indices=rows, progress=False)
    e_parts = [embed_images(diss, probe, batch_size=4, indices=p, progress=False) for p in shard_rows(rows, 4, 3)]
    assert torch.equal(merge_embeddings(e_parts, 1.0).emb, e_whole.emb)


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_models) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(DissectStudyError, match=r"pip install 'dissect-study\[ray\]'"):
        make_passes("ray")
    with pytest.raises(DissectStudyError, match=r"pip install 'dissect-study\[ray\]'"):
        _run(tmp_path, STUDY_NO_REPORT, executor="ray")
    assert not (tmp_path / "r.duckdb").exists()
    with pytest.raises(DissectStudyError, match="--executor ray"):
        make_passes("local", "10.0.0.1:6379")


# ----------------------------------------------------------------------------- on a Ray cluster


def _local_run_then_marking_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **marking: float
) -> tuple[Path, Path]:
    """Run the study locally into `local/`, then make every target built afterwards a
    MarkingTarget (same results) that leaves its process id in `marks/`; `ray/` is made for
    the Ray run.  Returns the local database and the marks folder."""
    from helpers.ray_cluster import MarkingTarget

    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    _, local_db = _run(tmp_path / "local", STUDY_NO_REPORT)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setattr(
        model_factories,
        "build_target",
        lambda name, func, params, ctx: MarkingTarget(name, {"G": 1, "M": 2}[params["variant"]], str(marks), **marking),
    )
    return local_db, marks


@pytest.mark.slow
def test_ray_executor_gives_the_local_results_bit_for_bit(
    tmp_path: Path, tiny_models, ray_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_db, marks = _local_run_then_marking_targets(tmp_path, monkeypatch, pause=0.0)
    _, ray_db = _run(tmp_path / "ray", STUDY_NO_REPORT, executor="ray")  # its own, empty cache: passes run on Ray
    pids = {int(p.name) for p in marks.iterdir()}
    assert pids - {os.getpid()}  # the target passes ran on Ray workers (neuron maps draw here, on the driver)
    _assert_identical(local_db, ray_db)


@pytest.mark.slow
def test_a_killed_worker_has_its_shard_retried_and_the_run_is_identical(
    tmp_path: Path, tiny_models, ray_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_db, marks = _local_run_then_marking_targets(tmp_path, monkeypatch)
    outcome: list[object] = []

    def go() -> None:
        try:
            outcome.append(_run(tmp_path / "ray", STUDY_NO_REPORT, executor="ray"))
        except BaseException as e:  # noqa: BLE001 -- handed to the test thread
            outcome.append(e)

    runner = threading.Thread(target=go)
    runner.start()
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while not workers:  # a Ray worker (not this driver) is inside a shard's forward
        assert runner.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.05)
        workers = {int(p.name) for p in marks.iterdir()} - {os.getpid()}
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=180)
    assert not runner.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], tuple), outcome
    assert {int(p.name) for p in marks.iterdir()} - {os.getpid(), victim}  # another worker ran the shard again
    _assert_identical(local_db, outcome[0][1])


def test_cli_executor_options_are_checked_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_models
) -> None:
    from click.testing import CliRunner

    from dissect_study.engine.cli import cli

    study = tmp_path / "s.study"
    study.write_text(STUDY_NO_REPORT, encoding="utf-8")
    args = ["run", str(study), "--db", str(tmp_path / "r.duckdb"), "--cache-dir", str(tmp_path / "cache"), "-q"]
    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(cli, [*args, "--executor", "ray"])
    assert res.exit_code == 1 and "pip install 'dissect-study[ray]'" in res.output, res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(cli, [*args, "--address", "10.0.0.1:6379"])
    assert res.exit_code == 1 and "--executor ray" in res.output, res.output
    assert tiny_models == {"dissector": 0, "target": 0}  # refused before building a model
    assert not (tmp_path / "r.duckdb").exists()
