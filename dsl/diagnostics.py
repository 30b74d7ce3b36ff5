"""Diagnostics are data; rendering them is one function.

A `Diagnostic` is what every stage (reading, parsing, checking) produces for a
user mistake: a severity, a stable `code` (tests and tools match on it), a
one-line message, the span of the offending token, an optional hint and related
locations ("earlier declaration here").  `render` turns a list of them into the
compiler-style text users see:

    studies/x.study:3:9: error: unknown probe 'vindrr'
      dissect M at layer last by mammo on vindrr with concepts paper
                                          ^~~~~~
    hint: did you mean 'vindr'?
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from dissect_study.dsl.ast import Span
from dissect_study.errors import DissectStudyError

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    code: str
    message: str
    span: Span
    hint: str | None = None
    related: list[tuple[str, Span]] = field(default_factory=list)

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


class StudyError(DissectStudyError):
    """Raised by `parse` when a study cannot be parsed; carries the diagnostics."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: str = "") -> None:
        self.diagnostics = list(diagnostics)
        self.source = source
        super().__init__(render(self.diagnostics, source) if self.diagnostics else "study error")

    def user_message(self) -> str:
        """The rendered diagnostics already read `path:line:col: error: ...`; no second prefix."""
        return str(self) if self.diagnostics else f"error: {self}"


def did_you_mean(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The closest candidate to a misspelt `word`, or None (case-insensitive comparison)."""
    cands = [c for c in dict.fromkeys(candidates) if c != word]
    if not cands:
        return None
    lowered = {c.lower(): c for c in cands}
    if word.lower() in lowered:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=cutoff)
    return lowered[match[0]] if match else None


def suggest_hint(word: str, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    best = did_you_mean(word, candidates, cutoff)
    return f"did you mean '{best}'?" if best else None


def _caret_line(line_text: str, span: Span) -> str:
    col = max(span.col, 1)
    # Width of the caret: the token on this line, at least one character.
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    else:
        width = max(len(line_text) - (col - 1), 1)
    width = max(1, min(width, max(len(line_text) - (col - 1), 1)))
    # Keep tabs so the caret lines up under tab-indented code.
    prefix = "".join(ch if ch == "\t" else " " for ch in line_text[: col - 1])
    return prefix + "^" + "~" * (width - 1)


def render_one(diag: Diagnostic, source: str) -> str:
    lines = source.splitlines() if source else []
    out = [f"{diag.span.path}:{diag.span.line}:{diag.span.col}: {diag.severity}: {diag.message}"]
    if 1 <= diag.span.line <= len(lines):
        text = lines[diag.span.line - 1]
        out.append("  " + text)
        out.append("  " + _caret_line(text, diag.span))
    elif diag.span.line >= 1 and source is not None and diag.span.line == len(lines) + 1:
        out.append("  ")
        out.append("  ^")
    if diag.hint:
        out.append(f"hint: {diag.hint}")
    for message, span in diag.related:
        out.append(f"note: {message} at {span.path}:{span.line}:{span.col}")
    return "\n".join(out)


def render(diags: Sequence[Diagnostic], source: str) -> str:
    """Render diagnostics in source order, errors and warnings alike, plus a summary line."""
    ordered = sorted(diags, key=lambda d: (d.span.line, d.span.col, d.severity != ERROR))
    blocks = [render_one(d, source) for d in ordered]
    n_err = sum(1 for d in diags if d.is_error)
    n_warn = len(diags) - n_err
    if diags:
        parts = []
        if n_err:
            parts.append(f"{n_err} error{'s' if n_err != 1 else ''}")
        if n_warn:
            parts.append(f"{n_warn} warning{'s' if n_warn != 1 else ''}")
        blocks.append(", ".join(parts))
    return "\n".join(blocks) + ("\n" if blocks else "")
