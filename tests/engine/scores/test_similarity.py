"""Similarity functions against naive float64 implementations written from docs/METHOD.md §1.1, §3.

Each naive version below is a per-neuron, per-concept loop in numpy written straight
from the formula (not from engine/scores/similarity.py), with the documented tie-break:
among equal activations the lower image index ranks first.  Top-k selection is checked
against a sort by (-value, index) written here.
"""

from __future__ import annotations

import inspect
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from dissect_study.dsl import vocabulary
from dissect_study.engine.registry import SIMILARITIES, RegistryError
from dissect_study.engine.scores.similarity import (
    SimilarityError,
    compute_similarity,
    concept_activation_matrix,
    cos_similarity,
    cos_similarity_cubed,
    mammi_adaptive,
    rank_reorder,
    ranked_top_k,
    soft_factors,
    soft_wpmi,
    wpmi,
)
from dissect_study.errors import DissectStudyError

#: every implementation, by canonical name (the registry also holds the aliases)
FUNCTIONS = {name: SIMILARITIES.get(name) for name in vocabulary.SIMILARITIES}


# ----------------------------------------------------------------------------- naive references
def top_order(col: np.ndarray, k: int) -> list[int]:
    return sorted(range(len(col)), key=lambda i: (-col[i], i))[:k]


def softmax_rows(P: np.ndarray, a: float) -> np.ndarray:
    z = a * P
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def pmi_prior(L: np.ndarray, lam: float) -> np.ndarray:
    K = L.shape[0]
    out = np.empty_like(L)
    for m in range(L.shape[1]):
        mx = L[:, m].max()
        lse = mx + math.log(sum(math.exp(v - mx) for v in L[:, m]))
        out[:, m] = L[:, m] - lam * (lse - math.log(K))
    return out


def naive_soft_wpmi(P, X, top_k, a, lam, min_prob, p_start, p_end):
    P, X = np.asarray(P, np.float64), np.asarray(X, np.float64)
    q = softmax_rows(P, a)
    K, M = X.shape[1], P.shape[1]
    L = np.zeros((K, M))
    for k in range(K):
        for j, i in enumerate(top_order(X[:, k], top_k)):
            r = p_start - (j / top_k) * (p_start - p_end)
            for m in range(M):
                L[k, m] += math.log(1 + r * (q[i, m] - 1) + min_prob)
    return pmi_prior(L, lam)


def naive_wpmi(P, X, top_k, a, lam, min_prob):
    P, X = np.asarray(P, np.float64), np.asarray(X, np.float64)
    q = softmax_rows(P, a)
    K, M = X.shape[1], P.shape[1]
    L = np.zeros((K, M))
    for k in range(K):
        for i in top_order(X[:, k], top_k):
            L[k] += np.log(q[i] + min_prob)
    return pmi_prior(L, lam)


def naive_cos(P, X):
    P, X = np.asarray(P, np.float64), np.asarray(X, np.float64)
    S = np.zeros((X.shape[1], P.shape[1]))
    for k in range(X.shape[1]):
        for m in range(P.shape[1]):
            denom = np.linalg.norm(X[:, k]) * np.linalg.norm(P[:, m])
            S[k, m] = np.nan if denom == 0 else X[:, k] @ P[:, m] / denom
    return S


def naive_cos_cubed(P, X, min_norm):
    P, X = np.asarray(P, np.float64), np.asarray(X, np.float64)

    def col(v):
        c = (v - v.mean()) ** 3
        return c / max(np.linalg.norm(c), min_norm)

    S = np.zeros((X.shape[1], P.shape[1]))
    for k in range(X.shape[1]):
        for m in range(P.shape[1]):
            S[k, m] = col(X[:, k]) @ col(P[:, m])
    return S


def spec_permutations(K, n_perm, n, seed):
    """The documented permutation source of rank_reorder (part of its contract)."""
    g = torch.Generator().manual_seed(seed)
    return torch.argsort(torch.rand(K, n_perm, n, generator=g), dim=2).numpy()


