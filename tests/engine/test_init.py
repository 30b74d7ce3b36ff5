"""`dissect-study init`: the generated skeleton checks clean, is canonically formatted and names the given files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from dissect_study.dsl import check_file, format_study, parse_file
from dissect_study.engine.cli import cli
from dissect_study.engine.init import InitError, SkeletonSpec, study_skeleton
from dissect_study.engine.plan.steps import build_plan


def _project(root: Path) -> Path:
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "probe.csv").write_text("path,density,mass,calcification\nimages/a.png,C,1,0\n", encoding="utf-8")
    (root / "models" / "bert").mkdir(parents=True)
    return root


def _strings(text: str, key: str) -> list[str]:
    return re.findall(rf'{key}="([^"]*)"', text)


def test_init_writes_a_study_that_checks_clean_and_names_the_files(tmp_path: Path, monkeypatch) -> None:
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    args = [
        "init",
        "studies/mine.study",
        "--csv",
        "data/probe.csv",
        "--checkpoint",
        "models/b5.tar",
        "--text",
        "models/bert",
        "--classifier",
        "calcification=models/c4.pth",
        "--classifier",
        "density=models/c1.pth",
    ]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    study_path = root / "studies" / "mine.study"
    text = study_path.read_text(encoding="utf-8")
    study, diags = check_file(study_path)
    assert study is not None and diags == []  # no errors and no warnings
    assert format_study(parse_file(study_path)) == text  # already canonical: `fmt --check` passes
    # paths are written relative to the study's folder and resolve to the files given
    named = {k: _strings(text, k) for k in ("path", "checkpoint", "text")}
    assert (study_path.parent / named["path"][0]).resolve() == (root / "data" / "probe.csv").resolve()
    assert [(study_path.parent / p).resolve() for p in named["checkpoint"]] == [
        (root / "models" / f).resolve() for f in ("b5.tar", "c4.pth", "c1.pth")
    ]
    assert (study_path.parent / named["text"][0]).resolve() == (root / "models" / "bert").resolve()
    assert "# Columns found in the CSV: density, mass, calcification." in text
    # every target is dissected and compared; the plan builds
    assert "dissect M, C_calcification, C_density" in text and "compare M vs C_calcification vs C_density" in text
    plan = build_plan(study).describe()
    passes = [x.split(":", 1)[1].split(" on ")[0].strip() for x in plan.splitlines() if x.startswith("  target pass")]
    assert passes == ["M", "C_calcification", "C_density"] and "report      : out/mine" in plan
    # never over an existing file without --force
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "exists" in again.stderr
    assert CliRunner().invoke(cli, [*args, "--force"]).exit_code == 0


def test_init_without_checkpoints_uses_env_and_folder_probe(tmp_path: Path, monkeypatch) -> None:
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MAMMOCLIP_CHECKPOINT", "/x/b5.tar")
    monkeypatch.setenv("BIOCLINICALBERT", "/x/bert")
    res = CliRunner().invoke(cli, ["init", "s.study", "--images", "data/images", "--title", 'My "first" study'])
    assert res.exit_code == 0, res.output
    text = (root / "s.study").read_text(encoding="utf-8")
    assert 'probe images = folder("data/images")' in text and 'env("MAMMOCLIP_CHECKPOINT")' in text
    assert 'study "My \\"first\\" study"' in text
    study, diags = check_file(root / "s.study")
    assert study is not None and diags == []
    assert study.title == 'My "first" study'


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SkeletonSpec(Path("s.study")), "say where the images are"),
        (SkeletonSpec(Path("s.study"), images="a", classifiers=[("calc", "c.pth")]), "not one of density"),
        (SkeletonSpec(Path("s.study"), csv="data/probe.csv", path_column="file"), "no column 'file'"),
        (SkeletonSpec(Path("s.study"), images="${HOME}/x"), "cannot be written"),
    ],
)
def test_init_refuses_what_cannot_make_a_study(tmp_path: Path, monkeypatch, spec: SkeletonSpec, message: str) -> None:
    monkeypatch.chdir(_project(tmp_path))
    with pytest.raises(InitError, match=message):
        study_skeleton(spec)


def test_init_bad_classifier_option_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["init", "s.study", "--images", ".", "--classifier", "c4.pth"])
    assert res.exit_code == 2 and "TASK=CHECKPOINT" in res.output and not (tmp_path / "s.study").exists()
