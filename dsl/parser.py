"""Text -> typed AST.

One LALR parser is built from `grammar.lark` the first time it is needed and
cached for the life of the process.  A `Transformer` turns Lark's parse tree
into the dataclasses of `dsl/ast.py`, attaching a `Span` to every node.  Syntax
errors become `Diagnostic`s: the expected tokens in plain words, plus a
sentence a person understands for the most common mistakes (found the lark way,
by matching the parser state against small examples of each mistake).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.tree import Meta

from dissect_study.dsl import ast
from dissect_study.dsl.diagnostics import ERROR, Diagnostic, StudyError

GRAMMAR_PATH = Path(__file__).with_name("grammar.lark")

#: Words that start statements or clauses; they cannot name declarations.
RESERVED = frozenset(
    """study let concepts probe dissector target layer layers dissect at by on with using
    threshold count compare vs learned missed gained lost over thresholds keywords analyze of
    top show neuron report as sections sample balanced seed all env true false review""".split()
)

#: A layer range names at most this many layers: the deepest real models have a few hundred
#: hookable layers, and `_blocks.0-999999999` must be an error, not a billion names in memory.
MAX_RANGE_LAYERS = 10_000
#: ... and all the ranges of a study together at most this many (the checker expands them to names)
MAX_STUDY_RANGE_LAYERS = 100_000
#: No string value -- literal or after `${name}` interpolation -- may exceed this many characters
#: (strings name paths and concepts; `let` strings that double each time must not exhaust memory).
MAX_STRING_CHARS = 1_000_000
#: An `env(...)` value is unknown when parsing; the string bound counts it as this many characters.
ENV_VALUE_GUESS = 4096
#: Integers are stored as 64-bit values; a longer literal is a typo (and int() refuses > 4300 digits).
MAX_INT = 2**63 - 1

#: Exactly what `str.splitlines` treats as a line break.  The lexer sees each as "\n", so lark's
#: line:col, the lines `render` shows (it splits with `splitlines`) and fmt's comment lines agree,
#: whatever the editor saved (CRLF, CR only, U+2028/U+2029/U+0085, form feed, vertical tab).
_LINE_BREAK = re.compile(r"\r\n|[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")

STATEMENT_KEYWORDS = (
    "study",
    "let",
    "concepts",
    "probe",
    "dissector",
    "target",
    "layer",
    "dissect",
    "threshold",
    "compare",
    "learned",
    "missed",
    "gained",
    "lost",
    "thresholds",
    "keywords",
    "analyze",
    "show",
    "report",
    "review",
)


@functools.lru_cache(maxsize=1)
def lark_parser() -> Lark:
    """The one cached LALR parser (building it takes ~50 ms; parsing is then cheap)."""
    return Lark(
        GRAMMAR_PATH.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        maybe_placeholders=True,
    )


# --------------------------------------------------------------------------- transformer
def _tok_span(path: str, tok: Token) -> ast.Span:
    return ast.Span(
        path, tok.line or 1, tok.column or 1, tok.end_line or tok.line or 1, tok.end_column or (tok.column or 1) + 1
    )


def _unescape(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def normalise_line_breaks(text: str) -> str:
    """Every line break `str.splitlines` knows becomes "\n" (columns are unchanged)."""
    return _LINE_BREAK.sub("\n", text)


def _short(text: str, limit: int = 40) -> str:
    """A token as shown in a message: long ones elided, so one huge token cannot flood the output."""
    return text if len(text) <= limit else f"{text[: limit - 12]}...{text[-8:]} ({len(text):,} characters)"


def _number(text: str) -> int | float:
    """The value of a NUMBER token; ValueError when it is not finite or not a 64-bit integer."""
    if re.fullmatch(r"[+-]?\d+", text):
        if len(text.lstrip("+-").lstrip("0")) > 19 or abs(int(text)) > MAX_INT:
            raise ValueError("too large for a whole number (at most 9223372036854775807)")
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("too large: numbers must be finite (at most about 1.8e308)")
    return value


class _Missing:
    """Sentinel for an omitted optional part."""


@v_args(meta=True)
class _ToAst(Transformer):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        #: mistakes the grammar accepts but the tree cannot hold (a clause given twice)
        self.problems: list[Diagnostic] = []

    # -- helpers
    def _span(self, meta: Meta) -> ast.Span:
        if getattr(meta, "empty", True):
            return ast.Span(self.path, 1, 1, 1, 2)
        return ast.Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _ts(self, tok: Token) -> ast.Span:
        return _tok_span(self.path, tok)

    def _num(self, tok: Token) -> int | float:
        """A number token's value; an out-of-range one is recorded as a problem (and reads as 0)."""
        try:
            return _number(str(tok))
        except ValueError as err:
            self.problems.append(
                Diagnostic(
                    ERROR,
                    "number-range",
                    f"number {_short(str(tok))} is {err}",
                    self._ts(tok),
                    "write an ordinary number, e.g. 0.25 or 1e-7",
                )
            )
            return 0

    def _int(self, tok: Token, what: str, minimum: int = 0) -> int:
        value = self._num(tok)
        if not isinstance(value, int) or value < minimum:
            self.problems.append(
                Diagnostic(
                    ERROR,
                    "not-whole-number",
                    f"{what} must be a whole number >= {minimum}, not {tok}",
                    self._ts(tok),
                    f"write for example {max(minimum, 1)}",
                )
            )
            return minimum
        return value

    def _ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self._ts(tok))

    # -- values
    def string(self, meta: Meta, children: list[Any]) -> ast.Str:
        (tok,) = children
        value = _unescape(str(tok))
        if len(value) > MAX_STRING_CHARS:  # `${...}` expansions are bounded by `_string_growth`
            self.problems.append(_too_long(len(value), self._ts(tok)))
            value = value[:0]
        return ast.Str(value, self._ts(tok))

    def number(self, meta: Meta, children: list[Any]) -> ast.Num:
        (tok,) = children
        return ast.Num(self._num(tok), self._ts(tok))

    def true(self, meta: Meta, children: list[Any]) -> ast.Bool:
        return ast.Bool(True, self._span(meta))

    def false(self, meta: Meta, children: list[Any]) -> ast.Bool:
        return ast.Bool(False, self._span(meta))

    def ident(self, meta: Meta, children: list[Any]) -> ast.Ident:
        return self._ident(children[0])

    def env_call(self, meta: Meta, children: list[Any]) -> ast.Env:
        var, default = children
        return ast.Env(var.value, default, self._span(meta), var.span)

    def arg_name(self, meta: Meta, children: list[Any]) -> Token:
        return children[0]

    def section_name(self, meta: Meta, children: list[Any]) -> ast.Ident:
        return self._ident(children[0])

    def kwarg(self, meta: Meta, children: list[Any]) -> ast.Arg:
        name, value = children
        return ast.Arg(str(name), value, self._span(meta), self._ts(name))

    def posarg(self, meta: Meta, children: list[Any]) -> ast.Arg:
        (value,) = children
        return ast.Arg(None, value, self._span(meta), None)

    def call(self, meta: Meta, children: list[Any]) -> ast.Call:
        name, *args = children
        return ast.Call(str(name), tuple(a for a in args if a is not None), self._span(meta), self._ts(name))

    def option(self, meta: Meta, children: list[Any]) -> ast.Arg:
        name, value = children
        return ast.Arg(str(name), value, self._span(meta), self._ts(name))

    # -- small pieces
    def name_list(self, meta: Meta, children: list[Any]) -> tuple[ast.Ident, ...]:
        return tuple(self._ident(t) for t in children)

    def layer_name(self, meta: Meta, children: list[Any]) -> ast.LayerName:
        return ast.LayerName(str(children[0]), self._ts(children[0]))

    def layer_range(self, meta: Meta, children: list[Any]) -> ast.LayerRange:
        tok = children[0]
        return self._range(str(tok), self._ts(tok))

    def _range(self, text: str, span: ast.Span) -> ast.LayerRange:
        """`prefix<start>-<end>`; a range of more than MAX_RANGE_LAYERS layers is an error (item 2 of
        the hostile-input audit: `_blocks.0-999999999` must not become a billion names)."""
        m = re.fullmatch(r"(.*?)(\d+)-(\d+)", text)
        assert m is not None  # guaranteed by the RANGE terminal and the show statement's split
        a, b = m.group(2), m.group(3)
        # compare digit counts first: int() of a 5,000-digit literal raises, and is pointless
        too_long = max(len(a.lstrip("0")), len(b.lstrip("0"))) > 18
        start, end = (0, 0) if too_long else (int(a), int(b))
        if too_long or end - start + 1 > MAX_RANGE_LAYERS:
            self.problems.append(
                Diagnostic(
                    ERROR,
                    "range-too-large",
                    f"layer range {_short(text)} names more than {MAX_RANGE_LAYERS:,} layers",
                    span,
                    "a range names layers that exist, e.g. _blocks.0-38; list the layers you mean",
                )
            )
            return ast.LayerRange(m.group(1), 0, 0, span)
        return ast.LayerRange(m.group(1), start, end, span)

    def layer_all(self, meta: Meta, children: list[Any]) -> ast.LayerAll:
        return ast.LayerAll(self._span(meta))

    def layer_list(self, meta: Meta, children: list[Any]) -> tuple[ast.LayerItem, ...]:
        return tuple(children)

    def layer_kw(self, meta: Meta, children: list[Any]) -> type[_Missing]:
        return _Missing

    def decl_kind(self, meta: Meta, children: list[Any]) -> str:
        return str(children[0])

    def learned_verb(self, meta: Meta, children: list[Any]) -> str:
        return str(children[0])

    gained_verb = learned_verb

    def op(self, meta: Meta, children: list[Any]) -> str:
        return str(children[0])

    def count_unit(self, meta: Meta, children: list[Any]) -> tuple[str, ast.Span]:
        return (str(children[0]), self._ts(children[0]))

    def count_clause(self, meta: Meta, children: list[Any]) -> tuple[str, tuple[str, ast.Span]]:
        return ("count", children[0])

    def filter_name(self, meta: Meta, children: list[Any]) -> tuple[str, ast.Span]:
        c = children[0]
        if isinstance(c, ast.Str):
            return (c.value, c.span)
        return (str(c), self._ts(c))

    def sample_clause(self, meta: Meta, children: list[Any]) -> ast.Sample:
        n, by, seed = children
        return ast.Sample(
            self._int(n, "the sample size", 1),
            str(by) if by is not None else None,
            self._int(seed, "the seed") if seed is not None else None,
            self._span(meta),
            self._ts(by) if by is not None else None,
        )

    def using_clause(self, meta: Meta, children: list[Any]) -> ast.Call:
        return children[0]

    # -- threshold rules
    def named_rule(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
        first, second = children
        if second is not None:
            return dict(
                combine=str(first),
                statistic=str(second),
                value=None,
                combine_span=self._ts(first),
                statistic_span=self._ts(second),
            )
        if str(first) in ("max", "own"):
            return dict(
                combine=str(first), statistic="mean_top1", value=None, combine_span=self._ts(first), statistic_span=None
            )
        return dict(combine="max", statistic=str(first), value=None, combine_span=None, statistic_span=self._ts(first))

    def fixed_rule(self, meta: Meta, children: list[Any]) -> dict[str, Any]:
        (tok,) = children
        return dict(
            combine="fixed",
            statistic="mean_top1",
            value=float(self._num(tok)),
            combine_span=self._ts(tok),
            statistic_span=None,
        )

    def threshold_clause(self, meta: Meta, children: list[Any]) -> tuple[str, ast.ThresholdRule]:
        head, op = children
        return ("threshold", ast.ThresholdRule(op=op or ">=", span=self._span(meta), **head))

    def at_clause(self, meta: Meta, children: list[Any]) -> tuple[str, tuple[ast.LayerItem, ...]]:
        return ("at", children[-1])

    def on_clause(self, meta: Meta, children: list[Any]) -> tuple[str, ast.Filter]:
        level, (name, name_span) = children
        return ("on", ast.Filter(str(level), name, self._span(meta), self._ts(level), name_span))

    def top_clause(self, meta: Meta, children: list[Any]) -> tuple[str, tuple[int, ast.Span]]:
        return ("top", (self._int(children[0], "top", 1), self._span(meta)))

    # -- statements
    def start(self, meta: Meta, children: list[Any]) -> tuple[Any, ...]:
        return tuple(children)

    def study_stmt(self, meta: Meta, children: list[Any]) -> ast.StudyTitle:
        return ast.StudyTitle(children[0].value, self._span(meta))

    def let_stmt(self, meta: Meta, children: list[Any]) -> ast.Let:
        name, value = children
        return ast.Let(str(name), value, self._span(meta), self._ts(name))

    def decl_stmt(self, meta: Meta, children: list[Any]) -> ast.Decl:
        kind, name, call, sample = children
        return ast.Decl(kind, str(name), call, sample, self._span(meta), self._ts(name))

    def layer_alias_stmt(self, meta: Meta, children: list[Any]) -> ast.LayerAliasDef:
        name, layers = children
        return ast.LayerAliasDef(str(name), layers, self._span(meta), self._ts(name))

    def dissect_stmt(self, meta: Meta, children: list[Any]) -> ast.Dissect:
        targets, _kw, layers, dissector, probe, concepts, similarity, *options = children
        return ast.Dissect(
            targets,
            layers,
            self._ident(dissector),
            self._ident(probe),
            self._ident(concepts),
            similarity,
            tuple(options),
            self._span(meta),
        )

    def threshold_stmt(self, meta: Meta, children: list[Any]) -> ast.DefaultThreshold:
        (_, rule), count = children
        unit, unit_span = count[1] if count else (None, None)
        return ast.DefaultThreshold(rule, unit, self._span(meta), unit_span)

    def _repeated_clause(self, tag: str, span: ast.Span, first: ast.Span) -> None:
        """A clause given twice in one statement (the grammar allows clauses in any order)."""
        word = {"at": "at layer(s)"}.get(tag, tag)
        self.problems.append(
            Diagnostic(
                ERROR,
                "repeated-clause",
                f"'{word}' is given twice in this statement",
                span,
                "keep one of them",
                [("first given", first)],
            )
        )

    def _analysis(
        self,
        meta: Meta,
        kind: str,
        verb: str,
        models: Sequence[ast.Ident],
        tails: list[Any],
        name: str | None = None,
        name_span: ast.Span | None = None,
    ) -> ast.Analysis:
        layers = filt = rule = count = count_span = None
        options: list[ast.Arg] = []
        seen: dict[str, ast.Span] = {}
        for t in tails:
            if isinstance(t, ast.Arg):
                options.append(t)
                continue
            tag, val = t
            span = val[1] if tag in ("count", "top") else (val[0].span if tag == "at" else val.span)
            if tag in seen:
                self._repeated_clause(tag, span, seen[tag])
            seen[tag] = span
            if tag == "at":
                layers = val
            elif tag == "on":
                filt = val
            elif tag == "threshold":
                rule = val
            elif tag == "count":
                count, count_span = val
            elif tag == "top":
                n, span = val
                options.append(ast.Arg("top", ast.Num(n, span), span, span))
        return ast.Analysis(
            kind,
            tuple(models),
            layers,
            filt,
            rule,
            count,
            tuple(options),
            name,
            self._span(meta),
            verb,
            name_span,
            count_span,
        )

    def compare_stmt(self, meta: Meta, children: list[Any]) -> ast.Analysis:
        models = [c for c in children if isinstance(c, Token)]
        tails = [c for c in children if not isinstance(c, Token)]
        return self._analysis(meta, "compare", "compare", [self._ident(m) for m in models], tails)

    def learned_stmt(self, meta: Meta, children: list[Any]) -> ast.Analysis:
        verb, models, *tails = children
        return self._analysis(meta, "learned", verb, models, tails)

    def gained_stmt(self, meta: Meta, children: list[Any]) -> ast.Analysis:
        verb, a, b, *tails = children
        return self._analysis(meta, "gained", verb, [self._ident(a), self._ident(b)], tails)

    def thresholds_stmt(self, meta: Meta, children: list[Any]) -> ast.Analysis:
        models, *tails = children
        return self._analysis(meta, "thresholds", "thresholds", models, tails)

    def keywords_stmt(self, meta: Meta, children: list[Any]) -> ast.Analysis:
        models, *tails = children
        return self._analysis(meta, "keywords", "keywords", models, tails)

    def analyze_stmt(self, meta: Meta, children: list[Any]) -> ast.Analysis:
        name, models, *tails = children
        return self._analysis(meta, "analyze", "analyze", models, tails, str(name), self._ts(name))

    def show_stmt(self, meta: Meta, children: list[Any]) -> ast.ShowNeuron:
        ref, unit, top = children
        model, _, layer = str(ref).partition(".")
        s = self._ts(ref)
        mspan = ast.Span(s.path, s.line, s.col, s.line, s.col + len(model))
        lspan = ast.Span(s.path, s.line, s.col + len(model) + 1, s.end_line, s.end_col)
        item: ast.LayerItem
        if re.fullmatch(r"(.*?)(\d+)-(\d+)", layer):
            item = self._range(layer, lspan)
        else:
            item = ast.LayerName(layer, lspan)
        return ast.ShowNeuron(
            ast.Ident(model, mspan),
            item,
            self._int(unit, "the unit index"),
            top[1][0] if top else _show_neuron_top(),
            self._span(meta),
        )

    # -- review packets (engine/review/select.py picks the neurons at run time)
    def review_sample(self, meta: Meta, children: list[Any]) -> tuple[str, tuple[int, int | None], ast.Span]:
        n, seed = children
        return (
            "sample",
            (self._int(n, "the sample size", 1), self._int(seed, "the seed") if seed is not None else None),
            self._span(meta),
        )

    def _review(
        self, meta: Meta, model: ast.Ident, layers: tuple[ast.LayerItem, ...], units: tuple[int, ...], tails: list[Any]
    ) -> ast.Review:
        filt = top = sample = seed = size_span = None
        options: list[ast.Arg] = []
        seen: dict[str, ast.Span] = {}
        for t in tails:
            if isinstance(t, ast.Arg):
                options.append(t)
                continue
            tag, val = t[0], t[1]
            span = t[2] if tag == "sample" else (val[1] if tag == "top" else val.span)
            if tag in seen:
                self._repeated_clause(tag, span, seen[tag])
                continue
            seen[tag] = span
            if tag == "on":
                filt = val
            elif tag == "top":
                top, size_span = val[0], span
            else:
                (sample, seed), size_span = val, span
        return ast.Review(model, layers, units, filt, top, sample, seed, tuple(options), self._span(meta), size_span)

    def review_select(self, meta: Meta, children: list[Any]) -> ast.Review:
        model, _kw, layers, *tails = children
        return self._review(meta, self._ident(model), layers, (), tails)

    def review_units(self, meta: Meta, children: list[Any]) -> ast.Review:
        ref, *rest = children
        units = tuple(self._int(u, "the unit index") for u in rest if isinstance(u, Token))
        tails = [t for t in rest if not isinstance(t, Token)]
        model, _, layer = str(ref).partition(".")
        s = self._ts(ref)
        mspan = ast.Span(s.path, s.line, s.col, s.line, s.col + len(model))
        lspan = ast.Span(s.path, s.line, s.col + len(model) + 1, s.end_line, s.end_col)
        item: ast.LayerItem = (
            self._range(layer, lspan) if re.fullmatch(r"(.*?)(\d+)-(\d+)", layer) else ast.LayerName(layer, lspan)
        )
        return self._review(meta, ast.Ident(model, mspan), (item,), units, tails)

    def report_stmt(self, meta: Meta, children: list[Any]) -> ast.Report:
        out, formats, sections = children
        return ast.Report(
            out,
            tuple(f.name for f in formats) if formats else ("html", "pdf"),
            tuple(s.name for s in sections) if sections else None,
            self._span(meta),
            tuple(f.span for f in formats) if formats else (),
            tuple(s.span for s in sections) if sections else (),
        )

    def format_clause(self, meta: Meta, children: list[Any]) -> tuple[ast.Ident, ...]:
        return children[0]

    def sections_clause(self, meta: Meta, children: list[Any]) -> tuple[ast.Ident, ...]:
        return tuple(children)


# --------------------------------------------------------------------------- syntax errors
_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string in double quotes",
    "NUMBER": "a number",
    "DOTTED": "a dotted layer name such as M.last or _blocks.38",
    "RANGE": "a layer range such as _blocks.0-38",
    "$END": "the end of the file",
}

