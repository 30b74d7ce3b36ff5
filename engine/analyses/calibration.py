"""The calibration bench: do similarity functions name what a neuron truly responds to?

Why: on phantoms the ground truth of every image is known, so a neuron's
*selectivity* can be measured directly.  The bench (`ground_truth_by_lift`) gives
each neuron the attribute with the highest AUPRC lift over its base rate
(engine/analyses/evidence.py); neurons whose best lift reaches `MIN_LIFT` are
*selective*, and their true group is that attribute's concept phrases -- strict
(engine/phantom/vocabulary.py) or lenient (plus the concept set's synonyms,
engine/annotations.py).  `neuron_selectivity` / `assign_ground_truth` keep the
older AUC >= `min_auc` rule for callers that want it.  Each similarity function's
label is then graded against the group:

* top1_hit / top5_hit (strict) and top1_hit_lenient / top5_hit_lenient --
  fraction of selective neurons whose top-1 / any top-5 label lies in the true
  group (CLIP-Dissect style labelling);
* MAMMI's metrics (docs/METHOD.md §9.2): the predicted set is MAMMI's selection
  (scores > beta * max, none when max <= 0) for `mammi`, the top-1 label for
  every other function (how P-MAMMI evaluated the CLIP-Dissect baseline);
  hit-rate, per-neuron precision / recall / F1 (mean, and s.e. on request);
* mean_label_cosine -- mean over neurons of the mean cosine between predicted
  and true phrases in a sentence-encoder space (the shipped MiniLM), as
  CLIP-Dissect and MAMMI measure "close but not exact" labels.

Two ceilings sit beside the measured rate (`bench`): *perfect neurons*
(activations equal to each attribute's indicator, scored through the real P:
what the dissector allows) and *oracle P* (the study's neurons scored through
the ground-truth P: what the similarity function and its parameters allow).

Everything here is a pure function of arrays and tables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from dissect_study.engine.annotations import normalise_phrase
from dissect_study.engine.phantom.vocabulary import GROUND_TRUTH_CONCEPTS, attribute_matches

#: columns of the DuckDB `calibration` table, minus run_id
STORE_COLUMNS = (
    "model",
    "layer",
    "similarity",
    "n_selective",
    "top1_hit",
    "top5_hit",
    "mammi_hit_rate",
    "precision",
    "recall",
    "f1",
    "mean_label_cosine",
    "bench",
    "top1_hit_lenient",
    "top5_hit_lenient",
)
#: `bench` values: the measured labels, and the two ceilings of docs/METHOD.md (label evidence)
BENCHES = ("measured", "perfect_neurons", "oracle_p")
#: a neuron's best attribute must beat its base rate by this normalised AUPRC lift to count as selective
MIN_LIFT = 0.25
MAMMI_NAMES = ("mammi", "mammi_adaptive")


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def auc_columns(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of every column of `acts` (N x K) for boolean `labels` (N,).

    Mann-Whitney form with average ranks for ties, so a constant neuron scores
    exactly 0.5.  NaN when only one class is present.
    """
    a = _np(acts)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(a.shape[1], np.nan)
    ranks = pd.DataFrame(a).rank(axis=0, method="average").to_numpy()
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def neuron_selectivity(acts: Any, attributes: list[dict[str, Any]], min_positives: int = 5) -> pd.DataFrame:
    """AUC of each neuron for each ground-truth attribute value present in the probe.

    Returns columns (unit, attribute, value, auc, n_pos).  Attribute values seen
    fewer than `min_positives` times (or on all but that many images) are skipped:
    an AUC from three images says nothing.
    """
    a = _np(acts)
    if a.ndim != 2 or a.shape[0] != len(attributes):
        raise ValueError(
            f"neuron_selectivity: activations have shape {a.shape}, expected ({len(attributes)}, K) -- one row per probe image"
        )
    rows = []
    units = np.arange(a.shape[1])
    for attr, value in GROUND_TRUTH_CONCEPTS:
        if not any(attr in d for d in attributes):
            continue
        y = np.array([attribute_matches(d, attr, value) for d in attributes])
        n_pos = int(y.sum())
        if n_pos < min_positives or len(y) - n_pos < min_positives:
            continue
        auc = auc_columns(a, y)
        rows.append(
            pd.DataFrame({"unit": units, "attribute": attr, "value": [value] * len(units), "auc": auc, "n_pos": n_pos})
        )
    if not rows:
        return pd.DataFrame(columns=["unit", "attribute", "value", "auc", "n_pos"])
    return pd.concat(rows, ignore_index=True)


