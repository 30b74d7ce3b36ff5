"""Canonical formatting of a study (`dissect-study fmt`).

The formatter prints the AST, not the source, so its output depends only on what a
study says: one statement per line (long dissect statements wrapped with the
clauses indented), one blank line between groups of statements, parameters in
the order written, defaults that the user wrote kept.  Formatting is idempotent,
and parse(format(parse(text))) == parse(text) -- the property tests check both.
Comments are not part of the AST: `fmt` keeps standalone comment lines that
precede a statement and end-of-line comments, re-attached by line number.

`format_study` re-parses its own output and refuses (StudyError) when that would
say something else than the input: a formatter bug must never reach a user's file
(the hostile-input audit saw a CR-only file formatted into one comment).
"""

from __future__ import annotations

import re

from dissect_study.dsl import ast
from dissect_study.dsl.diagnostics import ERROR, Diagnostic, StudyError
from dissect_study.dsl.parser import RESERVED, parse

_IDENT = re.compile(r"[A-Za-z_]\w*\Z")


def fmt_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def fmt_num(value: int | float) -> str:
    if isinstance(value, bool):  # pragma: no cover - Bool has its own node
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text if ("." in text or "e" in text or "inf" in text or "nan" in text) else text + ".0"


def fmt_value(v: ast.Value) -> str:
    if isinstance(v, ast.Str):
        return fmt_str(v.value)
    if isinstance(v, ast.Num):
        return fmt_num(v.value)
    if isinstance(v, ast.Bool):
        return "true" if v.value else "false"
    if isinstance(v, ast.Ident):
        return v.name
    if isinstance(v, ast.Env):
        inner = fmt_str(v.var)
        if v.default is not None:
            inner += ", " + fmt_value(v.default)
        return f"env({inner})"
    raise TypeError(v)  # pragma: no cover


def fmt_call(c: ast.Call) -> str:
    args = ", ".join((f"{a.name}={fmt_value(a.value)}" if a.name else fmt_value(a.value)) for a in c.args)
    return f"{c.func}({args})"


def fmt_layer(item: ast.LayerItem) -> str:
    if isinstance(item, ast.LayerAll):
        return "all"
    if isinstance(item, ast.LayerRange):
        return f"{item.prefix}{item.start}-{item.end}"
    return item.text


def fmt_layers(items: tuple[ast.LayerItem, ...], aliases: frozenset[str] = frozenset()) -> str:
    """`at layer X` for one concrete layer, `at layers ...` otherwise (a study alias may name several)."""
    single = len(items) == 1 and isinstance(items[0], ast.LayerName) and items[0].text not in aliases
    kw = "layer" if single else "layers"
    return f"at {kw} " + ", ".join(fmt_layer(i) for i in items)


def fmt_name(name: str) -> str:
    """A filter name: bare when it is a plain identifier, quoted otherwise."""
    return name if _IDENT.match(name) and name not in RESERVED else fmt_str(name)


def fmt_rule(r: ast.ThresholdRule) -> str:
    if r.combine == "fixed":
        assert r.value is not None
        return f"threshold {fmt_num(r.value)} {r.op}"
    return f"threshold {r.combine} {r.statistic} {r.op}"


def fmt_statement(s: ast.Statement, aliases: frozenset[str] = frozenset()) -> str:
    """Canonical text of one statement: one small formatter per statement kind."""
    if isinstance(s, ast.StudyTitle):
        return f"study {fmt_str(s.title)}"
    if isinstance(s, ast.Let):
        return f"let {s.name} = {fmt_value(s.value)}"
    if isinstance(s, ast.Decl):
        return _fmt_decl(s)
    if isinstance(s, ast.LayerAliasDef):
        return f"layer {s.name} = " + ", ".join(fmt_layer(i) for i in s.layers)
    if isinstance(s, ast.Dissect):
        return _fmt_dissect(s, aliases)
    if isinstance(s, ast.DefaultThreshold):
        return fmt_rule(s.rule) + (f" count {s.count}" if s.count else "")
    if isinstance(s, ast.Analysis):
        return _fmt_analysis(s, aliases)
    if isinstance(s, ast.ShowNeuron):
        return f"show neuron {s.model.name}.{fmt_layer(s.layer)}[{s.unit}] top {s.top}"
    if isinstance(s, ast.Review):
        return _fmt_review(s, aliases)
    if isinstance(s, ast.Report):
        text = f"report {fmt_str(s.out.value)} as " + ", ".join(s.formats)
        return text + (" sections " + ", ".join(s.sections) if s.sections is not None else "")
    raise TypeError(s)  # pragma: no cover


def _fmt_decl(s: ast.Decl) -> str:
    text = f"{s.kind} {s.name} = {fmt_call(s.source)}"
    if s.sample is not None:
        text += f" sample {s.sample.n}"
        if s.sample.balanced_by:
            text += f" balanced by {s.sample.balanced_by}"
        if s.sample.seed is not None:
            text += f" seed {s.sample.seed}"
    return text


def _fmt_dissect(s: ast.Dissect, aliases: frozenset[str]) -> str:
    lines = [
        "dissect " + ", ".join(t.name for t in s.targets),
        "    " + fmt_layers(s.layers, aliases),
        f"    by {s.dissector.name} on {s.probe.name} with concepts {s.concepts.name}",
    ]
    if s.similarity is not None:
        lines.append(f"    using {fmt_call(s.similarity)}")
    if s.options:
        lines.append("    " + " ".join(f"{o.name} {fmt_value(o.value)}" for o in s.options))
    return "\n".join(lines)


