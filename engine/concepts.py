"""Concept sets: the text vocabulary a dissection labels neurons with.

A concept set is parsed ONCE into a list of `Concept`s whose positions are the
columns of the similarity matrix S.  The reference code parsed the file twice
(with and without blank lines) and shifted every label after a blank line
(docs/METHOD.md §11.6); here a blank line is dropped, warned about, and never
counted.

Sources (the `concepts` declaration's functions, `dsl/vocabulary.py`; each loader
registers itself with `@CONCEPT_LOADERS.register(name)`):

* ``shipped``  a CSV in the `dissect_study.concept_sets` package (``mammo_v1``);
* ``txt``      one concept per line (CLIP-Dissect's 20k list), optionally with a
               JSON/xlsx category map and a JSON task map;
* ``csv``      one row per concept with category columns;
* ``xlsx``     the Mammo-CLIP Dissect category workbook: one sheet per broad
               category, one column per subcategory (docs/METHOD.md §6.3);
* ``json``     ``{category: [concept, ...]}`` or ``{category: {subcategory: [...]}}``.

Normalisation is the same everywhere: surrounding whitespace stripped, runs of
whitespace collapsed, duplicates found case-insensitively (the first spelling
wins -- the BERT tokenizers lower-case anyway, so "BI-RADS" and "Bi-RADS" are one
token sequence).  Warnings, never silent fixes, are returned for duplicates,
blank lines, overlapping forms ("density"/"densities") and uncategorised
concepts, so the report can show them.

Task tags (mass / calcification / density) are explicit lists in the set; they
are never guessed from substrings (docs/METHOD.md §6.4: no substring rule reproduces
the paper's 73/79/38).
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dissect_study.dsl.vocabulary import CONCEPT_SOURCES
from dissect_study.engine.files import regular_file
from dissect_study.engine.registry import CONCEPT_LOADERS
from dissect_study.errors import DissectStudyError

MAMMO = "mammography"
NON_MAMMO = "non-mammography"
DOMAINS = (MAMMO, NON_MAMMO)
TASKS = ("mass", "calcification", "density")

#: broad categories of the shipped set, in the order every figure and table uses
MAMMO_CATEGORIES = (
    "Breast anatomy or structure",
    "Breast locations",
    "Findings and characterizations",
    "Interpretations",
    "Action or follow-up",
)
NON_MAMMO_CATEGORY = "Environmental and natural"

#: how many examples a warning names before it says "and N more"
_EXAMPLES = 8


class ConceptSetError(DissectStudyError):
    """A concept-set file that cannot be used; the message says which file/key and how to fix it."""


@dataclass(frozen=True)
class Concept:
    concept_id: int  # 0-based position: the column of S
    text: str
    category: str | None
    subcategory: str | None
    domain: str
    tasks: tuple[str, ...] = ()


@dataclass
class ConceptSet:
    name: str
    concepts: list[Concept]
    warnings: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.concepts]

    def __len__(self) -> int:
        return len(self.concepts)

    def to_frame(self) -> pd.DataFrame:
        """Rows for the store's `concepts` table (run_id is added by the store)."""
        return pd.DataFrame(
            {
                "concept_set": [self.name] * len(self.concepts),
                "concept_id": [c.concept_id for c in self.concepts],
                "concept": [c.text for c in self.concepts],
                "category": [c.category for c in self.concepts],
                "subcategory": [c.subcategory for c in self.concepts],
                "domain": [c.domain for c in self.concepts],
                "tasks": [list(c.tasks) for c in self.concepts],
            },
            columns=["concept_set", "concept_id", "concept", "category", "subcategory", "domain", "tasks"],
        )

    def category_order(self) -> list[str]:
        """Broad categories present, in the fixed order of the figures."""
        return category_order(c.category for c in self.concepts)


# --------------------------------------------------------------------------- normalisation


def clean_text(s: str) -> str:
    """Strip and collapse whitespace; the only change ever made to a concept's spelling."""
    return re.sub(r"\s+", " ", s).strip()


