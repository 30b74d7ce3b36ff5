"""The command line: exit statuses, help, version, check/fmt wiring, dry-run plans."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from dissect_study import __version__
from dissect_study.engine.cli import cli

GOOD = """study "cli test"
concepts c = shipped("mammo_v1")
probe p = phantom(n=20, seed=3)
dissector d = demo()
target M = demo("M")
target G = demo("G")
dissect G, M at layers early, last by d on p with concepts c using soft_wpmi(top_k=10)
compare G vs M at layer last
report "out" as html
"""


def _write(tmp_path: Path, text: str, name: str = "s.study") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_version_and_help() -> None:
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    h = CliRunner().invoke(cli, ["--help"])
    assert h.exit_code == 0
    for word in ("check", "run", "query", "report", "inspect", "fmt", "Examples"):
        assert word in h.output


def test_check_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = _write(tmp_path, GOOD)
    assert runner.invoke(cli, ["check", str(good)]).exit_code == 0
    bad = _write(tmp_path, GOOD.replace("compare G vs M", "compare G vs Q"), "bad.study")
    res = runner.invoke(cli, ["check", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}:8:" in res.output and "^" in res.output
    assert runner.invoke(cli, ["check"]).exit_code == 2  # usage: no file
    missing = runner.invoke(cli, ["check", str(tmp_path / "nope.study")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output


def test_check_reports_all_files(tmp_path: Path) -> None:
    a = _write(tmp_path, GOOD, "a.study")
    b = _write(tmp_path, GOOD.replace("dissector d = demo()", "dissector d = demoo()"), "b.study")
    res = CliRunner().invoke(cli, ["check", str(a), str(b)])
    assert res.exit_code == 1
    assert f"{a}: ok" in res.output and f"{b}:4:" in res.output and "demo" in res.output


def test_dry_run_prints_deduplicated_plan(tmp_path: Path) -> None:
    p = _write(tmp_path, GOOD)
    res = CliRunner().invoke(cli, ["run", str(p), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.count("text pass") == 1  # one dissector x one concept set
    assert res.output.count("image pass") == 1  # one dissector x one probe
    assert res.output.count("target pass") == 2  # G and M, each all layers in one pass


def test_fmt_check_and_rewrite(tmp_path: Path) -> None:
    messy = _write(tmp_path, GOOD.replace('target M = demo("M")', 'target   M=demo( "M" )'))
    runner = CliRunner()
    assert runner.invoke(cli, ["fmt", "--check", str(messy)]).exit_code == 1
    assert runner.invoke(cli, ["fmt", str(messy)]).exit_code == 0
    assert runner.invoke(cli, ["fmt", "--check", str(messy)]).exit_code == 0
    assert runner.invoke(cli, ["check", str(messy)]).exit_code == 0


def test_report_rejects_unknown_format(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["report", "--format", "docx", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2 and "docx" in res.output


def test_run_threads_option_sets_torch_threads(tmp_path: Path, monkeypatch) -> None:
    # wiring only: torch's thread count (the SoftWPMI steps follow it)
    import torch

    import dissect_study.engine.run as run_mod

    seen: dict[str, int] = {}

    def fake_run_study(study, opts):
        seen["threads"] = torch.get_num_threads()
        raise run_mod.RunError("stop here")

    before = torch.get_num_threads()
    monkeypatch.setattr(run_mod, "run_study", fake_run_study)
    try:
        res = CliRunner().invoke(cli, ["run", str(_write(tmp_path, GOOD)), "--threads", "1"])
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 1 and "stop here" in res.output
    assert seen == {"threads": 1}
    assert CliRunner().invoke(cli, ["run", str(_write(tmp_path, GOOD)), "--threads", "0"]).exit_code == 2


# ------------------------------------------------------------------------- verbosity: -q / -v map to log levels


def _fake_logging_run(monkeypatch, seen: dict) -> None:
    """run_study stand-in that speaks like the real one: `_Log` steps and warnings, a debug detail."""
    import logging

    import dissect_study.engine.run as run_mod

    def fake_run_study(study, opts):
        seen["quiet"] = opts.quiet
        log = run_mod._Log(opts.quiet)
        log.info("concepts  c: 767 concepts (shipped)")
        logging.getLogger("dissect_study.engine.run").debug("detail for -v")
        log.warn("sanity", "dissector is near chance")
        return run_mod.RunResult(run_id="r1", db=Path("r.duckdb"), warnings=[m for _, m in log.warnings])

    monkeypatch.setattr(run_mod, "run_study", fake_run_study)


def test_run_log_levels_default_quiet_verbose(tmp_path: Path, monkeypatch) -> None:
    seen: dict = {}
    _fake_logging_run(monkeypatch, seen)
    study = str(_write(tmp_path, GOOD))
    runner = CliRunner()

    default = runner.invoke(cli, ["run", study])
    assert default.exit_code == 0, default.output
    assert seen["quiet"] is False
    assert "concepts  c: 767 concepts (shipped)" in default.stderr  # messages on stderr ...
    assert "warning: dissector is near chance" in default.stderr
    assert "detail for -v" not in default.stderr
    assert default.stdout.startswith("run r1 finished")  # ... the program's output on stdout
    assert "concepts  c" not in default.stdout

    quiet = runner.invoke(cli, ["run", study, "-q"])
    assert quiet.exit_code == 0 and seen["quiet"] is True
    assert "concepts  c" not in quiet.output and "detail for -v" not in quiet.output
    assert "warning: dissector is near chance" in quiet.stderr
    assert "run r1 finished" in quiet.stdout and "1 warning(s)" in quiet.stdout  # the summary stays

    verbose = runner.invoke(cli, ["run", study, "--verbose"])
    assert verbose.exit_code == 0 and seen["quiet"] is False
    assert "concepts  c: 767 concepts (shipped)" in verbose.stderr
    assert "debug: detail for -v" in verbose.stderr

    both = runner.invoke(cli, ["run", study, "-q", "-v"])
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_every_command_takes_quiet_and_verbose() -> None:
    for name in cli.commands:
        h = CliRunner().invoke(cli, [name, "--help"])
        assert h.exit_code == 0 and "--quiet" in h.output and "--verbose" in h.output, name


def test_logging_setup_does_not_outlive_a_command(tmp_path: Path, monkeypatch) -> None:
    import logging

    _fake_logging_run(monkeypatch, {})
    pkg = logging.getLogger("dissect_study")
    before = (pkg.level, list(pkg.handlers))
    assert CliRunner().invoke(cli, ["run", str(_write(tmp_path, GOOD)), "-v"]).exit_code == 0
    assert (pkg.level, list(pkg.handlers)) == before


def test_check_imports_no_torch(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom dissect_study.engine.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['check', '-v', {str(_write(tmp_path, GOOD))!r}])\n"
        "assert r.exit_code == 0, r.output\nprint(sorted(m for m in ('torch', 'transformers', 'duckdb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_report_failure_after_the_run_is_stored_says_so(tmp_path: Path, monkeypatch) -> None:
    """Issue 14 item 8: once the run is committed, a failing report must not claim nothing was written."""
    import dissect_study.engine.run as run_mod
    from dissect_study.engine.report.render import ReportWriteError

    def fake_run_study(study, opts):
        opts.on_stored("r42", tmp_path / "r.duckdb")  # what the executor calls right after the commit
        raise ReportWriteError("report: cannot write out/report.html: disk full")

    monkeypatch.setattr(run_mod, "run_study", fake_run_study)
    res = CliRunner().invoke(cli, ["run", str(_write(tmp_path, GOOD))])
    assert res.exit_code == 1
    assert "run r42 is stored in" in res.output and "dissect-study report --db" in res.output
    assert "earlier runs are intact" not in res.output
