"""Zero-shot sanity: rank AUC vs brute force; the scoring rule on constructed embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dissect_study.engine.models.zero_shot import BINARY_PROMPTS, DENSITY_PROMPTS, auc_rank, zero_shot_sanity


def brute_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
def test_auc_rank_equals_pairwise_count(rows):
    scores = [float(s) for s, _ in rows]  # few distinct values: many ties
    labels = [y for _, y in rows]
    if all(labels) or not any(labels):
        assert np.isnan(auc_rank(np.array(scores), np.array(labels)))
    else:
        assert auc_rank(np.array(scores), np.array(labels)) == pytest.approx(brute_auc(scores, labels))


def test_auc_known_values():
    assert auc_rank(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc_rank(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert auc_rank(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


class FakeDissector:
    """Each prompt gets a fixed orthogonal direction; records what it was asked."""

    def __init__(self) -> None:
        prompts = [p for pair in BINARY_PROMPTS.values() for p in pair] + list(DENSITY_PROMPTS.values())
        self.vec = {p: torch.eye(len(prompts))[i] * (i + 1.0) for i, p in enumerate(prompts)}  # unnormalised
        self.asked: list[list[str]] = []

    def encode_texts(self, texts):
        self.asked.append(list(texts))
        return torch.stack([self.vec[t] for t in texts])


def test_sanity_scores_constructed_embeddings():
    d = FakeDissector()
    # image i leans towards "mass" when it has a mass, towards "no mass" otherwise
    attrs, rows = [], []
    for i in range(8):
        has = i % 2 == 0
        dens = "ABCD"[i % 4]
        attrs.append({"mass": has, "density": dens, "view": "CC"})
        v = 0.1 * torch.ones(len(d.vec))
        v += d.vec["mass" if has else "no mass"] / d.vec["mass" if has else "no mass"].norm()
        v += 2 * d.vec[DENSITY_PROMPTS[dens]] / d.vec[DENSITY_PROMPTS[dens]].norm()
        rows.append(v * (i + 1))  # scale must not matter
    res = {r["attribute"]: r for r in zero_shot_sanity(d, torch.stack(rows), attrs)}
    assert set(res) == {"mass", "density"}  # calcification absent from the probe: skipped
    assert res["mass"]["metric"] == "auc" and res["mass"]["value"] == 1.0 and res["mass"]["n"] == 8
    assert res["mass"]["prompts"] == ["no mass", "mass"]
    assert res["density"]["metric"] == "accuracy" and res["density"]["value"] == 1.0
    assert res["density"]["chance"] == 0.25


def test_sanity_skips_unlabelled_rows_and_single_class():
    d = FakeDissector()
    attrs = [{"calcification": True}, {"calcification": None}, {"calcification": "1"}, {}]
    res = zero_shot_sanity(d, torch.randn(4, len(d.vec)), attrs)
    assert len(res) == 1 and res[0]["attribute"] == "calcification"
    assert res[0]["n"] == 2 and res[0]["value"] is None  # only positives: AUC undefined
    with pytest.raises(ValueError):
        zero_shot_sanity(d, torch.randn(3, len(d.vec)), attrs)


def test_softmax_has_no_logit_scale():
    """With cosines 0.3 vs 0.1 the positive probability is softmax([0.1, 0.3]), not a sharpened one."""
    d = FakeDissector()
    neg, pos = d.vec["no mass"] / d.vec["no mass"].norm(), d.vec["mass"] / d.vec["mass"].norm()
    rest = torch.zeros(len(d.vec))
    rest[-1] = 1.0
    imgs, attrs = [], []
    for a, b, y in ((0.1, 0.3, True), (0.3, 0.1, False), (0.2, 0.25, True)):
        v = a * neg + b * pos
        v = v + (1 - v.norm() ** 2).sqrt() * rest  # unit vector with those cosines
        imgs.append(v)
        attrs.append({"mass": y})
    from dissect_study.engine.models import zero_shot

    probs = zero_shot._probs(torch.stack(imgs), d.encode_texts(["no mass", "mass"]))
    expected = torch.softmax(torch.tensor([0.1, 0.3], dtype=torch.float64), 0)[1].item()
    assert probs[0, 1] == pytest.approx(expected, abs=1e-6)  # a logit scale of 1/0.07 would give 0.94