#: Common mistakes: label -> (message, hint, examples that fail in the same parser state).
_FRIENDLY: dict[str, tuple[str, str | None, list[str]]] = {
    "missing_equals": (
        "missing '=' after the declared name",
        "a declaration reads `probe NAME = source(...)`",
        [
            'probe p vindr(root="a", csv="b")',
            'concepts c shipped("x")',
            "target t image_tower(d)",
            "let x 5",
            "layer a _blocks.1",
        ],
    ),
    "missing_vs": (
        "models in a compare are separated by 'vs'",
        "write `compare M vs C4 ...`",
        ["compare M C4", "compare M, C4", "compare M at layer last"],
    ),
    "missing_comma_args": (
        "missing ',' between arguments",
        'arguments are separated by commas: `vindr(root="a", csv="b")`',
        [
            'probe p = vindr(root="a" csv="b")',
            'probe p = vindr(root=a csv="b")',
            'probe p = vindr(root=env("X") csv="b")',
            'probe p = vindr(root=1 csv="b")',
        ],
    ),
    "missing_paren": (
        "missing ')' to close the argument list",
        None,
        ['probe p = vindr(root="a" dissect', 'probe p = vindr(root="a", csv="b" probe'],
    ),
    "not_a_call": (
        "a source is written as a call: `name(arguments)`",
        'for example `concepts c = shipped("mammo_v1")`',
        ['concepts c = "x"', "probe p = vindr root", "probe p = 5", "dissector d = demo dissect"],
    ),
    "dissect_at": (
        "a dissect statement names its layers with `at layer(s) ...` after the targets",
        "write `dissect M at layers early, middle, last by DISSECTOR on PROBE with concepts SET`",
        ["dissect M layers all", "dissect M, C4 by d"],
    ),
    "dissect_by": (
        "after the layers, a dissect statement needs `by DISSECTOR on PROBE with concepts SET`",
        None,
        ["dissect M at layer last on p", "dissect M at layer last with concepts c", "dissect M at layers a, b on p"],
    ),
    "dissect_with": (
        "after the probe, a dissect statement needs `with concepts SET`",
        None,
        ["dissect M at layer last by d on p concepts c", "dissect M at layer last by d on p using soft_wpmi()"],
    ),
    "trailing_comma": (
        "a ',' must be followed by another item",
        "remove the trailing comma",
        [
            "dissect M, at",
            "compare M vs C at layers early, on",
            'report "x" as html, sections',
            "dissect M at layers a, by",
        ],
    ),
    "show_neuron": (
        "a neuron is written MODEL.LAYER[UNIT]",
        "for example `show neuron M.last[242] top 5`",
        ["show neuron M[3]", "show neuron M", "show neuron M.last 3", "show M.last[3]"],
    ),
    "layers_kw": (
        "expected `layer` or `layers` after `at`",
        "write `at layer last` or `at layers early, middle, last`",
        ["compare M vs C at last", "dissect M at all", "keywords M at _blocks.1"],
    ),
}


