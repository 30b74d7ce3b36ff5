"""The report view model: one JSON-serialisable tree built from a stored run.

Why a view model (great_expectations' render layer): every number a
reader sees is chosen here, from the DuckDB store, once; the Jinja templates
only lay it out, and the HTML and the PDF are rendered from the same HTML, so
they can never disagree.  The tree is plain dataclasses (`to_dict()` for
snapshots and tests).

Sections follow `registry.REPORT_SECTIONS`.  An analysis section appears only
when its table holds rows for the run; summary, methods and appendix always do.
All strings here are raw user data: escaping is the template's job (Jinja
autoescape), except for the SVG we generate, whose text nodes are escaped by
vl-convert (charts) or by `wordcloud.py`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from dissect_study.dsl.vocabulary import REPORT_SECTIONS
from dissect_study.engine.report import charts
from dissect_study.engine.report.charts import Palette
from dissect_study.engine.report.evidence import calibration_blocks, evidence_blocks
from dissect_study.engine.report.evidence import card_line as card_evidence
from dissect_study.engine.report.evidence import summary_headline as evidence_headline
from dissect_study.engine.report.text import MAX_LABEL, elide
from dissect_study.engine.report.wordcloud import Word, wordcloud_svg
from dissect_study.errors import DissectStudyError


class ReportError(DissectStudyError, LookupError):
    """A report cannot be built from what the user named (no such run, section, format or database).

    LookupError stays a base: callers of `build_report_model` / `write_report` catch it.
    """


#: below this distance from chance a zero-shot sanity metric is called "near chance"
NEAR_CHANCE = 0.05
#: word clouds show at most this many concepts (largest weights)
WORDCLOUD_MAX = 120

SECTION_TITLES = {
    "summary": "Summary",
    "sanity": "Dissector sanity check",
    "methods": "Methods",
    "thresholds": "Layer thresholds τ across layers",
    "domains": "Mammography vs non-mammography concepts",
    "top_categories": "Top three categories per layer",
    "wordclouds": "Word clouds of captured concepts",
    "tasks": "Task concepts (mass, calcification, density)",
    "changes": "Concept changes between models",
    "learned": "Learned vs missed concepts by category",
    "missed": "Missed concepts",
    "neurons": "Neuron cards",
    "keywords": "Keyword-dominated neurons",
    "evidence": "Label evidence",
    "reviews": "Radiologist review and agreement",
    "calibration": "Calibration bench",
    "appendix": "Appendix: parameters and reproduction",
}

STATISTIC_TEXT = {
    "mean_top1": "the mean over the layer's neurons of their top-1 similarity (reference code and figures, docs/METHOD.md §5.1)",
    "mean_all": "the mean of all neuron × concept similarities of the layer (the paper's text)",
    "median_top1": "the median over the layer's neurons of their top-1 similarity (Dorszewski et al.)",
}
COMBINE_TEXT = {
    "max": "the maximum of the compared models' τ per layer, applied to every model (the paper's default)",
    "own": "each model's own τ per layer",
    "fixed": "a fixed value",
}


# ----------------------------------------------------------------------------- tree


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    number: int = 0
    chips: list[str | None] | None = None  # a colour chip per row (category colour)
    numeric: list[bool] | None = None  # right-align these columns
    small: bool = False


@dataclass
class Figure:
    svg: str
    caption: str
    number: int = 0
    kind: str = "chart"  # chart | wordcloud
    legend: list[dict[str, str]] = field(default_factory=list)


@dataclass
class CardConcept:
    rank: int
    concept: str
    score: str
    category: str
    colour: str


@dataclass
class CardImage:
    rank: int
    image_idx: int
    image_id: str
    activation: str
    png_data_uri: str | None
    attributes: list[list[str]]


@dataclass
class NeuronCard:
    anchor: str
    model: str
    layer: str
    alias: str
    unit: int
    label: str
    score: str
    tau: str
    passes: bool | None
    constant: bool
    concepts: list[CardConcept]
    images: list[CardImage]
    #: the top-1 label's evidence (engine/report/evidence.py), "" when the run has none
    evidence: str = ""


@dataclass
class TermGroup:
    title: str
    colour: str
    terms: list[str]


@dataclass
class Block:
    kind: str  # para | heading | callout | figure | table | cards | kv | code | terms
    text: str = ""
    level: str = ""  # callout: warn | note
    figure: Figure | None = None
    table: Table | None = None
    cards: list[NeuronCard] = field(default_factory=list)
    items: list[list[str]] = field(default_factory=list)
    groups: list[TermGroup] = field(default_factory=list)


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Meta:
    title: str
    run_id: str
    study_path: str
    study_sha256: str
    tool_version: str
    started_at: str
    finished_at: str
    generated_at: str
    study_text: str


@dataclass
class ReportModel:
    meta: Meta
    sections: list[Section]
    legend: list[dict[str, str]]
    omitted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def toc(self) -> list[tuple[str, str]]:
        return [(s.id, s.title) for s in self.sections]

    def figures(self) -> list[Figure]:
        return [b.figure for s in self.sections for b in s.blocks if b.kind == "figure" and b.figure is not None]

    def section(self, sid: str) -> Section | None:
        return next((s for s in self.sections if s.id == sid), None)


# ----------------------------------------------------------------------------- helpers


def fmt(v: Any, digits: int = 3) -> str:
    """Numbers as a reader wants them: ints plain, floats to `digits` decimals, missing as a dash."""
    if v is None or v is pd.NA:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if f != f:
        return "–"
    return f"{f:.{digits}f}"


def _json(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (dict, list)):
        return v
    try:
        out = json.loads(v)
    except (TypeError, ValueError):
        return v
    if isinstance(out, str) and out[:1] in "{[":  # a JSON string stored JSON-encoded twice
        try:
            return json.loads(out)
        except ValueError:
            return out
    return out


def _kv(d: Any, prefix: str = "") -> list[list[str]]:
    """Flatten nested parameters into [key, value] rows (dotted keys) for key-value tables."""
    if isinstance(d, dict):
        out: list[list[str]] = []
        for k in sorted(d, key=str):
            out += _kv(d[k], f"{prefix}{k}.")
        return out
    key = prefix.rstrip(".")
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        return [[key, f"{len(d)} entries"]]
    if isinstance(d, list):
        return [[key, ", ".join(str(x) for x in d)]]
    return [[key, fmt(d) if isinstance(d, float) else str(d)]]


def _first_int(name: str) -> int:
    m = re.search(r"\d+", name)
    return int(m.group()) if m else 10**9


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _join(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


# ----------------------------------------------------------------------------- context

#: free-text columns of the store (names users wrote, never JSON): elided on read, so every
#: section, table, card, chart and word cloud sees the same bounded label for one long string
TEXT_COLUMNS = (
    "concept",
    "label",
    "category",
    "subcategory",
    "domain",
    "grp",
    "overlap_with",
    "keyword",
    "image_id",
    "path",
    "study_title",
    "message",
    "statement",
    "filter_name",
)


def _elide_text_columns(df: pd.DataFrame) -> pd.DataFrame:
    for col in TEXT_COLUMNS:
        if col in df.columns and (df[col].dtype == object or pd.api.types.is_string_dtype(df[col])):
            values = df[col]
            long = values.map(lambda v: isinstance(v, str) and len(v) > MAX_LABEL).astype(bool)
            if long.any():
                df[col] = values.where(~long, values[long].map(elide))
    return df


class _Ctx:
    """One run's data, read once; section builders share it."""

    def __init__(self, con: duckdb.DuckDBPyConnection, run_id: str):
        self.con = con
        self.run_id = run_id
        self.run = self.df("SELECT * FROM runs WHERE run_id = ?").iloc[0].to_dict()
        self.meta_title = str(self.run.get("study_title") or "Untitled study")
        self.models = self.df("SELECT *, rowid AS _r FROM models WHERE run_id = ? ORDER BY _r")
        self.targets = [m for m in self.models.loc[self.models["role"] == "target", "model"]]
        self.layers = self.df("SELECT * FROM layers WHERE run_id = ?")
        self.concepts = self.df(
            "SELECT concept_set, concept_id, concept, category, subcategory, domain, tasks "
            "FROM concepts WHERE run_id = ?"
        )
        self.analyses = self.df("SELECT * FROM analyses WHERE run_id = ? ORDER BY analysis_id")
        self.dissections = self.df("SELECT * FROM dissections WHERE run_id = ?")
        self.probes = self.df("SELECT * FROM probes WHERE run_id = ?")
        # one palette for the whole report, from every category the run knows
        cats = list(self.concepts["category"].dropna().unique()) if len(self.concepts) else []
        self.palette = Palette.from_categories(sorted(cats, key=charts.normalise_category))
        if not self.targets and len(self.layers):
            self.targets = list(dict.fromkeys(self.layers["model"]))
        self.palette.assign_models(self.targets)  # one colour per model in every figure
        self.layer_order = self._layer_order()
        self.alias = {(r.model, r.layer): (r.alias or "") for r in self.layers.itertuples()}
        self.tau = {(r.model, r.layer): r.tau for r in self.layers.itertuples()}

    def df(self, sql: str, *params: Any) -> pd.DataFrame:
        return _elide_text_columns(self.con.execute(sql, [self.run_id, *params]).df())

    def _layer_order(self) -> list[str]:
        if not len(self.layers):
            return []
        best: dict[str, tuple[int, int, str]] = {}
        for r in self.layers.itertuples():
            idx = (
                r.layer_index
                if r.layer_index is not None and r.layer_index == r.layer_index and r.layer_index >= 0
                else None
            )
            key = (int(idx) if idx is not None else _first_int(r.layer), _first_int(r.layer), r.layer)
            best[r.layer] = min(best.get(r.layer, key), key)
        return sorted(best, key=lambda n: best[n])

    def depth(self, layer: str) -> int:
        return self.layer_order.index(layer) if layer in self.layer_order else 10**6

    def model_order(self, models: Sequence[str]) -> list[str]:
        rank = {m: i for i, m in enumerate(self.targets)}
        return sorted(dict.fromkeys(models), key=lambda m: (rank.get(m, 10**6), m))

    def layer_label(self, model: str | None, layer: str) -> str:
        alias = (
            self.alias.get((model, layer))
            if model
            else next((a for (m, l), a in self.alias.items() if l == layer and a), "")
        )
        return f"{layer} ({alias})" if alias else layer

    def analysis_rows(self, table: str) -> dict[int, pd.DataFrame]:
        df = self.df(f"SELECT * FROM {table} WHERE run_id = ?")
        if not len(df):
            return {}
        return {int(k): g for k, g in df.groupby("analysis_id", sort=True)}

    def statement(self, aid: int) -> str:
        row = self.analyses.loc[self.analyses["analysis_id"] == aid]
        return str(row["statement"].iloc[0]) if len(row) else f"analysis {aid}"

    def unit(self, aid: int) -> str:
        row = self.analyses.loc[self.analyses["analysis_id"] == aid]
        u = row["count_unit"].iloc[0] if len(row) else None
        return u if u in ("concepts", "neurons") else "concepts"

    def threshold_text(self, aid: int) -> str:
        row = self.analyses.loc[self.analyses["analysis_id"] == aid]
        rule = _json(row["threshold_rule"].iloc[0]) if len(row) else None
        return describe_threshold(rule or {})