def assign_ground_truth(selectivity: pd.DataFrame, min_auc: float = 0.8) -> pd.DataFrame:
    """One row per selective neuron: its most selective attribute value and its true concept group.

    The group is the union of the phrases of *every* attribute value the neuron
    is selective for (a neuron firing for masses, and hence also for high-density
    masses, is rightly called either), best AUC first.
    """
    cols = ["unit", "attribute", "value", "auc", "true_concepts"]
    if selectivity.empty:
        return pd.DataFrame(columns=cols)
    sel = selectivity[selectivity["auc"] >= min_auc].sort_values(
        ["unit", "auc"], ascending=[True, False], kind="mergesort"
    )
    out = []
    for unit, g in sel.groupby("unit", sort=True):
        phrases: list[str] = []
        for attr, value in zip(g["attribute"], g["value"]):
            for p in GROUND_TRUTH_CONCEPTS[(attr, value)]:
                if p not in phrases:
                    phrases.append(p)
        best = g.iloc[0]
        out.append(
            {
                "unit": int(unit),
                "attribute": best["attribute"],
                "value": best["value"],
                "auc": float(best["auc"]),
                "true_concepts": tuple(phrases),
            }
        )
    return pd.DataFrame(out, columns=cols)


def ground_truth_by_lift(
    acts: Any, attributes: list[dict[str, Any]], min_lift: float = MIN_LIFT, min_positives: int = 5
) -> pd.DataFrame:
    """One row per selective neuron: the attribute with the highest AUPRC lift over its base rate.

    Why lift and not AUC: AUC ignores prevalence, so with 17 implants in 400
    phantoms any brightness-driven unit passes AUC >= 0.8 while few of its top
    images hold an implant; AUPRC lift (engine/analyses/evidence.py) does not.
    Columns: unit, attribute, value, lift, true_concepts (strict phrases),
    lenient_concepts (plus every synonym, engine/annotations.py).
    """
    from dissect_study.engine.analyses.evidence import attribute_ranking
    from dissect_study.engine.annotations import attribute_matrix, concept_group

    cols = ["unit", "attribute", "value", "lift", "true_concepts", "lenient_concepts"]
    keys = [k for k in GROUND_TRUTH_CONCEPTS if any(k[0] in d for d in attributes)]
    keys, ind = attribute_matrix(attributes, keys)
    a = _np(acts)
    if a.ndim != 2 or a.shape[0] != len(attributes):
        raise ValueError(
            f"ground_truth_by_lift: activations have shape {a.shape}, expected ({len(attributes)}, K) -- one row per probe image"
        )
    if not keys:
        return pd.DataFrame(columns=cols)
    best, lift = attribute_ranking(a, ind, min_positives=min_positives)
    rows = []
    for unit in np.nonzero((best >= 0) & (np.nan_to_num(lift, nan=-1.0) >= min_lift))[0]:
        key = keys[int(best[unit])]
        rows.append(
            {
                "unit": int(unit),
                "attribute": key[0],
                "value": key[1],
                "lift": float(lift[unit]),
                "true_concepts": concept_group(key, lenient=False),
                "lenient_concepts": concept_group(key, lenient=True),
            }
        )
    return pd.DataFrame(rows, columns=cols)


@functools.lru_cache(maxsize=8)
def _norm_texts(concept_texts: tuple[str, ...]) -> list[str]:
    """The concept set normalised once, not once per graded table."""
    return [normalise_phrase(t) for t in concept_texts]


def mammi_selection(scores: np.ndarray, beta: float = 0.95) -> np.ndarray:
    """Indices MAMMI selects: score > beta * max, best first; none when max <= 0 (docs/METHOD.md §3.6)."""
    mx = float(np.max(scores))
    if not np.isfinite(mx) or mx <= 0:
        return np.array([], dtype=int)
    idx = np.nonzero(scores > beta * mx)[0]
    return idx[np.argsort(-scores[idx], kind="stable")]


def neuron_grades(
    similarity_name: str,
    S: Any,
    concept_texts: list[str],
    truth: pd.DataFrame,
    top_k: int = 5,
    beta: float = 0.95,
) -> pd.DataFrame:
    """Per selective neuron: its labels and how they score against its true group."""
    s = _np(S)
    if s.ndim != 2 or s.shape[1] != len(concept_texts):
        raise ValueError(
            f"calibration: S has shape {s.shape}, expected (K, {len(concept_texts)}) -- neurons x concepts"
        )
    texts = _norm_texts(tuple(concept_texts))
    # one stable sort over all the selective neurons' rows (row by row it is the same order)
    block = s[np.asarray(truth["unit"], dtype=np.int64)] if len(truth) else np.zeros((0, s.shape[1]))
    block = np.where(np.isfinite(block), block, -np.inf)
    orders = np.argsort(-block, axis=1, kind="stable")[:, :top_k]
    rows = []
    for n, (unit, true) in enumerate(zip(truth["unit"], truth["true_concepts"])):
        gt = {normalise_phrase(t) for t in true}
        row, order = block[n], orders[n]
        top = [texts[i] for i in order]
        if similarity_name in MAMMI_NAMES:
            pred = [texts[i] for i in mammi_selection(row, beta)]
        else:
            pred = top[:1]
        pred_set = set(pred) or {"none"}
        inter = len(gt & pred_set)
        precision = inter / len(pred_set)
        recall = inter / len(gt) if gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        rows.append(
            {
                "unit": int(unit),
                "true_concepts": tuple(sorted(gt)),
                "top1": top[0] if top else None,
                "top5": tuple(top),
                "predicted": tuple(pred) if pred else ("none",),
                "top1_hit": bool(top and top[0] in gt),
                "top5_hit": bool(gt & set(top)),
                "mammi_hit": inter > 0,
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "unit",
            "true_concepts",
            "top1",
            "top5",
            "predicted",
            "top1_hit",
            "top5_hit",
            "mammi_hit",
            "precision",
            "recall",
            "f1",
        ],
    )


