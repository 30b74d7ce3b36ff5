"""Semantic checks: names, kinds, layer aliases, categories and parameters.

`check(study)` is one pass over the AST that resolves every name against the
declarations of the right kind, validates every function and parameter against
`dsl/vocabulary.py` (the single vocabulary of the language, plugins' entries
included), fills defaults,
resolves `let` values, `${name}` interpolation and `env(...)`, and collects *all*
mistakes of a file as diagnostics (a user fixing a study wants the whole list,
not one error per run).  It never loads a model or opens a data file; the only
file it may read is a shipped concept table, to validate category filters.

The result, `CheckedStudy`, is what the engine's planner consumes.  Each
statement kind has its own method (`check_let`, `check_decl`, `check_dissect`,
...), dispatched by node type, so no function grows with the language.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dissect_study.dsl import ast
from dissect_study.dsl import vocabulary as R
from dissect_study.dsl.diagnostics import ERROR, WARNING, Diagnostic, suggest_hint
from dissect_study.plugins import load_plugins

CONCEPT_SET_DIR = Path(__file__).resolve().parent.parent / "concept_sets"

#: a study without a `threshold` statement (vocabulary.DEFAULT_THRESHOLD, shared with the analyses' macros)
DEFAULT_RULE = ast.ThresholdRule(
    R.DEFAULT_THRESHOLD["combine"],
    R.DEFAULT_THRESHOLD["statistic"],
    None,
    R.DEFAULT_THRESHOLD["op"],
    ast.Span("<default>", 1, 1, 1, 2),
)

_INTERP = re.compile(r"\$\{([^}]*)\}")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class UnsetEnv:
    """A parameter whose value comes from an environment variable that is not set.

    `check` passes with a warning; the engine must turn it into a clear error if the
    value is actually needed at run time."""

    var: str
    span: ast.Span

    def message(self) -> str:
        return (
            f"{self.span}: environment variable {self.var} is not set; "
            f'set it (export {self.var}=...) or give env("{self.var}", default)'
        )


@dataclass
class ResolvedDecl:
    name: str
    kind: str
    func: str
    params: dict[str, Any]
    sample: ast.Sample | None
    span: ast.Span


@dataclass
class CheckedDissect:
    targets: list[str]
    layers: tuple[ast.LayerItem, ...]
    dissector: str
    probe: str
    concepts: str
    similarity: str
    similarity_params: dict[str, Any]
    options: dict[str, Any]
    span: ast.Span


@dataclass
class CheckedAnalysis:
    index: int
    kind: str
    analysis_names: tuple[str, ...]
    models: list[str]
    layers: tuple[ast.LayerItem, ...] | None
    filter: ast.Filter | None
    threshold: ast.ThresholdRule
    count: str
    options: dict[str, Any]
    unit: int | None
    top: int | None
    text: str
    span: ast.Span


@dataclass
class CheckedReport:
    out: str | UnsetEnv
    formats: tuple[str, ...]
    sections: tuple[str, ...] | None
    span: ast.Span


@dataclass
class CheckedStudy:
    title: str
    path: str
    source: str
    sha256: str
    lets: dict[str, Any] = field(default_factory=dict)
    concepts: dict[str, ResolvedDecl] = field(default_factory=dict)
    probes: dict[str, ResolvedDecl] = field(default_factory=dict)
    dissectors: dict[str, ResolvedDecl] = field(default_factory=dict)
    targets: dict[str, ResolvedDecl] = field(default_factory=dict)
    layer_aliases: dict[str, tuple[ast.LayerItem, ...]] = field(default_factory=dict)
    dissections: list[CheckedDissect] = field(default_factory=list)
    analyses: list[CheckedAnalysis] = field(default_factory=list)
    reports: list[CheckedReport] = field(default_factory=list)
    default_threshold: ast.ThresholdRule = DEFAULT_RULE
    default_count: str = "concepts"


_KIND_WORD = {"concepts": "concept set", "probe": "probe", "dissector": "dissector", "target": "target"}
_BUCKET = {"concepts": "concepts", "probe": "probes", "dissector": "dissectors", "target": "targets"}


def _source_text(source: str, span: ast.Span) -> str:
    lines = source.splitlines(keepends=True)
    if not lines or span.line > len(lines):
        return ""
    start = sum(len(l) for l in lines[: span.line - 1]) + span.col - 1
    end = sum(len(l) for l in lines[: span.end_line - 1]) + span.end_col - 1
    return " ".join(source[start:end].split())


#: what a shipped concept set's name may look like (a file stem in concept_sets/, never a path)
_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def shipped_concept_sets() -> list[str]:
    """Names `shipped(...)` accepts: the CSV files of the package's concept_sets folder."""
    try:
        return sorted(p.stem for p in CONCEPT_SET_DIR.glob("*.csv") if _SET_NAME.fullmatch(p.stem))
    except OSError:
        return []


def _shipped_concept_table(name: str) -> dict[str, set[str]] | None:
    """level -> names from concept_sets/<name>.csv, or None when the file is absent or unreadable."""
    if name not in shipped_concept_sets():
        return None  # never a path outside the package's folder
    path = CONCEPT_SET_DIR / f"{name}.csv"
    if not path.is_file():
        return None
    out: dict[str, set[str]] = {lvl: set() for lvl in R.CATEGORY_LEVELS}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                for level, column in (("category", "category"), ("subcategory", "subcategory"), ("domain", "domain")):
                    v = (row.get(column) or "").strip()
                    if v:
                        out[level].add(v)
                for t in (row.get("tasks") or "").split(";"):
                    if t.strip():
                        out["task"].add(t.strip())
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return out