def describe_threshold(rule: dict[str, Any]) -> str:
    combine = rule.get("combine") or "max"
    op = rule.get("op") or ">="
    if combine == "fixed" and rule.get("value") is not None:
        return f"a neuron passes when its top-1 similarity {op} {fmt(rule['value'])} (fixed threshold)"
    stat = rule.get("statistic") or "mean_top1"
    return (
        f"a neuron passes when its top-1 similarity {op} τ, where τ is "
        f"{COMBINE_TEXT.get(combine, combine)}, and each model's τ_l is {STATISTIC_TEXT.get(stat, stat)}"
    )


def _para(text: str) -> Block:
    return Block("para", text=text)


def _heading(text: str) -> Block:
    return Block("heading", text=text)


def _fig(svg: str, caption: str, kind: str = "chart", legend: list[dict[str, str]] | None = None) -> Block:
    return Block("figure", figure=Figure(svg=svg, caption=caption, kind=kind, legend=legend or []))


def _table(
    columns: list[str],
    rows: list[list[str]],
    caption: str = "",
    chips: list[str | None] | None = None,
    numeric: list[bool] | None = None,
    small: bool = False,
) -> Block:
    return Block(
        "table", table=Table(columns=columns, rows=rows, caption=caption, chips=chips, numeric=numeric, small=small)
    )


# ----------------------------------------------------------------------------- sections


