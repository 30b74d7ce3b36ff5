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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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


#: A file of 20,000 repeated mistakes must not print gigabytes: `render` shows this many, then a count.
MAX_RENDERED = 100
#: Source lines longer than this are shown as a window around the caret (a 60 kB line, once per
#: diagnostic, was most of the 1.8 GB the hostile-input audit saw).
LINE_WINDOW = 120
#: Messages and hints longer than this are elided (they may quote a name the user wrote).
MAX_TEXT = 400


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[: limit - 30]} ... ({len(text):,} characters)"


def _window(line_text: str, span: Span) -> tuple[str, int, int]:
    """(shown text, 1-based caret column in it, caret width): long lines cut around the caret."""
    col = max(span.col, 1)
    if span.end_line == span.line and span.end_col > span.col:
        width = span.end_col - span.col
    else:
        width = len(line_text) - (col - 1)
    width = max(1, min(width, max(len(line_text) - (col - 1), 1)))
    if len(line_text) <= LINE_WINDOW:
        return line_text, col, width
    start = max(0, min(col - 1 - LINE_WINDOW // 3, len(line_text) - LINE_WINDOW))
    stop = start + LINE_WINDOW
    head, tail = ("..." if start else ""), ("..." if stop < len(line_text) else "")
    shown_col = col - start + len(head)
    return head + line_text[start:stop] + tail, shown_col, max(1, min(width, stop - (col - 1)))


def _caret_line(line_text: str, col: int, width: int) -> str:
    # Keep tabs so the caret lines up under tab-indented code.
    prefix = "".join(ch if ch == "\t" else " " for ch in line_text[: col - 1])
    return prefix + "^" + "~" * (width - 1)


def render_one(diag: Diagnostic, source: str, lines: Sequence[str] | None = None) -> str:
    """One diagnostic: `path:line:col: severity: message`, the source line, a caret, hint and notes.

    `lines` is `source.splitlines()` (pass it when rendering many).  Lines are split exactly as the
    parser splits them (it normalises every `splitlines` break), so the caret sits under the token.
    """
    if lines is None:
        lines = source.splitlines() if source else []
    out = [f"{diag.span.path}:{diag.span.line}:{diag.span.col}: {diag.severity}: {_clip(diag.message)}"]
    if 1 <= diag.span.line <= len(lines):
        text, col, width = _window(lines[diag.span.line - 1], diag.span)
        out.append("  " + text)
        out.append("  " + _caret_line(text, col, width))
    elif diag.span.line >= 1 and source is not None and diag.span.line == len(lines) + 1:
        out.append("  ")
        out.append("  ^")
    if diag.hint:
        out.append(f"hint: {_clip(diag.hint)}")
    for message, span in diag.related[:10]:
        out.append(f"note: {_clip(message)} at {span.path}:{span.line}:{span.col}")
    return "\n".join(out)


def unique(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Diagnostics without repeats (same severity, code, message and place), first occurrence kept."""
    seen: dict[tuple[str, str, str, str, int, int], Diagnostic] = {}
    for d in diags:
        seen.setdefault((d.severity, d.code, d.message, d.span.path, d.span.line, d.span.col), d)
    return list(seen.values())


def render(diags: Sequence[Diagnostic], source: str, limit: int = MAX_RENDERED) -> str:
    """Render diagnostics in source order, errors and warnings alike, plus a summary line.

    Repeats are dropped and at most `limit` are shown (then "... N more"), so the output stays
    proportional to what a person can read, whatever the input.
    """
    kept = unique(diags)
    ordered = sorted(kept, key=lambda d: (d.span.line, d.span.col, d.severity != ERROR))
    lines = source.splitlines() if source else []
    blocks = [render_one(d, source, lines) for d in ordered[:limit]]
    if len(ordered) > limit:
        blocks.append(f"... and {len(ordered) - limit:,} more not shown")
    n_err = sum(1 for d in kept if d.is_error)
    n_warn = len(kept) - n_err
    if kept:
        parts = []
        if n_err:
            parts.append(f"{n_err:,} error{'s' if n_err != 1 else ''}")
        if n_warn:
            parts.append(f"{n_warn:,} warning{'s' if n_warn != 1 else ''}")
        blocks.append(", ".join(parts))
    return "\n".join(blocks) + ("\n" if blocks else "")
