"""Annotations: what a probe knows about each image, and which concepts that proves.

Why a module of its own: label evidence (engine/analyses/evidence.py), the
calibration bench and the known-neuron test all need the same two things --
per-image annotations (the probe's item attributes, or a user CSV) and *links*
saying which concept phrases an annotation proves present (and, by its absence,
absent).  Links are keyed by (attribute, value) in the probe vocabulary shared by
the phantom and VinDr probes:

* strict phrases: the phantom ground truth (engine/phantom/vocabulary.py
  GROUND_TRUTH_CONCEPTS) plus the VinDr-only annotations (BI-RADS, finding
  categories);
* synonyms: further phrases of the shipped concept set (concept_sets/mammo_v1.csv)
  that name the same thing ("fatty breast", "BI-RADS density A", "CC view" ...).
  Lenient matching accepts them, strict matching does not.

Unknown is not absent: an image whose attribute is missing (VinDr without a
findings CSV, an image a user CSV does not list) gets NaN in the concept vector
and is left out of every test.  Probes with full ground truth (the phantom) say
so with `has_ground_truth`, and a missing detail key there means "absent".
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dissect_study.engine.phantom.vocabulary import DENSITIES, GROUND_TRUTH_CONCEPTS
from dissect_study.errors import DissectStudyError


class AnnotationError(DissectStudyError):
    """An annotation CSV that cannot be read or names concepts the concept set lacks."""


Key = tuple[str, Any]

#: VinDr-Mammo annotations beyond the phantom's vocabulary: finding categories of
#: finding_annotations.csv (attribute `findings`, a list) and breast-level BI-RADS
VINDR_CONCEPTS: dict[Key, tuple[str, ...]] = {
    ("findings", "Mass"): ("mass",),
    ("findings", "Suspicious Calcification"): ("suspicious calcifications",),
    ("findings", "Architectural Distortion"): ("architectural distortion",),
    ("findings", "Asymmetry"): ("asymmetry",),
    ("findings", "Focal Asymmetry"): ("focal asymmetry",),
    ("findings", "Global Asymmetry"): ("global asymmetry",),
    ("findings", "Skin Thickening"): ("skin thickening",),
    ("findings", "Skin Retraction"): ("skin retraction",),
    ("findings", "Nipple Retraction"): ("nipple retraction",),
    ("findings", "Suspicious Lymph Node"): ("suspicious lymph node",),
    **{("birads", n): (f"BI-RADS {n}",) for n in range(7)},
}

#: further phrases of the shipped concept set naming the same annotation (lenient matching)
SYNONYMS: dict[Key, tuple[str, ...]] = {
    ("density", "A"): (
        "fatty breast",
        "predominantly fatty",
        "BI-RADS density A",
        "breast composition A",
        "nondense breast",
        "low breast density",
    ),
    ("density", "B"): (
        "scattered areas of fibroglandular density",
        "BI-RADS density B",
        "breast composition B",
    ),
    ("density", "C"): (
        "heterogeneous density",
        "dense breast",
        "BI-RADS density C",
        "breast composition C",
        "high breast density",
    ),
    ("density", "D"): ("dense breast", "BI-RADS density D", "breast composition D", "high breast density"),
    ("view", "CC"): ("CC view",),
    ("view", "MLO"): ("MLO view",),
    ("implant", True): ("silicone implant", "saline implant"),
    ("mass", True): ("masses", "lesion", "solid mass"),
    ("calcification", True): ("calcifications", "microcalcifications", "malignant calcifications"),
    ("benign_calcification", True): ("calcifications", "benign-appearing calcifications"),
    ("mass_margin", "spiculated"): ("spiculated mass", "spiculated", "spiculations"),
    ("mass_margin", "circumscribed"): ("circumscribed mass", "circumscribed", "well-defined margin"),
    ("mass_margin", "indistinct"): ("indistinct", "ill-defined margin"),
    ("mass_margin", "microlobulated"): ("microlobulated",),
    ("mass_margin", "obscured"): ("partially obscured margin",),
    ("mass_shape", "oval"): ("oval", "oval shape"),
    ("mass_shape", "round"): ("round", "round shape"),
    ("mass_shape", "irregular"): ("irregular", "irregular shape"),
    ("mass_density", "high"): ("hyperdense mass",),
    ("mass_density", "equal"): ("isodense mass",),
    ("mass_density", "fat"): ("fat-density lesion", "radiolucent mass"),
    ("calc_distribution", "grouped"): ("clustered calcifications", "cluster of calcifications", "grouped distribution"),
    ("calc_distribution", "linear"): ("linear distribution",),
    ("calc_distribution", "segmental"): ("segmental distribution",),
    ("calc_distribution", "regional"): ("regional distribution",),
    ("calc_distribution", "diffuse"): ("diffuse distribution", "scattered calcifications"),
    ("calc_morphology", "fine linear"): ("fine linear branching calcifications", "branching calcifications"),
    ("calc_morphology", "fine pleomorphic"): ("pleomorphic calcifications",),
    ("calc_morphology", "rim"): ("eggshell calcifications",),
    ("architectural_distortion", True): ("distortion", "parenchymal distortion"),
    ("lymph_node", "intramammary"): ("lymph node", "lymph nodes"),
    ("lymph_node", "axillary"): ("lymph node", "lymph nodes"),
    ("skin_marker", True): ("nipple marker", "scar marker"),
    ("findings", "Mass"): ("masses", "lesion"),
    ("findings", "Suspicious Calcification"): ("calcification", "calcifications", "microcalcifications"),
    ("findings", "Architectural Distortion"): ("distortion", "parenchymal distortion"),
    ("findings", "Suspicious Lymph Node"): ("abnormal lymph node",),
}

#: the strict phrases of every shipped annotation
STRICT_CONCEPTS: dict[Key, tuple[str, ...]] = {**GROUND_TRUTH_CONCEPTS, **VINDR_CONCEPTS}


def annotation_name(key: Key) -> str:
    attr, value = key
    return attr if value is True else f"{attr}={value}"


def concept_group(key: Key, lenient: bool) -> tuple[str, ...]:
    """Phrases that correctly name annotation `key`: strict ones, plus synonyms when lenient."""
    phrases = STRICT_CONCEPTS.get(key, ())
    if lenient:
        phrases = tuple(dict.fromkeys(phrases + SYNONYMS.get(key, ())))
    return phrases


def normalise_phrase(s: str) -> str:
    """A phrase as concept matching compares it: lower case, runs of white space as one space."""
    return " ".join(str(s).lower().split())


def group_ids(key: Key, concept_texts: Sequence[str], lenient: bool) -> set[int]:
    """Concept ids (columns of S) of the phrases naming `key` that the concept set holds."""
    want = {normalise_phrase(p) for p in concept_group(key, lenient)}
    return {i for i, t in enumerate(concept_texts) if normalise_phrase(t) in want}


def indicator(attributes: Sequence[dict[str, Any]], key: Key, complete: bool) -> np.ndarray:
    """1 / 0 per image for annotation `key`; NaN where unknown (never, when `complete`)."""
    attr, value = key
    out = np.empty(len(attributes))
    for i, d in enumerate(attributes):
        got = d.get(attr)
        if got is None:
            out[i] = 0.0 if complete else np.nan
        elif isinstance(got, list | tuple | set):
            out[i] = float(value in got)
        elif value is True:
            out[i] = float(bool(got))
        else:
            out[i] = float(got == value)
    return out


def probe_keys(attributes: Sequence[dict[str, Any]]) -> list[Key]:
    """The shipped annotations this probe's images carry (an attribute seen on any image)."""
    seen = {k for d in attributes for k, v in d.items() if v is not None}
    return [key for key in STRICT_CONCEPTS if key[0] in seen]


