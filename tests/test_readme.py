"""Every `dissect-study` command the README shows works verbatim after the quick start.

The quick start is `make demo`; here the demo study runs in a copy of the
repository's layout with the same command the Makefile's `demo` recipe uses,
but on a small phantom probe and with the tiny dissector and targets of
tests/helpers/tiny.py (training the real demo models is the demo's job, not this test's).
Then every command line of the README's code blocks runs in a real shell from
that copy's root, through the installed `dissect-study` entry point and
`. .venv/bin/activate` exactly as written, and must exit 0; so must the two
queries that `make demo` prints.  Commands that need real checkpoints live in
study text (```study blocks), never in command blocks.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from helpers.paths import REPO as REPO_DIR
from helpers.tiny import TinyDissector, TinyTarget

from dissect_study.engine import models as model_factories
from dissect_study.engine.cli import cli

REPO = REPO_DIR
ACTIVATE = ". .venv/bin/activate"
DEMO_PROBE = "phantom(n=400, seed=0)"
SMALL_PROBE = "phantom(n=24, seed=0, height=64)"


def code_blocks(markdown: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced code block."""
    return [
        (m.group(1).strip(), m.group(2).splitlines()) for m in re.finditer(r"(?ms)^```([^\n]*)\n(.*?)^```", markdown)
    ]


def shell_lines(lines: list[str]) -> list[str]:
    """Command lines of a block: comments and blank lines dropped, trailing `# ...` comments kept (bash drops them)."""
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


def readme_commands() -> list[str]:
    blocks = code_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    out = []
    for info, lines in blocks:
        cmds = [x for x in shell_lines(lines) if x.startswith(("dissect-study ", ACTIVATE))]
        if info == "study":
            assert not cmds, "a study block holds commands"
            continue
        out.extend(cmds)
    return out


def makefile_recipe(target: str) -> list[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    m = re.search(rf"(?m)^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", text)
    assert m, f"no {target} target in the Makefile"
    return [x[1:].replace("$(BIN)", ".venv/bin").replace("$(VENV)", ".venv") for x in m.group(1).splitlines()]


def test_quick_start_keeps_exactly_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    cmds = [shell_lines(lines) for _, lines in code_blocks(section)]
    assert [c.split("#")[0].strip() for block in cmds for c in block] == ["make demo", "make test"]


def test_readme_commands_are_found() -> None:
    cmds = readme_commands()
    assert cmds.count(ACTIVATE) == 1 and cmds.index(ACTIVATE) == 0  # activation first, as a reader would
    assert sum(c.startswith("dissect-study query ") for c in cmds) >= 5
    assert any(c.startswith("dissect-study report ") for c in cmds)


@pytest.fixture
def tiny_demo_models(monkeypatch: pytest.MonkeyPatch) -> None:
    seeds = {"G": 1, "M": 2, "C_density": 3, "C_mass": 4, "C_calcification": 5}
    monkeypatch.setattr(model_factories, "build_dissector", lambda name, func, params, ctx: TinyDissector())
    monkeypatch.setattr(
        model_factories, "build_target", lambda name, func, params, ctx: TinyTarget(name, seeds[params["variant"]])
    )


def _shell(cmd: str, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_every_readme_command_runs_after_the_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_demo_models
) -> None:
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.fail(f"the tests run outside a virtual environment ({sys.prefix}); README commands need .venv")
    root = tmp_path / "repo"
    (root / "studies").mkdir(parents=True)
    for study in (REPO / "studies").glob("*.study"):
        shutil.copy(study, root / "studies" / study.name)
    demo = root / "studies" / "demo.study"
    text = demo.read_text(encoding="utf-8")
    assert text.count(DEMO_PROBE) == 1, "the demo's probe changed; update DEMO_PROBE"
    # the tiny stand-in models have two units a layer: the cards show unit 0
    text, cards = re.subn(r"(show neuron \w+\.last)\[\d+\]", r"\1[0]", text)
    assert cards == 2, "the demo's neuron cards changed; update this substitution"
    demo.write_text(text.replace(DEMO_PROBE, SMALL_PROBE), encoding="utf-8")
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "VIRTUAL_ENV")}
    env["DISSECT_STUDY_CACHE"] = str(tmp_path / "cache")
    monkeypatch.setenv("DISSECT_STUDY_CACHE", env["DISSECT_STUDY_CACHE"])
    monkeypatch.chdir(root)

    # the quick start: `make demo`'s run line, in-process so the tiny models stand in
    recipe = makefile_recipe("demo")
    run_line = [x for x in recipe if "dissect-study run" in x]
    assert run_line == [".venv/bin/dissect-study run studies/demo.study"], recipe
    res = CliRunner().invoke(cli, shlex.split(run_line[0])[1:])
    assert res.exit_code == 0, res.output
    db = root / "studies" / "results.duckdb"
    assert db.is_file() and (root / "studies" / "out" / "demo" / "report.html").is_file()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM warnings WHERE step LIKE 'concepts%'").fetchone() == (0,)

    # what `make demo` prints: two queries that work as printed
    printed = [shlex.split(x[1:])[1] for x in recipe if x.startswith("@echo ")]
    queries = [x.strip() for x in printed if "dissect-study query" in x]
    assert len(queries) == 2 and any("studies/out/demo/report.html" in x for x in printed)
    for q in queries:
        done = _shell(q, root, env)
        assert done.returncode == 0, (q, done.stderr)
        assert len(done.stdout.splitlines()) >= 3, (q, done.stdout)  # header, rule, rows
        assert "results: studies/results.duckdb" in done.stderr

    # every command line of the README, in order, in a shell at the copy's root
    active = False
    for cmd in readme_commands():
        if cmd == ACTIVATE:
            active = True
            continue
        assert active, f"{cmd!r} comes before the README says to activate .venv"
        done = _shell(f"{ACTIVATE} && {cmd}", root, env)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr, cmd
        if cmd.startswith("dissect-study query "):
            assert "results: studies/results.duckdb" in done.stderr, (cmd, done.stderr)
    assert (root / "out" / "demo-again" / "report.html").is_file()