def _summary(c: _Ctx) -> Section:
    s = Section("summary", SECTION_TITLES["summary"])
    dis = c.models.loc[c.models["role"] == "dissector", "model"].tolist()
    kinds = {r.model: r.kind for r in c.models.itertuples()}
    targets = ", ".join(f"{m} ({kinds.get(m, '?')})" for m in c.targets) or "none"
    probes = "; ".join(f"{r.probe} ({fmt(int(r.n_images))} images)" for r in c.probes.itertuples()) or "none"
    csets = []
    for name, g in c.concepts.groupby("concept_set", sort=False):
        csets.append(
            f"{name} ({_plural(len(g), 'concept')} in {_plural(g['category'].nunique(), 'category', 'categories')})"
        )
    sims = sorted(set(c.dissections["similarity"])) if len(c.dissections) else []
    s.blocks.append(
        _para(
            f"This report describes run {c.run_id} of the study “{c.meta_title}”. It dissected "
            f"{_plural(len(c.targets), 'target model')} — {targets} — with the dissector {', '.join(dis) or 'unknown'} "
            f"on the probe {probes}, against the concept set {'; '.join(csets) or 'none'}, "
            f"scored with {', '.join(sims) or 'an unrecorded similarity function'}."
        )
    )

    headlines: list[str] = []
    counts = c.analysis_rows("category_counts")
    for aid, g in counts.items():
        dom = g.loc[(g["level"] == "domain")]
        if not len(dom):
            continue
        unit = c.unit(aid)
        col = "n_concepts" if unit == "concepts" else "n_neurons"
        deepest = max(dom["layer"].unique(), key=c.depth)
        d = dom.loc[dom["layer"] == deepest]
        parts = []
        for m in c.model_order(d["model"].unique()):
            mm = d.loc[(d["model"] == m) & (d["grp"] == "mammography"), col]
            parts.append((m, int(mm.iloc[0]) if len(mm) else 0))
        if parts:
            n0 = parts[0][1]
            what = (
                ("mammography concept" if n0 == 1 else "mammography concepts")
                if unit == "concepts"
                else ("neuron" if n0 == 1 else "neurons") + " with a mammography label"
            )
            first = f"{parts[0][0]} captures {n0} {what}"
            rest = ", ".join(f"{m} {n}" for m, n in parts[1:])
            headlines.append(
                f"{c.statement(aid)}: at the deepest compared layer ({c.layer_label(parts[0][0], deepest)}) "
                f"{first}{', ' + rest if rest else ''}."
            )
    missed = c.analysis_rows("missed_concepts")
    for g in missed.values():
        for m in c.model_order(g["model"].unique()):
            gm = g.loc[g["model"] == m]
            learned = gm.loc[gm["status"] == "learned"]
            not_learned = gm.loc[gm["status"] != "learned"]
            nm = not_learned.loc[not_learned["domain"] == "mammography"]
            nm_kept = nm.loc[nm["status"] == "missed"]
            headlines.append(
                f"{m} learned {len(learned)} unique concepts across the analysed layers "
                f"({int((learned['domain'] == 'mammography').sum())} mammography); {len(not_learned)} were not learned, "
                f"{len(nm)} of them mammography concepts, of which {len(nm_kept)} remain after removing "
                f"near-duplicates of learned concepts."
            )
    sanity = c.df("SELECT * FROM sanity WHERE run_id = ?")
    if len(sanity):
        near = sanity.loc[(sanity["value"] - sanity["chance"]).abs() < NEAR_CHANCE]
        headlines.append(
            f"Dissector sanity: {len(sanity) - len(near)} of {len(sanity)} zero-shot checks are clearly away from chance"
            + (f"; near chance on {', '.join(sorted(set(near['attribute'])))}." if len(near) else ".")
        )
    evidence_line = evidence_headline(c)
    if evidence_line:
        headlines.append(evidence_line)
    if headlines:
        s.blocks.append(_heading("Headline findings"))
        s.blocks.append(Block("kv", items=[["•", h] for h in headlines], level="bullets"))
    else:
        s.blocks.append(_para("The study asked for no comparison analyses, so there are no headline counts."))
    warnings = c.df("SELECT step, message FROM warnings WHERE run_id = ?")
    if len(warnings):
        s.blocks.append(
            Block(
                "callout",
                level="warn",
                text=f"The run recorded {_plural(len(warnings), 'warning')}; see the sanity section.",
            )
        )
    return s


def _sanity(c: _Ctx) -> Section | None:
    s = Section("sanity", SECTION_TITLES["sanity"])
    df = c.df("SELECT * FROM sanity WHERE run_id = ? ORDER BY dissector, probe, attribute, metric")
    if len(df):
        s.blocks.append(
            _para(
                "Before trusting concept labels, check that the dissector itself separates the probe's labelled attributes: "
                "its zero-shot prediction of each attribute from the image alone, compared with chance."
            )
        )
        rows, near = [], []
        for r in df.itertuples():
            gap = None if r.value is None or r.chance is None else r.value - r.chance
            verdict = (
                "–"
                if gap is None
                else ("NEAR CHANCE" if abs(gap) < NEAR_CHANCE else "above chance" if gap > 0 else "below chance")
            )
            if verdict == "NEAR CHANCE":
                near.append(f"{r.attribute} ({r.metric} {fmt(r.value, 2)} vs chance {fmt(r.chance, 2)})")
            rows.append([r.dissector, r.probe, r.attribute, r.metric, fmt(r.value), fmt(r.chance), fmt(r.n), verdict])
        if near:
            s.blocks.append(
                Block(
                    "callout",
                    level="warn",
                    text=(
                        "The dissector is near chance on "
                        + "; ".join(near)
                        + ". Concept labels that name these attributes are not trustworthy for this probe."
                    ),
                )
            )
        s.blocks.append(
            _table(
                ["dissector", "probe", "attribute", "metric", "value", "chance", "n", "verdict"],
                rows,
                caption="Zero-shot sanity check of the dissector on the probe's labelled attributes.",
                numeric=[False, False, False, False, True, True, True, False],
            )
        )
    for r in c.models.itertuples():
        details = _json(r.details) or {}
        tr = details.get("training_report") if isinstance(details, dict) else None
        if tr:
            s.blocks.append(_heading(f"Training report of {r.model} ({r.role})"))
            s.blocks.append(Block("kv", items=_kv(tr)))
    warnings = c.df("SELECT step, message FROM warnings WHERE run_id = ?")
    if len(warnings):
        s.blocks.append(_heading("Warnings recorded during the run"))
        s.blocks.append(
            _table(
                ["step", "message"],
                [[w.step, w.message] for w in warnings.itertuples()],
                caption="Warnings the run recorded (also in the store's warnings table).",
            )
        )
    return s if s.blocks else None


def _source_text(src: Any) -> str:
    src = _json(src)
    if isinstance(src, dict):
        return "; ".join(f"{k}={v}" for k, v in _kv(src))
    return "" if src is None else str(src)


