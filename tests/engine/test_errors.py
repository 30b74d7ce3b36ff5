"""One error root: every user mistake reaches the CLI as a DissectStudyError and prints one paragraph.

The error tests drive the real command line on real bad input (a missing checkpoint,
a file that is not a checkpoint, an empty probe folder, a concept CSV without its
column, a file that is not a results database, SQL that fails, an unknown run) and
check the exit status and that stderr holds the message and no traceback.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import dissect_study
from dissect_study.engine.cli import cli
from dissect_study.errors import DissectStudyError

#: exception classes that are deliberately not user errors, and why
INTERNAL_SIGNALS = {
    # the probe's skip signal: the activation pass turns it into a skipped row (RunError under --strict)
    "dissect_study.engine.probes.base.ImageUnreadable",
}


def _all_exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in dissect_study's own modules (imports them all)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(dissect_study.__path__, prefix="dissect_study."):
        if ".tests" in info.name or info.name.startswith(("dissect_study.benchmarks", "dissect_study.build")):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_class_is_under_the_root_or_a_documented_signal() -> None:
    """Public exception classes; a private one (`_Name`) is a module's own control flow, caught where raised."""
    classes = _all_exception_classes()
    # the stages' error classes are found (the walk really imported them) ...
    for name in (
        "StudyError",
        "ProbeError",
        "CheckpointError",
        "ModelBuildError",
        "ActivationError",
        "RunError",
        "StoreError",
        "AnalysisError",
        "CacheError",
        "ConceptSetError",
        "RegistryError",
        "ReportError",
    ):
        assert any(q.endswith("." + name) for q in classes), f"{name} not found"
    # ... and each one is a DissectStudyError unless it is a documented internal signal
    stray = sorted(
        q
        for q, c in classes.items()
        if not issubclass(c, DissectStudyError) and q not in INTERNAL_SIGNALS and not c.__name__.startswith("_")
    )
    assert stray == [], f"exception classes outside the DissectStudyError root: {stray}"
    from dissect_study.engine.probes.base import ImageUnreadable

    assert not issubclass(ImageUnreadable, DissectStudyError)


def _invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def _assert_one_paragraph(res: Result, *fragments: str, code: int = 1) -> list[str]:
    """Exit `code`; stderr is one `error:` line (plus indented continuation lines) naming `fragments`."""
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    paragraph = lines[errors[0] :]
    assert all(line.startswith("  ") for line in paragraph[1:]), res.stderr  # nothing after it but its own lines
    for fragment in fragments:
        assert fragment in "\n".join(paragraph), res.stderr
    return paragraph


# ------------------------------------------------------------------------- commands without a study


def test_inspect_missing_checkpoint(tmp_path: Path) -> None:
    res = _invoke(["inspect", str(tmp_path / "nope.tar")])
    assert _assert_one_paragraph(res, "nope.tar", "no such file") == [res.stderr.strip()]  # exactly one line


def test_inspect_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage, not torch.save output\n")
    res = _invoke(["inspect", str(bad)])
    assert len(_assert_one_paragraph(res, "bad.pth", "not a PyTorch checkpoint")) == 1


@pytest.mark.parametrize("command", [["query", "SELECT 1"], ["report", "--format", "html"]])
def test_bad_db_missing_or_not_duckdb(tmp_path: Path, command: list[str]) -> None:
    res = _invoke([*command, "--db", str(tmp_path / "absent.duckdb")])
    assert len(_assert_one_paragraph(res, "absent.duckdb", "no results database")) == 1
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database", encoding="utf-8")
    res = _invoke([*command, "--db", str(junk)])
    assert len(_assert_one_paragraph(res, "junk.duckdb", "cannot open the results database")) == 1


def _empty_results_db(tmp_path: Path) -> Path:
    from dissect_study.engine.store.database import connect, ensure_schema

    db = tmp_path / "empty.duckdb"
    con = connect(db)
    ensure_schema(con)
    con.close()
    return db


def test_query_with_failing_sql(tmp_path: Path) -> None:
    db = _empty_results_db(tmp_path)
    res = _invoke(["query", "SELECT * FROM no_such_table", "--db", str(db)])
    _assert_one_paragraph(res, "no_such_table")


def test_report_of_a_database_without_runs_and_of_an_unknown_run(tmp_path: Path) -> None:
    db = _empty_results_db(tmp_path)
    res = _invoke(["report", "--db", str(db), "--format", "html", "--out", str(tmp_path / "out")])
    assert len(_assert_one_paragraph(res, "no runs yet")) == 1
    res = _invoke(["report", "--db", str(db), "--run", "nope-123", "--format", "html", "--out", str(tmp_path / "o")])
    _assert_one_paragraph(res, "'nope-123' is not in the results database")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------- run: user mistakes in a study

STUDY = """study "user mistakes"
concepts c = {concepts}
probe p = {probe}
dissector d = mammo_clip(checkpoint="nope.tar", text="no_bert")
target M = image_tower(d)
dissect M at layer last by d on p with concepts c
"""