def category_key(name: str) -> str:
    """Fold a category name for matching: case, underscores, hyphens and spacing ignored.

    So the paper's sheet "Environmental_and_Natural" and our "Environmental and
    natural", or "Action or follow up" and "Action or follow-up", are one category
    for ordering and filters -- while the stored name stays as written.
    """
    return re.sub(r"[\s_\-]+", " ", name.lower()).strip()


_ORDER_KEYS = [category_key(c) for c in MAMMO_CATEGORIES]


def category_order(categories: Iterable[str | None]) -> list[str]:
    """The five mammography categories (shipped order), then others alphabetically,
    then "Environmental and natural" last (it is the non-mammography block)."""
    present = sorted({c for c in categories if c is not None})

    def rank(c: str) -> tuple[int, int, str]:
        k = category_key(c)
        if k in _ORDER_KEYS:
            return (0, _ORDER_KEYS.index(k), c)
        if k == category_key(NON_MAMMO_CATEGORY):
            return (2, 0, c)
        return (1, 0, c.lower())

    return sorted(present, key=rank)


def _fold_word(w: str) -> str:
    """Crude plural folding for the overlap warning only (densities -> density, masses -> mass)."""
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("sses"):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def fold_forms(text: str) -> str:
    """Key under which "density"/"densities" or "lymph-node"/"lymph nodes" coincide."""
    words = re.sub(r"[\s\-]+", " ", text.lower()).strip().split(" ")
    return " ".join(_fold_word(w) for w in words)


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:_EXAMPLES])
    return shown + (f" and {len(items) - _EXAMPLES} more" if len(items) > _EXAMPLES else "")


def _dedupe(texts: list[str], where: str, warnings: list[str]) -> list[str]:
    """Drop case-insensitive duplicates (first spelling kept), with one warning."""
    seen: dict[str, str] = {}
    out: list[str] = []
    dups: list[str] = []
    for t in texts:
        k = t.lower()
        if k in seen:
            dups.append(t if t == seen[k] else f"{t!r} (= {seen[k]!r})")
            continue
        seen[k] = t
        out.append(t)
    if dups:
        warnings.append(
            f"{where}: {len(dups)} duplicate concept(s) dropped (case-insensitive; first spelling kept): {_examples(dups)}"
        )
    return out


#: CSV column in which a concept declares itself a deliberate variant of another ("densities" -> "density")
VARIANT_COLUMN = "variant_of"


def overlap_warnings(texts: list[str], where: str, variants: dict[str, str] | None = None) -> list[str]:
    """Name groups of concepts that differ only by plural/hyphen/case ("density"/"densities").

    They are kept (the paper keeps them by design, docs/METHOD.md §6.3) but they
    split neurons between near-identical labels, so the user should know -- unless
    the set declares the pair intended: `variants` maps a concept (lower case) to
    the concept it is a deliberate variant of (a CSV's `variant_of` column).  A
    group stays silent only when every member but one is declared a variant of
    another member of the same group; a declaration naming no concept of the set
    is itself a warning, so a typo cannot silence anything.
    """
    declared = {k.lower(): clean_text(v).lower() for k, v in (variants or {}).items() if clean_text(v)}
    present = {t.lower() for t in texts}
    dangling = [
        f"{t!r} -> {declared[t.lower()]!r}"
        for t in texts
        if t.lower() in declared and declared[t.lower()] not in present
    ]
    groups: dict[str, list[str]] = {}
    for t in texts:
        groups.setdefault(fold_forms(t), []).append(t)
    multi = []
    for g in groups.values():
        members = {t.lower() for t in g}
        undeclared = [t for t in g if declared.get(t.lower()) not in members - {t.lower()}]
        if len(g) > 1 and len(undeclared) > 1:
            multi.append(" / ".join(g))
    out = []
    if dangling:
        out.append(
            f"{where}: {len(dangling)} {VARIANT_COLUMN} entr(y/ies) name no concept of the set and were "
            f"ignored: {_examples(dangling)}"
        )
    if multi:
        out.append(
            f"{where}: {len(multi)} group(s) of overlapping forms (kept; labels may split between them; "
            f"a {VARIANT_COLUMN} column declares intended ones): {_examples(multi)}"
        )
    return out


