"""A wheel install (not only editable) carries the grammar, templates, concept sets and studies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, repo_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(repo_dir),
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("dissect_study-*.whl")
    return whl


def test_wheel_holds_package_data(wheel: Path, repo_dir: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [
        "dissect_study/dsl/grammar.lark",
        "dissect_study/concept_sets/mammo_v1.csv",
        "dissect_study/report_templates/report.html.j2",
        "dissect_study/report_templates/print.css",
    ]
    expected += [f"dissect_study/studies/{p.name}" for p in (repo_dir / "studies").glob("*.study")]
    missing = [n for n in expected if n not in names]
    assert not missing, missing
    assert not any(n.startswith(("dissect_study/tests/", "tests/")) for n in names)


def test_installed_wheel_checks_a_shipped_study_and_loads_its_data(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import dissect_study, importlib.resources as r;"
        "from dissect_study.dsl import check_file;"
        "from dissect_study.engine.concepts import load_concept_set;"
        f"assert dissect_study.__file__.startswith({str(target)!r}), dissect_study.__file__;"
        "p = r.files('dissect_study.studies') / 'demo.study';"
        "s, d = check_file(str(p)); assert s is not None, d;"
        "cs = load_concept_set('c', 'shipped', {'name': 'mammo_v1'}, '.');"
        "assert len(cs.concepts) > 700;"
        "assert (r.files('dissect_study.report_templates') / 'report.html.j2').is_file();"
        "print('ok')"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