def _methods(c: _Ctx) -> Section:
    s = Section("methods", SECTION_TITLES["methods"])
    dis = c.models.loc[c.models["role"] == "dissector"]
    tg = c.models.loc[c.models["role"] == "target"]
    s.blocks.append(_heading("Dissector and targets"))
    s.blocks.append(
        _para(
            "Each target neuron is labelled with the concept whose dissector similarity over the probe images best matches "
            "the neuron's activations over the same images (CLIP-Dissect). The dissector embeds probe images and concept "
            "texts in one space; the targets are the networks whose neurons are explained."
        )
    )
    rows = [
        [r.model, r.role, r.kind or "", _source_text(r.source), (r.sha256 or "")[:12]]
        for r in list(dis.itertuples()) + list(tg.itertuples())
    ]
    s.blocks.append(
        _table(
            ["model", "role", "kind", "source", "sha256"],
            rows,
            small=True,
            caption="Models of the run (full checksums in the appendix).",
        )
    )
    if len(c.probes):
        s.blocks.append(_heading("Probe"))
        s.blocks.append(
            _table(
                ["probe", "images", "skipped", "source"],
                [
                    [
                        r.probe,
                        fmt(int(r.n_images)),
                        fmt(int(r.n_skipped)) if r.n_skipped == r.n_skipped and r.n_skipped is not None else "0",
                        _source_text(r.source),
                    ]
                    for r in c.probes.itertuples()
                ],
                numeric=[False, True, True, False],
                small=True,
                caption="Probe images used (after de-duplication, sampling and unreadable-image skips).",
            )
        )
    if len(c.concepts):
        s.blocks.append(_heading("Concept set"))
        for name, g in c.concepts.groupby("concept_set", sort=False):
            cnt = (
                g.groupby(g["category"].map(c.palette.title))
                .agg(
                    n=("concept", "size"),
                    sub=("subcategory", "nunique"),
                    mammo=("domain", lambda x: int((x == "mammography").sum())),
                )
                .reset_index()
            )
            order = {t: i for i, t in enumerate(c.palette.order() + [charts.UNCATEGORISED])}
            cnt = cnt.sort_values("category", key=lambda x, o=order: x.map(lambda t: o.get(t, 999)))
            s.blocks.append(
                _table(
                    ["category", "concepts", "subcategories", "mammography"],
                    [[r.category, str(r.n), str(r.sub), str(r.mammo)] for r in cnt.itertuples()]
                    + [
                        [
                            "total",
                            str(len(g)),
                            str(g["subcategory"].nunique()),
                            str(int((g["domain"] == "mammography").sum())),
                        ]
                    ],
                    chips=[c.palette.colour(t) for t in cnt["category"]] + [None],
                    numeric=[False, True, True, True],
                    caption=f"Concept set {name}: concepts per broad category (colours are used in every figure).",
                )
            )
    if len(c.dissections):
        s.blocks.append(_heading("Similarity function"))
        rows = []
        for r in c.dissections.itertuples():
            params = _json(r.similarity_params) or {}
            notes = _json(r.notes) or []
            rows.append(
                [
                    r.model,
                    r.dissector,
                    r.probe,
                    r.similarity,
                    ", ".join(f"{k}={v}" for k, v in _kv(params)),
                    r.pooling or "",
                    "; ".join(str(n) for n in notes) if isinstance(notes, list) else str(notes),
                ]
            )
        s.blocks.append(
            _table(
                ["target", "dissector", "probe", "similarity", "parameters (as used)", "pooling", "notes"],
                rows,
                small=True,
                caption="Similarity function per target, parameters as used.",
            )
        )
    s.blocks.append(_heading("Threshold rule"))
    stats = sorted(set(c.layers["tau_statistic"].dropna())) if len(c.layers) else []
    text = (
        "A concept counts as captured at a layer when it is the top-1 label of at least one neuron that passes "
        "the layer threshold. "
    )
    if stats:
        text += "Each layer's τ is " + "; ".join(STATISTIC_TEXT.get(x, x) for x in stats) + ". "
    s.blocks.append(_para(text))
    rules = []
    for r in c.analyses.itertuples():
        rule = _json(r.threshold_rule)
        if r.kind in ("compare", "learned", "gained", "analyze", "thresholds") and rule:
            rules.append([r.statement, describe_threshold(rule), r.count_unit or "concepts"])
    if rules:
        s.blocks.append(
            _table(
                ["analysis", "threshold", "headline unit"],
                rules,
                small=True,
                caption="The threshold rule of each analysis statement.",
            )
        )
    if len(c.layers):
        s.blocks.append(_heading("Layers"))
        lay = c.layers.assign(
            _d=c.layers["layer"].map(c.depth), _m=c.layers["model"].map({m: i for i, m in enumerate(c.targets)})
        ).sort_values(["_m", "_d"])
        s.blocks.append(
            _table(
                ["model", "layer", "alias", "depth", "neurons", "τ"],
                [
                    [r.model, r.layer, r.alias or "", fmt(r.layer_index), fmt(int(r.n_neurons)), fmt(r.tau)]
                    for r in lay.itertuples()
                ],
                numeric=[False, False, False, True, True, True],
                small=True,
                caption="Dissected layers in depth order, with the layer threshold τ.",
            )
        )
    return s


def _thresholds(c: _Ctx) -> Section | None:
    if not len(c.layers) or c.layers["tau"].isna().all():
        return None
    s = Section("thresholds", SECTION_TITLES["thresholds"])
    df = c.layers[["model", "layer", "tau"]].dropna().copy()
    models = c.model_order(df["model"].unique())
    stat = ", ".join(sorted(set(c.layers["tau_statistic"].dropna()))) or "mean_top1"
    s.blocks.append(
        _fig(
            charts.tau_chart(df, c.layer_order, models, c.palette),
            f"τ per layer for each model, layers in depth order (statistic: {stat}). "
            "A higher τ means the layer's neurons match their best concept more strongly on average.",
        )
    )
    layers = [l for l in c.layer_order if l in set(df["layer"])]
    rows = []
    for l in layers:
        rows.append([c.layer_label(None, l)] + [fmt(c.tau.get((m, l))) for m in models])
    s.blocks.append(
        _table(
            ["layer"] + models,
            rows,
            caption="τ per layer and model (the data of the figure above).",
            numeric=[False] + [True] * len(models),
        )
    )
    return s