@dataclass
class PhraseEmbeddings:
    """A sentence encoder that embeds each phrase once per run and then looks it up.

    Why: the bench grades 6 functions x every layer x every model, and each table
    asks the encoder for the same few hundred phrases again (the MiniLM forward
    passes were most of the bench's time).  `prime` embeds every phrase a table
    may ask for (the concept set, the ground-truth groups) in one call up front, so
    the cost is bounded by the concept set; a phrase missed there is embedded on
    first use, once.  A phrase's vector then no longer depends on
    which other phrases shared its batch (padding moves a float32 embedding by
    ~1e-7, nothing more).
    """

    encoder: Callable[[list[str]], Any]
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    def prime(self, phrases: Iterable[str]) -> None:
        missing = sorted({p for p in phrases if p not in self.rows})
        if missing:
            self.rows.update(zip(missing, _np(self.encoder(missing))))

    def __call__(self, phrases: list[str]) -> np.ndarray:
        self.prime(phrases)
        if not phrases:
            return np.zeros((0, 0))
        return np.stack([self.rows[p] for p in phrases])


def bench_phrases(concept_texts: Iterable[str], truth_groups: Iterable[Iterable[str]] = ()) -> list[str]:
    """Every phrase a label cosine may ask for (labels, true groups, MAMMI's empty "none"), normalised
    as `neuron_grades` writes them."""
    out = {normalise_phrase(t) for t in concept_texts} | {normalise_phrase(t) for g in truth_groups for t in g}
    return sorted(out | {"none"})


def _label_cosines(grades: pd.DataFrame, text_encoder: Callable[[list[str]], Any]) -> np.ndarray:
    """Per neuron, mean cosine over all (predicted, true) phrase pairs in the encoder's space."""
    strings = sorted({t for ts in grades["predicted"] for t in ts} | {t for ts in grades["true_concepts"] for t in ts})
    emb = _np(text_encoder(strings))
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    pos = {t: i for i, t in enumerate(strings)}
    out = []
    for pred, true in zip(grades["predicted"], grades["true_concepts"]):
        a = emb[[pos[t] for t in pred]]
        b = emb[[pos[t] for t in true]]
        out.append(float((a @ b.T).mean()))
    return np.array(out)


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    return float(np.mean(x)), float(np.std(x) / np.sqrt(len(x)))


def calibration_table(
    layer: str,
    similarity_name: str,
    S: Any,
    concept_texts: list[str],
    truth: pd.DataFrame,
    text_encoder: Callable[[list[str]], Any] | None = None,
    model: str = "",
    top_k: int = 5,
    beta: float = 0.95,
    with_se: bool = False,
) -> pd.DataFrame:
    """One row for (model, layer, similarity) with the store's `calibration` columns.

    Rates are NaN when the layer has no selective neuron (n_selective = 0);
    mean_label_cosine is NaN without a text encoder.  `with_se` adds
    `<metric>_se` columns (standard errors over neurons) for the report.
    """
    grades = neuron_grades(similarity_name, S, concept_texts, truth, top_k=top_k, beta=beta)
    n = len(grades)
    row: dict[str, Any] = {"model": model, "layer": layer, "similarity": similarity_name, "n_selective": n}
    ses: dict[str, float] = {}
    for col, src in (
        ("top1_hit", "top1_hit"),
        ("top5_hit", "top5_hit"),
        ("mammi_hit_rate", "mammi_hit"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1", "f1"),
    ):
        row[col], ses[f"{col}_se"] = _mean_se(grades[src].to_numpy(dtype=float))
    if text_encoder is not None and n:
        row["mean_label_cosine"], ses["mean_label_cosine_se"] = _mean_se(_label_cosines(grades, text_encoder))
    else:
        row["mean_label_cosine"], ses["mean_label_cosine_se"] = float("nan"), float("nan")
    row["bench"] = "measured"
    row["top1_hit_lenient"] = row["top5_hit_lenient"] = float("nan")
    if "lenient_concepts" in truth.columns:
        lenient = neuron_grades(
            similarity_name,
            S,
            concept_texts,
            truth.assign(true_concepts=truth["lenient_concepts"]),
            top_k=top_k,
            beta=beta,
        )
        row["top1_hit_lenient"] = _mean_se(lenient["top1_hit"].to_numpy(dtype=float))[0]
        row["top5_hit_lenient"] = _mean_se(lenient["top5_hit"].to_numpy(dtype=float))[0]
    if with_se:
        row.update(ses)
    return pd.DataFrame([row])
