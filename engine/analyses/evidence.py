"""Label evidence: is a neuron's label borne out by what the probe's annotations say?

Why: a label is the argmax of a similarity score, which says nothing about whether
it is true.  Following NeuronEval (Oikarinen & Weng, ICML 2025), a label t of
neuron k is checked by comparing the neuron's activations a_k with the concept
vector c_t (1 where an annotation proves t present, 0 where it proves t absent)
using metrics that pass NeuronEval's missing-label and extra-label sanity tests:
AUPRC (read against its base rate, the concept's prevalence), Pearson r, and F1 /
IoU at a prevalence-matched binarisation.  Significance is a one-sided
Mann-Whitney U test (positives activate more), as in INVERT (Bykov et al.), with
Benjamini-Hochberg q-values over all tests of a run.  A label is *supported* at
q < 0.05 with a positive effect (AUPRC above base rate and r > 0).

Everything here is a pure function of arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

#: columns of the DuckDB `label_evidence` table, minus run_id
STORE_COLUMNS = (
    "model",
    "layer",
    "unit",
    "rank",
    "concept_id",
    "concept",
    "annotation",
    "n_images",
    "n_positive",
    "base_rate",
    "auprc",
    "auprc_lift",
    "pearson",
    "f1",
    "iou",
    "binarisation",
    "p_value",
    "q_value",
    "supported",
)
#: the false-discovery rate at which a label counts as supported
ALPHA = 0.05


def average_precision(scores: Any, y: Any) -> float:
    """AUPRC of one score vector: `auprc_columns` for a single column."""
    return float(auprc_columns(np.asarray(scores, dtype=np.float64)[:, None], y)[0])


def _ranked(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: image order by falling activation, and where each tie group ends."""
    order = np.argsort(-acts, axis=0, kind="mergesort")
    s = np.take_along_axis(acts, order, axis=0)
    ends = np.ones(s.shape, dtype=bool)
    ends[:-1] = s[:-1] != s[1:]
    return order, ends


def _ap_ranked(order: np.ndarray, ends: np.ndarray, y: np.ndarray) -> np.ndarray:
    t = y[order]
    tp = np.cumsum(t, axis=0, dtype=np.float64)
    at_end = np.where(ends, tp, 0.0)
    prev = np.vstack([np.zeros((1, tp.shape[1])), np.maximum.accumulate(at_end, axis=0)[:-1]])
    rank = np.arange(1, len(tp) + 1, dtype=np.float64)[:, None]
    return (ends * (tp - prev) * tp / rank).sum(0) / y.sum()


def auprc_columns(acts: Any, y: Any) -> np.ndarray:
    """AUPRC of every column of `acts` (N x K) for boolean `y` (N,), as average precision:
    the sum over distinct thresholds of (R_n - R_{n-1}) * P_n.

    Tied scores form one threshold (no optimistic ordering inside a tie).  NaN
    without positives.
    """
    a = np.asarray(acts, dtype=np.float64)
    t = np.asarray(y, dtype=bool)
    if not t.any():
        return np.full(a.shape[1], np.nan)
    return _ap_ranked(*_ranked(a), t)


def auprc_lift(auprc: Any, base_rate: Any) -> Any:
    """(AUPRC - base rate) / (1 - base rate): 0 at chance, 1 for a perfect ranking.

    Why normalised and not AUPRC / base rate: the ratio rewards rare concepts (a
    1 % concept reaches 100x), so the "most selective attribute" would be whichever
    is rarest; this lift puts every prevalence on one 0..1 scale.
    """
    a = np.asarray(auprc, dtype=np.float64)
    b = np.asarray(base_rate, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b < 1, (a - b) / (1 - b), np.nan)


def pearson_columns(acts: Any, y: Any) -> np.ndarray:
    """Pearson r of every column with the 0/1 vector `y` (point-biserial); NaN for a constant column."""
    a = np.asarray(acts, dtype=np.float64)
    v = np.asarray(y, dtype=np.float64)
    ac = a - a.mean(0)
    vc = v - v.mean()
    den = np.sqrt((ac**2).sum(0) * (vc**2).sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (ac * vc[:, None]).sum(0) / den, np.nan)


