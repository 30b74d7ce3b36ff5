"""The shipped studies check clean without any environment, and breaking any of
their lines yields an error on that very line, with a caret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.paths import REPO as REPO_DIR

from dissect_study.dsl import check_text, format_study, parse, render

STUDIES = sorted((REPO_DIR / "studies").glob("*.study"))
EXPECTED = {
    "demo",
    "rq1_general_vs_mammo",
    "rq2_finetuned",
    "rq3_learned_missed",
    "embed_implants",
    "appendix_a",
    "appendix_b",
    "appendix_c",
    "appendix_d",
}


def test_all_paper_setups_are_shipped():
    assert EXPECTED <= {p.stem for p in STUDIES}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_checks_clean_without_env(path: Path):
    text = path.read_text(encoding="utf-8")
    checked, diags = check_text(text, str(path), env={})
    assert checked is not None, render(diags, text)
    assert all(d.severity == "warning" for d in diags)
    assert checked.dissections and checked.analyses and checked.reports
    # every analysis of a paper setup says, in a comment on its line, what it reproduces
    if path.stem != "demo":
        lines = text.splitlines()
        for a in checked.analyses:
            assert "#" in lines[a.span.line - 1], f"{path.name}:{a.span.line} has no comment naming its figure/table"


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_is_canonically_formatted(path: Path):
    text = path.read_text(encoding="utf-8")
    assert format_study(parse(text, str(path))) == text


def _corruptions(line: str) -> list[str]:
    m = re.match(r"(\s*)(\S+)(.*)", line)
    assert m
    indent, word, rest = m.groups()
    return [
        f"{indent}xq{word}{rest}",  # misspelt leading word
        f"{indent}@{word}{rest}",  # stray character
        f'{indent}"{word}{rest}',  # unclosed string
    ]


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_breaking_any_line_reports_that_line(path: Path):
    lines = path.read_text(encoding="utf-8").splitlines()
    for no, line in enumerate(lines, start=1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        for bad in _corruptions(line):
            text = "\n".join(lines[: no - 1] + [bad] + lines[no:]) + "\n"
            checked, diags = check_text(text, "s.study", env={})
            assert checked is None, f"line {no} corrupted as {bad!r} still checks"
            hit = [d for d in diags if d.is_error and d.span.line == no]
            assert hit, f"line {no} {bad!r}: errors at {[(d.span.line, d.message) for d in diags]}"
            rendered = render(hit, text)
            assert f"s.study:{no}:" in rendered and "^" in rendered


def test_demo_study_resolves_what_the_engine_needs():
    text = (REPO_DIR / "studies" / "demo.study").read_text(encoding="utf-8")
    checked, diags = check_text(text, "demo.study", env={})
    assert diags == []
    assert checked.probes["phantoms"].func == "phantom"
    assert checked.probes["phantoms"].params == {"n": 400, "seed": 0, "height": 320}
    assert checked.targets["Ccalc"].params["variant"] == "C_calcification"
    (d,) = checked.dissections
    assert d.targets == ["G", "M", "Cdensity", "Cmass", "Ccalc"]
    assert d.similarity == "wpmi" and d.similarity_params["lam"] == 0.6 and d.similarity_params["top_k"] == 28
    assert d.options["pooling"] == "avg" and d.options["device"] == "auto"
    kinds = [a.kind for a in checked.analyses]
    assert kinds.count("neuron") == 2 and "compare" in kinds and "learned" in kinds
    learned = next(a for a in checked.analyses if a.kind == "learned")
    assert learned.threshold.combine == "own" and learned.analysis_names == ("captured_concepts", "missed_concepts")
    assert [a.index for a in checked.analyses] == list(range(len(checked.analyses)))


def test_language_manual_covers_the_vocabulary():
    from dissect_study.dsl import vocabulary as R

    doc = (REPO_DIR / "docs" / "LANGUAGE.md").read_text(encoding="utf-8")
    words = [f"`{f.name}(" for table in R.SOURCES.values() for f in table.values()]
    words += [f"`{f.name}(" for f in R.SIMILARITIES.values()]
    words += [
        f"`{p.name}`" for table in R.SOURCES.values() for f in table.values() for p in f.params if p.doc or p.choices
    ]
    words += (
        [f"`{o}`" for o in R.DISSECT_OPTIONS] + [f"`{a}`" for a in R.ANALYSES] + [f"`{s}`" for s in R.REPORT_SECTIONS]
    )
    words += [
        f"`{kw}"
        for kw in (
            "study",
            "let",
            "layer",
            "dissect",
            "threshold",
            "compare",
            "learned",
            "gained",
            "thresholds",
            "keywords",
            "analyze",
            "show neuron",
            "report",
        )
    ]
    missing = [w for w in words if w not in doc]
    assert not missing, missing