def _more_examples() -> None:
    """Widen the example sets: LALR states differ by list position and by lookahead,
    so each mistake is shown in its common variants."""
    args = _FRIENDLY["missing_comma_args"][2]
    paren = _FRIENDLY["missing_paren"][2]
    for value in ('"a"', "1", "x", "true", 'env("X")', 'env("X", 1)'):
        for before in ("", "a=1, ", "a=1, b=2, "):
            for nxt in ("csv", "seed", "top", "count"):
                args.append(f"probe p = f({before}k={value} {nxt}=1)")
            args.append(f"probe p = f({before}{value} {value})")
            for kw in ("dissect", "probe", "target", "concepts", "compare", "report"):
                paren.append(f"probe p = f({before}k={value} {kw}")
    trailing = _FRIENDLY["trailing_comma"][2]
    for items in ("a,", "a, b,", "a, b, c,", "a, b, c, d,"):
        for kw in ("by", "on", "at", "with", "threshold", "count", "top", "report", "compare", "dissect", "show"):
            trailing.append(f"dissect {items} {kw}")
            trailing.append(f"dissect M at layers {items} {kw}")
            trailing.append(f"keywords {items} {kw}")
            trailing.append(f"compare M vs C at layers {items} {kw}")
            trailing.append(f'report "x" as {items} {kw}')
            trailing.append(f'report "x" as html sections {items} {kw}')
            trailing.append(f"layer p = {items} {kw}")


