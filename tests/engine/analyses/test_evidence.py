"""Label evidence metrics: hand-computed values, naive re-implementations, null calibration, power."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dissect_study.engine.analyses import evidence as ev


def naive_ap(scores: np.ndarray, y: np.ndarray) -> float:
    """Average precision by brute force: one threshold per distinct score, predict score >= t."""
    total = y.sum()
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = (pred & y).sum()
        precision = tp / pred.sum()
        recall = tp / total
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


def test_average_precision_hand_computed():
    # ranking: pos, neg, pos, neg -> precisions at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert ev.average_precision([4, 3, 2, 1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # perfect ranking: 1; positives last: mean of 1/3 and 2/4
    assert ev.average_precision([3, 2, 1, 0], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert ev.average_precision([3, 2, 1, 0], [0, 0, 1, 1]) == pytest.approx((1 / 3 + 2 / 4) / 2)
    # a tie at the top counts as one threshold: precision 1/2 for both items
    assert ev.average_precision([1, 1, 0], [1, 0, 0]) == pytest.approx(0.5)
    # constant scores: AUPRC = base rate
    assert ev.average_precision([0, 0, 0, 0, 0], [1, 0, 0, 0, 1]) == pytest.approx(0.4)
    assert np.isnan(ev.average_precision([1, 2], [0, 0]))


def test_average_precision_matches_naive_and_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    for _ in range(30):
        n = int(rng.integers(5, 60))
        y = rng.random(n) < 0.3
        y[0] = True
        s = np.round(rng.normal(size=n), 1)  # rounded: plenty of ties
        assert ev.average_precision(s, y) == pytest.approx(naive_ap(s, y))
        assert ev.average_precision(s, y) == pytest.approx(average_precision_score(y, s))


def test_pearson_f1_iou_vs_naive():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 6))
    y = rng.random(50) < 0.2
    r = ev.pearson_columns(a, y)
    for k in range(6):
        assert r[k] == pytest.approx(np.corrcoef(a[:, k], y.astype(float))[0, 1])
    b = ev.prevalence_binarise(a, int(y.sum()))
    assert (b.sum(0) == y.sum()).all()
    f1, iou = ev.f1_iou_columns(b, y)
    for k in range(6):
        tp = int((b[:, k] & y).sum())
        fp = int((b[:, k] & ~y).sum())
        fn = int((~b[:, k] & y).sum())
        assert f1[k] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert iou[k] == pytest.approx(tp / (tp + fp + fn))
    assert np.isnan(ev.pearson_columns(np.ones((5, 1)), [1, 0, 0, 1, 0])[0])


def test_prevalence_binarise_ties_take_lower_index():
    got = ev.prevalence_binarise(np.array([[1.0], [2.0], [2.0], [0.0]]), 1)
    assert got[:, 0].tolist() == [False, True, False, False]


def test_mann_whitney_matches_scipy_and_direction():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 3))
    y = np.zeros(40, bool)
    y[:10] = True
    a[y, 0] += 2.0  # positives higher: small p
    a[y, 1] -= 2.0  # positives lower: p near 1 (one-sided)
    p = ev.mann_whitney_p(a, y)
    for k in range(3):
        want = stats.mannwhitneyu(a[y, k], a[~y, k], alternative="greater", method="asymptotic").pvalue
        assert p[k] == pytest.approx(want)
    assert p[0] < 0.01 and p[1] > 0.99
    assert ev.mann_whitney_p(np.ones((6, 1)), [1, 1, 0, 0, 0, 0])[0] == 1.0


def test_benjamini_hochberg_worked_example():
    # Benjamini & Hochberg style worked example, m = 5:
    # sorted p: .01 .02 .03 .04 .20 -> p*m/rank: .05 .05 .05 .05 .20 -> monotone from the top
    p = np.array([0.04, 0.01, 0.20, 0.03, 0.02])
    q = ev.benjamini_hochberg(p)
    assert q.tolist() == pytest.approx([0.05, 0.05, 0.20, 0.05, 0.05])
    # a second example where the step-up minimum matters: .001 .008 .039 .041 .042 .06
    p2 = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06])
    want = [0.006, 0.024, 0.0504, 0.0504, 0.0504, 0.06]
    assert ev.benjamini_hochberg(p2).tolist() == pytest.approx(want)
    q3 = ev.benjamini_hochberg(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(q3[1]) and q3[[0, 2]].tolist() == pytest.approx([0.02, 0.02])


def test_p_values_uniform_under_permuted_activations():
    rng = np.random.default_rng(12345)
    n, k = 200, 3000
    y = np.zeros(n, bool)
    y[:30] = True
    base = rng.gamma(2.0, size=n)  # a skewed activation, as ReLU features are
    acts = np.stack([rng.permutation(base) for _ in range(k)], axis=1)
    p = ev.mann_whitney_p(acts, y)
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.03 < np.mean(p < 0.05) < 0.07


def _planted(seed: int = 7):
    """20 concepts with known prevalences; 200 neurons, each driven by one concept plus noise."""
    rng = np.random.default_rng(seed)
    n, m, k = 400, 20, 200
    prevalence = rng.uniform(0.05, 0.4, size=m)
    C = rng.random((n, m)) < prevalence
    true = rng.integers(0, m, size=k)
    acts = rng.normal(size=(n, k)) + 1.5 * C[:, true]
    return C, true, acts


def test_planted_neurons_true_labels_supported_shuffled_not():
    C, true, acts = _planted()
    rng = np.random.default_rng(8)
    k = len(true)
    shuffled = np.array([rng.choice([c for c in range(C.shape[1]) if c != t]) for t in true])
    labels = pd.DataFrame(
        dict(
            unit=np.r_[np.arange(k), np.arange(k)],
            rank=np.r_[np.ones(k, int), np.full(k, 2)],
            concept_id=np.r_[true, shuffled],
            concept=[f"c{c}" for c in np.r_[true, shuffled]],
        )
    )
    vectors = {c: (f"a{c}", C[:, c].astype(float)) for c in range(C.shape[1])}
    out = ev.finalise(ev.label_evidence(acts, labels, vectors))
    assert len(out) == 2 * k
    assert out.loc[out["rank"] == 1, "supported"].mean() >= 0.95
    assert out.loc[out["rank"] == 2, "supported"].mean() <= 0.05
    row = out.iloc[0]
    assert row["auprc"] > row["base_rate"] and 0 < row["auprc_lift"] <= 1


def test_unknown_annotations_are_left_out():
    acts = np.arange(10, dtype=float)[:, None]
    y = np.array([0, 0, 0, np.nan, np.nan, 0, 1, 1, 1, 1])
    df = ev.evidence_for_concept(acts, y)
    assert df.loc[0, "n_images"] == 8 and df.loc[0, "n_positive"] == 4
    assert df.loc[0, "auprc"] == pytest.approx(1.0) and df.loc[0, "f1"] == pytest.approx(1.0)
    untestable = ev.evidence_for_concept(acts, np.zeros(10))
    assert np.isnan(untestable.loc[0, "p_value"])


def test_attribute_ranking_picks_highest_lift_not_rarest():
    rng = np.random.default_rng(2)
    n = 400
    common = rng.random(n) < 0.5
    rare = np.zeros(n, bool)
    rare[rng.choice(n, 12, replace=False)] = True
    acts = np.stack([common + 0.3 * rng.normal(size=n), rare + 0.3 * rng.normal(size=n)], axis=1)
    best, lift = ev.attribute_ranking(acts, np.stack([common, rare], axis=1))
    assert best.tolist() == [0, 1]
    assert (lift > 0.8).all()


def test_hit_rates_and_oracle_p():
    S = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.4]])
    r = ev.hit_rates(S, [{1}, {2}], top_k=2)
    assert r == {"top1": 0.5, "top5": 1.0, "n": 2}
    ind = np.array([[1, 0], [0, 1], [1, 1]])
    P = ev.oracle_p(ind, [{0, 2}, {1}], 3)
    assert P.tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 1]]


def test_perfect_neuron_ceiling_through_oracle_p_is_one():
    """Perfect neurons scored through the ground-truth P are named by their attribute (cos)."""
    rng = np.random.default_rng(4)
    ind = (rng.random((120, 4)) < 0.3).astype(float)
    groups = [{j} for j in range(4)]
    P = ev.oracle_p(ind, groups, 6)
    got = ev.perfect_neuron_ceiling(P, ind, groups, "cos")
    assert got["top1"] == 1.0 and got["n"] == 4
