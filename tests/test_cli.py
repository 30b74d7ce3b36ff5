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
    messy = _write(tmp_path, GOOD.replace("target M = demo(\"M\")", "target   M=demo( \"M\" )"))
    runner = CliRunner()
    assert runner.invoke(cli, ["fmt", "--check", str(messy)]).exit_code == 1
    assert runner.invoke(cli, ["fmt", str(messy)]).exit_code == 0
    assert runner.invoke(cli, ["fmt", "--check", str(messy)]).exit_code == 0
    assert runner.invoke(cli, ["check", str(messy)]).exit_code == 0


def test_report_rejects_unknown_format(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["report", "--format", "docx", "--db", str(tmp_path / "x.duckdb")])
    assert res.exit_code == 2 and "docx" in res.output


def test_run_threads_option_sets_torch_threads(tmp_path: Path, monkeypatch) -> None:
    # wiring only: the kernels follow torch's thread count (tests/test_kernels.py)
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