_more_examples()


@functools.lru_cache(maxsize=1)
def _terminal_words() -> dict[str, str]:
    words = dict(_TERMINAL_WORDS)
    for term in lark_parser().terminals:
        if term.name not in words and term.pattern.type == "str":
            words[term.name] = f"'{term.pattern.value}'"
    return words


def _expected_words(expected: set[str] | frozenset[str]) -> str:
    words = _terminal_words()
    kw = {n for n in expected if n.upper() in {k.upper() for k in STATEMENT_KEYWORDS}}
    rest = [words.get(n, n.lower()) for n in sorted(expected - kw)]
    if len(kw) >= 8:
        return (
            "the start of a statement (study, let, concepts, probe, dissector, target, layer, dissect, threshold, compare, ...)"
            + ((", or " + ", ".join(sorted(set(rest)))) if rest else "")
        )
    items = sorted({words.get(n, n.lower()) for n in kw}) + sorted(set(rest))
    if len(items) == 1:
        return items[0]
    return "one of: " + ", ".join(items)


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    text = _short(str(tok))
    if tok.type == "NAME":
        if text in RESERVED:
            return f"keyword '{text}'"
        return f"name '{text}'"
    if tok.type == "STRING":
        return f"string {text}"
    if tok.type in ("NUMBER", "INT"):
        return f"number {text}"
    if text.isidentifier():
        return f"keyword '{text}'"
    return f"'{text}'"