def _domains(c: _Ctx) -> Section | None:
    counts = c.analysis_rows("category_counts")
    s = Section("domains", SECTION_TITLES["domains"])
    for aid, g in counts.items():
        dom = g.loc[g["level"] == "domain"].copy()
        if not len(dom):
            continue
        unit = c.unit(aid)
        col = "n_concepts" if unit == "concepts" else "n_neurons"
        models = c.model_order(dom["model"].unique())
        plot = dom.assign(count=dom[col], domain=dom["grp"])[["model", "layer", "domain", "count"]]
        s.blocks.append(_heading(c.statement(aid)))
        s.blocks.append(
            _fig(
                charts.domain_chart(plot, c.layer_order, models, unit),
                f"Captured {unit} per model and layer, mammography vs non-mammography; {c.threshold_text(aid)}.",
            )
        )
        rows = []
        for l in sorted(dom["layer"].unique(), key=c.depth):
            for m in models:
                d = dom.loc[(dom["layer"] == l) & (dom["model"] == m)]

                def get(grp: str, k: str, d: pd.DataFrame = d) -> str:
                    return fmt(int(d.loc[d["grp"] == grp, k].iloc[0])) if (d["grp"] == grp).any() else "0"

                rows.append(
                    [
                        c.layer_label(m, l),
                        m,
                        get("mammography", "n_concepts"),
                        get("non-mammography", "n_concepts"),
                        get("mammography", "n_neurons"),
                        get("non-mammography", "n_neurons"),
                    ]
                )
        s.blocks.append(
            _table(
                ["layer", "model", "mammo concepts", "non-mammo concepts", "mammo neurons", "non-mammo neurons"],
                rows,
                numeric=[False, False, True, True, True, True],
                caption="Unique captured concepts (paper text) and passing neurons (reference notebook).",
            )
        )
    return s if s.blocks else None


def _top_categories(c: _Ctx) -> Section | None:
    tops = c.analysis_rows("top_categories")
    s = Section("top_categories", SECTION_TITLES["top_categories"])
    for aid, g in tops.items():
        unit = c.unit(aid)
        col = "n_concepts" if unit == "concepts" else "n_neurons"
        models = c.model_order(g["model"].unique())
        plot = g.assign(count=g[col], category=g["category"].map(c.palette.title))[
            ["model", "layer", "rank", "category", "count"]
        ]
        s.blocks.append(_heading(c.statement(aid)))
        s.blocks.append(
            _fig(
                charts.category_stack_chart(plot, c.layer_order, models, c.palette, unit),
                f"The three broad categories with the most captured {unit} per model and layer "
                f"(ties broken by the fixed category order); {c.threshold_text(aid)}.",
            )
        )
        g = g.assign(_d=g["layer"].map(c.depth), _m=g["model"].map({m: i for i, m in enumerate(models)}))
        g = g.sort_values(["_d", "_m", "rank"])
        s.blocks.append(
            _table(
                ["layer", "model", "rank", "category", "concepts", "neurons"],
                [
                    [
                        c.layer_label(r.model, r.layer),
                        r.model,
                        str(r.rank),
                        c.palette.title(r.category),
                        fmt(int(r.n_concepts)),
                        fmt(int(r.n_neurons)),
                    ]
                    for r in g.itertuples()
                ],
                chips=[c.palette.colour(r.category) for r in g.itertuples()],
                numeric=[False, False, True, False, True, True],
                small=True,
                caption="Top three categories per layer and model: unique concepts and passing neurons.",
            )
        )
    return s if s.blocks else None


def _wordclouds(c: _Ctx) -> Section | None:
    cap = c.analysis_rows("captured_concepts")
    s = Section("wordclouds", SECTION_TITLES["wordclouds"])
    seen: set[tuple] = set()
    for aid, g in cap.items():
        deepest = max(g["layer"].unique(), key=c.depth)
        gl = g.loc[g["layer"] == deepest]
        blocks: list[Block] = []
        for m in c.model_order(gl["model"].unique()):
            gm = gl.loc[gl["model"] == m]
            key = (
                m,
                deepest,
                round(float(gm["threshold"].iloc[0]), 9) if gm["threshold"].notna().any() else None,
                tuple(sorted(gm["concept_id"])),
            )
            if key in seen:  # identical cloud already shown for another analysis
                continue
            seen.add(key)
            top = gm.sort_values(["max_score", "concept"], ascending=[False, True]).head(WORDCLOUD_MAX)
            words = [
                Word(
                    r.concept,
                    float(r.max_score),
                    c.palette.colour(r.category),
                    f"{r.concept} — {c.palette.title(r.category)}, max similarity {fmt(r.max_score)}, "
                    f"{r.n_neurons} neuron(s)",
                )
                for r in top.itertuples()
            ]
            svg, n_placed = wordcloud_svg(words)
            shown = f"the {n_placed} highest-scoring of {len(gm)}" if n_placed < len(gm) else f"all {len(gm)}"
            blocks.append(
                _fig(
                    svg,
                    f"Concepts captured by {m} at {c.layer_label(m, deepest)}: {shown} distinct "
                    f"captured concepts; size ∝ maximum similarity over the neurons carrying the label, "
                    f"colour = broad category.",
                    kind="wordcloud",
                    legend=charts.legend_items(c.palette, gm["category"]),
                )
            )
        if blocks:
            s.blocks.append(_heading(c.statement(aid)))
            s.blocks.extend(blocks)
    return s if s.blocks else None


def _tasks(c: _Ctx) -> Section | None:
    counts = c.analysis_rows("category_counts")
    s = Section("tasks", SECTION_TITLES["tasks"])
    for aid, g in counts.items():
        t = g.loc[g["level"] == "task"].copy()
        if not len(t):
            continue
        unit = c.unit(aid)
        col = "n_concepts" if unit == "concepts" else "n_neurons"
        models = c.model_order(t["model"].unique())
        plot = t.assign(count=t[col], task=t["grp"])[["model", "layer", "task", "count"]]
        s.blocks.append(_heading(c.statement(aid)))
        s.blocks.append(
            _fig(
                charts.task_chart(plot, c.layer_order, models, unit, c.palette),
                f"Captured task {unit} (mass, calcification, density tags of the concept set) per layer "
                f"and model; {c.threshold_text(aid)}.",
            )
        )
        tasks = sorted(set(t["grp"]))
        rows = []
        for l in sorted(t["layer"].unique(), key=c.depth):
            for m in models:
                d = t.loc[(t["layer"] == l) & (t["model"] == m)]
                rows.append(
                    [c.layer_label(m, l), m]
                    + [fmt(int(d.loc[d["grp"] == k, col].iloc[0])) if (d["grp"] == k).any() else "0" for k in tasks]
                )
        s.blocks.append(
            _table(
                ["layer", "model"] + tasks,
                rows,
                numeric=[False, False] + [True] * len(tasks),
                caption=f"Captured task {unit} per layer and model.",
            )
        )
    return s if s.blocks else None


def _status_label(status: str, present: Sequence[str]) -> str:
    if status == "unique" and len(present) == 1:
        return f"unique to {present[0]}"
    if status == "shared":
        return "shared by all"
    return f"{status}: {'+'.join(present)}"


