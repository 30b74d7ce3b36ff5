"""How well a dissector sees the phantom: per-attribute zero-shot AUC and the perfect-neuron test.

Why: a dissector's labels can only be right for attributes its embedding space
separates, and only if the *whole* concept set sits where it should (a concept
never seen in training must not out-score the true one).  Two checks measure
that on a probe with ground truth, independent of any target model:

* `zero_shot_aucs` -- Mammo-CLIP-style: a softmax over each attribute group's
  prompts (one per value, plus the stated absence "no mass"), ROC AUC of each
  value's probability against its indicator.
* `perfect_neuron_hits` -- one synthetic neuron per attribute value whose
  activation *is* its indicator over the probe, scored through the dissector's
  P over every concept by a similarity function; a hit is a top-1 label among
  the value's ground-truth phrases (strict), or among those and the synonyms the
  concept set holds for it (lenient: "scattered areas of fibroglandular density"
  names density B as well as "scattered fibroglandular densities" does).  A
  perfect target cannot be labelled better than this, so it bounds what the
  calibration bench can show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dissect_study.engine import annotations as ann
from dissect_study.engine.analyses.calibration import auc_columns
from dissect_study.engine.phantom.vocabulary import attribute_matches, zero_shot_groups


def zero_shot_aucs(
    image_emb: torch.Tensor, encode_texts: Any, attributes: list[dict[str, Any]], min_positives: int = 3
) -> list[dict[str, Any]]:
    """One row per attribute value present at least `min_positives` times (and absent as often).

    `image_emb` (N, d) unnormalised; `encode_texts(list[str]) -> (M, d)` the dissector's text side.
    Rows: attribute ("mass_shape=oval", or the attribute alone for a binary one), value (AUC), n,
    positives, prompts.
    """
    img = torch.nn.functional.normalize(image_emb.double(), dim=1)
    rows: list[dict[str, Any]] = []
    for attr, members in zero_shot_groups().items():
        prompts = [p for _, p in members]
        txt = torch.nn.functional.normalize(encode_texts(prompts).double(), dim=1)
        probs = torch.softmax(img @ txt.T, dim=1).numpy()
        for j, (value, _) in enumerate(members):
            if value is None:
                continue
            y = np.array([attribute_matches(a, attr, value) for a in attributes], dtype=bool)
            if min(int(y.sum()), int((~y).sum())) < min_positives:
                continue
            name = attr if value is True else f"{attr}={value}"
            rows.append(
                {
                    "attribute": name,
                    "value": float(auc_columns(probs[:, j : j + 1], y)[0]),
                    "n": len(y),
                    "positives": int(y.sum()),
                    "prompts": prompts,
                }
            )
    return rows


@dataclass
class PerfectNeurons:
    """Indicator neurons of a probe: X (N, K) and, per column, its attribute value and true phrases
    (strict, and with the concept set's synonyms)."""

    X: torch.Tensor
    names: list[str]
    truth: list[set[str]]
    lenient_truth: list[set[str]]


def perfect_neurons(attributes: list[dict[str, Any]], min_positives: int = 5) -> PerfectNeurons:
    """One 0/1 column per ground-truth attribute value with `min_positives` positives and negatives."""
    keys, ind = ann.ground_truth_indicators(attributes, min_positives=min_positives)
    return PerfectNeurons(
        torch.from_numpy(ind.astype(np.float32)),
        [ann.annotation_name(k) if k[1] is not True else f"{k[0]}=True" for k in keys],
        [set(ann.concept_group(k, lenient=False)) for k in keys],
        [set(ann.concept_group(k, lenient=True)) for k in keys],
    )


def perfect_neuron_hits(
    P: torch.Tensor,
    concepts: list[str],
    attributes: list[dict[str, Any]],
    similarity: str,
    params: dict[str, Any] | None = None,
    lenient: bool = False,
) -> tuple[float, dict[str, str]]:
    """Top-1 hit rate of the perfect neurons under one similarity function, and each neuron's label."""
    from dissect_study.engine.analyses.evidence import perfect_neuron_scores

    pn = perfect_neurons(attributes)
    top = perfect_neuron_scores(P, pn.X.numpy(), similarity, params).argmax(dim=1).tolist()
    labels = {n: concepts[i] for n, i in zip(pn.names, top)}
    hits = [concepts[i] in t for i, t in zip(top, pn.lenient_truth if lenient else pn.truth)]
    return float(np.mean(hits)), labels