def prevalence_binarise(acts: Any, n_positive: int) -> np.ndarray:
    """Per column, True on its `n_positive` most active images (ties: lower image index first).

    Why prevalence-matched: a neuron that ranks the concept's images first then
    scores F1 = IoU = 1, whatever the scale of its activations.
    """
    a = np.asarray(acts, dtype=np.float64)
    out = np.zeros(a.shape, dtype=bool)
    if n_positive <= 0:
        return out
    order = np.argsort(-a, axis=0, kind="mergesort")[:n_positive]
    np.put_along_axis(out, order, True, axis=0)
    return out


def f1_iou_columns(pred: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """F1 and IoU of each boolean column of `pred` against `y`."""
    b = np.asarray(pred, dtype=bool)
    t = np.asarray(y, dtype=bool)[:, None]
    tp = (b & t).sum(0).astype(np.float64)
    fp = (b & ~t).sum(0)
    fn = (~b & t).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    return f1, iou


def mann_whitney_p(acts: Any, y: Any) -> np.ndarray:
    """One-sided Mann-Whitney p per column: do images with the concept activate more?

    Normal approximation with tie correction (scipy); NaN without both classes,
    1.0 for a constant column (no evidence either way).
    """
    a = np.asarray(acts, dtype=np.float64)
    t = np.asarray(y, dtype=bool)
    if t.all() or not t.any():
        return np.full(a.shape[1], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.mannwhitneyu(a[t], a[~t], alternative="greater", axis=0, method="asymptotic").pvalue
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    return np.where(np.isnan(p), 1.0, p)


def benjamini_hochberg(p: Any) -> np.ndarray:
    """Benjamini-Hochberg q-values; NaN entries stay NaN and do not count as tests."""
    pv = np.asarray(p, dtype=np.float64)
    q = np.full(pv.shape, np.nan)
    ok = ~np.isnan(pv)
    if ok.any():
        q[ok] = stats.false_discovery_control(pv[ok], method="bh")
    return q


def binarisation_text(n_positive: int, n_images: int) -> str:
    return f"top {n_positive} of {n_images} activations (prevalence-matched)"


def evidence_for_concept(acts: Any, y: Any) -> pd.DataFrame:
    """Evidence of every column of `acts` (N x K) for one concept vector `y` (1/0, NaN = unknown).

    Images whose annotation is unknown are left out.  Columns: n_images,
    n_positive, base_rate, auprc, auprc_lift, pearson, f1, iou, binarisation,
    p_value (q_value and supported come from `finalise` over the whole run).
    """
    a = np.asarray(acts, dtype=np.float64)
    v = np.asarray(y, dtype=np.float64)
    known = ~np.isnan(v)
    a, t = a[known], v[known] > 0.5
    n, n_pos = int(len(t)), int(t.sum())
    k = a.shape[1]
    base = n_pos / n if n else float("nan")
    testable = 0 < n_pos < n
    if testable:
        auprc = auprc_columns(a, t)
        f1, iou = f1_iou_columns(prevalence_binarise(a, n_pos), t)
        r, p = pearson_columns(a, t), mann_whitney_p(a, t)
    else:
        auprc = f1 = iou = r = p = np.full(k, np.nan)
    return pd.DataFrame(
        {
            "n_images": n,
            "n_positive": n_pos,
            "base_rate": base,
            "auprc": auprc,
            "auprc_lift": auprc_lift(auprc, base) if testable else np.full(k, np.nan),
            "pearson": r,
            "f1": f1,
            "iou": iou,
            "binarisation": binarisation_text(n_pos, n) if testable else None,
            "p_value": p,
        }
    )


def label_evidence(
    acts: Any,
    labels: pd.DataFrame,
    concept_vectors: dict[int, tuple[str, np.ndarray]],
) -> pd.DataFrame:
    """Evidence rows for a layer's labels whose concept an annotation covers.

    `labels` has columns unit, rank, concept_id, concept (the layer's top labels);
    `concept_vectors` maps concept_id -> (annotation description, concept vector).
    Labels without an annotation get no row (the report calls them "no annotation").
    """
    a = np.asarray(acts, dtype=np.float64)
    parts = []
    for cid, g in labels[labels["concept_id"].isin(list(concept_vectors))].groupby("concept_id", sort=True):
        name, y = concept_vectors[int(cid)]
        ev = evidence_for_concept(a[:, g["unit"].to_numpy(dtype=int)], y)
        ev.insert(0, "annotation", name)
        for col in ("concept", "concept_id", "rank", "unit"):
            ev.insert(0, col, g[col].to_numpy())
        parts.append(ev)
    if not parts:
        return pd.DataFrame(columns=[c for c in STORE_COLUMNS if c not in ("model", "layer", "q_value", "supported")])
    return pd.concat(parts, ignore_index=True).sort_values(["unit", "rank"], kind="mergesort", ignore_index=True)


def finalise(evidence: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Add BH q-values over ALL the run's tests and the `supported` verdict."""
    out = evidence.copy()
    out["q_value"] = benjamini_hochberg(out["p_value"].to_numpy(dtype=np.float64))
    positive = (out["auprc"] > out["base_rate"]) & (out["pearson"] > 0)
    out["supported"] = (out["q_value"] < alpha) & positive
    return out


# ----------------------------------------------------------------------------- ceilings


def attribute_ranking(acts: Any, indicators: np.ndarray, min_positives: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron, the attribute with the highest AUPRC lift, and that lift.

    `indicators` is N x A (0/1); attributes with fewer than `min_positives`
    positives (or negatives) are never chosen.  Returns (best index, best lift)
    with index -1 when no attribute qualifies.
    """
    a = np.asarray(acts, dtype=np.float64)
    ind = np.asarray(indicators, dtype=bool)
    k = a.shape[1]
    best = np.full(k, -1)
    lift = np.full(k, -np.inf)
    ranked = _ranked(a)
    for j in range(ind.shape[1]):
        n_pos = int(ind[:, j].sum())
        if n_pos < min_positives or len(ind) - n_pos < min_positives:
            continue
        lj = auprc_lift(_ap_ranked(*ranked, ind[:, j]), n_pos / len(ind))
        better = lj > lift
        best[better], lift[better] = j, lj[better]
    return best, np.where(best >= 0, lift, np.nan)


def hit_rates(S: Any, groups: Sequence[set[int]], top_k: int = 5) -> dict[str, float]:
    """Share of neurons (rows of S) whose top-1 / any top-`top_k` concept lies in its group."""
    s = np.asarray(S, dtype=np.float64)
    if len(groups) == 0:
        return {"top1": float("nan"), "top5": float("nan"), "n": 0}
    s = np.where(np.isfinite(s), s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :top_k]
    top1 = [int(order[i, 0]) in g for i, g in enumerate(groups)]
    topk = [bool(set(order[i].tolist()) & g) for i, g in enumerate(groups)]
    return {"top1": float(np.mean(top1)), "top5": float(np.mean(topk)), "n": len(groups)}


def perfect_neuron_scores(P: Any, indicators: Any, similarity: str, params: dict[str, Any] | None = None) -> Any:
    """S (A x M) of perfect neurons -- neuron j's activation *is* attribute j's 0/1 indicator -- through P.

    Why: a neuron that fires for exactly one attribute should be named by it; what
    such neurons miss is lost by the dissector (P), not by the target.
    """
    import torch

    from dissect_study.engine.scores.similarity import compute_similarity

    X = torch.as_tensor(np.asarray(indicators, dtype=np.float64), dtype=torch.float32)
    P = torch.as_tensor(P, dtype=torch.float32)
    return compute_similarity(similarity, P, X, dict(params or {})).S


def perfect_neuron_ceiling(
    P: Any,
    indicators: Any,
    groups: Sequence[set[int]],
    similarity: str,
    params: dict[str, Any] | None = None,
    top_k: int = 5,
) -> dict[str, float]:
    """Hit rates of perfect neurons; `groups[j]` holds the concept ids that correctly name attribute j."""
    return hit_rates(perfect_neuron_scores(P, indicators, similarity, params).numpy(), groups, top_k)


def oracle_p(indicators: Any, groups: Sequence[set[int]], n_concepts: int) -> np.ndarray:
    """Ground-truth P (N x M): 1 where an attribute whose group holds the concept is present, else 0.

    Scoring the study's neurons through it measures the similarity function and
    its parameters with a perfect dissector.
    """
    ind = np.asarray(indicators, dtype=np.float64)
    P = np.zeros((ind.shape[0], n_concepts))
    for j, g in enumerate(groups):
        for c in g:
            P[:, c] = np.maximum(P[:, c], ind[:, j])
    return P