# --------------------------------------------------------------------------- reading helpers


def _resolve(path: str, base_dir: str | Path, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    if not p.exists():
        raise ConceptSetError(
            f"{p}: concept file not found ({key}={path!r}). Paths are relative to the study file's folder ({base_dir}); "
            "check the spelling or give an absolute path."
        )
    return regular_file(p, f"concept file ({key}={path!r})", ConceptSetError)


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConceptSetError(f"{p}: not UTF-8 text ({e}); save the file as UTF-8.") from None


def _read_json(p: Path) -> Any:
    try:
        return json.loads(_read_text(p))
    except json.JSONDecodeError as e:
        raise ConceptSetError(f"{p}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}.") from None


def _parse_tasks(cell: str | None) -> tuple[str, ...]:
    if cell is None:
        return ()
    tags = [clean_text(t).lower() for t in re.split(r"[;,]", str(cell))]
    return tuple(dict.fromkeys(t for t in tags if t))


def _domain_for(category: str | None, non_mammo: str = NON_MAMMO_CATEGORY) -> str:
    """Non-mammography iff the category is the non-mammography block; uncategorised
    concepts count as mammography (the reference notebook's NaN rule, docs/METHOD.md §5.4)."""
    if category is not None and category_key(category) == category_key(non_mammo):
        return NON_MAMMO
    return MAMMO


@dataclass
class _Cat:
    category: str | None
    subcategory: str | None
    domain: str


def _task_map(
    path: str | None, base_dir: str | Path, texts: list[str], warnings: list[str]
) -> dict[str, tuple[str, ...]] | None:
    """{concept_lower: (task, ...)} from a JSON {task: [concept, ...]} file, or None."""
    if not path:
        return None
    p = _resolve(path, base_dir, "tasks")
    data = _read_json(p)
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConceptSetError(
            f'{p}: a task map must be a JSON object {{task: [concept, ...]}}, e.g. {{"mass": ["oval mass"]}}.'
        )
    known = {t.lower() for t in texts}
    out: dict[str, list[str]] = {}
    unknown: list[str] = []
    for task, items in data.items():
        tag = clean_text(str(task)).lower()
        for i, it in enumerate(items):
            k = _json_text(it, p, f"task {task!r} item {i + 1}").lower()
            if k not in known:
                unknown.append(f"{it!r} ({tag})")
                continue
            if tag not in out.setdefault(k, []):
                out[k].append(tag)
    if unknown:
        warnings.append(
            f"{p.name}: {len(unknown)} task entr(y/ies) name no concept of the set and were ignored: {_examples(unknown)}"
        )
    return {k: tuple(v) for k, v in out.items()}


def _finish(
    name: str,
    texts: list[str],
    cats: dict[str, _Cat],
    tasks: dict[str, tuple[str, ...]],
    warnings: list[str],
    source: dict[str, Any],
    where: str,
    uncategorised_note: str = "",
    variants: dict[str, str] | None = None,
) -> ConceptSet:
    """Build the ConceptSet from de-duplicated texts and lookups keyed by lower-case text."""
    concepts: list[Concept] = []
    missing: list[str] = []
    for i, t in enumerate(texts):
        c = cats.get(t.lower())
        if c is None or c.category is None:
            missing.append(t)
            c = _Cat(None, None, c.domain if c else MAMMO)
        concepts.append(Concept(i, t, c.category, c.subcategory, c.domain, tasks.get(t.lower(), ())))
    if missing:
        warnings.append(
            f"{where}: {len(missing)} concept(s) in no category (counted as domain 'mammography'{uncategorised_note}): {_examples(missing)}"
        )
    warnings.extend(overlap_warnings(texts, where, variants))
    # a subcategory name under two categories would merge in subcategory counts
    owners: dict[str, set[str]] = {}
    for concept in concepts:
        if concept.subcategory and concept.category:
            owners.setdefault(concept.subcategory, set()).add(concept.category)
    shared = sorted(s for s, cs in owners.items() if len(cs) > 1)
    if shared:
        warnings.append(
            f"{where}: subcategory name(s) used under several categories (merged in subcategory counts): {_examples(shared)}"
        )
    if not concepts:
        raise ConceptSetError(f"{where}: the concept set is empty; add at least one concept.")
    return ConceptSet(name=name, concepts=concepts, warnings=warnings, source=source)


# --------------------------------------------------------------------------- txt


def _read_lines(p: Path, warnings: list[str]) -> list[str]:
    raw = _read_text(p).splitlines()
    texts = [clean_text(x) for x in raw]
    blank = sum(1 for x in texts if not x)
    if blank:
        warnings.append(f"{p.name}: {blank} empty line(s) ignored (they never shift concept positions)")
    return _dedupe([x for x in texts if x], p.name, warnings)


@CONCEPT_LOADERS.register("txt")
def load_txt(name: str, params: dict[str, Any], base_dir: str | Path) -> ConceptSet:
    p = _resolve(params["path"], base_dir, "path")
    warnings: list[str] = []
    texts = _read_lines(p, warnings)
    cats: dict[str, _Cat] = {}
    note = ""
    if params.get("categories"):
        cp = _resolve(params["categories"], base_dir, "categories")
        if cp.suffix.lower() in (".xlsx", ".xlsm"):
            cats, _order = _xlsx_categories(
                cp,
                params.get("precedence", "last"),
                params.get("non_mammography", "Environmental_and_Natural"),
                warnings,
            )
        else:
            cats, _order = _json_categories(cp, warnings)
        extra = sorted(set(cats) - {t.lower() for t in texts})
        if extra:
            warnings.append(
                f"{cp.name}: {len(extra)} categorised concept(s) are not in {p.name} and were ignored: {_examples(extra)}"
            )
    else:
        note = "; no category map given"
    tasks = _task_map(params.get("tasks"), base_dir, texts, warnings) or {}
    return _finish(
        name,
        texts,
        cats,
        tasks,
        warnings,
        {"func": "txt", "path": str(p), **_opt(params, "categories", "tasks")},
        p.name,
        note,
    )


def _opt(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: params[k] for k in keys if params.get(k) is not None}


# --------------------------------------------------------------------------- csv


def _csv_frame_rows(text: str, where: str) -> tuple[list[str], list[dict[str, str]]]:
    try:
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
    except csv.Error as e:
        raise ConceptSetError(f"{where}: unreadable CSV ({e}).") from None
    return list(reader.fieldnames or []), rows


def _load_csv_text(
    name: str, text: str, where: str, params: dict[str, Any], base_dir: str | Path, source: dict[str, Any]
) -> ConceptSet:
    header, rows = _csv_frame_rows(text, where)
    col = {k: params.get(f"{k}_column", k) for k in ("concept", "category", "subcategory", "domain", "tasks")}
    if col["concept"] not in header:
        raise ConceptSetError(
            f"{where}: no column {col['concept']!r} (columns found: {', '.join(header) or 'none'}); "
            'name the concept column with concept_column="...".'
        )
    warnings: list[str] = []
    absent = [f"{k}_column={col[k]!r}" for k in ("category", "subcategory", "domain", "tasks") if col[k] not in header]
    if absent and len(absent) < 4:
        warnings.append(
            f"{where}: column(s) not found, left empty: {', '.join(absent)} (columns found: {', '.join(header)})"
        )
    texts: list[str] = []
    cats: dict[str, _Cat] = {}
    tasks: dict[str, tuple[str, ...]] = {}
    variants: dict[str, str] = {}  # intended overlapping forms, declared in a `variant_of` column
    blank = 0
    bad_domain: list[str] = []
    for r in rows:
        t = clean_text(r.get(col["concept"]) or "")
        if not t:
            blank += 1
            continue
        texts.append(t)
        k = t.lower()
        if k in cats:
            continue  # duplicate: first row wins (warned by _dedupe)
        cat = clean_text(r.get(col["category"]) or "") or None
        sub = clean_text(r.get(col["subcategory"]) or "") or None
        dom = clean_text(r.get(col["domain"]) or "").lower() or None
        if dom is not None and dom not in DOMAINS:
            bad_domain.append(f"{t!r}: {dom!r}")
            dom = None
        cats[k] = _Cat(cat, sub, dom or _domain_for(cat))
        tasks[k] = _parse_tasks(r.get(col["tasks"]))
        if r.get(VARIANT_COLUMN):
            variants[k] = r[VARIANT_COLUMN]
    if bad_domain:
        raise ConceptSetError(
            f"{where}: domain must be 'mammography' or 'non-mammography'; found {_examples(bad_domain)}."
        )
    if blank:
        warnings.append(f"{where}: {blank} row(s) with an empty concept ignored")
    texts = _dedupe(texts, where, warnings)
    extra = _task_map(params.get("tasks"), base_dir, texts, warnings)
    if extra is not None:
        tasks = {k: tuple(dict.fromkeys(tasks.get(k, ()) + extra.get(k, ()))) for k in set(tasks) | set(extra)}
    return _finish(name, texts, cats, tasks, warnings, source, where, variants=variants)


@CONCEPT_LOADERS.register("csv")
def load_csv(name: str, params: dict[str, Any], base_dir: str | Path) -> ConceptSet:
    p = _resolve(params["path"], base_dir, "path")
    return _load_csv_text(
        name, _read_text(p), p.name, params, base_dir, {"func": "csv", "path": str(p), **_opt(params, "tasks")}
    )


def shipped_names() -> list[str]:
    root = importlib.resources.files("dissect_study.concept_sets")
    return sorted(e.name[: -len(".csv")] for e in root.iterdir() if e.name.endswith(".csv"))


@CONCEPT_LOADERS.register("shipped")
def load_shipped(name: str, params: dict[str, Any], base_dir: str | Path) -> ConceptSet:
    set_name = params["name"]
    res = importlib.resources.files("dissect_study.concept_sets") / f"{set_name}.csv"
    if set_name not in shipped_names() or not res.is_file():  # a name, never a path out of the package
        raise ConceptSetError(
            f"no shipped concept set {set_name!r}; shipped sets are: {', '.join(shipped_names()) or 'none'}. "
            'Use txt("file"), csv("file"), xlsx("file") or json("file") for your own.'
        )
    text = res.read_text(encoding="utf-8")
    return _load_csv_text(
        name,
        text,
        f"{set_name}.csv",
        {k: v for k, v in params.items() if k != "name"},
        base_dir,
        {"func": "shipped", "name": set_name, **_opt(params, "tasks")},
    )


# --------------------------------------------------------------------------- xlsx


def _xlsx_categories(
    p: Path, precedence: str, non_mammo: str, warnings: list[str], match: str = "stripped"
) -> tuple[dict[str, _Cat], list[str]]:
    """{concept_lower: category} and the concepts in workbook order (first occurrence).

    Sheet (stripped) = broad category, row-1 header = subcategory, one concept per
    cell below, workbook order sheet -> column -> row.  Cells are matched after
    stripping (so "questionable mass " matches, docs/METHOD.md §6.3); cross-listed
    concepts are resolved by `precedence` ("last" = the reference notebook's
    last-match-wins, which reproduces the paper's 369/394).  `match="exact"`
    keeps cells unstripped, like the notebook's `isin`: a cell with stray spaces
    then matches no concept of a `concepts` txt (reference parity).
    """
    if match not in ("stripped", "exact"):
        raise ConceptSetError(f"{p}: match must be 'stripped' or 'exact', not {match!r}.")
    if precedence not in ("last", "first"):
        raise ConceptSetError(f"{p}: precedence must be 'last' or 'first', not {precedence!r}.")
    try:
        import openpyxl

        wb = openpyxl.load_workbook(p, read_only=True, data_only=True)
    except Exception as e:  # noqa: BLE001 -- zip/xml errors: not a workbook
        raise ConceptSetError(
            f"{p}: cannot read the workbook ({type(e).__name__}: {e}); save it as .xlsx from a spreadsheet program."
        ) from None
    cats: dict[str, _Cat] = {}
    order: list[str] = []
    cross: list[str] = []
    nm_found = False
    try:
        for ws in wb.worksheets:
            category = clean_text(ws.title)
            is_nm = category_key(ws.title) == category_key(non_mammo)
            nm_found |= is_nm
            domain = NON_MAMMO if is_nm else MAMMO
            rows = list(ws.iter_rows(values_only=True))
            if not rows:
                continue
            header = rows[0]
            for j, h in enumerate(header):
                sub = clean_text(str(h)) if h is not None else None
                for r in rows[1:]:
                    v = r[j] if j < len(r) else None
                    if v is None:
                        continue
                    t = clean_text(str(v))
                    if not t:
                        continue
                    k = t.lower() if match == "stripped" else str(v).lower()
                    new = _Cat(category, sub, domain)
                    if k in cats:
                        old = cats[k]
                        if (old.category, old.subcategory) != (new.category, new.subcategory):
                            cross.append(f"{t!r}: {old.category}/{old.subcategory} & {category}/{sub}")
                        if precedence == "last":
                            cats[k] = new
                    else:
                        cats[k] = new
                        order.append(t)
    finally:
        wb.close()
    if not nm_found:
        warnings.append(
            f"{p.name}: no sheet named {non_mammo!r} (non_mammography); every concept counts as mammography"
        )
    if cross:
        warnings.append(
            f"{p.name}: {len(cross)} concept(s) listed in several places; the {precedence} listing wins: {_examples(cross)}"
        )
    return cats, order


@CONCEPT_LOADERS.register("xlsx")
def load_xlsx(name: str, params: dict[str, Any], base_dir: str | Path) -> ConceptSet:
    p = _resolve(params["path"], base_dir, "path")
    warnings: list[str] = []
    cats, order = _xlsx_categories(
        p,
        params.get("precedence", "last"),
        params.get("non_mammography", "Environmental_and_Natural"),
        warnings,
        params.get("match", "stripped"),
    )
    if params.get("concepts"):
        tp = _resolve(params["concepts"], base_dir, "concepts")
        texts = _read_lines(tp, warnings)
        extra = sorted(set(cats) - {t.lower() for t in texts})
        if extra:
            warnings.append(
                f"{p.name}: {len(extra)} workbook concept(s) are not in {tp.name} and were ignored: {_examples(extra)}"
            )
    else:
        texts = _dedupe(order, p.name, warnings)
    tasks = _task_map(params.get("tasks"), base_dir, texts, warnings) or {}
    note = "; the reference notebook counts them as mammography too (docs/METHOD.md §5.4)"
    source = {
        "func": "xlsx",
        "path": str(p),
        "precedence": params.get("precedence", "last"),
        "non_mammography": params.get("non_mammography", "Environmental_and_Natural"),
        "match": params.get("match", "stripped"),
        **_opt(params, "concepts", "tasks"),
    }
    return _finish(name, texts, cats, tasks, warnings, source, p.name, note)


# --------------------------------------------------------------------------- json


def _json_text(value: Any, p: Path, where: str) -> str:
    """A concept (or task/category name) from a JSON file: a string, never `null` or an object.

    Why refuse: str() of anything else named concepts "None" or "{'x': 'y'}" without a word.
    """
    if isinstance(value, str):
        return clean_text(value)
    found = "null" if value is None else json.dumps(value)[:60]
    raise ConceptSetError(f"{p}: {where}: expected a concept (a string in double quotes), found {found}.")


def _json_categories(p: Path, warnings: list[str]) -> tuple[dict[str, _Cat], list[str]]:
    data = _read_json(p)
    if isinstance(data, list):
        texts = [_json_text(x, p, f"item {i + 1}") for i, x in enumerate(data)]
        return {}, [t for t in texts if t]
    if not isinstance(data, dict):
        raise ConceptSetError(
            f"{p}: expected a JSON object {{category: [concept, ...]}} or {{category: {{subcategory: [...]}}}}."
        )
    cats: dict[str, _Cat] = {}
    order: list[str] = []
    cross: list[str] = []

    def put(value: Any, category: str, sub: str | None, where: str) -> None:
        t = _json_text(value, p, where)
        if not t:
            return
        k = t.lower()
        if k in cats:
            cross.append(f"{t!r}")
        else:
            order.append(t)
        cats[k] = _Cat(category, sub, _domain_for(category))  # last listing wins, as in the xlsx

    for cat, body in data.items():
        category = clean_text(str(cat))
        if isinstance(body, list):
            for i, t in enumerate(body):
                put(t, category, None, f"{cat!r} item {i + 1}")
        elif isinstance(body, dict):
            for sub, items in body.items():
                if not isinstance(items, list):
                    raise ConceptSetError(
                        f"{p}: {cat!r} -> {sub!r} must be a list of concepts, not {type(items).__name__}."
                    )
                for i, t in enumerate(items):
                    put(t, category, clean_text(str(sub)), f"{cat!r} -> {sub!r} item {i + 1}")
        else:
            raise ConceptSetError(
                f"{p}: category {cat!r} must map to a list or to {{subcategory: [...]}}, not {type(body).__name__}."
            )
    if cross:
        warnings.append(
            f"{p.name}: {len(cross)} concept(s) listed more than once; the last listing wins: {_examples(cross)}"
        )
    return cats, order


@CONCEPT_LOADERS.register("json")
def load_json(name: str, params: dict[str, Any], base_dir: str | Path) -> ConceptSet:
    p = _resolve(params["path"], base_dir, "path")
    warnings: list[str] = []
    cats, order = _json_categories(p, warnings)
    texts = _dedupe(order, p.name, warnings)
    tasks = _task_map(params.get("tasks"), base_dir, texts, warnings) or {}
    return _finish(
        name, texts, cats, tasks, warnings, {"func": "json", "path": str(p), **_opt(params, "tasks")}, p.name
    )


# --------------------------------------------------------------------------- entry point

#: `concepts NAME = func(...)`: (NAME, validated parameters, study folder) -> ConceptSet
ConceptLoader = Callable[[str, dict[str, Any], "str | Path"], ConceptSet]


def load_concept_set(name: str, func: str, params: dict[str, Any], base_dir: str | Path) -> ConceptSet:
    """Load the concept set declared as `concepts <name> = <func>(<params>)`.

    `params` are the checker-validated parameters (paths relative to `base_dir`,
    the study file's folder); the loader is the one registered as `func`
    (`@CONCEPT_LOADERS.register`).  Raises ConceptSetError with a one-paragraph
    message for user mistakes.
    """
    if func not in CONCEPT_LOADERS:
        raise ConceptSetError(
            f"concepts {name}: unknown source {func!r}; use one of {', '.join(CONCEPT_LOADERS.names())}."
        )
    spec = CONCEPT_SOURCES.get(func)
    for p in spec.params if spec is not None else ():
        if p.required and not params.get(p.name):
            raise ConceptSetError(f"concepts {name}: {func}(...) needs {p.name}=...")
    cs = CONCEPT_LOADERS.get(func)(name, dict(params), base_dir)
    cs.source.setdefault("func", func)
    return cs