def _end_span(path: str, text: str) -> ast.Span:
    lines = text.splitlines() or [""]
    idx = len(lines)
    while idx > 1 and not lines[idx - 1].split("#", 1)[0].strip():
        idx -= 1
    line = lines[idx - 1].split("#", 1)[0].rstrip()
    col = len(line) + 1
    return ast.Span(path, idx, col, idx, col + 1)


def _token_class(tok: Token) -> str:
    """Statement keywords form one class: any of them after an unclosed call means the same mistake."""
    return "STATEMENT" if str(tok) in STATEMENT_KEYWORDS and tok.type != "STRING" else tok.type


def _state_id(err: UnexpectedInput) -> int | None:
    state = getattr(err, "state", None)
    stack = getattr(state, "state_stack", None)
    return stack[-1] if stack else None


@functools.lru_cache(maxsize=1)
def _example_table() -> tuple[dict[tuple[int, str], str], dict[int, str]]:
    """Parser state (top of the LALR stack) of each example mistake -> its label.

    lark's own `match_examples` compares whole parser stacks, so an example only
    matches a mistake made in the file's first statement; keying on the current
    LALR state makes a mistake match wherever it occurs."""
    exact: dict[tuple[int, str], str] = {}
    loose: dict[int, str] = {}
    parser = lark_parser()
    for label, (_, _, examples) in _FRIENDLY.items():
        for example in examples:
            try:
                parser.parse(example)
            except UnexpectedToken as err:
                sid = _state_id(err)
                if sid is not None:
                    exact.setdefault((sid, _token_class(err.token)), label)
                    loose.setdefault(sid, label)
            except UnexpectedInput:
                continue
    return exact, loose


