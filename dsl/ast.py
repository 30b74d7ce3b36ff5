"""The typed syntax tree of a study.

Every node is a frozen dataclass that carries its source `span`, so that the
checker and the engine can point at the exact token a user wrote.  Spans are
excluded from equality (`compare=False`): two studies that say the same thing
in a different layout are equal, which is what the formatter round-trip test
and the engine's plan cache rely on.

Values stay *unresolved* here: strings keep their `${name}` placeholders and
`env("X")` stays an `Env` node.  Resolution is the checker's job, because it
depends on the environment and on the other statements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: `${name}` inside a string: the one spelling of interpolation (the checker expands it; the parser
#: bounds how long an expansion can get)
INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


@dataclass(frozen=True)
class Span:
    """A source range.  Lines and columns are 1-based; `end_col` is exclusive."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


def _span() -> Span:
    return field(compare=False, repr=False)


def _opt_span() -> Span | None:
    return field(default=None, compare=False, repr=False)


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Str:
    """A double-quoted string, escapes decoded, `${name}` placeholders kept raw."""

    value: str
    span: Span = _span()


@dataclass(frozen=True)
class Num:
    """A number; `int` when written without a decimal point or exponent."""

    value: int | float
    span: Span = _span()


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span = _span()


@dataclass(frozen=True)
class Ident:
    """A bare name: a `let` name, a declaration, or a word such as `avg`."""

    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Env:
    """`env("VAR")` or `env("VAR", default)`: a value read from the environment at check/run time."""

    var: str
    default: Value | None
    span: Span = _span()
    var_span: Span | None = _opt_span()


Value = Str | Num | Bool | Ident | Env


@dataclass(frozen=True)
class Arg:
    """One argument of a call or one `name value` option; `name` is None when positional."""

    name: str | None
    value: Value
    span: Span = _span()
    name_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Call:
    """`func(arg, name=value, ...)` -- a source function or a similarity function."""

    func: str
    args: tuple[Arg, ...]
    span: Span = _span()
    func_span: Span | None = _opt_span()


# --------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class LayerName:
    """A model layer name (`_blocks.38`, `layer4`) or an alias (`early`, a study alias)."""

    text: str
    span: Span = _span()


@dataclass(frozen=True)
class LayerRange:
    """`prefix` + an inclusive integer range: `_blocks.0-38` is prefix `_blocks.`, 0..38."""

    prefix: str
    start: int
    end: int
    span: Span = _span()

    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.start, self.end + 1)]


@dataclass(frozen=True)
class LayerAll:
    """`all`: every layer the model adapter reports as dissectable."""

    span: Span = _span()


LayerItem = LayerName | LayerRange | LayerAll


# --------------------------------------------------------------------------- statements
@dataclass(frozen=True)
class StudyTitle:
    title: str
    span: Span = _span()


@dataclass(frozen=True)
class Let:
    name: str
    value: Value
    span: Span = _span()
    name_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Sample:
    """`sample N [balanced by ATTR] [seed S]` on a probe declaration."""

    n: int
    balanced_by: str | None
    seed: int | None
    span: Span = _span()
    balanced_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Decl:
    """`concepts|probe|dissector|target NAME = source(...) [sample ...]`."""

    kind: str
    name: str
    source: Call
    sample: Sample | None
    span: Span = _span()
    name_span: Span | None = _opt_span()


@dataclass(frozen=True)
class LayerAliasDef:
    """`layer NAME = item, item, ...` -- a study-level layer alias."""

    name: str
    layers: tuple[LayerItem, ...]
    span: Span = _span()
    name_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Dissect:
    """`dissect T1, T2 at layers ... by DISSECTOR on PROBE with concepts SET [using sim(...)] [option value ...]`."""

    targets: tuple[Ident, ...]
    layers: tuple[LayerItem, ...]
    dissector: Ident
    probe: Ident
    concepts: Ident
    similarity: Call | None
    options: tuple[Arg, ...]
    span: Span = _span()


@dataclass(frozen=True)
class ThresholdRule:
    """How a neuron passes: `combine` of the models' tau (`max`/`own`) or a `fixed` value, and `op`."""

    combine: str
    statistic: str
    value: float | None
    op: str
    span: Span = _span()
    combine_span: Span | None = _opt_span()
    statistic_span: Span | None = _opt_span()


@dataclass(frozen=True)
class DefaultThreshold:
    """The study-wide `threshold ... [count ...]` statement."""

    rule: ThresholdRule
    count: str | None
    span: Span = _span()
    count_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Filter:
    """`on category|subcategory|task|domain NAME`."""

    level: str
    name: str
    span: Span = _span()
    level_span: Span | None = _opt_span()
    name_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Analysis:
    """compare / learned / gained / thresholds / keywords / analyze statements.

    `verb` keeps the word the user wrote (`missed` is `learned`, `lost` is `gained`)
    so that the formatter reproduces it.  `name` is the analysis name of `analyze`.
    """

    kind: str
    models: tuple[Ident, ...]
    layers: tuple[LayerItem, ...] | None
    filter: Filter | None
    threshold: ThresholdRule | None
    count: str | None
    options: tuple[Arg, ...]
    name: str | None
    span: Span = _span()
    verb: str = ""
    name_span: Span | None = _opt_span()
    count_span: Span | None = _opt_span()


@dataclass(frozen=True)
class ShowNeuron:
    """`show neuron MODEL.LAYER[UNIT] [top N]`."""

    model: Ident
    layer: LayerItem
    unit: int
    top: int
    span: Span = _span()


@dataclass(frozen=True)
class Review:
    """`review MODEL at layers ... [on LEVEL NAME] [top N | sample N [seed S]] [labels ...] [images N]`,
    or `review MODEL.LAYER[u, v, ...]`: a review packet, one card per selected neuron.

    `units` is the explicit list (empty for a selection); `options` keeps `labels` and `images`.
    """

    model: Ident
    layers: tuple[LayerItem, ...]
    units: tuple[int, ...]
    filter: Filter | None
    top: int | None
    sample: int | None
    seed: int | None
    options: tuple[Arg, ...]
    span: Span = _span()
    size_span: Span | None = _opt_span()


@dataclass(frozen=True)
class Report:
    """`report "out" [as html, pdf] [sections a, b, ...]`."""

    out: Str
    formats: tuple[str, ...]
    sections: tuple[str, ...] | None
    span: Span = _span()
    format_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    section_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)


Statement = (
    StudyTitle | Let | Decl | LayerAliasDef | Dissect | DefaultThreshold | Analysis | ShowNeuron | Report | Review
)


@dataclass(frozen=True)
class Study:
    """A parsed study file.  Equality compares the statements only."""

    path: str = field(compare=False)
    source: str = field(compare=False, repr=False)
    statements: tuple[Statement, ...] = ()