def naive_rank_reorder(P, X, p, top_fraction, scale_p, n_permutations, seed):
    P, X = np.asarray(P, np.float64), np.asarray(X, np.float64)
    N, M, K = P.shape[0], P.shape[1], X.shape[1]
    n = int(math.floor(N * top_fraction))
    perms = spec_permutations(K, n_permutations, n, seed)
    S = np.zeros((K, M))
    for k in range(K):
        order = top_order(X[:, k], n)
        act = X[order, k]
        a_up = act[::-1]
        C = P[order]
        B = np.mean([np.mean(np.abs(a_up - a_up[perms[k, t]]) ** p) for t in range(n_permutations)])
        for m in range(M):
            asc = sorted(range(n), key=lambda i: (C[i, m], i))
            rank = np.empty(n, int)
            rank[asc] = np.arange(n)
            err = np.mean(np.abs(act - a_up[rank]) ** p)
            cbar = C[:, m].mean()
            if B == 0:
                S[k, m] = np.nan
            elif cbar <= 0:
                S[k, m] = -np.inf
            else:
                S[k, m] = -(err / B) / cbar**scale_p
    return S


def naive_mammi(P, X, template, alpha):
    P, X = np.asarray(P, np.float64), np.asarray(X, np.float64)
    t = np.zeros(P.shape[0]) if template is None else np.asarray(template, np.float64)
    S = np.full((X.shape[1], P.shape[1]), np.nan)
    for i in range(X.shape[1]):
        hi, lo = X[:, i].max(), X[:, i].min()
        tau = hi - (1 - alpha / 100) * (hi - lo)
        reps = [o for o in range(X.shape[0]) if X[o, i] > tau]
        if reps:
            for j in range(P.shape[1]):
                S[i, j] = np.mean([P[o, j] - t[o] for o in reps])
    return S


# ----------------------------------------------------------------------------- data
def make(n=40, m=7, k=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    P = (torch.rand(n, m, generator=g, dtype=torch.float64) * 0.6 - 0.1).to(dtype)
    X = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype)
    return P, X


def with_ties(X: torch.Tensor) -> torch.Tensor:
    """Quantised activations (many ties, also at top-k boundaries) plus a constant neuron."""
    X = torch.round(X * 2) / 2
    X[:, 0] = 0.25
    return X


def close(a: torch.Tensor, b: np.ndarray, rtol: float, atol: float) -> None:
    np.testing.assert_allclose(a.double().numpy(), b, rtol=rtol, atol=atol, equal_nan=True)


# ----------------------------------------------------------------------------- P
def test_concept_activation_matrix_is_cosine():
    g = torch.Generator().manual_seed(1)
    img = torch.randn(9, 5, generator=g) * 3
    txt = torch.randn(4, 5, generator=g)
    img[2] = 0.0  # a blank embedding must give 0, not NaN
    P = concept_activation_matrix(img, txt)
    assert P.dtype == torch.float32 and P.shape == (9, 4)
    I, T = img.double().numpy(), txt.double().numpy()
    ref = np.zeros((9, 4))
    for i in range(9):
        for j in range(4):
            ni = np.linalg.norm(I[i])
            ref[i, j] = 0.0 if ni == 0 else I[i] @ T[j] / (ni * np.linalg.norm(T[j]))
    close(P, ref, rtol=1e-5, atol=1e-6)
    # scale-invariant: no logit scale or temperature
    close(concept_activation_matrix(img * 7, txt * 0.1), ref, rtol=1e-5, atol=1e-6)


def test_concept_activation_matrix_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="512-d|same dissector"):
        concept_activation_matrix(torch.randn(3, 512), torch.randn(2, 768))


# ----------------------------------------------------------------------------- soft_wpmi / wpmi
SOFT_SETTINGS = [
    dict(top_k=10, a=10, lam=1, min_prob=1e-7, p_start=0.998, p_end=0.97),
    dict(top_k=5, a=2, lam=0.5, min_prob=1e-3, p_start=1.0, p_end=0.9),
    dict(top_k=40, a=25, lam=0.0, min_prob=1e-7, p_start=0.9, p_end=0.5),  # Z = N
    dict(top_k=23, a=25, lam=1, min_prob=1e-7, p_start=1.0, p_end=0.95),  # q down to ~1e-8; groups of 4, padded
]