def _friendly(err: UnexpectedInput) -> str | None:
    if not isinstance(err, UnexpectedToken):
        return None
    sid = _state_id(err)
    if sid is None:
        return None
    exact, loose = _example_table()
    return exact.get((sid, _token_class(err.token))) or loose.get(sid)


def syntax_diagnostic(err: UnexpectedInput, text: str, path: str) -> Diagnostic:
    """Turn a lark exception into one positioned, plainly worded diagnostic."""
    if isinstance(err, UnexpectedCharacters):
        line, col = err.line, err.column
        pos = err.pos_in_stream if err.pos_in_stream is not None else -1
        ch = text[pos] if 0 <= pos < len(text) else ""
        span = ast.Span(path, line, col, line, col + 1)
        if ch == '"':
            line_text = text.splitlines()[line - 1] if text.splitlines() else ""
            return Diagnostic(
                ERROR,
                "unclosed-string",
                "unclosed string",
                ast.Span(path, line, col, line, len(line_text) + 1),
                "a string ends with a double quote on the same line",
            )
        if ch == "'":
            return Diagnostic(
                ERROR,
                "single-quote",
                "strings use double quotes, not single quotes",
                span,
                "write \"...\" instead of '...'",
            )
        if ch == "$":
            return Diagnostic(
                ERROR,
                "bare-interpolation",
                "'${...}' only works inside a string",
                span,
                'write "${name}" or just the name',
            )
        shown = repr(ch)[1:-1] if ch and not ch.isprintable() else ch
        allowed = {t for t in (err.allowed or set())}
        hint = f"expected {_expected_words(allowed)}" if allowed else None
        return Diagnostic(ERROR, "unexpected-character", f"unexpected character '{shown}'", span, hint)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    if tok.type == "$END":
        span = _end_span(path, text)
    else:
        span = _tok_span(path, tok)
    expected = set(err.accepts or err.expected or set())
    hint = f"expected {_expected_words(expected)}" if expected else None
    label = _friendly(err)
    message = f"unexpected {_describe_token(tok)}"
    code = "syntax"
    if label is not None:
        friendly_msg, friendly_hint, _ = _FRIENDLY[label]
        message = f"{friendly_msg} (found {_describe_token(tok)})"
        code = f"syntax-{label.replace('_', '-')}"
        if friendly_hint:
            hint = f"{friendly_hint}; {hint}" if hint else friendly_hint
    elif str(tok) in RESERVED and tok.type != "NAME" and "NAME" in expected:
        message = f"'{tok}' is a reserved word and cannot be used as a name"
        code = "syntax-reserved"
    return Diagnostic(ERROR, code, message, span, hint)