def _analysis_head(s: ast.Analysis) -> str:
    names = [m.name for m in s.models]
    if s.kind == "compare":
        return "compare " + " vs ".join(names)
    if s.kind == "gained":
        return f"{s.verb or 'gained'} {names[0]} over {names[1]}"
    if s.kind == "learned":
        return f"{s.verb or 'learned'} " + ", ".join(names)
    if s.kind == "analyze":
        return f"analyze {s.name} of " + ", ".join(names)
    return f"{s.kind} " + ", ".join(names)


def _fmt_analysis(s: ast.Analysis, aliases: frozenset[str]) -> str:
    parts = [_analysis_head(s)]
    if s.layers is not None:
        parts.append(fmt_layers(s.layers, aliases))
    if s.filter is not None:
        parts.append(f"on {s.filter.level} {fmt_name(s.filter.name)}")
    if s.threshold is not None:
        parts.append(fmt_rule(s.threshold))
    if s.count is not None:
        parts.append(f"count {s.count}")
    parts.extend(f"{o.name} {fmt_value(o.value)}" for o in s.options)
    return " ".join(parts)


def _fmt_review(s: ast.Review, aliases: frozenset[str]) -> str:
    if s.units:
        parts = [f"review {s.model.name}.{fmt_layer(s.layers[0])}[{', '.join(map(str, s.units))}]"]
    else:
        parts = [f"review {s.model.name}", fmt_layers(s.layers, aliases)]
    if s.filter is not None:
        parts.append(f"on {s.filter.level} {fmt_name(s.filter.name)}")
    if s.top is not None:
        parts.append(f"top {s.top}")
    if s.sample is not None:
        parts.append(f"sample {s.sample}" + (f" seed {s.seed}" if s.seed is not None else ""))
    parts.extend(f"{o.name} {fmt_value(o.value)}" for o in s.options)
    return " ".join(parts)


_GROUP = {
    ast.StudyTitle: 0,
    ast.Let: 1,
    ast.Decl: 2,
    ast.LayerAliasDef: 3,
    ast.Dissect: 4,
    ast.DefaultThreshold: 5,
    ast.Analysis: 6,
    ast.ShowNeuron: 6,
    ast.Review: 6,
    ast.Report: 7,
}


def _comments(source: str) -> tuple[dict[int, list[str]], dict[int, str]]:
    """Standalone comment lines (keyed by the line of the next code) and trailing comments (by line)."""
    leading: dict[int, list[str]] = {}
    trailing: dict[int, str] = {}
    pending: list[str] = []
    for no, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped)
            continue
        if not stripped:
            if pending and pending[-1] != "":
                pending.append("")
            continue
        if pending:
            while pending and pending[-1] == "":
                pending.pop()
            leading[no] = pending
            pending = []
        m = _trailing_comment(line)
        if m:
            trailing[no] = m
    if pending:
        while pending and pending[-1] == "":
            pending.pop()
        leading[10**9] = pending
    return leading, trailing


def _trailing_comment(line: str) -> str | None:
    in_str = False
    esc = False
    for i, ch in enumerate(line):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "#":
            return line[i:].rstrip()
    return None


def format_study(study: ast.Study) -> str:
    """Canonical text of a study; comments from `study.source` are carried over.

    Raises `StudyError` (code `fmt-unsafe`) instead of returning text whose syntax tree differs
    from `study`'s (positions ignored), so a caller that writes the result never loses meaning.
    """
    text = _layout(study)
    try:
        again = parse(text, study.path)
    except StudyError as err:
        first = err.diagnostics[0] if err.diagnostics else None
        raise _unsafe(
            study,
            first.span.line if first else 1,
            "its output would not parse" + (f" ({first.message})" if first else ""),
        ) from None
    for old, new in zip(study.statements, again.statements):
        if old != new:
            raise _unsafe(study, old.span.line if old.span else 1, "its output would change this statement")
    if len(study.statements) != len(again.statements):
        raise _unsafe(study, 1, "its output would have a different number of statements")
    return text


def _unsafe(study: ast.Study, line: int, why: str) -> StudyError:
    span = ast.Span(study.path, line, 1, line, 2)
    return StudyError(
        [
            Diagnostic(
                ERROR,
                "fmt-unsafe",
                f"cannot format this study safely: {why}",
                span,
                "the file is left as it is; please report this as a dissect-study bug",
            )
        ],
        study.source or "",
    )


def _layout(study: ast.Study) -> str:
    """The canonical text itself (`format_study` checks it before anyone uses it)."""
    leading, trailing = _comments(study.source or "")
    starts = sorted(leading)
    out: list[str] = []
    prev_group: int | None = None
    aliases = frozenset(s.name for s in study.statements if isinstance(s, ast.LayerAliasDef))
    for s in study.statements:
        group = _GROUP[type(s)]
        span = s.span
        lead: list[str] = []
        if span is not None:
            for line_no in [n for n in starts if n <= span.line]:
                lead.extend(leading.pop(line_no))
            starts = sorted(leading)
        if out and (group != prev_group or lead or "\n" in out[-1] or isinstance(s, ast.Dissect)):
            out.append("")
        out.extend(lead)
        text = fmt_statement(s, aliases)
        if span is not None:
            tails = [trailing[n] for n in range(span.line, span.end_line + 1) if n in trailing]
            if tails:
                lines = text.split("\n")
                lines[0] += "  " + "  ".join(tails)
                text = "\n".join(lines)
        out.append(text)
        prev_group = group
    rest = [c for n in sorted(leading) for c in leading[n]]
    if rest:
        out.append("")
        out.extend(rest)
    # collapse runs of blank lines
    cleaned: list[str] = []
    for line in out:
        if line == "" and cleaned and cleaned[-1] == "":
            continue
        cleaned.append(line)
    while cleaned and cleaned[-1] == "":
        cleaned.pop()
    return "\n".join(cleaned) + "\n" if cleaned else ""