def _changes(c: _Ctx) -> Section | None:
    ch = c.analysis_rows("concept_changes")
    s = Section("changes", SECTION_TITLES["changes"])
    for aid, g in ch.items():
        g = g.copy()
        g["present_in"] = g["present_in"].map(lambda v: list(v) if v is not None else [])
        g["label"] = [_status_label(st, p) for st, p in zip(g["status"], g["present_in"])]
        g["ycat"] = [f"{l} · {lab}" for l, lab in zip(g["layer"], g["label"])]
        layers = sorted(g["layer"].unique(), key=c.depth)
        order_y: list[str] = []
        for l in layers:
            labs = g.loc[g["layer"] == l, "label"].unique()
            labs = sorted(labs, key=lambda x: (0 if x.startswith("unique") else 2 if x.startswith("shared") else 1, x))
            order_y += [f"{l} · {x}" for x in labs]
        cnt = (
            g.assign(category=g["category"].map(c.palette.title))
            .groupby(["ycat", "category"])
            .size()
            .reset_index(name="count")
            .rename(columns={"ycat": "status"})
        )
        corder = {t: i for i, t in enumerate(c.palette.order())}
        cnt["order"] = cnt["category"].map(lambda t, o=corder: o.get(t, 999))
        s.blocks.append(_heading(c.statement(aid)))
        s.blocks.append(
            _fig(
                charts.status_by_category_chart(cnt, c.palette, order_y, "concepts"),
                "Captured concepts unique to one model or shared, per layer, coloured by category.",
            )
        )
        deepest = layers[-1]
        d = g.loc[g["layer"] == deepest]
        groups = []
        for lab in sorted(
            d["label"].unique(), key=lambda x: (0 if x.startswith("unique") else 2 if x.startswith("shared") else 1, x)
        ):
            terms = sorted(d.loc[d["label"] == lab, "concept"].tolist(), key=str.lower)
            groups.append(TermGroup(f"{lab} ({len(terms)})", "", terms))
        s.blocks.append(_para(f"Concepts at {c.layer_label(None, deepest)} (cf. Table 3 of the paper):"))
        s.blocks.append(Block("terms", groups=groups))
    return s if s.blocks else None


def _learned(c: _Ctx) -> Section | None:
    mc = c.analysis_rows("missed_concepts")
    s = Section("learned", SECTION_TITLES["learned"])
    names = {"learned": "learned", "missed": "missed", "missed_overlap": "missed (near-duplicate)"}
    for aid, g in mc.items():
        s.blocks.append(_heading(c.statement(aid)))
        for m in c.model_order(g["model"].unique()):
            gm = g.loc[g["model"] == m].copy()
            gm["category"] = gm["category"].map(c.palette.title)
            gm["status"] = gm["status"].map(lambda x, m=m: f"{m}: {names.get(x, x)}")
            cnt = gm.groupby(["status", "category"]).size().reset_index(name="count")
            corder = {t: i for i, t in enumerate(c.palette.order())}
            cnt["order"] = cnt["category"].map(lambda t, o=corder: o.get(t, 999))
            order_y = [f"{m}: {names[k]}" for k in names if f"{m}: {names[k]}" in set(cnt["status"])]
            s.blocks.append(
                _fig(
                    charts.status_by_category_chart(cnt, c.palette, order_y, "concepts"),
                    f"Concepts learned by {m} (captured at any analysed layer) and missed, by broad category "
                    f"(cf. Fig. 10 of the paper).",
                )
            )
            cats = [t for t in c.palette.order() + [charts.UNCATEGORISED] if t in set(gm["category"])]
            raw = g.loc[g["model"] == m]
            rows = []
            for t in cats:
                sub = raw.loc[raw["category"].map(c.palette.title) == t, "status"]
                rows.append(
                    [
                        t,
                        str(int((sub == "learned").sum())),
                        str(int((sub == "missed").sum())),
                        str(int((sub == "missed_overlap").sum())),
                    ]
                )
            s.blocks.append(
                _table(
                    ["category", "learned", "missed", "near-duplicate of a learned concept"],
                    rows,
                    chips=[c.palette.colour(t) for t in cats],
                    numeric=[False, True, True, True],
                    caption=f"Concepts learned and missed by {m}, per broad category.",
                )
            )
    return s if s.blocks else None


def _missed(c: _Ctx) -> Section | None:
    mc = c.analysis_rows("missed_concepts")
    s = Section("missed", SECTION_TITLES["missed"])
    for aid, g in mc.items():
        for m in c.model_order(g["model"].unique()):
            gm = g.loc[(g["model"] == m) & (g["status"] == "missed")]
            if not len(gm):
                continue
            s.blocks.append(_heading(f"{m} — {c.statement(aid)}"))
            groups = []
            for dom in ("mammography", "non-mammography"):
                gd = gm.loc[gm["domain"] == dom] if dom == "mammography" else gm.loc[gm["domain"] != "mammography"]
                for key, gg in sorted(
                    gd.groupby(gd["category"].map(c.palette.title)),
                    key=lambda kv: c.palette.order().index(kv[0]) if kv[0] in c.palette.order() else 999,
                ):
                    groups.append(
                        TermGroup(
                            f"{key} ({len(gg)})", c.palette.colour(key), sorted(gg["concept"].tolist(), key=str.lower)
                        )
                    )
            n_mammo = int((gm["domain"] == "mammography").sum())
            s.blocks.append(
                _para(
                    f"{len(gm)} concepts were never captured by {m} at any analysed layer, "
                    f"{n_mammo} of them mammography concepts (after removing near-duplicates of learned "
                    f"concepts; cf. Fig. 11)."
                )
            )
            s.blocks.append(Block("terms", groups=groups))
            ov = g.loc[(g["model"] == m) & (g["status"] == "missed_overlap")]
            if len(ov):
                s.blocks.append(
                    Block(
                        "terms",
                        groups=[
                            TermGroup(
                                f"Dropped as near-duplicates of learned concepts ({len(ov)})",
                                "",
                                [f"{r.concept} ≈ {r.overlap_with}" for r in ov.sort_values("concept").itertuples()],
                            )
                        ],
                    )
                )
    return s if s.blocks else None


_ATTR_KEYS = ("view", "laterality", "density", "birads", "mass", "calcification", "findings")


def _attr_rows(attrs: Any) -> list[list[str]]:
    attrs = _json(attrs) or {}
    if not isinstance(attrs, dict):
        return []
    out = []
    for k in _ATTR_KEYS:
        if k in attrs and attrs[k] is not None:
            v = attrs[k]
            out.append(
                [k, ", ".join(map(str, v)) if isinstance(v, list) else fmt(v) if isinstance(v, bool) else str(v)]
            )
    return out