def _run(tmp_path: Path, concepts: str = 'shipped("mammo_v1")', probe: str = "phantom(n=4, seed=0)") -> Result:
    study = tmp_path / "s.study"
    study.write_text(STUDY.format(concepts=concepts, probe=probe), encoding="utf-8")
    db = tmp_path / "r.duckdb"
    res = _invoke(["run", str(study), "--db", str(db), "--cache-dir", str(tmp_path / "cache"), "--no-report"])
    assert not db.exists()  # a failed run writes nothing
    return res


def test_run_with_a_broken_concept_set(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("name,group\nmass,findings\n", encoding="utf-8")
    res = _run(tmp_path, concepts='csv("bad.csv")')
    paragraph = _assert_one_paragraph(res, "bad.csv", "no column 'concept'")
    assert paragraph[1:] == [
        "  note: earlier runs are intact; a run is stored only once computed (cached work is kept)"
    ]


def test_run_with_a_bad_probe_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = _run(tmp_path, probe='folder("empty")')
    _assert_one_paragraph(res, "probe p", "no image files")


def test_run_with_a_missing_checkpoint(tmp_path: Path) -> None:
    res = _run(tmp_path)
    _assert_one_paragraph(res, "nope.tar", "does not exist")
    assert "probe     p: 4 images" in res.stderr  # the steps before the failure were logged, on stderr
    assert res.stdout == ""  # no run summary: the run did not finish


def test_run_with_an_unset_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DS_TEST_NOT_SET", raising=False)
    res = _run(tmp_path, probe='folder(env("DS_TEST_NOT_SET"))')
    _assert_one_paragraph(res, "DS_TEST_NOT_SET", "not set", "hint: export DS_TEST_NOT_SET")


def test_fmt_of_an_unparsable_study_renders_diagnostics_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.study"
    bad.write_text('study "x"\nprobe p = = phantom()\n', encoding="utf-8")
    res = _invoke(["fmt", "--check", str(bad)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"{bad}:2:" in res.stderr and "error" in res.stderr


# ------------------------------------------------------------------------- what is not a user error


def _fake_run(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import dissect_study.engine.run as run_mod

    def fake_run_study(study, opts):
        raise exc

    monkeypatch.setattr(run_mod, "run_study", fake_run_study)


GOOD = """study "fake"
concepts c = shipped("mammo_v1")
probe p = phantom(n=4, seed=0)
dissector d = demo()
target M = demo("M")
dissect M at layer last by d on p with concepts c
"""


def _good(tmp_path: Path) -> str:
    p = tmp_path / "good.study"
    p.write_text(GOOD, encoding="utf-8")
    return str(p)


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_run(monkeypatch, ZeroDivisionError("a bug"))
    res = _invoke(["run", _good(tmp_path)])
    assert isinstance(res.exception, ZeroDivisionError)  # propagated: the real CLI prints its traceback
    assert "error:" not in res.stderr


def test_a_path_error_naming_a_file_is_one_line_but_without_a_path_it_is_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_run(monkeypatch, PermissionError(13, "Permission denied", "/reports/out"))
    res = _invoke(["run", _good(tmp_path)])
    _assert_one_paragraph(res, "error: /reports/out: Permission denied")
    _fake_run(monkeypatch, FileNotFoundError("no path given"))
    res = _invoke(["run", _good(tmp_path)])
    assert isinstance(res.exception, FileNotFoundError)


def test_interrupt_exits_130_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_run(monkeypatch, KeyboardInterrupt())
    res = _invoke(["run", _good(tmp_path)])
    assert res.exit_code == 130 and "Traceback" not in res.output and "Aborted" not in res.output
    assert [line for line in res.stderr.splitlines() if line.strip()] == [
        "interrupted: earlier runs are intact; a run is stored only once computed (cached work is kept)"
    ]


def test_verbose_adds_the_traceback_of_a_user_error(tmp_path: Path) -> None:
    res = _invoke(["inspect", "-v", str(tmp_path / "nope.tar")])
    assert res.exit_code == 1
    assert "Traceback" in res.stderr and "CheckpointError" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("error: ")  # the message still comes last


def test_exit_code_comes_from_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Unusual(DissectStudyError):
        exit_code = 3

    _fake_run(monkeypatch, Unusual("odd"))
    res = _invoke(["run", _good(tmp_path)])
    assert res.exit_code == 3 and "error: odd" in res.stderr


def test_run_log_speaks_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    """`_Log` speaks through logging: INFO steps, WARNING warnings (also recorded), quiet -> DEBUG."""
    from dissect_study.engine.run import _Log

    caplog.set_level(logging.DEBUG, logger="dissect_study")
    loud, quiet = _Log(quiet=False), _Log(quiet=True)
    loud.info("step one")
    quiet.info("step two")
    quiet.warn("build", "careful")
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [
        ("dissect_study.engine.run", logging.INFO, "step one"),
        ("dissect_study.engine.run", logging.DEBUG, "step two"),
        ("dissect_study.engine.run", logging.WARNING, "careful"),
    ]
    assert quiet.warnings == [("build", "careful")] and loud.warnings == []
