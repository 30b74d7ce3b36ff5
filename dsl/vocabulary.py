"""The vocabulary of the study language, as data.

Every name a study may use -- the source functions of `concepts`, `probe`,
`dissector` and `target` declarations, the similarity functions and their
parameters, pooling modes, threshold statistics, analyses and report sections --
is listed here once.  The checker (`dsl/checker.py`) validates studies against
this table and offers "did you mean" suggestions from it; the engine's factories
receive parameters that have already been validated and defaulted from it; the
language reference (`docs/LANGUAGE.md`) documents the same entries.

This module must stay import-light (no torch): `dissect-study check` uses it and
never loads a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from dissect_study.errors import DissectStudyError

ParamType = Literal["str", "path", "int", "float", "bool", "ref", "refs", "layer", "str_or_ref"]


@dataclass(frozen=True)
class Param:
    """One keyword parameter of a source or similarity function."""

    name: str
    type: ParamType
    default: Any = None
    required: bool = False
    doc: str = ""
    choices: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    #: for `ref`/`refs`: which declaration kind the name must refer to
    ref_kind: str | None = None
    #: numeric bounds, inclusive, when meaningful
    min: float | None = None
    max: float | None = None
    #: `min` itself is refused too (a fraction or a norm floor that must be positive)
    min_exclusive: bool = False


@dataclass(frozen=True)
class Function:
    """A source function such as `vindr(...)` or a similarity such as `soft_wpmi(...)`."""

    name: str
    params: tuple[Param, ...]
    doc: str
    #: positional arguments are accepted and mapped, in order, onto these parameters
    positional: tuple[str, ...] = ()
    #: accepts any number of positional references of `ref_kind` (e.g. `union(a, b, c)`)
    variadic_ref_kind: str | None = None
    #: similarity family: top-k-only, sufficient statistics, or full matrix
    family: str | None = None
    aliases: tuple[str, ...] = ()

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name or name in p.aliases:
                return p
        return None

    @property
    def param_names(self) -> list[str]:
        names: list[str] = []
        for p in self.params:
            names.append(p.name)
            names.extend(p.aliases)
        return names


def _p(name: str, type: ParamType, default: Any = None, doc: str = "", **kw: Any) -> Param:
    return Param(name=name, type=type, default=default, doc=doc, **kw)


def _req(name: str, type: ParamType, doc: str = "", **kw: Any) -> Param:
    return Param(name=name, type=type, required=True, doc=doc, **kw)


#: seeds are 32-bit: the phantom generator's streams take 0..2**32-1, so a larger or negative
#: seed would be folded onto another one while the database records what the study wrote
SEED_MAX = 2**32 - 1


def _seed(name: str = "seed", doc: str = "") -> Param:
    return _p(name, "int", 0, doc, min=0, max=SEED_MAX)


TRUST = _p(
    "trust_checkpoint",
    "bool",
    False,
    "Allow unpickling objects beyond plain tensors and allow-listed config classes. "
    "Only for files you produced yourself.",
)

# --------------------------------------------------------------------------- concepts
CONCEPT_SOURCES: dict[str, Function] = {
    f.name: f
    for f in [
        Function(
            "shipped",
            (_req("name", "str", 'Name of a concept set shipped in concept_sets/ (e.g. "mammo_v1").'),),
            "A concept set that ships with dissect-study.",
            positional=("name",),
        ),
        Function(
            "txt",
            (
                _req("path", "path", "One concept per line; blank lines are ignored."),
                _p("categories", "path", None, "Optional JSON or xlsx category map for these concepts."),
                _p("tasks", "path", None, "Optional JSON map {task: [concept, ...]}."),
            ),
            "A plain text file, one concept per line (CLIP-Dissect style).",
            positional=("path",),
        ),
        Function(
            "csv",
            (
                _req("path", "path", "CSV with one row per concept."),
                _p("concept_column", "str", "concept"),
                _p("category_column", "str", "category"),
                _p("subcategory_column", "str", "subcategory"),
                _p("domain_column", "str", "domain"),
                _p("tasks_column", "str", "tasks", "Semicolon-separated task tags."),
                _p("tasks", "path", None, "Optional JSON map {task: [concept, ...]}."),
            ),
            "A CSV concept table with category columns.",
            positional=("path",),
        ),
        Function(
            "xlsx",
            (
                _req("path", "path", "Category workbook: one sheet per broad category, one column per subcategory."),
                _p("concepts", "path", None, "Optional txt file fixing the concept list and its order."),
                _p(
                    "precedence",
                    "str",
                    "last",
                    "Which match wins when a concept is listed twice.",
                    choices=("last", "first"),
                ),
                _p(
                    "match",
                    "str",
                    "stripped",
                    "Compare cells after stripping whitespace (default) or exactly as the reference notebook did.",
                    choices=("stripped", "exact"),
                ),
                _p(
                    "non_mammography",
                    "str",
                    "Environmental_and_Natural",
                    "Sheet whose concepts are not mammography concepts.",
                ),
                _p("tasks", "path", None, "Optional JSON map {task: [concept, ...]}."),
            ),
            "The Mammo-CLIP Dissect category workbook (Extended_Breast_text_categories.xlsx).",
            positional=("path",),
        ),
        Function(
            "json",
            (
                _req("path", "path", "JSON {category: [concept, ...]} or {category: {subcategory: [...]}}."),
                _p("tasks", "path", None, "Optional JSON map {task: [concept, ...]}."),
            ),
            "A JSON category map.",
            positional=("path",),
        ),
    ]
}

# --------------------------------------------------------------------------- probes
PROBE_SOURCES: dict[str, Function] = {
    f.name: f
    for f in [
        Function(
            "folder",
            (
                _req("path", "path", "Folder of PNG/JPEG/TIFF images (8 or 16 bit)."),
                _p("recursive", "bool", True),
            ),
            "Every image file under a folder, in sorted path order.",
            positional=("path",),
        ),
        Function(
            "csv",
            (
                _req("path", "path", "CSV manifest, one row per image."),
                _p("path_column", "str", "path"),
                _p("id_column", "str", None, "Column with a unique image id (default: the path)."),
                _p(
                    "root", "path", None, "Folder that relative paths are resolved against (default: the CSV's folder)."
                ),
            ),
            "A CSV manifest: an image path column plus attribute columns.",
            positional=("path",),
        ),
        Function(
            "vindr",
            (
                _req("root", "path", "Folder holding the images (`<study_id>/<image_id>.png`, or DICOM)."),
                _req(
                    "csv",
                    "path",
                    "breast-level_annotations.csv, finding_annotations.csv or vindr_detection_v1_folds.csv.",
                ),
                _p("split", "str", "test", choices=("test", "training", "all")),
                _p("findings", "path", None, "finding_annotations.csv, to attach finding categories and boxes."),
                _p("image_format", "str", "png", choices=("png", "dicom")),
                _p("keep_duplicate_rows", "bool", False, "Keep repeated image rows (the paper's 4,095-row probe)."),
            ),
            "The VinDr-Mammo layout, as published and as preprocessed by Mammo-CLIP.",
        ),
        Function(
            "embed",
            (
                _req("csv", "path", "EMBED-style metadata CSV."),
                _req("root", "path", "Folder the CSV's image paths are relative to."),
                _p("path_column", "str", "anon_dicom_path"),
                _p("id_column", "str", None),
            ),
            "An EMBED-style CSV of (DICOM or PNG) images.",
        ),
        Function(
            "dicom",
            (_req("path", "path", "Folder of DICOM files."), _p("recursive", "bool", True)),
            "A folder of DICOM files (MONOCHROME1 inverted, VOI LUT / windowing applied).",
            positional=("path",),
        ),
        Function(
            "imagenet",
            (
                _req("path", "path", "ImageNet-style folder: one sub-folder per class."),
                _p("per_class", "int", None, "Keep at most this many images per class.", min=1),
            ),
            "ImageNet-style class folders (e.g. ImageNette/ImageWoof, Appendix C/D).",
            positional=("path",),
        ),
        Function(
            "union",
            (),
            "Several probes concatenated in the order given (mixed-domain probes).",
            variadic_ref_kind="probe",
        ),
        Function(
            "phantom",
            (
                _p("n", "int", 400, "Number of synthetic mammograms.", min=1, max=100_000),
                _seed(),
                _p(
                    "height",
                    "int",
                    320,
                    "Image height in pixels; width follows Mammo-CLIP's 1520x912 aspect.",
                    min=32,
                    max=4096,
                ),
            ),
            "Procedural mammogram phantoms with ground-truth attributes (synthetic).",
        ),
    ]
}

# --------------------------------------------------------------------------- dissectors
DISSECTOR_SOURCES: dict[str, Function] = {
    f.name: f
    for f in [
        Function(
            "mammo_clip",
            (
                _req("checkpoint", "path", "Mammo-CLIP checkpoint (b5-model-best-epoch-7.tar or the B2 file)."),
                _req(
                    "text",
                    "path",
                    "Local Bio_ClinicalBERT folder (tokenizer + config; weights come from the checkpoint).",
                ),
                _p("variant", "str", "auto", choices=("auto", "b5", "b2")),
                _p(
                    "train_mode",
                    "bool",
                    False,
                    "Run the image tower in train mode, as the reference code did (not recommended).",
                ),
                TRUST,
            ),
            "Mammo-CLIP (EfficientNet image tower + BioClinicalBERT text tower).",
        ),
        Function(
            "mammo_clip_general",
            (
                _req("imagenet_weights", "path", "Local ImageNet EfficientNet weights (lukemelas or timm layout)."),
                _req("text", "path", "Local Bio_ClinicalBERT folder with weights."),
                _p("variant", "str", "b5", choices=("b5", "b2")),
                _seed("projection_seed", "Seed of the randomly initialised projection heads (recorded)."),
                TRUST,
            ),
            "F_general: the Mammo-CLIP architecture initialised from ImageNet weights (G-Mammo-CLIP Dissect).",
        ),
        Function(
            "clip",
            (_req("path", "path", "Local Hugging Face CLIP folder (config, weights, tokenizer, processor)."),),
            "A general CLIP model from a local folder (Appendix setups A/B).",
            positional=("path",),
        ),
        Function(
            "demo",
            (_seed(), _p("epochs", "int", None, "Override the training length (default: the tuned value).", min=1)),
            "The embedded demo dissector: MiniLM text tower + small CNN trained on phantoms. Built on first use, cached.",
        ),
    ]
}

# --------------------------------------------------------------------------- targets
TARGET_SOURCES: dict[str, Function] = {
    f.name: f
    for f in [
        Function(
            "image_tower",
            (_req("dissector", "ref", "The dissector whose image tower is the target.", ref_kind="dissector"),),
            "A dissector's image encoder (G and M in the paper).",
            positional=("dissector",),
        ),
        Function(
            "classifier",
            (
                _req("checkpoint", "path", "Fine-tuned classifier .pth (Mammo-CLIP BreastClipClassifier)."),
                _req(
                    "base",
                    "ref",
                    "Dissector the classifier was fine-tuned from (architecture, preprocessing).",
                    ref_kind="dissector",
                ),
                _p(
                    "task",
                    "str",
                    None,
                    choices=("density", "birads", "cancer_birads", "mass", "calcification", "cancer"),
                ),
                _p("n_class", "int", None, "Expected number of classes; checked against the file.", min=1),
                TRUST,
            ),
            "A fine-tuned Mammo-CLIP classifier (C1-C4 in the paper).",
        ),
        Function(
            "timm",
            (
                _req("model", "str", 'timm architecture name, e.g. "resnet50".'),
                _req("weights", "path", "Local weights file (.safetensors or .pth)."),
                _p("num_classes", "int", None, "Head size, if the weights have a classifier head."),
                TRUST,
            ),
            "Any timm model from a local weight file.",
            positional=("model", "weights"),
        ),
        Function(
            "clip_vision",
            (_req("path", "path", "Local Hugging Face CLIP folder."),),
            "The vision tower of a local Hugging Face CLIP model (layers `vision_model.encoder.layers.N`, CLS token).",
            positional=("path",),
        ),
        Function(
            "demo",
            (
                _req(
                    "variant", "str", "Which demo model.", choices=("G", "M", "C_density", "C_mass", "C_calcification")
                ),
                _seed(),
            ),
            "The embedded demo targets (G untrained, M the demo dissector's tower, C fine-tuned from M).",
            positional=("variant",),
        ),
    ]
}

SOURCES: dict[str, dict[str, Function]] = {
    "concepts": CONCEPT_SOURCES,
    "probe": PROBE_SOURCES,
    "dissector": DISSECTOR_SOURCES,
    "target": TARGET_SOURCES,
}

# --------------------------------------------------------------------------- similarity
SIMILARITIES: dict[str, Function] = {
    f.name: f
    for f in [
        Function(
            "soft_wpmi",
            (
                _p("top_k", "int", 100, "Z: images per neuron (the engine uses min(top_k, N) and says so).", min=1),
                _p("a", "float", 10.0, "Inverse temperature of the concept softmax."),
                _p("lam", "float", 1.0, "Weight of the neuron prior.", aliases=("lambda",)),
                _p("min_prob", "float", 1e-7, min=0),
                _p("p_start", "float", 0.998, min=0, max=1),
                _p("p_end", "float", 0.97, min=0, max=1),
            ),
            "CLIP-Dissect's SoftWPMI (the paper's default).",
            family="topk",
        ),
        Function(
            "wpmi",
            (
                _p("top_k", "int", 28, min=1),
                _p("a", "float", 2.0),
                _p("lam", "float", 0.6, aliases=("lambda",)),
                _p("min_prob", "float", 1e-7, min=0),
            ),
            "CLIP-Dissect's WPMI.",
            family="topk",
        ),
        Function(
            "cos",
            (),
            "Cosine similarity of activation and concept columns.",
            family="stats",
            aliases=("cos_similarity",),
        ),
        Function(
            "cos_cubed",
            (_p("min_norm", "float", 1e-3, "Floor of the column norms (division guard).", min=0, min_exclusive=True),),
            "Cosine of centred, cubed columns.",
            family="full",
            aliases=("cos_similarity_cubed",),
        ),
        Function(
            "rank_reorder",
            (
                _p("p", "float", 3.0, min=0),
                _p(
                    "top_fraction",
                    "float",
                    0.05,
                    "Share of the probe's images ranked per neuron: at least one image.",
                    min=0,
                    max=1,
                    min_exclusive=True,
                ),
                _p("scale_p", "float", 0.5),
                _p("n_permutations", "int", 5, min=1),
                _seed(),
            ),
            "CLIP-Dissect's rank-reorder score.",
            family="full",
        ),
        Function(
            "mammi",
            (
                _p("alpha", "float", 93.0, "Adaptive representative-image threshold, percent.", min=0, max=100),
                _p(
                    "beta",
                    "float",
                    0.95,
                    "Concept selection threshold as a fraction of the best score (MAMMI's label sets: the calibration bench's mammi_hit_rate); S itself does not depend on it.",
                    min=0,
                    max=1,
                ),
                _p("template", "str", "", "Prompt template prefix; its embedding is subtracted (adaptive cosine)."),
            ),
            "MAMMI/WWW adaptive selection and adaptive cosine.",
            # the adaptive representative set can exceed any fixed top-k, so the
            # dissector must see every probe image
            family="full",
            aliases=("mammi_adaptive",),
        ),
    ]
}


def lookup_similarity(name: str) -> Function | None:
    for f in SIMILARITIES.values():
        if name == f.name or name in f.aliases:
            return f
    return None


#: fewest probe images any dissection can use: over one image every neuron is constant
MIN_PROBE_IMAGES = 2


def min_probe_images(similarity: str, params: dict[str, Any]) -> tuple[int, str]:
    """The fewest probe images a dissection with `similarity(params)` can label from, and why.

    One rule for `check` (probes whose size the study fixes: phantom(n), sample N) and the
    run's pre-flight (every built probe), so neither finds out after the model passes.
    """
    if similarity == "rank_reorder":
        fraction = params.get("top_fraction")
        if isinstance(fraction, (int, float)) and 0 < fraction <= 1:
            n = max(MIN_PROBE_IMAGES, math.ceil(1 / fraction))
            while n > MIN_PROBE_IMAGES and math.floor((n - 1) * fraction) >= 1:
                n -= 1  # float rounding of 1 / fraction
            while math.floor(n * fraction) < 1:
                n += 1
            if n > MIN_PROBE_IMAGES:
                return n, (
                    f"rank_reorder ranks floor(N x top_fraction) images per neuron, which is 0 below "
                    f"{n} images at top_fraction={fraction:g}"
                )
    return MIN_PROBE_IMAGES, "over fewer than 2 images every neuron is constant, so no label means anything"


POOLINGS = ("avg", "max", "cls", "none")
THRESHOLD_STATISTICS = ("mean_top1", "mean_all", "median_top1")
THRESHOLD_COMBINES = ("max", "own", "fixed")
THRESHOLD_OPS = (">=", ">")
COUNT_UNITS = ("concepts", "neurons")
CATEGORY_LEVELS = ("category", "subcategory", "task", "domain")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
BUILTIN_LAYER_ALIASES = ("early", "middle", "last")

#: options of a `dissect` statement: name -> Param
DISSECT_OPTIONS: dict[str, Param] = {
    p.name: p
    for p in [
        _p("pooling", "str", "avg", "Spatial pooling of conv outputs (cls: token 0 of ViT outputs).", choices=POOLINGS),
        _p("batch", "int", None, "Images per forward pass (default: the model's own).", min=1, max=4096),
        _p("device", "str", "auto", choices=DEVICES),
        _p("precision", "str", "fp32", "bf16 autocast is used on CUDA only.", choices=PRECISIONS),
        _p("top_concepts", "int", 10, "Concepts stored per neuron.", min=1),
        _p("top_images", "int", 5, "Probe images stored per neuron.", min=1),
        _p("dedup_images", "bool", True, "De-duplicate probe rows by image id."),
        _p("dissector_train_mode", "bool", False, "Reference parity: run the dissector image tower in train mode."),
        _p("workers", "int", 0, "DataLoader worker processes.", min=0, max=256),
        _p(
            "annotations",
            "path",
            None,
            "CSV of the probe's annotations (image_id, concept[, present]) for label evidence; beside the study.",
        ),
        _p("evidence_top", "int", 5, "Labels per neuron checked against the probe's annotations.", min=1),
    ]
}


# --------------------------------------------------------------------------- analyses


@dataclass(frozen=True)
class Column:
    """One column of an analysis's output: name, DuckDB type, and what it holds."""

    name: str
    type: str
    doc: str = ""


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis, as data: what the checker, the store, the report and the docs need, written once.

    `name` is shared by `analyze NAME`, the DuckDB table macro that computes the
    analysis (`engine/analyses/macros.py`, registered with `engine.registry.ANALYSES`)
    and, when `stored`, the results table a study fills (its DDL is generated from
    `columns`, keyed by run_id and analysis_id).  `statements` are the statement
    kinds that run it besides `analyze`; `options` are its statement options, each
    with its one default: the checker fills them in, and the macro's parameters take
    the same defaults from here, so a stored table always equals the macro called
    with the defaults.  `sections` are the report sections that show it.
    """

    name: str
    doc: str
    columns: tuple[Column, ...]
    statements: tuple[str, ...] = ()
    options: tuple[Param, ...] = ()
    sections: tuple[str, ...] = ()
    #: False for a view over base tables (layer_thresholds) or a look-up (neuron_profile)
    stored: bool = True

    def option(self, name: str) -> Param | None:
        return next((p for p in self.options if p.name == name), None)


def _c(name: str, type: str, doc: str = "") -> Column:
    return Column(name, type, doc)


_MODEL, _LAYER = _c("model", "VARCHAR"), _c("layer", "VARCHAR")
_CONCEPT = (
    _c("concept_id", "INTEGER"),
    _c("concept", "VARCHAR"),
    _c("category", "VARCHAR"),
    _c("subcategory", "VARCHAR"),
)

#: the threshold rule of a study without a `threshold` statement, and of the macros
#: called without one: the paper's comparison rule (docs/METHOD.md §5.2)
DEFAULT_THRESHOLD: dict[str, str] = {"combine": "max", "statistic": "mean_top1", "op": ">="}

#: every analysis, in the order the store and the docs list them
ANALYSES: dict[str, AnalysisSpec] = {
    a.name: a
    for a in [
        AnalysisSpec(
            "layer_thresholds",
            "tau per (model, layer) under the study's statistic; its evolution across layers (Fig. 4a/8).",
            (
                _MODEL,
                _LAYER,
                _c("layer_index", "INTEGER", "depth order: sort by this, never by name"),
                _c("alias", "VARCHAR"),
                _c("n_neurons", "INTEGER"),
                _c("tau", "DOUBLE", "under tau_statistic"),
                _c("tau_statistic", "VARCHAR"),
                _c("tau_mean_top1", "DOUBLE"),
                _c("tau_mean_all", "DOUBLE"),
                _c("tau_median_top1", "DOUBLE"),
            ),
            statements=("thresholds",),
            sections=("thresholds",),
            stored=False,
        ),
        AnalysisSpec(
            "captured_concepts",
            "Concepts a (model, layer) encodes under a threshold rule, with the neurons carrying them.",
            (
                _MODEL,
                _LAYER,
                *_CONCEPT,
                _c("domain", "VARCHAR"),
                _c("tasks", "VARCHAR[]"),
                _c("n_neurons", "INTEGER", "neurons whose passing top-1 label is this concept"),
                _c("units", "INTEGER[]"),
                _c("max_score", "DOUBLE"),
                _c("threshold", "DOUBLE", "the tau applied to this (model, layer)"),
            ),
            statements=("compare", "learned"),
            sections=("wordclouds",),
        ),
        AnalysisSpec(
            "category_counts",
            "Captured concepts per broad category, subcategory, domain and task (Fig. 4b, 9).",
            (
                _MODEL,
                _LAYER,
                _c("level", "VARCHAR", "category | subcategory | domain | task"),
                _c("grp", "VARCHAR"),
                _c("n_concepts", "INTEGER", "unique captured concepts (paper text)"),
                _c("n_neurons", "INTEGER", "passing neurons (reference notebook)"),
            ),
            statements=("compare",),
            sections=("domains", "tasks"),
        ),
        AnalysisSpec(
            "top_categories",
            "The top three broad categories per (model, layer) (Fig. 4c).",
            (
                _MODEL,
                _LAYER,
                _c("rank", "INTEGER", "1..3; ties broken by fixed category order"),
                _c("category", "VARCHAR"),
                _c("n_concepts", "INTEGER"),
                _c("n_neurons", "INTEGER"),
            ),
            statements=("compare",),
            sections=("top_categories",),
        ),
        AnalysisSpec(
            "concept_changes",
            "Concepts unique to each model and shared, per layer and category (Table 3).",
            (
                _LAYER,
                *_CONCEPT,
                _c("status", "VARCHAR", "'shared' (all models) | 'unique' (one model) | 'partial'"),
                _c("present_in", "VARCHAR[]", "models capturing it at this layer"),
            ),
            statements=("compare", "gained"),
            sections=("changes",),
        ),
        AnalysisSpec(
            "missed_concepts",
            "Concepts never captured at any analysed layer, after the overlap de-dup (Fig. 10, 11).",
            (
                _MODEL,
                *_CONCEPT,
                _c("domain", "VARCHAR"),
                _c("status", "VARCHAR", "learned | missed | missed_overlap (dropped by the de-dup rule)"),
                _c("overlap_with", "VARCHAR", "the learned concept that made it an overlap"),
            ),
            statements=("learned",),
            sections=("learned", "missed"),
            options=(
                _p(
                    "dedup",
                    "str",
                    "one_way",
                    "Near-duplicate rule for missed concepts (docs/METHOD.md §5.8).",
                    choices=("one_way", "both", "none"),
                ),
            ),
        ),
        AnalysisSpec(
            "neuron_profile",
            "Top concepts and top images of one neuron (Fig. 6, 7).",
            (
                _c("rank", "INTEGER"),
                _c("concept_id", "INTEGER"),
                _c("concept", "VARCHAR"),
                _c("score", "DOUBLE"),
                _c("category", "VARCHAR"),
                _c("subcategory", "VARCHAR"),
                _c("domain", "VARCHAR"),
            ),
            statements=("neuron",),
            sections=("neurons",),
            stored=False,
            options=(_p("top", "int", 5, "Top concepts and top images shown.", min=1),),
        ),
        AnalysisSpec(
            "keyword_neurons",
            "Neurons whose top-k labels share one keyword.",
            (
                _MODEL,
                _LAYER,
                _c("unit", "INTEGER"),
                _c("keyword", "VARCHAR"),
                _c("share", "DOUBLE", "fraction of the top-k labels containing the keyword"),
                _c("labels", "VARCHAR[]"),
            ),
            statements=("keywords",),
            sections=("keywords",),
            options=(
                _p("top", "int", 5, "Top-k labels of a neuron that are compared.", min=1),
                _p("min_share", "float", 0.5, "Share of the top-k labels that must contain the keyword.", min=0, max=1),
            ),
        ),
    ]
}


def statement_analyses(kind: str) -> tuple[str, ...]:
    """The analyses a statement kind (`compare`, `learned`, ...) runs, in ANALYSES order."""
    return tuple(name for name, a in ANALYSES.items() if kind in a.statements)


def statement_options(kind: str, analysis: str | None = None) -> dict[str, Param]:
    """Options a statement accepts: those of the analyses it runs (`analyze NAME`: of NAME alone)."""
    names = (analysis,) if kind == "analyze" else statement_analyses(kind)
    return {p.name: p for n in names if n in ANALYSES for p in ANALYSES[n].options}


REPORT_FORMATS = ("html", "pdf")
REPORT_SECTIONS = (
    "summary",
    "sanity",
    "methods",
    "thresholds",
    "domains",
    "top_categories",
    "wordclouds",
    "tasks",
    "changes",
    "learned",
    "missed",
    "neurons",
    "keywords",
    "evidence",
    "calibration",
    "reviews",
    "appendix",
)


def lookup_function(kind: str, name: str) -> Function | None:
    """The function a study names `name` (its name or an alias); `kind` is a declaration kind or "similarity"."""
    table = SIMILARITIES if kind == "similarity" else SOURCES[kind]
    for f in table.values():
        if name == f.name or name in f.aliases:
            return f
    return None


def suggestion_pool(kind: str) -> list[str]:
    """Every spelling a study may use for a function of `kind` ("probe", ..., "similarity"): the
    candidates for "did you mean"."""
    table = SIMILARITIES if kind == "similarity" else SOURCES[kind]
    return [n for f in table.values() for n in (f.name, *f.aliases)]


# --------------------------------------------------------------------------- extension

#: the function tables a plugin may add to: declaration kinds, and "similarity"
FUNCTION_KINDS = (*SOURCES, "similarity")
SIMILARITY_FAMILIES = ("topk", "stats", "full")


class VocabularyError(DissectStudyError):
    """A plugin tried to add a function the language cannot take (unknown kind, name taken)."""


def register_function(kind: str, function: Function) -> Function:
    """Add a source or similarity function to the language, so `dissect-study check` accepts it.

    Why here and not in the engine: the checker validates studies without
    importing torch, so a plugin's vocabulary (name, parameters, defaults) must be
    data on the language side; its implementation registers separately in
    `engine/registry.py`.  `kind` is "concepts", "probe", "dissector", "target" or
    "similarity".  Registering an equal `Function` again is a no-op that returns
    the one registered first (a module imported twice); a different function under a taken name or alias is an
    error, so a plugin can never silently replace a built-in.  See docs/EXTENDING.md.
    """
    if kind not in FUNCTION_KINDS:
        raise VocabularyError(
            f"cannot register {function.name!r}: kind must be one of {', '.join(FUNCTION_KINDS)}, not {kind!r}"
        )
    if kind == "similarity" and function.family not in SIMILARITY_FAMILIES:
        raise VocabularyError(
            f"similarity {function.name!r}: family must be one of {', '.join(SIMILARITY_FAMILIES)}, "
            f"not {function.family!r} (it decides which probe images the dissector must embed)"
        )
    table = SIMILARITIES if kind == "similarity" else SOURCES[kind]
    if table.get(function.name) == function:
        return table[function.name]
    taken = {n: f for f in table.values() for n in (f.name, *f.aliases)}
    for n in (function.name, *function.aliases):
        other = taken.get(n)
        if other is not None and other != function:
            raise VocabularyError(
                f"cannot register {kind} function {function.name!r}: the name {n!r} is already taken by {other.name!r}"
            )
    table[function.name] = function
    return function