@dataclass(frozen=True)
class ConceptVector:
    """One concept's vector over the probe and the annotations it was built from."""

    concept_id: int
    annotation: str
    values: np.ndarray


def concept_vectors(
    attributes: Sequence[dict[str, Any]],
    concept_texts: Sequence[str],
    complete: bool,
    lenient: bool = True,
    extra: dict[str, np.ndarray] | None = None,
) -> dict[int, tuple[str, np.ndarray]]:
    """concept_id -> (annotation description, 1/0/NaN vector) for every linked concept.

    A concept linked to several annotations ("calcification": suspicious or benign
    ones) is present where any of them is, absent where all are known absent.
    `extra` maps a concept phrase to a user vector (CSV annotations), which wins.
    """
    keys = probe_keys(attributes)
    pos = {normalise_phrase(t): i for i, t in enumerate(concept_texts)}
    linked: dict[int, list[Key]] = {}
    for key in keys:
        for p in concept_group(key, lenient):
            if normalise_phrase(p) in pos:
                linked.setdefault(pos[normalise_phrase(p)], []).append(key)
    out: dict[int, tuple[str, np.ndarray]] = {}
    for cid, ks in linked.items():
        vecs = np.stack([indicator(attributes, k, complete) for k in ks])
        any_pos = np.nanmax(np.where(np.isnan(vecs), -1, vecs), axis=0) == 1
        all_known = ~np.isnan(vecs).any(0)
        v = np.where(any_pos, 1.0, np.where(all_known, 0.0, np.nan))
        out[cid] = (" | ".join(annotation_name(k) for k in ks), v)
    for phrase, v in (extra or {}).items():
        out[pos[normalise_phrase(phrase)]] = (f"csv:{phrase}", np.asarray(v, dtype=np.float64))
    return out


# ----------------------------------------------------------------------------- ground truth


def attribute_matrix(attributes: Sequence[dict[str, Any]], keys: Iterable[Key]) -> tuple[list[Key], np.ndarray]:
    """The probe's complete annotations as an N x A 0/1 matrix (keys with unknowns dropped)."""
    kept, cols = [], []
    for key in keys:
        v = indicator(attributes, key, complete=True)
        kept.append(key)
        cols.append(v)
    if not cols:
        return [], np.zeros((len(attributes), 0))
    return kept, np.stack(cols, axis=1)


