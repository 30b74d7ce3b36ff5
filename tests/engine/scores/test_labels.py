"""Labels, top images and layer thresholds (docs/METHOD.md §4, §5.1) on inputs with known answers."""

from __future__ import annotations

import statistics

import pytest
import torch

from dissect_study.dsl.vocabulary import THRESHOLD_STATISTICS
from dissect_study.engine.scores.labels import (
    TAU_STATISTICS,
    layer_tau,
    layer_taus,
    layer_threshold,
    top_concepts,
    top_images,
    topk_image_union,
)
from dissect_study.engine.scores.similarity import soft_wpmi, wpmi

NAN = float("nan")


def test_statistics_match_the_registry():
    assert tuple(TAU_STATISTICS) == tuple(THRESHOLD_STATISTICS)


def test_top_concepts_known_answer_with_ties_and_undefined_rows():
    S = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.9],  # tie for first: concept 1 before 3
            [NAN, NAN, NAN, NAN],  # undefined neuron
            [-1.0, float("-inf"), -0.5, NAN],  # -inf and a stray NaN rank last
        ]
    )
    scores, idx = top_concepts(S, 3)
    assert idx.tolist() == [[1, 3, 2], [-1, -1, -1], [2, 0, 1]]
    assert scores[0].tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert torch.isnan(scores[1]).all()
    assert scores[2, :2].tolist() == [-0.5, -1.0] and scores[2, 2] == float("-inf")
    # k is clamped to M
    assert top_concepts(S, 10)[1].shape == (3, 4)


def test_top_concepts_matches_sorting_on_random_input():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(20, 30, generator=g)
    scores, idx = top_concepts(S, 10)
    for k in range(20):
        ref = sorted(range(30), key=lambda m: (-float(S[k, m]), m))[:10]
        assert idx[k].tolist() == ref
        assert torch.equal(scores[k], S[k, ref])


def test_top_images_ties_and_constant_flags():
    X = torch.tensor(
        [
            [1.0, 2.0, 0.0],
            [3.0, 2.0, 0.0],
            [3.0, 2.0, 0.0],
            [0.5, 2.0, 0.0],
        ]
    )
    res = top_images(X, 2)
    acts, idx = res.acts, res.idx
    assert idx.tolist() == [[1, 2], [0, 1], [0, 1]]
    assert acts.tolist() == [[3.0, 3.0], [2.0, 2.0], [0.0, 0.0]]
    assert res.constant.tolist() == [False, True, True]
    assert top_images(X, 99).idx.shape == (3, 4)  # clamped to N


def test_layer_tau_statistics_known_answer():
    S = torch.tensor(
        [
            [1.0, 2.0, 0.0],
            [-1.0, -3.0, 4.0],
            [0.5, 0.5, 0.5],
            [NAN, NAN, NAN],  # undefined neuron: left out of every statistic
            [float("-inf"), 3.0, -2.0],  # -inf entry: left out of mean_all
        ]
    )
    top1 = [2.0, 4.0, 0.5, 3.0]
    finite = [1.0, 2.0, 0.0, -1.0, -3.0, 4.0, 0.5, 0.5, 0.5, 3.0, -2.0]
    assert layer_tau(S) == pytest.approx(sum(top1) / 4)
    assert layer_tau(S, "mean_top1") == pytest.approx(2.375)
    assert layer_tau(S, "mean_all") == pytest.approx(sum(finite) / len(finite))
    assert layer_tau(S, "median_top1") == pytest.approx(2.0)  # lower middle of [0.5, 2, 3, 4]
    taus = layer_taus(S)
    assert set(taus) == set(TAU_STATISTICS)
    assert taus["mean_all"] == pytest.approx(statistics.fmean(finite))


def test_layer_tau_odd_median_and_bad_statistic():
    S = torch.tensor([[0.1, 0.3], [0.9, 0.2], [0.4, 0.4]])
    assert layer_tau(S, "median_top1") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="mean_top1, mean_all, median_top1"):
        layer_tau(S, "mean")
    assert torch.isnan(torch.tensor(layer_tau(torch.full((2, 2), NAN))))


def test_paper_and_code_thresholds_differ_for_soft_wpmi():
    # docs/METHOD.md §5.1: with lam = 1 the full-matrix mean is <= 0 while the mean top-1 is > 0
    g = torch.Generator().manual_seed(2)
    P = torch.rand(80, 15, generator=g) * 0.5
    X = torch.randn(80, 20, generator=g)
    S = soft_wpmi(P, X, top_k=10)
    assert layer_tau(S, "mean_all") <= 0 < layer_tau(S, "mean_top1")


def test_topk_image_union_is_exactly_what_topk_similarities_read():
    g = torch.Generator().manual_seed(3)
    N, M = 120, 13
    P = torch.rand(N, M, generator=g, dtype=torch.float64) * 0.6
    layers = {
        "early": torch.round(torch.randn(N, 7, generator=g, dtype=torch.float64) * 2) / 2,  # ties
        "late": torch.randn(N, 9, generator=g, dtype=torch.float64),
    }
    z = 6
    union = topk_image_union(layers, z)
    assert union.dtype == torch.long and torch.equal(union, torch.sort(union).values)
    assert len(union) == len(set(union.tolist())) < N
    # garbage in every row outside the union must not change S
    garbage = P.clone()
    outside = torch.ones(N, dtype=torch.bool)
    outside[union] = False
    garbage[outside] = torch.rand(int(outside.sum()), M, generator=g, dtype=torch.float64) * 5 - 2
    for X in layers.values():
        torch.testing.assert_close(soft_wpmi(garbage, X, top_k=z), soft_wpmi(P, X, top_k=z), rtol=0, atol=0)
        torch.testing.assert_close(wpmi(garbage, X, top_k=z), wpmi(P, X, top_k=z), rtol=0, atol=0)
    # ... and every row in the union is some neuron's top-z image
    tops = set()
    for X in layers.values():
        for k in range(X.shape[1]):
            tops |= set(sorted(range(N), key=lambda i: (-float(X[i, k]), i))[:z])
    assert set(union.tolist()) == tops


def test_layer_threshold_keeps_its_statistic():
    S = torch.tensor([[0.1, 0.3], [0.9, 0.2], [0.4, 0.4]])
    th = layer_threshold(S, "median_top1")
    assert th.statistic == "median_top1" and th.tau == pytest.approx(0.4)
    assert layer_threshold(S).statistic == "mean_top1"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_top_images_rejects_non_finite(bad):
    X = torch.zeros(4, 2)
    X[1, 1] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        top_images(X, 2)
    top_images(torch.full((4, 2), 3e38), 2)  # finite, though its float32 sum overflows