def _too_long(n: int, span: ast.Span) -> Diagnostic:
    return Diagnostic(
        ERROR,
        "string-too-long",
        f"this string would be {n:,} characters long; a string is at most {MAX_STRING_CHARS:,}",
        span,
        "strings name files, folders and concepts; check what it inserts with `${...}`",
    )


def _walk(node: Any, kind: type) -> Iterator[Any]:
    """Every node of type `kind` below `node` (a statement or a part of one), in field order."""
    if isinstance(node, kind):
        yield node
    elif isinstance(node, tuple):
        for item in node:
            yield from _walk(item, kind)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            if f.compare:  # spans are not compared, and hold no nodes
                yield from _walk(getattr(node, f.name), kind)


def _range_budget(statements: tuple[ast.Statement, ...]) -> list[Diagnostic]:
    """The study's layer ranges together name at most MAX_STUDY_RANGE_LAYERS layers: a 1 MB file of
    10,000-layer ranges must not become hundreds of millions of names in the checker."""
    total = 0
    for stmt in statements:
        for item in _walk(stmt, ast.LayerRange):
            total += max(0, item.end - item.start + 1)
            if total > MAX_STUDY_RANGE_LAYERS:
                return [
                    Diagnostic(
                        ERROR,
                        "range-too-large",
                        f"the layer ranges of this study name more than {MAX_STUDY_RANGE_LAYERS:,} layers in all",
                        item.span,
                        "list the layers the models have; `all` names every layer of a model",
                    )
                ]
    return []


