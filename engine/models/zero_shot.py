"""Dissector sanity check: Mammo-CLIP-style zero-shot evaluation on the probe's labels.

Before trusting a dissector's concept scores on a probe, check that it sees the
probe's labelled findings at all.  Scoring follows Mammo-CLIP's evaluator
(docs/METHOD.md §7.4): L2-normalised embeddings, cosine to each prompt of a
group, softmax over the group's cosines *without* a logit scale; binary groups are
scored by AUC on the positive prompt's probability, density by accuracy of the
argmax.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dissect_study.engine.models.base import Dissector

#: binary attributes: (negative prompt, positive prompt); column 1 is the positive class
BINARY_PROMPTS: dict[str, tuple[str, str]] = {
    "mass": ("no mass", "mass"),
    "calcification": ("no suspicious calcification", "suspicious calcification"),
}
#: ACR density categories A-D.  The exact prompts of the Mammo-CLIP appendix are not in
#: its configs; these are the ACR category names (an explicit, recorded choice).
DENSITY_PROMPTS: dict[str, str] = {
    "A": "fatty",
    "B": "scattered areas of fibroglandular density",
    "C": "heterogeneously dense",
    "D": "extremely dense",
}


def auc_rank(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank formula, ties given their average rank."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over runs of equal scores
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _probs(image_emb: torch.Tensor, text_emb: torch.Tensor) -> np.ndarray:
    img = torch.nn.functional.normalize(image_emb.double(), dim=1)
    txt = torch.nn.functional.normalize(text_emb.double().to(img.device), dim=1)
    return torch.softmax(img @ txt.T, dim=1).cpu().numpy()


def _as_bool(v: Any) -> bool | None:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("1", "true", "yes", "y"):
            return True
        if s in ("0", "false", "no", "n"):
            return False
        return None
    return bool(v)


def _as_density(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).strip().upper().replace("DENSITY", "").strip()
    return s if s in DENSITY_PROMPTS else None


def zero_shot_sanity(dissector: Dissector, image_emb: torch.Tensor, attributes: list[dict]) -> list[dict]:
    """One result per labelled attribute present in the probe.

    `image_emb` (N, d) unnormalised, row i = probe image i; `attributes[i]` its attribute
    dict.  Returns dicts (attribute, metric, value, n, chance, prompts); `value` is None
    when undefined (a single class present).  `chance` is 0.5 for AUC and the majority
    class rate for accuracy.
    """
    if len(attributes) != image_emb.shape[0]:
        raise ValueError(f"{image_emb.shape[0]} image embeddings but {len(attributes)} attribute rows")
    results: list[dict] = []
    for attr, prompts in BINARY_PROMPTS.items():
        rows = [(i, _as_bool(a.get(attr))) for i, a in enumerate(attributes)]
        rows = [(i, y) for i, y in rows if y is not None]
        if not rows:
            continue
        idx = [i for i, _ in rows]
        y = np.array([v for _, v in rows], dtype=bool)
        p = _probs(image_emb[idx], dissector.encode_texts(list(prompts)))[:, 1]
        auc = auc_rank(p, y)
        results.append(
            {
                "attribute": attr,
                "metric": "auc",
                "value": None if np.isnan(auc) else auc,
                "n": len(idx),
                "chance": 0.5,
                "prompts": list(prompts),
            }
        )
    densities = [(i, _as_density(a.get("density"))) for i, a in enumerate(attributes)]
    rows_d = [(i, d) for i, d in densities if d is not None]
    if rows_d:
        cats = list(DENSITY_PROMPTS)
        idx = [i for i, _ in rows_d]
        truth = np.array([cats.index(d) for _, d in rows_d])
        pred = _probs(image_emb[idx], dissector.encode_texts([DENSITY_PROMPTS[c] for c in cats])).argmax(axis=1)
        counts = np.bincount(truth, minlength=len(cats))
        results.append(
            {
                "attribute": "density",
                "metric": "accuracy",
                "value": float((pred == truth).mean()),
                "n": len(idx),
                "chance": float(counts.max() / counts.sum()),
                "prompts": [DENSITY_PROMPTS[c] for c in cats],
            }
        )
    return results
