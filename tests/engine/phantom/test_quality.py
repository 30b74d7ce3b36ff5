"""Phantom quality checks (zero-shot AUC per attribute, perfect-neuron test) on inputs with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dissect_study.engine.phantom.generator import sample_scene, scene_attributes
from dissect_study.engine.phantom.quality import perfect_neuron_hits, perfect_neurons, zero_shot_aucs
from dissect_study.engine.phantom.vocabulary import (
    ALL_PHRASES,
    GROUND_TRUTH_CONCEPTS,
    NEGATIONS,
    TAUGHT_PHRASES,
    phrase_truth,
    true_concepts,
    zero_shot_groups,
)


@pytest.fixture(scope="module")
def attrs() -> list[dict]:
    return [scene_attributes(sample_scene(0, i), 160) for i in range(300)]


def _oracle(attrs: list[dict], phrases: list[str]) -> torch.Tensor:
    """Embeddings where image i and phrase j are aligned exactly when the phrase is true of the image."""
    truth = np.array([[p in phrase_truth(a) for p in phrases] for a in attrs], dtype=np.float64)
    return torch.from_numpy(truth)


def test_phrase_truth_adds_synonyms_and_absences_only_where_true(attrs):
    for a in attrs[:50]:
        t = phrase_truth(a)
        assert true_concepts(a) <= t
        assert ("no mass" in t) == (not a["mass"])
        assert ("fatty" in t) == (a["density"] == "A")
        assert ("no suspicious calcification" in t) == (not a["calcification"])
    assert set(ALL_PHRASES) <= set(TAUGHT_PHRASES)
    assert all(p in TAUGHT_PHRASES for ps in NEGATIONS.values() for p in ps)


def test_every_concept_phrase_a_report_uses_is_taught_true_where_it_is_used(attrs):
    """The demo dissector's phrase loss calls every untaught concept phrase false for every
    phantom; a report sentence that is such a phrase ("BI-RADS 4", "global asymmetry" before
    they were taught) would then be paired with its image by the CLIP loss and pushed away
    from it by the phrase loss."""
    from dissect_study.engine.concepts import load_shipped
    from dissect_study.engine.phantom.reports import report_parts

    concepts = {p.lower() for p in load_shipped("mammo", {"name": "mammo_v1"}, ".").texts}
    used = set()
    for a in attrs:
        truth = {p.lower() for p in phrase_truth(a)}
        for variant in range(3):
            for part in report_parts(a, seed=1, variant=variant):
                if part.lower() in concepts:
                    used.add(part.lower())
                    assert part.lower() in truth, (part, a["findings"], a.get("birads"))
    assert {"global asymmetry", "normal mammogram"} <= used  # the check saw the phrases it is about
    assert any(p.startswith("bi-rads ") for p in used)


def test_zero_shot_groups_cover_every_attribute_once():
    groups = zero_shot_groups()
    assert set(groups) == {attr for attr, _ in GROUND_TRUTH_CONCEPTS}
    assert [v for v, _ in groups["mass_shape"]] == ["oval", "round", "irregular", None]
    assert groups["mass_shape"][-1][1] == "no mass"
    assert [v for v, _ in groups["view"]] == ["CC", "MLO"]  # every view is one of the two: no absence prompt


def test_zero_shot_auc_is_one_for_an_oracle_and_half_for_noise(attrs):
    prompts = sorted({p for g in zero_shot_groups().values() for _, p in g})
    col = {p: j for j, p in enumerate(prompts)}
    img = _oracle(attrs, prompts)
    eye = torch.eye(len(prompts), dtype=torch.float64)

    def encode(texts: list[str]) -> torch.Tensor:
        return eye[[col[t] for t in texts]]

    rows = zero_shot_aucs(img * 10, encode, attrs)
    names = {r["attribute"] for r in rows}
    assert {"mass", "view=CC", "density=A", "mass_margin=spiculated"} <= names
    # a value whose prompt is also true of another value ("asymmetry" names focal ones too) is not separable
    exact = [r for r in rows if not r["attribute"].startswith("asymmetry")]
    assert min(r["value"] for r in exact) > 0.99
    noise = torch.randn(len(attrs), len(prompts), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noisy = zero_shot_aucs(noise, encode, attrs)
    assert 0.35 < float(np.mean([r["value"] for r in noisy])) < 0.65


def test_perfect_neurons_are_labelled_right_through_a_ground_truth_P(attrs):
    concepts = list(ALL_PHRASES) + ["bicycle", "wolf", "boulder"]
    truth = torch.tensor([[p in true_concepts(a) for p in concepts] for a in attrs], dtype=torch.float32)
    P = 0.1 + 0.8 * truth  # a cosine matrix that is high exactly where a phrase is true
    pn = perfect_neurons(attrs)
    assert pn.X.shape == (len(attrs), len(pn.names)) and len(pn.names) >= 30
    assert set(torch.unique(pn.X).tolist()) == {0.0, 1.0}
    for fn in ("cos", "cos_cubed"):
        hit, labels = perfect_neuron_hits(P, concepts, attrs, fn)
        # values that share their only phrase with a broader value ("asymmetry") can tie: allow those
        assert hit >= 0.9, labels
    # the same P with its concept columns shuffled labels (almost) nothing right
    perm = torch.randperm(len(concepts), generator=torch.Generator().manual_seed(1))
    hit, _ = perfect_neuron_hits(P[:, perm], concepts, attrs, "cos")
    assert hit < 0.3


def test_a_synonym_label_is_a_hit_only_when_lenient(attrs):
    """Through a P where density B's concept-set synonym, not its strict phrase, is true of
    exactly the density-B images, the density-B neuron takes the synonym: a miss strictly,
    a hit leniently; every other neuron is graded alike both ways."""
    from dissect_study.engine.concepts import load_shipped

    concepts = list(load_shipped("mammo", {"name": "mammo_v1"}, ".").texts)
    strict, synonym = "scattered fibroglandular densities", "scattered areas of fibroglandular density"
    truth = torch.tensor([[p in true_concepts(a) for p in concepts] for a in attrs], dtype=torch.float32)
    is_b = torch.tensor([a["density"] == "B" for a in attrs], dtype=torch.float32)
    truth[:, concepts.index(strict)] = 0.0
    truth[:, concepts.index(synonym)] = is_b
    P = 0.1 + 0.8 * truth
    hit, labels = perfect_neuron_hits(P, concepts, attrs, "cos")
    lenient, lenient_labels = perfect_neuron_hits(P, concepts, attrs, "cos", lenient=True)
    assert labels == lenient_labels and labels["density=B"] == synonym
    n = len(perfect_neurons(attrs).names)
    assert lenient * n == pytest.approx(hit * n + 1)