def _string_growth(statements: tuple[ast.Statement, ...], path: str) -> list[Diagnostic]:
    """Strings whose `${name}` expansion could exceed MAX_STRING_CHARS, found before anything expands.

    An upper bound per `let` (first definition wins, as in the checker; an unknown name counts 0; an
    `env(...)` value counts ENV_VALUE_GUESS characters or its default's bound): `let`s that double
    each time are reported at the string that crosses the limit, in time and memory linear in the text.
    """
    bound: dict[str, int] = {}

    def value_bound(v: Any) -> int:
        if isinstance(v, ast.Str):
            return str_bound(v)
        if isinstance(v, ast.Ident):
            return bound.get(v.name, len(v.name))
        if isinstance(v, ast.Env):
            return max(ENV_VALUE_GUESS, value_bound(v.default) if v.default is not None else 0)
        return len(str(getattr(v, "value", "")))

    def str_bound(s: ast.Str) -> int:
        total, pos = 0, 0
        for m in ast.INTERPOLATION.finditer(s.value):
            total += m.start() - pos + bound.get(m.group(1).strip(), 0)
            pos = m.end()
        return total + len(s.value) - pos

    problems: list[Diagnostic] = []
    for stmt in statements:
        for s in _walk(stmt, ast.Str):
            n = str_bound(s)
            if n > MAX_STRING_CHARS:
                problems.append(_too_long(n, s.span or ast.Span(path, 1, 1, 1, 2)))
        if isinstance(stmt, ast.Let) and stmt.name not in bound:
            n = value_bound(stmt.value)
            bound[stmt.name] = n if n <= MAX_STRING_CHARS else 0  # reported once, where it crossed the limit
    return problems


def parse(text: str, path: str = "<study>") -> ast.Study:
    """Parse study text into an AST; raises `StudyError` with diagnostics on a syntax error.

    Line breaks are normalised first (see `_LINE_BREAK`); `Study.source` is the normalised text, so
    every span indexes it and `render(diags, text)` -- which splits lines the same way -- agrees.
    """
    text = normalise_line_breaks(text)
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as err:
        raise StudyError([syntax_diagnostic(err, text, path)], text) from None
    try:
        builder = _ToAst(path)
        statements = builder.transform(tree)
    except VisitError as err:  # pragma: no cover - the grammar guarantees well-formed trees
        raise StudyError(
            [
                Diagnostic(
                    ERROR, "internal", f"could not build the syntax tree: {err.orig_exc}", ast.Span(path, 1, 1, 1, 2)
                )
            ],
            text,
        ) from None
    problems = builder.problems + _string_growth(tuple(statements), path) + _range_budget(tuple(statements))
    if problems:
        raise StudyError(problems, text)
    return ast.Study(path=path, source=text, statements=tuple(statements))


def _show_neuron_top() -> int:
    """`show neuron ... top N`'s default: the neuron_profile analysis spec's, the one place it is written."""
    from dissect_study.dsl.vocabulary import ANALYSES

    opt = ANALYSES["neuron_profile"].option("top")
    assert opt is not None and isinstance(opt.default, int)
    return opt.default