@pytest.mark.parametrize("dtype, limit", [(torch.float32, 1e30), (torch.float64, 1e290)])
@pytest.mark.parametrize(
    "z, min_prob, p_start, p_end",
    [(100, 1e-7, 0.998, 0.97), (100, 1e-7, 1.0, 1.0), (30, 1e-3, 0.5, 0.2), (12, 0.0, 1.0, 0.9), (7, 5.0, 1.0, 0.0)],
)
def test_soft_factors_are_the_formula_and_their_products_stay_in_range(dtype, limit, z, min_prob, p_start, p_end):
    fac = soft_factors(z, min_prob, p_start, p_end, dtype)
    # the factor 1 + r_j (q - 1) + min_prob in exact rational arithmetic (no float cancellation)
    qs = [Fraction(v) for v in (0.0, 1e-9, 0.3, 1.0)]
    log_scale = 0.0
    for j in range(z):
        r = Fraction(p_start) - Fraction(j, z) * (Fraction(p_start) - Fraction(p_end))
        factor = np.array([float(1 + r * (q - 1) + Fraction(min_prob)) for q in qs])
        ours = np.array([fac.offset[j] + fac.slope[j] * float(q) for q in qs])
        if fac.offset[j] == 1.0:  # divided by c_j = the factor at q = 0
            log_scale += math.log(factor[0])
            np.testing.assert_allclose(ours * factor[0], factor, rtol=1e-12)
        else:
            np.testing.assert_allclose(ours, factor, rtol=1e-12, atol=1e-300)
    assert fac.log_scale == pytest.approx(log_scale, rel=1e-12, abs=0)
    # the worst product of `group` factors stays inside the dtype's safe range
    lo = min(min(o, o + s) for o, s in zip(fac.offset, fac.slope))
    hi = max(max(o, o + s) for o, s in zip(fac.offset, fac.slope))
    assert 1 <= fac.group <= z
    if lo > 0:
        assert lo**fac.group >= 1 / limit and hi**fac.group <= limit
    else:
        assert fac.group == 1  # a factor can be 0: one log per factor, log 0 = -inf as the formula says


def test_soft_factors_group_many_factors_at_the_defaults():
    # the point of grouping: at the paper's defaults about ten factors share one log in float32
    assert soft_factors(100, 1e-7, 0.998, 0.97, torch.float32).group >= 10
    assert soft_factors(100, 1e-7, 0.998, 0.97, torch.float64).group == 100


SOFT_CORNERS = [
    # r = 1: factors are q + 1e-7, many near 1e-7; the rescaled factors reach 1e7
    dict(top_k=30, a=60, lam=1, min_prob=1e-7, p_start=1.0, p_end=1.0),
    # min_prob = 0, r = 1: the factor is q itself (raw factors, one log each)
    dict(top_k=12, a=8, lam=0.5, min_prob=0.0, p_start=1.0, p_end=1.0),
    # lam != 1: the rescaling's constant must be added back
    dict(top_k=9, a=3, lam=0.3, min_prob=1e-2, p_start=0.7, p_end=0.1),
]