def ground_truth_indicators(
    attributes: Sequence[dict[str, Any]], concept_texts: Sequence[str] | None = None, min_positives: int = 5
) -> tuple[list[Key], np.ndarray]:
    """The probe's ground-truth attribute values with `min_positives` positives and negatives, as N x A 0/1.

    With `concept_texts`, only values some phrase of that concept set names (strictly) are kept:
    a value no label can name cannot be hit.  The perfect-neuron test's neurons.
    """
    keys = [k for k in GROUND_TRUTH_CONCEPTS if any(k[0] in d for d in attributes)]
    keys, ind = attribute_matrix(attributes, keys)
    n = len(attributes)
    ok = [
        j
        for j, k in enumerate(keys)
        if min_positives <= ind[:, j].sum() <= n - min_positives
        and (concept_texts is None or group_ids(k, concept_texts, False))
    ]
    return [keys[j] for j in ok], ind[:, ok]


def density_keys() -> list[Key]:
    return [("density", d) for d in DENSITIES]


# ----------------------------------------------------------------------------- user CSV


def attribute_names() -> dict[str, Key]:
    """The shipped annotations by the name a user CSV gives them (`density=A`, `mass`, `findings=Mass`)."""
    return {normalise_phrase(annotation_name(k)): k for k in STRICT_CONCEPTS}


def _row_phrases(row: dict[str, str], where: str, pos: dict[str, str], attrs: dict[str, Key]) -> list[str]:
    """The concept phrases one CSV row speaks of: its `concept`, or every phrase naming its `attribute`."""
    concept, attribute = row.get("concept", ""), row.get("attribute", "")
    if bool(concept) == bool(attribute):
        raise AnnotationError(f"{where}: give a concept or an attribute in each row (exactly one of the two)")
    if concept:
        if normalise_phrase(concept) not in pos:
            near = difflib.get_close_matches(normalise_phrase(concept), list(pos), n=1)
            hint = f"; did you mean '{pos[near[0]]}'?" if near else "; use a phrase of the study's concept set"
            raise AnnotationError(f"{where}: concept '{concept}' is not in the concept set{hint}")
        return [pos[normalise_phrase(concept)]]
    key = attrs.get(normalise_phrase(attribute))
    if key is None:
        near = difflib.get_close_matches(normalise_phrase(attribute), list(attrs), n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"known: {', '.join(sorted(attrs)[:12])}, ..."
        raise AnnotationError(f"{where}: attribute '{attribute}' is not a shipped annotation; {hint}")
    group = {normalise_phrase(x) for x in concept_group(key, lenient=True)}
    phrases = [t for norm, t in pos.items() if norm in group]
    if not phrases:
        raise AnnotationError(f"{where}: attribute '{attribute}' names no phrase of the study's concept set")
    return phrases


def load_annotation_csv(
    path: str | Path, image_ids: Sequence[str], concept_texts: Sequence[str]
) -> dict[str, np.ndarray]:
    """Concept vectors from a user CSV with columns image_id, concept and/or attribute[, present].

    Each row says an image shows a concept (`present` 1/true/yes, the default) or
    does not (0/false/no).  A row may name a shipped annotation (`attribute`, e.g.
    `density=A`) instead of a phrase: it then speaks for every phrase of the concept
    set that names it, synonyms included.  An image listed anywhere in the file is
    fully annotated: concepts the file never names for it are absent; images not
    listed are unknown (NaN).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise AnnotationError(f"{p}: cannot read the annotation CSV ({e.strerror or e})") from None
    reader = csv.DictReader(text.splitlines())
    cols = [c.strip() for c in reader.fieldnames or []]
    if "image_id" not in cols or not ({"concept", "attribute"} & set(cols)):
        raise AnnotationError(
            f"{p}:1:1: an annotation CSV needs the columns image_id and concept or attribute (and optionally "
            f"present); this one has {', '.join(cols) or 'none'}"
        )
    pos = {normalise_phrase(t): t for t in concept_texts}
    attrs = attribute_names()
    index = {str(i): n for n, i in enumerate(image_ids)}
    listed: set[int] = set()
    marks: dict[str, dict[int, float]] = {}
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        phrases = _row_phrases(row, f"{p}:{line}:1", pos, attrs)
        flag = row.get("present", "1").lower() or "1"
        if flag not in ("1", "0", "true", "false", "yes", "no"):
            raise AnnotationError(f"{p}:{line}:1: present must be 1/0, true/false or yes/no, got '{row['present']}'")
        i = index.get(row["image_id"])
        if i is None:
            continue  # an image the probe does not hold: not this probe's business
        listed.add(i)
        for phrase in phrases:
            marks.setdefault(phrase, {})[i] = 1.0 if flag in ("1", "true", "yes") else 0.0
    out = {}
    for phrase, m in marks.items():
        v = np.full(len(image_ids), np.nan)
        v[sorted(listed)] = 0.0
        for i, val in m.items():
            v[i] = val
        out[phrase] = v
    return out
