"""Golden error tests: every mistake in tests/golden/errors/*.study renders exactly as
the matching .expected file (message, line, column, caret, hint, notes).

To add a case: write NAME.study, run it through `check_text` + `render`, read the
output critically, and save it as NAME.expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers.paths import TESTS

from dissect_study.dsl import check_file, check_text, parse, render
from dissect_study.dsl.diagnostics import StudyError

GOLDEN = TESTS / "golden" / "errors"
CASES = sorted(GOLDEN.glob("*.study"))


def test_at_least_thirty_distinct_cases():
    assert len(CASES) >= 30
    codes = set()
    for f in CASES:
        _, diags = check_text(f.read_text(encoding="utf-8"), f.name, env={})
        codes.update(d.code for d in diags if d.is_error)
    assert len(codes) >= 30, sorted(codes)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden_error(case: Path):
    text = case.read_text(encoding="utf-8")
    checked, diags = check_text(text, case.name, env={})
    assert checked is None
    errors = [d for d in diags if d.is_error]
    assert errors, "a golden case must produce at least one error"
    rendered = render(diags, text)
    assert rendered == case.with_suffix(".expected").read_text(encoding="utf-8")
    # structure, not only text: every error points into the file and carries a caret
    lines = text.splitlines()
    for d in errors:
        assert 1 <= d.span.line <= max(len(lines), 1)
        assert re.search(rf"^{re.escape(case.name)}:{d.span.line}:{d.span.col}: error: ", rendered, re.M)
    assert "^" in rendered


def test_user_example_parses_exactly_as_written():
    study = parse("compare M vs C4 at layer last on category Calcification\n", "x.study")
    (a,) = study.statements
    assert [m.name for m in a.models] == ["M", "C4"]
    assert a.filter.level == "category" and a.filter.name == "Calcification"


def test_all_semantic_errors_reported_not_only_first():
    text = (GOLDEN / "many_errors.study").read_text(encoding="utf-8")
    _, diags = check_text(text, "m.study", env={})
    assert len([d for d in diags if d.is_error]) == 4


def test_parse_raises_study_error_with_diagnostics():
    with pytest.raises(StudyError) as err:
        parse("probe p vindr()", "p.study")
    (d,) = err.value.diagnostics
    assert (d.span.line, d.span.col) == (1, 9)
    assert "missing '='" in d.message


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary\xff\xfe", "binary"),
        (b'study "caf\xe9"\n', "not-utf8"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "binary"),
        (b"x" * 10_500_000, "too-large"),
        ('study "\u00e9\u4e2d"\u2028\u00a7 garbage\n'.encode("utf-8"), "unexpected-character"),  # U+2028 ends line 1
        (b"{{{{((((" * 1000, "unexpected-character"),
        (b"dissect " + b"a, " * 20000, "syntax-trailing-comma"),
    ],
)
def test_garbage_files_become_diagnostics(tmp_path: Path, payload: bytes, code: str):
    f = tmp_path / "g.study"
    f.write_bytes(payload)
    checked, diags = check_file(f, env={})
    assert checked is None
    assert diags and diags[0].code == code
    render(diags, "")  # rendering never raises either


def test_missing_path_and_directory(tmp_path: Path):
    for path, code in ((tmp_path / "nope.study", "no-file"), (tmp_path, "is-directory")):
        checked, diags = check_file(path)
        assert checked is None and [d.code for d in diags] == [code]