class _Checker:
    def __init__(self, study: ast.Study, env: Mapping[str, str]) -> None:
        self.study = study
        self.env = env
        self.diags: list[Diagnostic] = []
        self.lets: dict[str, Any] = {}
        self.let_spans: dict[str, ast.Span] = {}
        self.decls: dict[str, dict[str, ast.Decl]] = {k: {} for k in R.SOURCES}
        self.aliases: dict[str, ast.LayerAliasDef] = {}
        self.warned_env: set[tuple[str, int, int]] = set()
        # target -> (dissect statement, expanded layer names or None when not statically known)
        self.dissected: dict[str, tuple[ast.Dissect, set[str] | None]] = {}
        self.let_nodes: dict[str, ast.Value] = {}
        self.aliases_expanded: dict[str, tuple[ast.LayerItem, ...]] = {}
        #: aliases being expanded, outermost first (a name met again is a cycle)
        self.expanding: list[str] = []
        #: each valid dissect statement with its checked form (probe sizes are judged once all probes are)
        self.checked_dissects: list[tuple[ast.Dissect, CheckedDissect]] = []
        self.title_span: ast.Span | None = None
        self.default_stmt: ast.DefaultThreshold | None = None

    # ------------------------------------------------------------------ helpers
    def error(
        self,
        code: str,
        message: str,
        span: ast.Span,
        hint: str | None = None,
        related: list[tuple[str, ast.Span]] | None = None,
    ) -> None:
        self.diags.append(Diagnostic(ERROR, code, message, span, hint, related or []))

    def warning(self, code: str, message: str, span: ast.Span, hint: str | None = None) -> None:
        self.diags.append(Diagnostic(WARNING, code, message, span, hint, []))

    # ------------------------------------------------------------------ values
    def env_value(self, node: ast.Env) -> Any:
        if node.var in self.env:
            return self.env[node.var]
        if node.default is not None:
            return self.value(node.default)
        key = (node.var, node.span.line, node.span.col)
        if key not in self.warned_env:
            self.warned_env.add(key)
            self.warning(
                "env-unset",
                f"environment variable {node.var} is not set",
                node.var_span or node.span,
                f'`run` needs it: export {node.var}=... (or write env("{node.var}", default))',
            )
        return UnsetEnv(node.var, node.var_span or node.span)

    def interpolate(self, node: ast.Str) -> Any:
        text = node.value
        if "${" not in text:
            return text
        parts: list[str] = []
        pos = 0
        for m in _INTERP.finditer(text):
            parts.append(text[pos : m.start()])
            pos = m.end()
            name = m.group(1).strip()
            col = node.span.col + 1 + m.start()
            span = ast.Span(node.span.path, node.span.line, col, node.span.line, col + len(m.group(0)))
            if name not in self.lets:
                self.error(
                    "unknown-let",
                    f"unknown name '{name}' in ${{...}}",
                    span,
                    suggest_hint(name, self.lets) or "${name} refers to a `let` defined earlier in the study",
                )
                return None
            val = self.lets[name]
            if isinstance(val, UnsetEnv):
                return val
            if val is None:
                return None
            parts.append(str(val).lower() if isinstance(val, bool) else str(val))
        parts.append(text[pos:])
        return "".join(parts)

    def value(self, node: ast.Value) -> Any:
        if isinstance(node, ast.Str):
            return self.interpolate(node)
        if isinstance(node, (ast.Num, ast.Bool)):
            return node.value
        if isinstance(node, ast.Env):
            return self.env_value(node)
        if isinstance(node, ast.Ident):
            if node.name in self.lets:
                return self.lets[node.name]
            return node  # left for the caller to judge (a bare word, or an unknown name)
        raise TypeError(node)  # pragma: no cover

    def kind_of(self, name: str) -> str | None:
        for kind, table in self.decls.items():
            if name in table:
                return kind
        return None

    def ref(self, ident: ast.Ident, kind: str, role: str | None = None) -> str | None:
        """Resolve a reference to a declaration of `kind`; report unknown or wrong-kind names."""
        if ident.name in self.decls[kind]:
            return ident.name
        word = _KIND_WORD[kind]
        other = self.kind_of(ident.name)
        if other is not None:
            d = self.decls[other][ident.name]
            self.error(
                "wrong-kind",
                f"'{ident.name}' is a {_KIND_WORD[other]}, but {role or 'this'} must be a {word}",
                ident.span,
                suggest_hint(ident.name, self.decls[kind]) or f"declare a {word} with `{kind} NAME = ...`",
                [("declared", d.name_span or d.span)],
            )
        else:
            self.error(
                "unknown-name",
                f"unknown {word} '{ident.name}'",
                ident.span,
                suggest_hint(ident.name, self.decls[kind]) or f"declare it first: `{kind} {ident.name} = ...`",
            )
        return None

    # ------------------------------------------------------------------ parameters
    def coerce(self, param: R.Param, node: ast.Value, where: str) -> tuple[bool, Any]:
        """Check one argument against its vocabulary entry; returns (ok, python value)."""
        t = param.type
        if t in ("ref", "str_or_ref") and isinstance(node, ast.Ident) and node.name not in self.lets:
            if param.ref_kind and (t == "ref" or self.kind_of(node.name)):
                name = self.ref(node, param.ref_kind, f"{where} parameter '{param.name}'")
                return name is not None, name
            if t == "str_or_ref":
                return True, node.name
        if t == "ref":
            self.error(
                "expected-name",
                f"{where} parameter '{param.name}' takes the name of a {_KIND_WORD.get(param.ref_kind or '', 'declaration')}, without quotes",
                node.span,
                None,
            )
            return False, None
        val = self.value(node)
        if isinstance(val, ast.Ident):
            if not (param.choices and t == "str"):
                self.bad_bare_word(param, val)
                return False, None
            val = val.name  # bare word such as `split=test`
        if val is None:
            return False, None
        if isinstance(val, UnsetEnv):
            return True, val
        ok, val = self.convert(param, node, val, where)
        if not ok:
            return False, None
        return self.check_range(param, node, val, where)

    def bad_bare_word(self, param: R.Param, val: ast.Ident) -> None:
        """A bare name where a value belongs: a declaration's name, or an unknown `let`."""
        other = self.kind_of(val.name)
        if other:
            self.error(
                "wrong-kind",
                f"'{val.name}' is a {_KIND_WORD[other]}, not a value for '{param.name}'",
                val.span,
                "use a string in double quotes, or a `let` name",
            )
        else:
            self.error(
                "unknown-let",
                f"unknown name '{val.name}'",
                val.span,
                suggest_hint(val.name, self.lets) or "a bare name refers to a `let`; write a string in double quotes",
            )

    def from_env(self, node: ast.Value, val: Any) -> bool:
        """Whether `val` came from the environment (directly or through a `let`): text may then be a number."""
        if isinstance(node, ast.Env):
            return True
        return (
            isinstance(node, ast.Ident) and isinstance(val, str) and isinstance(self.let_nodes.get(node.name), ast.Env)
        )

    def convert(self, param: R.Param, node: ast.Value, val: Any, where: str) -> tuple[bool, Any]:
        """Check `val` against the parameter's type; environment text is converted to int/float/bool."""
        t = param.type
        if t in ("str", "path", "layer", "str_or_ref"):
            if isinstance(val, str):
                return True, val
            self.error(
                "type",
                f"{where} parameter '{param.name}' takes a string, not {_pytype(val)}",
                node.span,
                f'write {param.name}="{val}"' if not isinstance(val, bool) else None,
            )
            return False, None
        convert = _CONVERTERS.get(t)
        if convert is None:
            return True, val
        text = val.strip() if isinstance(val, str) and self.from_env(node, val) else None
        ok, out = convert(val, text)
        if not ok:
            self.error("type", f"{where} parameter '{param.name}' takes {_TYPE_WORD[t]}, not {_pytype(val)}", node.span)
            return False, None
        return True, out

    def check_range(self, param: R.Param, node: ast.Value, val: Any, where: str) -> tuple[bool, Any]:
        """Choices and numeric bounds of a parameter."""
        if param.choices is not None and val not in param.choices:
            self.error(
                "choice",
                f"{where} parameter '{param.name}' cannot be '{val}'",
                node.span,
                suggest_hint(str(val), param.choices) or "choose one of: " + ", ".join(param.choices),
            )
            return False, None
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            if param.min is not None and (val <= param.min if param.min_exclusive else val < param.min):
                op = ">" if param.min_exclusive else ">="
                self.error(
                    "bounds",
                    f"{where} parameter '{param.name}' must be {op} {_fmt_num(param.min)}, not {_fmt_num(val)}",
                    node.span,
                )
                return False, None
            if param.max is not None and val > param.max:
                self.error(
                    "bounds",
                    f"{where} parameter '{param.name}' must be <= {_fmt_num(param.max)}, not {_fmt_num(val)}",
                    node.span,
                )
                return False, None
        return True, val

    def call_params(self, fn: R.Function, call: ast.Call, where: str) -> dict[str, Any]:
        params: dict[str, Any] = {}
        given: dict[str, ast.Span] = {}
        refs: list[str] = []
        positional = list(fn.positional)
        for arg in call.args:
            if arg.name is None and fn.variadic_ref_kind:
                self.variadic_ref(fn.variadic_ref_kind, arg, where, refs)
                continue
            param = self.param_for(fn, arg, positional, where)
            if param is None:
                continue
            if param.name in given:
                self.error(
                    "duplicate-param",
                    f"{where} parameter '{param.name}' is given twice",
                    arg.span,
                    None,
                    [("first given", given[param.name])],
                )
                continue
            given[param.name] = arg.span
            ok, val = self.coerce(param, arg.value, where)
            if ok:
                params[param.name] = val
        self.fill_defaults(fn, call, given, params, where)
        if fn.variadic_ref_kind:
            params["refs"] = refs
            if not refs and not any(a.name is None for a in call.args):
                self.error(
                    "missing-param",
                    f"{where} needs at least one {_KIND_WORD[fn.variadic_ref_kind]}",
                    call.func_span or call.span,
                    f"for example {fn.name}(a, b)",
                )
        return params

    def variadic_ref(self, kind: str, arg: ast.Arg, where: str, refs: list[str]) -> None:
        """One positional name of a variadic function such as `union(a, b, c)`."""
        if isinstance(arg.value, ast.Ident):
            name = self.ref(arg.value, kind, where)
            if name:
                refs.append(name)
        else:
            self.error("expected-name", f"{where} takes the names of {_KIND_WORD[kind]}s, without quotes", arg.span)

    def param_for(self, fn: R.Function, arg: ast.Arg, positional: list[str], where: str) -> R.Param | None:
        """The parameter an argument sets: the next positional slot, or its name (consuming that slot)."""
        if arg.name is None:
            if not positional:
                self.error(
                    "too-many-positional",
                    f"{where} takes no more positional arguments",
                    arg.span,
                    f"name it: {fn.params[0].name}=..." if fn.params else f"{fn.name}() takes no arguments",
                )
                return None
            return fn.param(positional.pop(0))
        param = fn.param(arg.name)
        if param is None:
            self.error(
                "unknown-param",
                f"{where} has no parameter '{arg.name}'",
                arg.name_span or arg.span,
                suggest_hint(arg.name, fn.param_names)
                or (
                    "parameters: " + ", ".join(p.name for p in fn.params)
                    if fn.params
                    else f"{fn.name}() takes no parameters"
                ),
            )
            return None
        if param.name in positional:
            positional.remove(param.name)
        return param

    def fill_defaults(
        self, fn: R.Function, call: ast.Call, given: dict[str, ast.Span], params: dict[str, Any], where: str
    ) -> None:
        """Defaults for parameters not given; an error for each required one missing."""
        for p in fn.params:
            if p.name in given:
                continue
            if p.required:
                self.error(
                    "missing-param",
                    f"{where} needs parameter '{p.name}'",
                    call.func_span or call.span,
                    f"add {p.name}=... ({p.doc})" if p.doc else f"add {p.name}=...",
                )
            else:
                params[p.name] = p.default

    # ------------------------------------------------------------------ layers
    def expand_layers(self, items: Iterable[ast.LayerItem], for_alias: str | None = None) -> tuple[ast.LayerItem, ...]:
        out: list[ast.LayerItem] = []
        for item in items:
            if isinstance(item, ast.LayerName) and item.text in self.aliases and item.text != for_alias:
                out.extend(self.alias_items(item.text, item))
                continue
            if isinstance(item, ast.LayerName) and "." not in item.text and item.text not in R.BUILTIN_LAYER_ALIASES:
                pool = list(self.aliases) + list(R.BUILTIN_LAYER_ALIASES)
                hint = suggest_hint(item.text, pool, cutoff=0.75)
                if hint:
                    self.error("unknown-alias", f"unknown layer alias '{item.text}'", item.span, hint)
                    continue
            if isinstance(item, ast.LayerRange) and item.start > item.end:
                self.error(
                    "range",
                    f"layer range '{item.prefix}{item.start}-{item.end}' is empty: it starts after it ends",
                    item.span,
                    f"write {item.prefix}{item.end}-{item.start}",
                )
                continue
            out.append(item)
        return tuple(out)

    def alias_items(self, name: str, use: ast.LayerName | None = None) -> tuple[ast.LayerItem, ...]:
        """The layers study alias `name` stands for, expanded on first use.

        Why on first use: like every declaration, an alias may be named before the line
        that defines it (`layer a = b` above `layer b = ...`); a cycle is an error.
        """
        if name in self.aliases_expanded:
            return self.aliases_expanded[name]
        if name in self.expanding:
            chain = " -> ".join([*self.expanding[self.expanding.index(name) :], name])
            d = self.aliases[name]
            self.error(
                "alias-cycle",
                f"layer aliases form a cycle: {chain}",
                use.span if use else d.span,
                "an alias must end in layer names; remove one of the references",
                [("defined", d.name_span or d.span)],
            )
            return ()
        self.expanding.append(name)
        try:
            items = self.expand_layers(self.aliases[name].layers, for_alias=name)
        finally:
            self.expanding.pop()
        self.aliases_expanded[name] = items
        return items

    @staticmethod
    def layer_names(items: Iterable[ast.LayerItem]) -> set[str] | None:
        """Concrete layer names, or None when the set depends on the model (all, early/middle/last)."""
        names: set[str] = set()
        for item in items:
            if isinstance(item, ast.LayerAll):
                return None
            if isinstance(item, ast.LayerRange):
                names.update(item.names())
            elif item.text in R.BUILTIN_LAYER_ALIASES:
                return None
            else:
                names.add(item.text)
        return names

    def check_analysis_layers(self, model: str, items: tuple[ast.LayerItem, ...]) -> None:
        if model not in self.dissected:
            return
        stmt, known = self.dissected[model]
        if known is None:
            return
        for item in items:
            if isinstance(item, ast.LayerAll) or (
                isinstance(item, ast.LayerName) and item.text in R.BUILTIN_LAYER_ALIASES
            ):
                continue
            wanted = item.names() if isinstance(item, ast.LayerRange) else [item.text]
            missing = [n for n in wanted if n not in known]
            if missing:
                self.error(
                    "layer-not-dissected",
                    f"layer '{missing[0]}' of {model} is not dissected",
                    item.span,
                    suggest_hint(missing[0], known, cutoff=0.8) or "dissected layers: " + ", ".join(sorted(known)[:8]),
                    [(f"{model} is dissected", stmt.span)],
                )

    # ------------------------------------------------------------------ thresholds
    def check_rule(self, rule: ast.ThresholdRule) -> bool:
        ok = True
        if rule.combine not in R.THRESHOLD_COMBINES:
            ok = False
            self.error(
                "threshold-combine",
                f"unknown threshold combination '{rule.combine}'",
                rule.combine_span or rule.span,
                suggest_hint(rule.combine, ("max", "own")) or "use max (of the compared models' tau), own, or a number",
            )
        if rule.combine != "fixed" and rule.statistic not in R.THRESHOLD_STATISTICS:
            ok = False
            pool = list(R.THRESHOLD_STATISTICS) + (["max", "own"] if rule.combine_span is None else [])
            self.error(
                "threshold-statistic",
                f"unknown threshold statistic '{rule.statistic}'",
                rule.statistic_span or rule.span,
                suggest_hint(rule.statistic, pool) or "statistics: " + ", ".join(R.THRESHOLD_STATISTICS),
            )
        return ok

    def check_count(self, count: str | None, span: ast.Span | None) -> str | None:
        if count is None:
            return None
        if count not in R.COUNT_UNITS:
            self.error(
                "count-unit",
                f"cannot count '{count}'",
                span or ast.Span(self.study.path, 1, 1, 1, 2),
                suggest_hint(count, R.COUNT_UNITS) or "count concepts or neurons",
            )
            return None
        return count

    # ------------------------------------------------------------------ main pass
    def run(self) -> CheckedStudy:
        st = self.study
        out = CheckedStudy(
            title="",
            path=st.path,
            source=st.source,
            sha256=hashlib.sha256(st.source.encode("utf-8", "surrogatepass")).hexdigest(),
        )
        # Pass 1: declarations, so references may point forward.
        for s in st.statements:
            if isinstance(s, ast.Decl):
                self.declare(s)
            elif isinstance(s, ast.LayerAliasDef):
                self.declare_alias(s)
        # Pass 2: statements in order, one method per statement kind.
        handlers: dict[type, Callable[[Any, CheckedStudy], None]] = {
            ast.StudyTitle: self.check_title,
            ast.Let: self.check_let,
            ast.Decl: self.check_decl,
            ast.LayerAliasDef: self.check_alias,
            ast.Dissect: self.check_dissect,
            ast.DefaultThreshold: self.check_default_threshold,
        }
        for s in st.statements:
            handler = handlers.get(type(s))
            if handler is not None:
                handler(s, out)
        self.check_union_cycles()
        self.check_probe_sizes(out)
        # Pass 3: analyses and reports, which refer to what the dissect statements cover.
        self.check_outputs(out)
        if not any(isinstance(s, ast.Dissect) for s in st.statements):
            self.warning(
                "nothing-to-do",
                "this study has no dissect statement",
                ast.Span(st.path, 1, 1, 1, 2),
                "add `dissect TARGET at layers ... by DISSECTOR on PROBE with concepts SET`",
            )
        out.lets = dict(self.lets)
        return out

    def check_outputs(self, out: CheckedStudy) -> None:
        st = self.study
        index = 0
        for s in st.statements:
            if isinstance(s, (ast.Analysis, ast.ShowNeuron)):
                checked = self.check_analysis(s, index, out)
                index += 1
                if checked is not None:
                    out.analyses.append(checked)
            elif isinstance(s, ast.Review):
                from dissect_study.dsl.review import check_review

                reviewed = check_review(self, s, index, out, _source_text(st.source, s.span))
                index += 1
                if reviewed is not None:
                    out.analyses.append(reviewed)
            elif isinstance(s, ast.Report):
                out.reports.append(self.check_report(s))

    # ------------------------------------------------------------------ pass 1: names
    def declare(self, s: ast.Decl) -> None:
        table = self.decls[s.kind]
        if s.name in table:
            first = table[s.name]
            self.error(
                "duplicate",
                f"{_KIND_WORD[s.kind]} '{s.name}' is declared twice",
                s.name_span or s.span,
                "rename one of them",
                [("earlier declaration", first.name_span or first.span)],
            )
        else:
            table[s.name] = s

    def declare_alias(self, s: ast.LayerAliasDef) -> None:
        if s.name in self.aliases:
            first = self.aliases[s.name]
            self.error(
                "duplicate",
                f"layer alias '{s.name}' is defined twice",
                s.name_span or s.span,
                "rename one of them",
                [("earlier declaration", first.name_span or first.span)],
            )
        elif s.name in R.BUILTIN_LAYER_ALIASES:
            self.error(
                "builtin-alias",
                f"'{s.name}' is a built-in layer alias and cannot be redefined",
                s.name_span or s.span,
                "choose another name; early/middle/last are resolved per model by the engine",
            )
        else:
            self.aliases[s.name] = s

    # ------------------------------------------------------------------ pass 2: statements
    def check_title(self, s: ast.StudyTitle, out: CheckedStudy) -> None:
        if self.title_span is not None:
            self.error(
                "duplicate",
                "the study title is given twice",
                s.span,
                'keep one `study "..."` line',
                [("earlier title", self.title_span)],
            )
        else:
            self.title_span, out.title = s.span, s.title

    def check_let(self, s: ast.Let, out: CheckedStudy) -> None:
        if s.name in self.let_spans:
            self.error(
                "duplicate",
                f"'{s.name}' is defined twice",
                s.name_span or s.span,
                "rename one of them",
                [("earlier definition", self.let_spans[s.name])],
            )
            return
        val = self.value(s.value)
        if isinstance(val, ast.Ident):
            self.error(
                "unknown-let",
                f"unknown name '{val.name}'",
                val.span,
                suggest_hint(val.name, self.lets)
                or "a bare name refers to an earlier `let`; write a string in double quotes",
            )
            val = None
        self.lets[s.name] = val
        self.let_nodes[s.name] = s.value
        self.let_spans[s.name] = s.name_span or s.span

    def check_alias(self, s: ast.LayerAliasDef, out: CheckedStudy) -> None:
        if self.aliases.get(s.name) is s:  # a duplicate was reported in pass 1
            out.layer_aliases[s.name] = self.alias_items(s.name)

    def check_default_threshold(self, s: ast.DefaultThreshold, out: CheckedStudy) -> None:
        if self.default_stmt is not None:
            self.error(
                "duplicate",
                "the study threshold is given twice",
                s.span,
                "keep one study-wide `threshold` statement; give others per analysis",
                [("earlier threshold", self.default_stmt.span)],
            )
            return
        self.default_stmt = s
        if self.check_rule(s.rule):
            out.default_threshold = s.rule
        out.default_count = self.check_count(s.count, s.count_span) or "concepts"

    def check_decl(self, s: ast.Decl, out: CheckedStudy) -> None:
        if self.decls[s.kind].get(s.name) is not s:  # a duplicate was reported in pass 1
            return
        fn = R.lookup_function(s.kind, s.source.func)
        where = f"{s.source.func}()"
        if fn is None:
            self.error(
                "unknown-function",
                f"unknown {_KIND_WORD[s.kind]} source '{s.source.func}'",
                s.source.func_span or s.source.span,
                suggest_hint(s.source.func, R.suggestion_pool(s.kind))
                or f"{s.kind} sources: " + ", ".join(R.SOURCES[s.kind]),
            )
            return
        params = self.call_params(fn, s.source, where)
        if s.kind == "concepts" and fn.name == "shipped":
            self.check_shipped_name(s, params)
        if fn.variadic_ref_kind == "probe" and s.name in params.get("refs", []):
            self.error("self-reference", f"probe '{s.name}' cannot include itself", s.source.span)
        if s.sample is not None and s.kind != "probe":
            self.error(
                "sample-not-probe",
                f"only probes can be sampled, not a {_KIND_WORD[s.kind]}",
                s.sample.span,
                "move `sample ...` to a probe declaration",
            )
        getattr(out, _BUCKET[s.kind])[s.name] = ResolvedDecl(s.name, s.kind, fn.name, params, s.sample, s.span)

    def probe_size(
        self, out: CheckedStudy, name: str, visiting: frozenset[str] = frozenset()
    ) -> tuple[int, bool] | None:
        """(images, exact) of probe `name` when the study alone fixes it, else None.

        phantom(n) has n images; `sample N` at most N (exactly min(N, size) when the size is
        known); a union the sum of its parts.  Files are never opened: other sources are None.
        """
        rd = out.probes.get(name)
        if rd is None or name in visiting:
            return None
        size: tuple[int, bool] | None = None
        if rd.func == "phantom" and isinstance(rd.params.get("n"), int):
            size = (rd.params["n"], True)
        elif rd.func == "union":
            parts = [self.probe_size(out, r, visiting | {name}) for r in rd.params.get("refs") or []]
            if parts and all(p is not None for p in parts):
                size = (sum(p[0] for p in parts if p), all(p[1] for p in parts if p))
        if rd.sample is not None:
            size = (rd.sample.n, False) if size is None else (min(size[0], rd.sample.n), size[1])
        return size

    def check_probe_sizes(self, out: CheckedStudy) -> None:
        """A probe the study sizes (phantom(n), sample N) must hold enough images for its dissections.

        top_k above the probe size is not one of them: the engine uses top_k = N and says so
        (docs/LANGUAGE.md), which is how the paper ran Z = N = 84 on its EMBED subset.
        """
        for node, d in self.checked_dissects:
            size = self.probe_size(out, d.probe)
            if size is None:
                continue
            n, exact = size
            images = f"{n} image{'s' * (n != 1)}" if exact else f"at most {n} image{'s' * (n != 1)}"
            need, why = R.min_probe_images(d.similarity, d.similarity_params)
            if n < need:
                where = node.similarity if node.similarity is not None and need > R.MIN_PROBE_IMAGES else node.probe
                fix = f" or top_fraction >= {1 / n:.4g}" if d.similarity == "rank_reorder" and n > 0 else ""
                self.error(
                    "probe-too-small",
                    f"probe '{d.probe}' has {images}; this dissection needs at least {need}",
                    where.span,
                    f"{why}; use a larger probe (phantom(n=...), sample N){fix}",
                )

    def check_shipped_name(self, s: ast.Decl, params: dict[str, Any]) -> None:
        """`shipped(NAME)` names a set in the package's concept_sets folder: a name, never a path."""
        name = params.get("name")
        if not isinstance(name, str):
            return  # unset environment variable (warned) or an error already reported
        shipped = shipped_concept_sets()
        if name in shipped:
            return
        arg = next((a for a in s.source.args if a.name in (None, "name")), None)
        span = arg.value.span if arg is not None else s.source.span
        listing = "shipped sets: " + (", ".join(shipped) or "none")
        own = 'for your own file write csv("..."), txt("..."), json("...") or xlsx("...")'
        if not _SET_NAME.fullmatch(name):
            self.error(
                "shipped-name",
                f'shipped() takes the name of a shipped concept set, not a path: "{name}"',
                span,
                f"{listing}; {own}",
            )
        else:
            self.error(
                "unknown-shipped",
                f"no shipped concept set '{name}'",
                span,
                suggest_hint(name, shipped) or f"{listing}; {own}",
            )

    def check_union_cycles(self) -> None:
        probes = self.decls["probe"]
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2 or name not in probes:
                return
            if state.get(name) == 1:
                d = probes[trail[0]]
                self.error("cycle", "probe unions form a cycle: " + " -> ".join(trail + [name]), d.source.span)
                return
            state[name] = 1
            d = probes[name]
            if d.source.func == "union":
                for a in d.source.args:
                    if isinstance(a.value, ast.Ident) and a.value.name != name:
                        visit(a.value.name, trail + [name])
            state[name] = 2

        for n in probes:
            visit(n, [])

    def check_dissect(self, s: ast.Dissect, out: CheckedStudy) -> None:
        targets, ok = self.dissect_targets(s)
        layers = self.expand_layers(s.layers)
        dissector = self.ref(s.dissector, "dissector", "the `by` part")
        probe = self.ref(s.probe, "probe", "the `on` part")
        concepts = self.ref(s.concepts, "concepts", "the `with concepts` part")
        similarity = self.dissect_similarity(s.similarity)
        options = self.dissect_options(s.options)
        known = self.layer_names(layers)
        for t in targets:
            self.dissected[t] = (s, known)
        if ok and similarity is not None and dissector and probe and concepts and targets:
            sim_name, sim_params = similarity
            checked = CheckedDissect(targets, layers, dissector, probe, concepts, sim_name, sim_params, options, s.span)
            out.dissections.append(checked)
            self.checked_dissects.append((s, checked))

    def dissect_targets(self, s: ast.Dissect) -> tuple[list[str], bool]:
        """The targets of a dissect statement, each dissected once; False when one is unusable."""
        ok = True
        targets: list[str] = []
        for t in s.targets:
            name = self.ref(t, "target", "a dissect target")
            if name is None:
                ok = False
                continue
            if name in self.dissected:
                first = self.dissected[name][0]
                self.error(
                    "dissected-twice",
                    f"target '{name}' is dissected twice",
                    t.span,
                    "dissect each target once; list all its layers in one statement",
                    [("first dissected", first.span)],
                )
                ok = False
                continue
            if name in targets:
                self.error("duplicate", f"target '{name}' is listed twice", t.span)
                continue
            targets.append(name)
        return targets, ok

    def dissect_similarity(self, call: ast.Call | None) -> tuple[str, dict[str, Any]] | None:
        """(canonical name, checked parameters) of the `using` clause; SoftWPMI with defaults when absent."""
        if call is None:
            return "soft_wpmi", {p.name: p.default for p in R.SIMILARITIES["soft_wpmi"].params}
        fn = R.lookup_similarity(call.func)
        if fn is None:
            self.error(
                "unknown-similarity",
                f"unknown similarity function '{call.func}'",
                call.func_span or call.span,
                suggest_hint(call.func, R.suggestion_pool("similarity"))
                or "similarities: " + ", ".join(R.SIMILARITIES),
            )
            return None
        return fn.name, self.call_params(fn, call, f"{fn.name}()")

    def dissect_options(self, given_options: tuple[ast.Arg, ...]) -> dict[str, Any]:
        """The `option value` pairs of a dissect statement, checked, with every default filled in."""
        options: dict[str, Any] = {}
        given: dict[str, ast.Span] = {}
        for opt in given_options:
            assert opt.name is not None
            param = R.DISSECT_OPTIONS.get(opt.name)
            if param is None:
                self.error(
                    "unknown-option",
                    f"unknown dissect option '{opt.name}'",
                    opt.name_span or opt.span,
                    suggest_hint(opt.name, R.DISSECT_OPTIONS) or "options: " + ", ".join(R.DISSECT_OPTIONS),
                )
                continue
            if opt.name in given:
                self.error(
                    "duplicate-param",
                    f"dissect option '{opt.name}' is given twice",
                    opt.span,
                    None,
                    [("first given", given[opt.name])],
                )
                continue
            given[opt.name] = opt.span
            good, val = self.coerce(param, opt.value, "dissect")
            if good:
                options[opt.name] = val
        for name, p in R.DISSECT_OPTIONS.items():
            options.setdefault(name, p.default)
        return options

    def check_analysis(self, s: ast.Analysis | ast.ShowNeuron, index: int, out: CheckedStudy) -> CheckedAnalysis | None:
        before = sum(1 for d in self.diags if d.is_error)
        models = self.analysis_models((s.model,) if isinstance(s, ast.ShowNeuron) else s.models)
        text = _source_text(self.study.source, s.span)
        if isinstance(s, ast.ShowNeuron):
            return self.check_show_neuron(s, index, out, models, text, before)
        kind = s.kind
        names = self.analysis_names(s)
        if kind == "gained" and len(models) == 2 and models[0] == models[1]:
            self.error("same-model", "gained/lost compares two different models", s.models[1].span)
        if kind in ("compare", "gained") and len(models) >= 2:
            self.check_comparable(s, models)
        layers = None
        if s.layers is not None:
            layers = self.expand_layers(s.layers)
            for m in models:
                self.check_analysis_layers(m, layers)
        filt = s.filter
        if filt is not None:
            filt = self.check_filter(filt, models)
        rule = self.analysis_rule(s, out.default_threshold)
        count = self.check_count(s.count, s.count_span) or out.default_count
        options = self.analysis_options(s)
        if sum(1 for d in self.diags if d.is_error) > before:
            return None
        return CheckedAnalysis(
            index,
            kind,
            names,
            models,
            layers,
            filt,
            rule,
            count,
            options,
            None,
            options.get("top") if kind == "keywords" else None,
            text,
            s.span,
        )

    def analysis_models(self, idents: Iterable[ast.Ident]) -> list[str]:
        """The dissected models an analysis names, each once."""
        models: list[str] = []
        for m in idents:
            name = self.ref(m, "target", "a model")
            if name is None:
                continue
            if name in models:
                self.error("duplicate", f"model '{name}' is listed twice", m.span)
                continue
            if name not in self.dissected:
                self.error(
                    "not-dissected",
                    f"model '{name}' is never dissected",
                    m.span,
                    f"add it to a dissect statement: `dissect {name} at layers ... by ...`",
                )
                continue
            models.append(name)
        return models

    def check_show_neuron(
        self, s: ast.ShowNeuron, index: int, out: CheckedStudy, models: list[str], text: str, before: int
    ) -> CheckedAnalysis | None:
        layers = self.expand_layers((s.layer,))
        if len(layers) != 1 or isinstance(layers[0], (ast.LayerRange, ast.LayerAll)):
            self.error(
                "neuron-layer",
                "a neuron look-up needs exactly one layer",
                s.layer.span,
                "name one layer or an alias of one layer, e.g. M.last[242]",
            )
        for m in models:
            self.check_analysis_layers(m, layers)
        if sum(1 for d in self.diags if d.is_error) > before:
            return None
        return CheckedAnalysis(
            index,
            "neuron",
            R.statement_analyses("neuron"),
            models,
            layers,
            None,
            out.default_threshold,
            out.default_count,
            {"top": s.top},
            s.unit,
            s.top,
            text,
            s.span,
        )

    def analysis_names(self, s: ast.Analysis) -> tuple[str, ...]:
        """The analyses a statement runs: its kind's (vocabulary.ANALYSES specs), or `analyze NAME`'s one."""
        if s.kind != "analyze":
            return R.statement_analyses(s.kind)
        assert s.name is not None
        if s.name not in R.ANALYSES:
            self.error(
                "unknown-analysis",
                f"unknown analysis '{s.name}'",
                s.name_span or s.span,
                suggest_hint(s.name, R.ANALYSES) or "analyses: " + ", ".join(R.ANALYSES),
            )
            return ()
        return (s.name,)

    def check_comparable(self, s: ast.Analysis, models: list[str]) -> None:
        """Compared models must share the concept set and the probe (concepts are compared by id)."""
        first = self.dissected[models[0]][0]
        for m in models[1:]:
            other = self.dissected[m][0]
            for part, word in (("concepts", "concept set"), ("probe", "probe")):
                a, b = getattr(first, part).name, getattr(other, part).name
                if a != b:
                    self.error(
                        "incomparable",
                        f"{models[0]} and {m} are dissected with different {word}s ('{a}' and '{b}')",
                        next(i.span for i in s.models if i.name == m),
                        f"dissect the compared models with the same {word}",
                        [(f"{models[0]} is dissected", first.span), (f"{m} is dissected", other.span)],
                    )

    def analysis_rule(self, s: ast.Analysis, default: ast.ThresholdRule) -> ast.ThresholdRule:
        if s.threshold is None:
            return default
        if s.threshold.span.line > s.span.line and s.threshold.span.col == 1:
            # The language is newline-insensitive: a `threshold` line right after an analysis is that
            # analysis's clause, which is rarely what a line of its own at column 1 means.
            self.warning(
                "threshold-attached",
                f"this threshold applies to the {s.verb or s.kind} statement above, not to the whole study",
                s.threshold.span,
                "to set the study default, move the `threshold` statement before the "
                "analyses; to keep it here, indent it",
            )
        return s.threshold if self.check_rule(s.threshold) else default

    def analysis_options(self, s: ast.Analysis) -> dict[str, Any]:
        """The statement's options, validated and completed with each option's one default.

        Which options a statement takes and their defaults are its analyses' specs
        (vocabulary.ANALYSES); the analyses' macros take the same defaults.
        """
        return self.check_options(s.verb or s.kind, R.statement_options(s.kind, s.name), s.options)

    def check_options(self, where: str, allowed: Mapping[str, Any], given: Sequence[ast.Arg]) -> dict[str, Any]:
        """Options `given` to a statement `where`, checked against `allowed` and completed with defaults."""
        options: dict[str, Any] = {}
        seen: dict[str, ast.Span] = {}
        for opt in given:
            assert opt.name is not None
            param = allowed.get(opt.name)
            if param is None:
                self.error(
                    "unknown-option",
                    f"{where} has no option '{opt.name}'",
                    opt.name_span or opt.span,
                    suggest_hint(opt.name, allowed)
                    or ("options: " + ", ".join(allowed) if allowed else f"{where} takes no options"),
                )
                continue
            if opt.name in seen:
                self.error(
                    "duplicate-param",
                    f"option '{opt.name}' is given twice",
                    opt.span,
                    None,
                    [("first given", seen[opt.name])],
                )
                continue
            seen[opt.name] = opt.span
            good, val = self.coerce(param, opt.value, where)
            if good:
                options[opt.name] = val
        for name, p in allowed.items():
            options.setdefault(name, p.default)
        return options

    def check_filter(self, f: ast.Filter, models: list[str]) -> ast.Filter | None:
        if f.level not in R.CATEGORY_LEVELS:
            self.error(
                "filter-level",
                f"cannot filter on '{f.level}'",
                f.level_span or f.span,
                suggest_hint(f.level, R.CATEGORY_LEVELS) or "filter on category, subcategory, task or domain",
            )
            return None
        if not models:
            return f
        dissect = self.dissected[models[0]][0]
        cdecl = self.decls["concepts"].get(dissect.concepts.name)
        if cdecl is None or cdecl.source.func != "shipped" or not cdecl.source.args:
            return f  # a user's file, possibly absent at check time: any name is accepted
        arg = cdecl.source.args[0].value
        if not isinstance(arg, ast.Str):
            return f
        table = _shipped_concept_table(arg.value)
        if table is None:
            return f
        names = table[f.level]
        exact = {n.lower(): n for n in names}
        if f.name.lower() in exact:
            return ast.Filter(f.level, exact[f.name.lower()], f.span, f.level_span, f.name_span)
        elsewhere = [lvl for lvl in R.CATEGORY_LEVELS if f.name.lower() in {n.lower() for n in table[lvl]}]
        if len(elsewhere) == 1:
            # `on category Calcification` where Calcification is a task: say so, and mean what the user meant.
            level = elsewhere[0]
            canonical = {n.lower(): n for n in table[level]}[f.name.lower()]
            self.warning(
                "filter-level-resolved",
                f"'{f.name}' is a {level}, not a {f.level}, in concept set '{arg.value}'",
                f.name_span or f.span,
                f"filtering on {level} '{canonical}'; write `on {level} {canonical}` to be explicit",
            )
            return ast.Filter(level, canonical, f.span, f.level_span, f.name_span)
        hint = suggest_hint(f.name, names)
        if elsewhere:
            hint = f"'{f.name}' is a {' and a '.join(elsewhere)} of concept set '{arg.value}': write `on {elsewhere[0]} {f.name}`"
        self.error(
            "unknown-category",
            f"concept set '{arg.value}' has no {f.level} '{f.name}'",
            f.name_span or f.span,
            hint or f"{f.level} names: " + ", ".join(sorted(names)[:10]),
        )
        return None

    def _check_listed(
        self,
        names: tuple[str, ...],
        spans: tuple[ast.Span, ...],
        fallback: ast.Span,
        allowed: tuple[str, ...],
        code: str,
        what: str,
    ) -> None:
        """Each of `names` must be one of `allowed`, listed once (report formats, report sections)."""
        seen: set[str] = set()
        for i, name in enumerate(names):
            span = spans[i] if i < len(spans) else fallback
            if name not in allowed:
                self.error(
                    code,
                    f"unknown report {what} '{name}'",
                    span,
                    suggest_hint(name, allowed) or f"{what}s: " + ", ".join(allowed),
                )
            elif name in seen:
                self.error("duplicate", f"{what} '{name}' is listed twice", span)
            seen.add(name)

    def check_report(self, s: ast.Report) -> CheckedReport:
        out = self.interpolate(s.out)
        self._check_listed(s.formats, s.format_spans, s.span, R.REPORT_FORMATS, "report-format", "format")
        if s.sections:
            self._check_listed(s.sections, s.section_spans, s.span, R.REPORT_SECTIONS, "report-section", "section")
        return CheckedReport(out if out is not None else s.out.value, s.formats, s.sections, s.span)


