"""The study language: parse, check, format, render diagnostics.

    from dissect_study.dsl import check_file, render
    checked, diags = check_file("studies/demo.study")
    print(render(diags, source))

Nothing in a study is ever evaluated as Python; the grammar is the whole language.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from dissect_study.dsl import ast
from dissect_study.dsl.ast import Span, Study
from dissect_study.dsl.checker import (
    CheckedAnalysis,
    CheckedDissect,
    CheckedReport,
    CheckedStudy,
    ResolvedDecl,
    UnsetEnv,
    check,
)
from dissect_study.dsl.diagnostics import ERROR, WARNING, Diagnostic, StudyError, render
from dissect_study.dsl.fmt import format_study
from dissect_study.dsl.parser import parse

#: studies are small text files; anything larger is almost certainly the wrong file
MAX_BYTES = 1_000_000

__all__ = [
    "ast",
    "Span",
    "Study",
    "CheckedStudy",
    "CheckedDissect",
    "CheckedAnalysis",
    "CheckedReport",
    "ResolvedDecl",
    "UnsetEnv",
    "Diagnostic",
    "StudyError",
    "ERROR",
    "WARNING",
    "parse",
    "parse_file",
    "check",
    "check_file",
    "check_text",
    "format_study",
    "render",
    "read_study_text",
]


def _file_error(path: str, code: str, message: str, hint: str | None = None, line: int = 1, col: int = 1) -> StudyError:
    return StudyError([Diagnostic(ERROR, code, message, Span(path, line, col, line, col + 1), hint)], "")


def read_study_text(path: str | os.PathLike[str]) -> str:
    """Read a study file as UTF-8 text; every way this can fail becomes a `StudyError`."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise _file_error(
            name, "no-file", f"no such file: {name}", "check the path (it is relative to the current folder)"
        )
    if p.is_dir():
        raise _file_error(
            name, "is-directory", f"{name} is a folder, not a study file", "pass a .study file, e.g. studies/demo.study"
        )
    try:
        # Non-blocking open, then fstat the open file: a FIFO must not hang `check`, and a device
        # (/dev/zero) or a file whose size lies (/proc) is judged by what is read, never by st_size.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _file_error(
                    name,
                    "not-a-file",
                    f"{name} is not a regular file (a device, pipe or socket)",
                    "pass a .study file saved on disk",
                )
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            size = max(st.st_size, len(data))
            raise _file_error(
                name,
                "too-large",
                f"{name} is {size / 1e6:.1f} MB or more; a study is at most {MAX_BYTES // 1000} kB of text",
                "is this the right file? a study is a short text file of statements",
            )
    except StudyError:
        raise
    except OSError as err:
        raise _file_error(name, "unreadable", f"cannot read {name}: {err.strerror or err}") from None
    if b"\x00" in data:
        raise _file_error(
            name,
            "binary",
            f"{name} looks like a binary file, not a study",
            "a study is a UTF-8 text file of statements",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        col = err.start - (before.rfind(b"\n") + 1) + 1
        raise _file_error(
            name,
            "not-utf8",
            f"{name} is not UTF-8 text (byte 0x{data[err.start]:02x})",
            "save the file as UTF-8",
            line,
            col,
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def parse_file(path: str | os.PathLike[str]) -> Study:
    """Read and parse a study file; raises `StudyError` for unreadable files and syntax errors."""
    text = read_study_text(path)
    return parse(text, str(path))


def check_text(
    text: str, path: str = "<study>", env: Mapping[str, str] | None = None
) -> tuple[CheckedStudy | None, list[Diagnostic]]:
    """Parse and check study text; never raises for bad input."""
    if not text.strip() or all(not l.strip() or l.strip().startswith("#") for l in text.splitlines()):
        return None, [
            Diagnostic(
                ERROR,
                "empty",
                "the study is empty",
                Span(path, 1, 1, 1, 2),
                "a study needs at least declarations and a dissect statement; see studies/demo.study",
            )
        ]
    try:
        study = parse(text, path)
    except StudyError as err:
        return None, err.diagnostics
    return check(study, env)


def check_file(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[CheckedStudy | None, list[Diagnostic]]:
    """Read, parse and check a study file.  Missing paths, folders, binary, non-UTF-8,
    huge and empty files come back as diagnostics, never as exceptions."""
    try:
        text = read_study_text(path)
    except StudyError as err:
        return None, err.diagnostics
    return check_text(text, str(path), env)