# --------------------------------------------------------------------------- docs/TUTORIAL.md

TUTORIAL = REPO / "docs" / "TUTORIAL.md"


def _statements(lines: list[str]) -> list[str]:
    return [x.rstrip() for x in lines if x.strip() and not x.strip().startswith("#")]


def test_tutorial_study_is_what_init_writes_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dissect_study.dsl import check_text

    blocks = code_blocks(TUTORIAL.read_text(encoding="utf-8"))
    studies = [lines for info, lines in blocks if info == "study"]
    assert len(studies) == 1
    # the project the tutorial lays out, and its init command verbatim
    (tmp_path / "data").mkdir()
    manifest = next(lines for info, lines in blocks if info == "csv")
    (tmp_path / "data" / "probe.csv").write_text("\n".join(manifest) + "\n", encoding="utf-8")
    init = [
        c for info, lines in blocks if info == "sh" for c in shell_lines(lines) if c.startswith("dissect-study init")
    ]
    assert len(init) == 1
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, shlex.split(init[0])[1:])
    assert res.exit_code == 0, res.output
    name = shlex.split(init[0])[2]
    written = (tmp_path / name).read_text(encoding="utf-8")
    assert _statements(studies[0]) == _statements(written.splitlines())
    study, diags = check_text("\n".join(studies[0]), str(tmp_path / name))
    assert study is not None and diags == []


def test_tutorial_queries_bind_against_the_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_demo_models
) -> None:
    """Each query of the tutorial runs (exit 0) on a stored run with two similarity functions."""
    blocks = code_blocks(TUTORIAL.read_text(encoding="utf-8"))
    queries = [
        c for info, lines in blocks if info == "sh" for c in shell_lines(lines) if c.startswith("dissect-study query ")
    ]
    assert len(queries) >= 5
    base = (
        'concepts c = shipped("mammo_v1")\nprobe p = phantom(n=12, seed=1, height=64)\ndissector d = demo()\n'
        'target M = demo("M")\ntarget G = demo("G")\n'
        "dissect M, G at layers all by d on p with concepts c using {sim}\n"
        "compare M vs G at layers all\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISSECT_STUDY_CACHE", str(tmp_path / "cache"))
    for name, sim in (("first", "soft_wpmi(top_k=5)"), ("cubed", "cos_cubed()")):
        (tmp_path / f"{name}.study").write_text(base.format(sim=sim), encoding="utf-8")
        res = CliRunner().invoke(cli, ["run", f"{name}.study", "-q"])
        assert res.exit_code == 0, res.output
    for q in queries:
        res = CliRunner().invoke(cli, shlex.split(q)[1:])
        assert res.exit_code == 0, (q, res.output)
        assert not res.stdout.startswith("(no rows)") or "_blocks.38" in q, (q, res.stdout)