def _neurons(c: _Ctx) -> Section | None:
    imgs = c.df(
        "SELECT model, layer, unit, rank, image_idx, activation, png FROM neuron_images WHERE run_id = ? "
        "ORDER BY model, layer, unit, rank"
    )
    if not len(imgs):
        return None
    s = Section("neurons", SECTION_TITLES["neurons"])
    s.blocks.append(
        _para(
            "Each card shows a neuron's five best-matching concepts with their similarity scores, and the probe images that "
            "activate it most, with the neuron's activation map overlaid (red = strongest)."
        )
    )
    probe_of = {r.model: r.probe for r in c.dissections.itertuples()}
    labels = c.df(
        "SELECT model, layer, unit, rank, concept_id, concept, score FROM neuron_labels WHERE run_id = ? AND rank <= 5"
    )
    neurons = c.df("SELECT model, layer, unit, label, score, constant FROM neurons WHERE run_id = ?")
    cat_of = dict(zip(c.concepts["concept"], c.concepts["category"]))
    cards = []
    keys = imgs[["model", "layer", "unit"]].drop_duplicates()
    keys = keys.assign(_m=keys["model"].map({m: i for i, m in enumerate(c.targets)}), _d=keys["layer"].map(c.depth))
    for k in keys.sort_values(["_m", "_d", "unit"]).itertuples():
        sel = (labels["model"] == k.model) & (labels["layer"] == k.layer) & (labels["unit"] == k.unit)
        lab = labels.loc[sel].sort_values("rank")
        nr = neurons.loc[(neurons["model"] == k.model) & (neurons["layer"] == k.layer) & (neurons["unit"] == k.unit)]
        score = float(nr["score"].iloc[0]) if len(nr) else (float(lab["score"].iloc[0]) if len(lab) else None)
        tau = c.tau.get((k.model, k.layer))
        concepts = [
            CardConcept(
                int(r.rank),
                r.concept,
                fmt(r.score),
                c.palette.title(cat_of.get(r.concept)),
                c.palette.colour(cat_of.get(r.concept)),
            )
            for r in lab.itertuples()
        ]
        im = imgs.loc[(imgs["model"] == k.model) & (imgs["layer"] == k.layer) & (imgs["unit"] == k.unit)]
        probe = probe_of.get(k.model)
        idx = [int(i) for i in im["image_idx"]]
        meta = (
            c.df(
                "SELECT image_idx, image_id, attributes FROM images WHERE run_id = ? AND probe = ? "
                "AND list_contains(?, image_idx)",
                probe,
                idx,
            )
            if probe
            else pd.DataFrame()
        )
        meta_of = {int(r.image_idx): r for r in meta.itertuples()} if len(meta) else {}
        images = []
        for r in im.itertuples():
            png = bytes(r.png) if r.png is not None else None
            mm = meta_of.get(int(r.image_idx))
            images.append(
                CardImage(
                    int(r.rank),
                    int(r.image_idx),
                    str(mm.image_id) if mm is not None else "",
                    fmt(r.activation),
                    "data:image/png;base64," + base64.b64encode(png).decode() if png else None,
                    _attr_rows(mm.attributes) if mm is not None else [],
                )
            )
        cards.append(
            NeuronCard(
                anchor=re.sub(r"[^A-Za-z0-9_-]", "-", f"n-{k.model}-{k.layer}-{k.unit}"),
                model=k.model,
                layer=k.layer,
                alias=c.alias.get((k.model, k.layer), ""),
                unit=int(k.unit),
                label=str(nr["label"].iloc[0]) if len(nr) else (concepts[0].concept if concepts else ""),
                score=fmt(score),
                tau=fmt(tau),
                passes=None if score is None or tau is None else bool(score >= tau),
                constant=bool(nr["constant"].iloc[0]) if len(nr) and nr["constant"].iloc[0] is not None else False,
                concepts=concepts,
                images=images,
                evidence=card_evidence(c, k.model, k.layer, int(k.unit), str(nr["label"].iloc[0]) if len(nr) else ""),
            )
        )
    s.blocks.append(Block("cards", cards=cards))
    return s


def _keywords(c: _Ctx) -> Section | None:
    kw = c.analysis_rows("keyword_neurons")
    s = Section("keywords", SECTION_TITLES["keywords"])
    for aid, g in kw.items():
        g = g.assign(_d=g["layer"].map(c.depth)).sort_values(
            ["model", "_d", "share", "unit"], ascending=[True, True, False, True]
        )
        s.blocks.append(_heading(c.statement(aid)))
        s.blocks.append(
            _table(
                ["model", "layer", "unit", "keyword", "share", "top labels"],
                [
                    [
                        r.model,
                        c.layer_label(r.model, r.layer),
                        str(r.unit),
                        r.keyword,
                        fmt(r.share, 2),
                        ", ".join(list(r.labels)[:5]) if r.labels is not None else "",
                    ]
                    for r in g.itertuples()
                ],
                numeric=[False, False, True, False, True, False],
                small=True,
                caption="Neurons whose top labels are dominated by one keyword.",
            )
        )
    return s if s.blocks else None


def _evidence(c: _Ctx) -> Section | None:
    s = Section("evidence", SECTION_TITLES["evidence"])
    s.blocks.extend(evidence_blocks(c))
    return s if s.blocks else None


def _calibration(c: _Ctx) -> Section | None:
    df = c.df("SELECT * FROM calibration WHERE run_id = ?")
    ceilings = calibration_blocks(c, df)
    if "bench" in df.columns:  # ceilings are rows of their own (engine/analyses/label_checks.py)
        df = df[df["bench"].fillna("measured") == "measured"]
    if not len(df):
        return None
    s = Section("calibration", SECTION_TITLES["calibration"])
    s.blocks.append(
        _para(
            "The phantom probe carries ground truth, so we know which attribute a selective neuron truly responds to. "
            "For each similarity function: how often the top-1 (top-5) label names that attribute."
        )
    )
    sims = sorted(df["similarity"].unique())
    mean = df.groupby(["layer", "similarity"], as_index=False)["top1_hit"].mean()
    s.blocks.append(
        _fig(
            charts.calibration_chart(mean, c.layer_order, sims),
            "Top-1 hit rate per similarity function and layer (mean over models).",
        )
    )
    # one row per (model, layer), one column per similarity: "top-1 / top-5 (F1)"; the full table is in the store
    df = df.assign(_m=df["model"].map({m: i for i, m in enumerate(c.targets)}), _d=df["layer"].map(c.depth))
    rows = []
    for (_, _, model, layer), g in df.groupby(["_m", "_d", "model", "layer"], sort=True):
        by = {r.similarity: r for r in g.itertuples()}
        sel = g["n_selective"].dropna()
        rows.append(
            [model, layer, fmt(int(sel.max())) if len(sel) else "–"]
            + [f"{fmt(by[x].top1_hit, 2)} / {fmt(by[x].top5_hit, 2)}" if x in by else "–" for x in sims]
        )
    s.blocks.append(
        _table(
            ["model", "layer", "selective"] + sims,
            rows,
            numeric=[False, False, True] + [True] * len(sims),
            small=True,
            caption="Calibration bench: top-1 / top-5 hit rate per model, layer and similarity "
            "function; precision, recall, F1, MAMMI hit rate and label cosine are in the "
            "store's calibration table.",
        )
    )
    s.blocks.extend(ceilings)
    return s