@pytest.mark.parametrize("params", SOFT_CORNERS)
@pytest.mark.parametrize("ties", [False, True])
def test_soft_wpmi_parameter_corners_match_naive(params, ties):
    P, X = make()
    if ties:
        X = with_ties(X)
    ref = naive_soft_wpmi(P.numpy(), X.numpy(), **params)
    assert np.isfinite(ref).all()
    S = soft_wpmi(P, X, **params)
    assert torch.isfinite(S).all()
    close(S, ref, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(ref).max()))
    S32 = soft_wpmi(P.float(), X.float(), **params)
    assert S32.dtype == torch.float32
    close(S32, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_soft_wpmi_products_that_underflow_float64_stay_exact():
    # concept 0 is ~impossible in every image (q ~ 4e-36), so with r = 1 each of its 60
    # factors is ~1e-7 and their plain product, 1e-420, is below float64's range
    n, m, k, z = 80, 3, 5, 60
    g = torch.Generator().manual_seed(4)
    P = torch.ones(n, m, dtype=torch.float64)
    P[:, 0] = -1.0
    P[:, 1:] += 0.01 * torch.rand(n, m - 1, generator=g, dtype=torch.float64)
    X = torch.rand(n, k, generator=g, dtype=torch.float64)
    params = dict(top_k=z, a=20, lam=1, min_prob=1e-7, p_start=1.0, p_end=1.0)
    ref = naive_soft_wpmi(P.numpy(), X.numpy(), **params)
    assert (1e-7) ** z == 0.0  # the hazard is real
    S = soft_wpmi(P, X, **params)
    assert torch.isfinite(S).all()
    close(S, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    S32 = soft_wpmi(P.float(), X.float(), **params)
    assert torch.isfinite(S32).all()
    close(S32, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_soft_wpmi_float32_is_close_to_float64_at_scale():
    # the grouped float32 products lose far less than a float32 log per factor would
    P, X = make(n=300, m=50, k=40, seed=7)
    params = dict(top_k=100, a=10, lam=1, min_prob=1e-7, p_start=0.998, p_end=0.97)
    ref = naive_soft_wpmi(P.float().double().numpy(), X.float().double().numpy(), **params)
    err = np.abs(soft_wpmi(P.float(), X.float(), **params).double().numpy() - ref).max()
    assert err <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("params", SOFT_SETTINGS)
@pytest.mark.parametrize("ties", [False, True])
def test_soft_wpmi_matches_naive(params, ties):
    P, X = make()
    if ties:
        X = with_ties(X)
    ref = naive_soft_wpmi(P.numpy(), X.numpy(), **params)
    for chunk in (None, 1, 4):
        close(soft_wpmi(P, X, **params, chunk_neurons=chunk), ref, rtol=1e-9, atol=1e-9)
    # float32 inputs: within float32 rounding of the float64 truth
    S32 = soft_wpmi(P.float(), X.float(), **params)
    assert S32.dtype == torch.float32
    close(S32, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize(
    "params", [dict(top_k=28, a=2, lam=0.6, min_prob=1e-7), dict(top_k=3, a=10, lam=1, min_prob=1e-4)]
)
@pytest.mark.parametrize("ties", [False, True])
def test_wpmi_matches_naive(params, ties):
    P, X = make()
    if ties:
        X = with_ties(X)
    ref = naive_wpmi(P.numpy(), X.numpy(), **params)
    close(wpmi(P, X, **params), ref, rtol=1e-9, atol=1e-9)
    # float32: the centred float32 sums stay within float32 rounding of the float64 truth
    close(wpmi(P.float(), X.float(), **params), ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_soft_wpmi_prior_makes_concept_means_nonpositive():
    # docs/METHOD.md §3.1: with lam = 1, mean_k S_km <= 0 for every concept (Jensen)
    P, X = make(n=60, m=9, k=12, seed=3)
    S = soft_wpmi(P, X, top_k=8)
    assert (S.mean(0) <= 1e-12).all()
    assert (S.max(1).values > 0).any()


@pytest.mark.parametrize("fn", [soft_wpmi, wpmi])
def test_top_k_larger_than_probe_is_a_clear_error(fn):
    P, X = make(n=12)
    with pytest.raises(ValueError, match=r"N = 12 .*top_k = 20"):
        fn(P, X, top_k=20)


def test_compute_similarity_clamps_top_k_and_says_so():
    P, X = make(n=12)
    res = compute_similarity("soft_wpmi", P, X, {})
    assert res.top_k_used == 12
    assert any("used top_k = N = 12" in n for n in res.notes)
    assert res.S.dtype == torch.float32
    ref = naive_soft_wpmi(P.numpy(), X.numpy(), 12, 10, 1, 1e-7, 0.998, 0.97)
    close(res.S, ref, rtol=1e-5, atol=1e-4)


def test_constant_neuron_uses_first_images_and_is_flagged():
    P, X = make(n=30)
    X[:, 2] = 1.5
    S = soft_wpmi(P, X, top_k=4)
    # the constant neuron's top-4 set is images 0..3, so it equals a neuron that fires on exactly those
    X2 = X.clone()
    X2[:, 2] = 0.0
    X2[:4, 2] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    torch.testing.assert_close(S[2], soft_wpmi(P, X2, top_k=4)[2])
    res = compute_similarity("soft_wpmi", P, X, {"top_k": 4})
    assert any("1 of 6 neurons are constant" in n for n in res.notes)


# ----------------------------------------------------------------------------- cosine family
def test_cos_matches_naive_and_zero_neuron_is_nan():
    P, X = make()
    X[:, 3] = 0.0
    ref = naive_cos(P.numpy(), X.numpy())
    assert np.isnan(ref[3]).all()
    close(cos_similarity(P, X), ref, rtol=1e-10, atol=1e-12)
    res = compute_similarity("cos_similarity", P.float(), X.float(), {})
    assert any("no defined score" in n for n in res.notes)


@pytest.mark.parametrize("min_norm", [1e-3, 0.5])
def test_cos_cubed_matches_naive(min_norm):
    P, X = make()
    X = with_ties(X)  # includes a constant neuron: centred to 0, so its row is 0
    ref = naive_cos_cubed(P.numpy(), X.numpy(), min_norm)
    close(cos_similarity_cubed(P, X, min_norm=min_norm, chunk_neurons=2), ref, rtol=1e-10, atol=1e-12)
    assert (cos_similarity_cubed(P, X, min_norm=min_norm)[0] == 0).all()


# ----------------------------------------------------------------------------- rank_reorder
@pytest.mark.parametrize(
    "params",
    [
        dict(p=3, top_fraction=0.25, scale_p=0.5, n_permutations=5, seed=0),
        dict(p=2, top_fraction=0.5, scale_p=1.0, n_permutations=2, seed=7),
    ],
)
def test_rank_reorder_matches_naive(params):
    P, X = make()
    X = with_ties(X)
    P[:, 4] -= 0.5  # a concept with negative mean similarity -> -inf, not NaN
    ref = naive_rank_reorder(P.numpy(), X.numpy(), **params)
    assert np.isneginf(ref[1:, 4]).all()
    for chunk in (None, 1, 4):
        close(rank_reorder(P, X, **params, chunk_neurons=chunk), ref, rtol=1e-9, atol=1e-12)


def test_rank_reorder_constant_neuron_is_nan_row_and_seed_only_rescales_rows():
    P, X = make()
    X[:, 2] = 0.7
    S0 = rank_reorder(P, X, top_fraction=0.25, seed=0)
    S1 = rank_reorder(P, X, top_fraction=0.25, seed=1)
    assert torch.isnan(S0[2]).all()
    torch.testing.assert_close(S0, rank_reorder(P, X, top_fraction=0.25, seed=0), equal_nan=True)  # deterministic
    # the baseline B_k is a positive per-neuron constant: the seed changes scale, never the label
    ok = ~torch.isnan(S0).all(1)
    assert torch.equal(S0[ok].argmax(1), S1[ok].argmax(1))
    assert not torch.allclose(S0[ok], S1[ok])


def test_rank_reorder_too_few_images_is_a_clear_error():
    P, X = make(n=10)
    with pytest.raises(ValueError, match="top_fraction"):
        rank_reorder(P, X, top_fraction=0.05)


# ----------------------------------------------------------------------------- MAMMI
@pytest.mark.parametrize("alpha", [93, 50, 0])
@pytest.mark.parametrize("use_template", [False, True])
def test_mammi_matches_naive(alpha, use_template):
    P, X = make(n=50)
    X[:, 5] = 2.0  # constant neuron: empty representative set -> NaN row
    t = torch.linspace(0.0, 0.3, 50, dtype=torch.float64) if use_template else None
    ref = naive_mammi(P.numpy(), X.numpy(), None if t is None else t.numpy(), alpha)
    assert np.isnan(ref[5]).all()
    close(mammi_adaptive(P, X, template_feats=t, alpha=alpha), ref, rtol=1e-10, atol=1e-12)
    res = compute_similarity("mammi", P, X, {"alpha": alpha, "template": "A mammogram of a"}, template_feats=t)
    close(res.S, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- top-k selection
def reference_top_k(x: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, rows sorted by value descending then row ascending; first z."""
    rows = np.empty((x.shape[1], z), np.int64)
    for k in range(x.shape[1]):
        rows[k] = sorted(range(x.shape[0]), key=lambda i: (-float(x[i, k]), i))[:z]
    return np.take_along_axis(x.T, rows, axis=1), rows


def random_matrix(rng: np.random.Generator, n: int, k: int, dtype) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:  # continuous, no ties
        x = rng.standard_normal((n, k))
    elif kind == 1:  # few distinct values: ties everywhere, also at the top-z boundary
        x = rng.integers(0, int(rng.integers(1, 5)), size=(n, k)).astype(float)
    elif kind == 2:  # ReLU-like: many exact zeros
        x = np.maximum(rng.standard_normal((n, k)), 0.0)
    else:  # mixture with constant and sorted columns
        x = rng.standard_normal((n, k))
        x[:, 0] = 1.5
        if k > 1:
            x[:, 1] = np.arange(n)[::-1]
    return x.astype(dtype)


def test_ranked_top_k_breaks_ties_by_lower_index():
    X = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 5.0], [2.0, 5.0], [3.0, 1.0]])
    vals, idx = ranked_top_k(X, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert vals.tolist() == [[3.0, 3.0, 3.0], [5.0, 5.0, 5.0]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ranked_top_k_matches_sorting(dtype):
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 120))
        k = int(rng.integers(1, 70))
        z = int(rng.integers(1, n + 1))
        x = random_matrix(rng, n, k, dtype)
        vals, rows = ranked_top_k(torch.from_numpy(x), z)
        ref_vals, ref_rows = reference_top_k(x, z)
        assert vals.dtype == torch.from_numpy(x).dtype and rows.dtype == torch.int64
        np.testing.assert_array_equal(rows.numpy(), ref_rows, err_msg=f"n={n} k={k} z={z}")
        np.testing.assert_array_equal(vals.numpy(), ref_vals)


def test_ranked_top_k_extreme_and_signed_values():
    # -0.0 == +0.0 must tie (lower row first); a huge outlier, a heavy tail, a tie block that
    # straddles the boundary, all-negative columns, infinities and float64 extremes
    rng = np.random.default_rng(12)
    n, z = 700, 60
    x = rng.random((n, 8))
    x[13, 0] = 1e300
    x[:, 1] = np.where(rng.random(n) < 0.5, -0.0, 0.0)
    x[:, 2] = np.exp(rng.standard_normal(n) * 8)
    x[::3, 3] = 0.5
    x[:, 4] = -rng.random(n)
    x[[5, 9, 400], 5] = np.inf
    x[::2, 6] = -np.inf
    x[:3, 7] = [1e-310, 5e-324, -5e-324]
    vals, rows = ranked_top_k(torch.from_numpy(x), z)
    ref_v, ref_r = reference_top_k(x, z)
    assert np.array_equal(rows.numpy(), ref_r) and np.array_equal(vals.numpy(), ref_v)
    assert rows[1].tolist() == list(range(z))  # every zero ties: plain row order


def test_ranked_top_k_ranks_nan_first_in_row_order():
    X = torch.tensor([[1.0, 2.0], [float("nan"), 3.0], [5.0, 4.0], [float("nan"), 1.0]])
    vals, idx = ranked_top_k(X, 3)
    assert idx.tolist() == [[1, 3, 2], [2, 1, 0]]
    assert torch.isnan(vals[0, :2]).all() and vals[0, 2] == 5.0


def test_finite_check_survives_overflowing_sums_and_catches_bad_values():
    from dissect_study.engine.scores.similarity import all_finite

    big = torch.full((100, 10), 3e38)  # finite, but the float32 sum overflows to inf
    assert all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(50, 4)
        t[17, 2] = bad
        assert not all_finite(t)
    both = torch.zeros(6, 2)
    both[0, 0], both[1, 1] = float("inf"), -float("inf")  # sums to NaN: still caught
    assert not all_finite(both)
    P, X = make(n=30)
    soft_wpmi(P, X * 1e300, top_k=5)  # huge but finite activations are accepted


# ----------------------------------------------------------------------------- shared behaviour
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_rejects_bad_input(name):
    fn = FUNCTIONS[name]
    P, X = make(n=40)
    with pytest.raises(SimilarityError, match="image rows"):
        fn(P, X[:-1])
    for where in ((0, 0), (3, 1), (39, 5)):
        for bad in (float("nan"), float("inf"), -float("inf")):
            Xn = X.clone()
            Xn[where] = bad
            with pytest.raises(SimilarityError, match="1 NaN/inf values"):
                fn(P, Xn)
    with pytest.raises(SimilarityError, match="2-D"):
        fn(P, X[:, 0])
    assert issubclass(SimilarityError, DissectStudyError) and issubclass(SimilarityError, ValueError)


def test_registry_and_vocabulary_name_the_same_functions():
    spoken = {n for f in vocabulary.SIMILARITIES.values() for n in (f.name, *f.aliases)}
    assert set(SIMILARITIES.names()) == spoken
    for f in vocabulary.SIMILARITIES.values():
        impl = SIMILARITIES.get(f.name)
        assert all(SIMILARITIES.get(alias) is impl for alias in f.aliases), f.name
        # every vocabulary parameter reaches the implementation, except the two that cannot
        # change S: MAMMI's prompt template (the engine turns it into template_feats) and
        # its selection threshold beta (applied to S afterwards, by the calibration bench)
        takes = set(inspect.signature(impl).parameters)
        missing = {p.name for p in f.params} - takes
        assert missing <= ({"template", "beta"} if f.name == "mammi" else set()), (f.name, missing)


def test_compute_similarity_names_and_params():
    P, X = make()
    a = compute_similarity("soft_wpmi", P, X, {"top_k": 5, "lambda": 0.3})
    b = soft_wpmi(P, X, top_k=5, lam=0.3)
    torch.testing.assert_close(a.S, b.float())
    assert compute_similarity("cos_similarity_cubed", P, X, {}).S.shape == (6, 7)
    with pytest.raises(RegistryError, match="Did you mean 'soft_wpmi'"):
        compute_similarity("soft_wmpi", P, X, {})
    with pytest.raises(SimilarityError, match="no parameter 'topk'"):
        compute_similarity("wpmi", P, X, {"topk": 3})


def test_compute_similarity_notes_a_parameter_that_cannot_change_s():
    P, X = make()
    plain = compute_similarity("mammi", P, X, {"beta": 0.95})  # the default, as the checker fills it
    assert plain.notes == []
    res = compute_similarity("mammi", P, X, {"beta": 0.5})
    assert any("beta = 0.5 does not change the scores" in n for n in res.notes)
    torch.testing.assert_close(res.S, plain.S, equal_nan=True)


def test_functions_are_deterministic_and_independent_of_chunking_and_threads():
    P, X = make(n=300, m=30, k=70, seed=11, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = {
            name: fn(P, X, **({"top_k": 16} if name in ("soft_wpmi", "wpmi") else {})) for name, fn in FUNCTIONS.items()
        }
        torch.set_num_threads(max(2, before))
        for name, fn in FUNCTIONS.items():
            kw = {"top_k": 16} if name in ("soft_wpmi", "wpmi") else {}
            s1, s2 = fn(P, X, **kw), fn(P.clone(), X.clone(), **kw)
            assert torch.equal(torch.nan_to_num(s1), torch.nan_to_num(s2)), name
            assert torch.equal(torch.nan_to_num(s1), torch.nan_to_num(one[name])), name
            assert s1.device == P.device and s1.shape == (70, 30)
        # SoftWPMI's steps run on a thread pool: any step size gives the same bits
        base = soft_wpmi(P, X, top_k=50)
        for chunk in (1, 7, 64, 70):
            assert torch.equal(soft_wpmi(P, X, top_k=50, chunk_neurons=chunk), base)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    P, X = make(n=64, m=11, k=10, seed=5, dtype=torch.float32)
    for name, fn in FUNCTIONS.items():
        kw = {"top_k": 16} if name in ("soft_wpmi", "wpmi") else {}
        cpu = fn(P, X, **kw)
        gpu = fn(P.cuda(), X.cuda(), **kw)
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5, equal_nan=True)


def test_mammi_template_without_feats_is_noted():
    P, X = make()
    res = compute_similarity("mammi", P, X, {"template": "A mammogram of a"})
    assert any("subtracted nothing" in n for n in res.notes)
    assert compute_similarity("mammi", P, X, {}).notes == []