def _to_int(val: Any, env_text: str | None) -> tuple[bool, Any]:
    if env_text is not None and re.fullmatch(r"[+-]?\d+", env_text):
        val = int(env_text)
    return isinstance(val, int) and not isinstance(val, bool), val


def _to_float(val: Any, env_text: str | None) -> tuple[bool, Any]:
    if env_text is not None:
        try:
            val = float(env_text)
        except ValueError:
            pass
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        return False, val
    return True, float(val)


def _to_bool(val: Any, env_text: str | None) -> tuple[bool, Any]:
    if env_text is not None and env_text.lower() in ("1", "0", "true", "false", "yes", "no"):
        val = env_text.lower() in ("1", "true", "yes")
    return isinstance(val, bool), val


#: parameter type -> (value, stripped text when it came from the environment) -> (ok, value)
_CONVERTERS: dict[str, Callable[[Any, str | None], tuple[bool, Any]]] = {
    "int": _to_int,
    "float": _to_float,
    "bool": _to_bool,
}
_TYPE_WORD = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def _pytype(val: Any) -> str:
    if isinstance(val, bool):
        return "true/false"
    if isinstance(val, (int, float)):
        return f"the number {_fmt_num(val)}"
    if isinstance(val, str):
        return f'the string "{val}"'
    return type(val).__name__


def _fmt_num(v: float | int) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def check(study: ast.Study, env: Mapping[str, str] | None = None) -> tuple[CheckedStudy | None, list[Diagnostic]]:
    """Validate a parsed study; returns (CheckedStudy or None when there are errors, all diagnostics).

    Plugins (the `dissect_study.plugins` entry points) are loaded first, so names
    they add to the vocabulary are known.
    """
    load_plugins()
    checker = _Checker(study, os.environ if env is None else env)
    result = checker.run()
    diags = sorted(checker.diags, key=lambda d: (d.span.line, d.span.col))
    if any(d.is_error for d in diags):
        return None, diags
    return result, diags