def _appendix(c: _Ctx) -> Section:
    s = Section("appendix", SECTION_TITLES["appendix"])
    run = c.run
    s.blocks.append(
        Block(
            "kv",
            items=[
                ["run id", c.run_id],
                ["study", str(run.get("study_path") or "")],
                ["study sha256", str(run.get("study_sha256") or "")],
                ["tool version", str(run.get("tool_version") or "")],
                ["started", str(run.get("started_at") or "")],
                ["finished", str(run.get("finished_at") or "")],
            ]
            + [[f"run.{k}", v] for k, v in _kv(_json(run.get("params")) or {})],
        )
    )
    s.blocks.append(_heading("Model checksums"))
    s.blocks.append(
        _table(
            ["model", "role", "kind", "sha256"],
            [[r.model, r.role, r.kind or "", r.sha256 or ""] for r in c.models.itertuples()],
            small=True,
            caption="Content fingerprints (sha256 of weights and configuration) of every model.",
        )
    )
    for r in c.models.itertuples():
        src = _json(r.source)
        if src:
            s.blocks.append(_heading(f"Parameters of {r.model}"))
            s.blocks.append(Block("kv", items=_kv(src)))
    if len(c.dissections):
        s.blocks.append(_heading("Dissections"))
        s.blocks.append(
            _table(
                ["target", "dissector", "probe", "concept set", "similarity", "parameters", "pooling", "options"],
                [
                    [
                        r.model,
                        r.dissector,
                        r.probe,
                        r.concept_set,
                        r.similarity,
                        json.dumps(_json(r.similarity_params), sort_keys=True),
                        r.pooling or "",
                        json.dumps(_json(r.options), sort_keys=True),
                    ]
                    for r in c.dissections.itertuples()
                ],
                small=True,
                caption="Every dissection of the run with its full parameters.",
            )
        )
    if len(c.analyses):
        s.blocks.append(_heading("Analyses"))
        s.blocks.append(
            _table(
                ["#", "kind", "statement", "line", "threshold rule"],
                [
                    [
                        str(r.analysis_id),
                        r.kind,
                        r.statement,
                        fmt(r.line),
                        json.dumps(_json(r.threshold_rule), sort_keys=True)
                        if isinstance(r.threshold_rule, str) and r.threshold_rule
                        else "",
                    ]
                    for r in c.analyses.itertuples()
                ],
                small=True,
                caption="The study's analysis statements as evaluated.",
            )
        )
    s.blocks.append(_heading("How to reproduce"))
    path = str(run.get("study_path") or "STUDY.study")
    s.blocks.append(
        Block(
            "code",
            text=f"dissect-study run {path}\ndissect-study report --run {c.run_id} --out report --format html,pdf",
        )
    )
    if run.get("study_text"):
        s.blocks.append(_heading("Study source"))
        s.blocks.append(Block("code", text=str(run["study_text"])))
    return s


def _reviews(c: _Ctx) -> Section | None:
    """Answers imported with `dissect-study review import` (engine/review/section.py)."""
    from dissect_study.engine.review.section import reviews_section

    return reviews_section(c)


BUILDERS: dict[str, Callable[[_Ctx], Section | None]] = {
    "summary": _summary,
    "sanity": _sanity,
    "methods": _methods,
    "thresholds": _thresholds,
    "domains": _domains,
    "top_categories": _top_categories,
    "wordclouds": _wordclouds,
    "tasks": _tasks,
    "changes": _changes,
    "learned": _learned,
    "missed": _missed,
    "neurons": _neurons,
    "keywords": _keywords,
    "evidence": _evidence,
    "calibration": _calibration,
    "reviews": _reviews,
    "appendix": _appendix,
}
assert tuple(BUILDERS) == REPORT_SECTIONS, "report sections must follow registry.REPORT_SECTIONS"


def build_report_model(
    con: duckdb.DuckDBPyConnection, run_id: str | None = None, sections: list[str] | None = None
) -> ReportModel:
    """Read one run from the store and build the report's view model.

    `run_id=None` takes the latest run; `sections=None` every section with data.
    Raises ReportError (a LookupError; a user mistake: unknown run or section) with a clear message.
    """
    from dissect_study.engine.store.database import latest_run_id

    if run_id is None:
        run_id = latest_run_id(con)
        if run_id is None:
            raise ReportError(
                "the results database holds no runs yet; run a study first (dissect-study run FILE.study)"
            )
    elif not (con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone() or (0,))[0]:
        known = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY finished_at DESC LIMIT 5").fetchall()]
        raise ReportError(
            f"run {run_id!r} is not in the results database; recent runs: {', '.join(known) or 'none'} "
            '(list them with: dissect-study query "SELECT run_id, study_title FROM runs")'
        )
    if sections is not None:
        bad = [x for x in sections if x not in BUILDERS]
        if bad:
            raise ReportError(f"unknown report section(s) {', '.join(bad)}; choose from {', '.join(REPORT_SECTIONS)}")
    c = _Ctx(con, run_id)
    wanted = [x for x in REPORT_SECTIONS if sections is None or x in sections]
    built, omitted = [], []
    for sid in wanted:
        sec = BUILDERS[sid](c)
        if sec is None or not sec.blocks:
            omitted.append(sid)
        else:
            built.append(sec)
    # number figures and tables in reading order
    nf = nt = 0
    for sec in built:
        for b in sec.blocks:
            if b.kind == "figure" and b.figure:
                nf += 1
                b.figure.number = nf
            elif b.kind == "table" and b.table and b.table.caption:  # only captioned tables are numbered
                nt += 1
                b.table.number = nt
    meta = Meta(
        title=c.meta_title,
        run_id=run_id,
        study_path=str(c.run.get("study_path") or ""),
        study_sha256=str(c.run.get("study_sha256") or ""),
        tool_version=str(c.run.get("tool_version") or ""),
        started_at=str(c.run.get("started_at") or ""),
        finished_at=str(c.run.get("finished_at") or ""),
        generated_at=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        study_text=str(c.run.get("study_text") or ""),
    )
    present = c.concepts["category"].tolist() if len(c.concepts) else []
    return ReportModel(meta=meta, sections=built, legend=charts.legend_items(c.palette, present), omitted=omitted)
