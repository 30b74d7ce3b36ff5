"""Similarity functions against naive float64 implementations written from docs/METHOD.md §1.1, §3.

Each naive version below is a per-neuron, per-concept loop in numpy written straight
from the formula (not from engine/similarity.py), with the documented tie-break: among
equal activations the lower image index ranks first.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dissect_study.engine.scores.similarity import (
    SIMILARITY_FUNCTIONS,
    compute_similarity,
    concept_activation_matrix,
    cos_similarity,
    cos_similarity_cubed,
    mammi_adaptive,
    mammi_select,
    ranked_top_k,
    rank_reorder,
    soft_wpmi,
    wpmi,
)


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


def test_product_group_bounds_underflow():
    from dissect_study.engine.scores.similarity import _product_group

    assert _product_group(0.002, 1e-7) == 10
    assert _product_group(1e-7, 1e-7) == 4
    assert _product_group(0.0, 0.0) == 1
    for f in (0.5, 0.002, 1e-5, 1e-7, 1e-20):
        assert f ** _product_group(f, 1e-7) >= 1e-30


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


@pytest.mark.parametrize("params", [dict(top_k=28, a=2, lam=0.6, min_prob=1e-7), dict(top_k=3, a=10, lam=1, min_prob=1e-4)])
@pytest.mark.parametrize("ties", [False, True])
def test_wpmi_matches_naive(params, ties):
    P, X = make()
    if ties:
        X = with_ties(X)
    ref = naive_wpmi(P.numpy(), X.numpy(), **params)
    for chunk in (None, 2):
        close(wpmi(P, X, **params, chunk_neurons=chunk), ref, rtol=1e-9, atol=1e-9)


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
    for chunk in (None, 1, 5):
        close(cos_similarity(P, X, chunk_neurons=chunk), ref, rtol=1e-10, atol=1e-12)
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


def test_mammi_select_matches_rule():
    S = torch.tensor(
        [
            [0.10, 0.096, 0.094, 0.10, -0.2],  # tie at the top: lower index first; 0.094 < 0.095
            [-0.1, -0.2, -0.05, -0.3, -0.4],  # best <= 0: nothing
            [float("nan")] * 5,  # undefined neuron: nothing
            [0.0, 0.5, 0.2, 0.49, 0.476],
        ]
    )
    assert mammi_select(S, 0.95) == [[0, 3, 1], [], [], [1, 3, 4]]
    assert mammi_select(S, 1.0) == [[], [], [], []]  # strict '>' against beta * max
    assert mammi_select(S, 0.0)[3] == [1, 3, 4, 2]


# ----------------------------------------------------------------------------- shared behaviour
def test_ranked_top_k_breaks_ties_by_lower_index():
    X = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 5.0], [2.0, 5.0], [3.0, 1.0]])
    vals, idx = ranked_top_k(X, 3)
    assert idx.tolist() == [[1, 2, 4], [0, 1, 2]]
    assert vals.tolist() == [[3.0, 3.0, 3.0], [5.0, 5.0, 5.0]]


@pytest.mark.parametrize("name", sorted(SIMILARITY_FUNCTIONS))
def test_every_function_rejects_bad_input(name):
    fn = SIMILARITY_FUNCTIONS[name]
    P, X = make(n=40)
    with pytest.raises(ValueError, match="image rows"):
        fn(P, X[:-1])
    Xn = X.clone()
    Xn[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fn(P, Xn)
    with pytest.raises(ValueError, match="2-D"):
        fn(P, X[:, 0])


def test_compute_similarity_names_and_params():
    P, X = make()
    a = compute_similarity("soft_wpmi", P, X, {"top_k": 5, "lambda": 0.3})
    b = soft_wpmi(P, X, top_k=5, lam=0.3)
    torch.testing.assert_close(a.S, b.float())
    assert compute_similarity("cos_similarity_cubed", P, X, {}).S.shape == (6, 7)
    with pytest.raises(ValueError, match="Known functions"):
        compute_similarity("soft_wmpi", P, X, {})
    with pytest.raises(ValueError, match="no parameter 'topk'"):
        compute_similarity("wpmi", P, X, {"topk": 3})


def test_functions_are_deterministic_and_device_agnostic_on_cpu():
    P, X = make(n=64, m=11, k=10, seed=5, dtype=torch.float32)
    for name, fn in SIMILARITY_FUNCTIONS.items():
        kw = {"top_k": 16} if name in ("soft_wpmi", "wpmi") else {}
        s1, s2 = fn(P, X, **kw), fn(P.clone(), X.clone(), **kw)
        assert torch.equal(torch.nan_to_num(s1), torch.nan_to_num(s2)), name
        assert s1.device == P.device and s1.shape == (10, 11)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    P, X = make(n=64, m=11, k=10, seed=5, dtype=torch.float32)
    for name, fn in SIMILARITY_FUNCTIONS.items():
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
