"""Calibration bench: AUC against a pairwise implementation, planted neurons with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from dissect_study.engine.analyses.calibration import (
    STORE_COLUMNS,
    assign_ground_truth,
    auc_columns,
    calibration_table,
    mammi_selection,
    neuron_selectivity,
)


def pairwise_auc(x, y):
    pos, neg = x[y], x[~y]
    s = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return s / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    acts = rng.integers(0, 4, size=(40, 6)).astype(float)  # many ties
    y = rng.random(40) < 0.4
    got = auc_columns(acts, y)
    want = [pairwise_auc(acts[:, k], y) for k in range(6)]
    assert np.allclose(got, want)
    assert np.isnan(auc_columns(acts, np.zeros(40, bool))).all()


def _probe(n=80, seed=1):
    rng = np.random.default_rng(seed)
    attrs = []
    for i in range(n):
        spic = i % 4 == 0
        attrs.append(
            {
                "view": "CC" if i % 2 else "MLO",
                "laterality": "L",
                "density": "ABCD"[i % 3],
                "mass": spic or i % 4 == 1,
                "mass_margin": "spiculated" if spic else ("circumscribed" if i % 4 == 1 else None),
                "calcification": False,
                "calc_morphology": None,
            }
        )
    return attrs, rng


def test_planted_neurons_get_their_true_group():
    attrs, rng = _probe()
    n = len(attrs)
    acts = rng.normal(0, 1, (n, 3))
    spic = np.array([a["mass_margin"] == "spiculated" for a in attrs])
    acts[:, 0] += 5 * spic  # unit 0: spiculated masses
    acts[:, 1] += 5 * np.array([a["view"] == "MLO" for a in attrs])  # unit 1: MLO view
    sel = neuron_selectivity(torch.tensor(acts), attrs)
    assert set(sel.columns) >= {"unit", "attribute", "value", "auc"}
    truth = assign_ground_truth(sel, min_auc=0.9)
    assert list(truth["unit"]) == [0, 1]
    assert truth.iloc[0]["attribute"] == "mass_margin" and truth.iloc[0]["value"] == "spiculated"
    assert "spiculated margin" in truth.iloc[0]["true_concepts"]
    assert truth.iloc[1]["true_concepts"] == ("mediolateral oblique view",)

    concepts = [
        "spiculated margin",
        "round mass",
        "mediolateral oblique view",
        "craniocaudal view",
        "skin marker",
        "nipple",
    ]
    S = np.zeros((3, len(concepts)))
    S[0] = [0.9, 0.1, 0.0, 0.0, 0.2, 0.3]  # right
    S[1] = [0.1, 0.2, 0.5, 0.6, 0.0, 0.0]  # top-1 wrong (cc), top-5 right
    S[2] = [1, 1, 1, 1, 1, 1]  # not selective: ignored
    row = calibration_table("blocks.4", "soft_wpmi", torch.tensor(S), concepts, truth, model="M")
    assert list(row.columns) == list(STORE_COLUMNS)
    r = row.iloc[0]
    assert r["n_selective"] == 2 and r["top1_hit"] == 0.5 and r["top5_hit"] == 1.0
    # top-1 as the predicted set: unit 0 P=1 R=1/|group|, unit 1 P=0
    g0 = len(truth.iloc[0]["true_concepts"])
    assert r["mammi_hit_rate"] == 0.5
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx((1 / g0 + 0) / 2)
    f1_0 = 2 * 1 * (1 / g0) / (1 + 1 / g0)
    assert r["f1"] == pytest.approx(f1_0 / 2)
    assert np.isnan(r["mean_label_cosine"])


def test_mammi_selection_and_label_cosine():
    assert list(mammi_selection(np.array([1.0, 0.97, 0.5, 0.96]), 0.95)) == [0, 1, 3]
    assert len(mammi_selection(np.array([-1.0, -0.5]))) == 0
    import pandas as pd

    truth = pd.DataFrame([{"unit": 0, "attribute": "mass", "value": True, "auc": 0.95, "true_concepts": ("mass",)}])
    concepts = ["mass", "oval mass", "nipple"]
    S = np.array([[1.0, 0.96, 0.1]])
    # a toy encoder: one-hot per distinct word set -> cosine is exact and known
    vecs = {"mass": [1, 0, 0], "oval mass": [1, 1, 0], "nipple": [0, 0, 1], "none": [0, 1, 1]}

    def enc(texts):
        return torch.tensor([vecs[t] for t in texts], dtype=torch.float32)

    r = calibration_table("l", "mammi", S, concepts, truth, text_encoder=enc, with_se=True).iloc[0]
    assert r["mammi_hit_rate"] == 1.0 and r["precision"] == pytest.approx(0.5) and r["recall"] == 1.0
    assert r["mean_label_cosine"] == pytest.approx((1.0 + 1 / np.sqrt(2)) / 2)
    assert "f1_se" in r.index
    # MAMMI selects nothing when every score is <= 0: the prediction is "none"
    r2 = calibration_table("l", "mammi", -S, concepts, truth, text_encoder=enc).iloc[0]
    assert r2["mammi_hit_rate"] == 0.0 and r2["mean_label_cosine"] == pytest.approx(0.0)


def test_no_selective_neuron_gives_nan_rates():
    attrs, rng = _probe()
    acts = rng.normal(0, 1, (len(attrs), 4))
    truth = assign_ground_truth(neuron_selectivity(acts, attrs), min_auc=0.95)
    assert truth.empty
    r = calibration_table("l", "cos", np.zeros((4, 2)), ["a", "b"], truth).iloc[0]
    assert r["n_selective"] == 0 and np.isnan(r["top1_hit"])


def test_shape_errors_are_clear():
    attrs, _ = _probe(10)
    with pytest.raises(ValueError, match="one row per probe image"):
        neuron_selectivity(np.zeros((9, 2)), attrs)


def test_ground_truth_by_lift_prefers_prevalence_aware_selectivity():
    """A brightness-like unit passes AUC >= 0.8 for a rare attribute, yet its lift names the common one."""
    from dissect_study.engine.analyses.calibration import ground_truth_by_lift

    rng = np.random.default_rng(5)
    n = 400
    dense = rng.random(n) < 0.3
    implant = np.zeros(n, bool)
    implant[rng.choice(np.nonzero(dense)[0], 17, replace=False)] = True  # implants only in dense breasts
    attrs = [{"density": "D" if d else "A", "implant": bool(i)} for d, i in zip(dense, implant)]
    unit_dense = dense + 0.1 * rng.normal(size=n)
    unit_implant = implant * 3.0 + 0.3 * rng.normal(size=n)
    noise = rng.normal(size=n)
    acts = np.stack([unit_dense, unit_implant, noise], axis=1)
    assert auc_columns(unit_dense[:, None], implant)[0] >= 0.8  # the AUC rule would call it an implant unit too
    truth = ground_truth_by_lift(acts, attrs)
    got = {int(u): (a, v) for u, a, v in zip(truth["unit"], truth["attribute"], truth["value"])}
    assert got[1] == ("implant", True)
    assert got[0][0] == "density"
    assert 2 not in got  # noise is not selective
    lenient = truth.set_index("unit").loc[1, "lenient_concepts"]
    assert "breast implant" in lenient and "silicone implant" in lenient
    assert truth.set_index("unit").loc[1, "true_concepts"] == ("breast implant",)


def test_phrase_embeddings_encode_each_phrase_once_and_keep_the_cosines():
    """The run's cached encoder gives the same label cosines as the raw one, with one call per new phrase."""
    import pandas as pd

    from dissect_study.engine.analyses.calibration import PhraseEmbeddings, bench_phrases

    vecs = {"mass": [1, 0, 0], "oval mass": [1, 1, 0], "nipple": [0, 0, 1], "none": [0, 1, 1], "skin": [2, 0, 1]}
    asked: list[str] = []

    def enc(texts):
        asked.extend(texts)
        return torch.tensor([vecs[t] for t in texts], dtype=torch.float32)

    truth = pd.DataFrame(
        [
            {"unit": 0, "true_concepts": ("mass",)},
            {"unit": 1, "true_concepts": ("nipple", "Oval  Mass")},
        ]
    )
    concepts = ["mass", "oval mass", "nipple"]
    cached = PhraseEmbeddings(enc)
    cached.prime(bench_phrases(concepts, [("Oval  Mass",)]))
    assert sorted(asked) == ["mass", "nipple", "none", "oval mass"]  # normalised, each once
    for S in (np.array([[1.0, 0.2, 0.1], [0.0, 0.3, 0.9]]), np.array([[0.1, 0.9, 0.0], [0.5, 0.1, 0.2]])):
        for sim in ("cos", "mammi"):
            want = calibration_table("l", sim, S, concepts, truth, text_encoder=enc).iloc[0]
            got = calibration_table("l", sim, S, concepts, truth, text_encoder=cached).iloc[0]
            assert got["mean_label_cosine"] == pytest.approx(want["mean_label_cosine"], abs=1e-12)
    n = len(asked)
    assert cached(["skin", "mass", "skin"]).tolist() == [[2, 0, 1], [1, 0, 0], [2, 0, 1]]
    assert asked[n:] == ["skin"]  # a phrase missed by `prime` is embedded once, on first use
    assert cached(["skin"]).tolist() == [[2, 0, 1]] and len(asked) == n + 1
