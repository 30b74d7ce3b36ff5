"""The compiled CPU kernels (engine/kernels.py) against straightforward references.

Top-k selection is checked against a sort by (-value, index) written here; the SoftWPMI
and WPMI kernels against the naive float64 formulas of test_similarity.py, on both
backends, including parameter corners where a plain float64 product would underflow.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dissect_study.engine.scores import kernels
from dissect_study.engine.scores.similarity import ranked_top_k, soft_wpmi, wpmi
from test_similarity import close, make, naive_soft_wpmi, naive_wpmi, with_ties

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"compiled path off: {kernels.why_unavailable()}")


def reference_top_k(x: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column, rows sorted by value descending then row ascending; first z."""
    rows = np.empty((x.shape[1], z), np.int64)
    for k in range(x.shape[1]):
        order = sorted(range(x.shape[0]), key=lambda i: (-float(x[i, k]), i))
        rows[k] = order[:z]
    vals = np.take_along_axis(x.T, rows, axis=1)
    return vals, rows


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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_rows_matches_sorting(dtype):
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 120))
        k = int(rng.integers(1, 70))  # crosses the kernel's 32-column tiles
        z = int(rng.integers(1, n + 1))
        x = random_matrix(rng, n, k, dtype)
        vals, rows = kernels.top_k_rows(x, z)
        ref_vals, ref_rows = reference_top_k(x, z)
        assert vals.dtype == dtype and rows.dtype == np.int64
        np.testing.assert_array_equal(rows, ref_rows, err_msg=f"n={n} k={k} z={z}")
        np.testing.assert_array_equal(vals, ref_vals)


def test_top_k_rows_candidate_overflow():
    # 900 rows tie at the bound with z = 5: far more candidates than the 8 z buffer holds
    x = np.zeros((1000, 3), np.float32)
    x[::7, 0] = 2.0
    x[500, 1] = 9.0
    x[:, 2] = np.linspace(0, 1, 1000, dtype=np.float32)
    vals, rows = kernels.top_k_rows(x, 5)
    ref_vals, ref_rows = reference_top_k(x, 5)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_array_equal(vals, ref_vals)
    assert rows[1].tolist() == [500, 0, 1, 2, 3]


def test_top_k_rows_rejects_bad_z():
    with pytest.raises(ValueError, match="1 <= z <= N"):
        kernels.top_k_rows(np.zeros((4, 2), np.float32), 5)


def test_ranked_top_k_backends_agree_and_nonfinite_falls_back():
    rng = np.random.default_rng(3)
    X = torch.from_numpy(random_matrix(rng, 300, 40, np.float32))
    X[:, 5] = torch.round(X[:, 5] * 2)
    for z in (1, 17, 300):
        a, b = ranked_top_k(X, z, backend="jit"), ranked_top_k(X, z, backend="torch")
        assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    Xn = X.clone()
    Xn[7, 3] = float("nan")
    # NaN is not something the kernel ranks; auto takes the torch path (NaN ranks first there)
    v, i = ranked_top_k(Xn, 4)
    assert i[3, 0] == 7 and torch.isnan(v[3, 0])


SOFT_CORNERS = [
    dict(top_k=10, a=10, lam=1, min_prob=1e-7, p_start=0.998, p_end=0.97),
    dict(top_k=40, a=25, lam=0.0, min_prob=1e-7, p_start=0.9, p_end=0.5),
    # r = 1: factors are q + 1e-7, many near 1e-7 (the kernel groups 41 factors per log)
    dict(top_k=30, a=60, lam=1, min_prob=1e-7, p_start=1.0, p_end=1.0),
    # min_prob = 0, r = 1: the factor is q itself; the kernel takes a log per factor
    dict(top_k=12, a=8, lam=0.5, min_prob=0.0, p_start=1.0, p_end=1.0),
]


@pytest.mark.parametrize("params", SOFT_CORNERS)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_soft_wpmi_backends_match_naive(params, ties, backend):
    P, X = make()
    if ties:
        X = with_ties(X)
    ref = naive_soft_wpmi(P.numpy(), X.numpy(), **params)
    assert np.isfinite(ref).all()
    S = soft_wpmi(P, X, **params, backend=backend)
    assert torch.isfinite(S).all()
    close(S, ref, rtol=1e-9, atol=1e-9 * max(1.0, np.abs(ref).max()))
    S32 = soft_wpmi(P.float(), X.float(), **params, backend=backend)
    assert S32.dtype == torch.float32
    close(S32, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_soft_wpmi_products_that_underflow_float64_stay_exact():
    # concept 0 is ~impossible in every image (q ~ 4e-18), so with r = 1 each of its 60
    # factors is ~1e-7 and their plain product, 1e-420, is below float64's range
    n, m, k, z = 80, 3, 5, 60
    g = torch.Generator().manual_seed(4)
    P = torch.ones(n, m, dtype=torch.float64)
    P[:, 0] = -1.0
    P[:, 1:] += 0.01 * torch.rand(n, m - 1, generator=g, dtype=torch.float64)
    X = torch.rand(n, k, generator=g, dtype=torch.float64)
    params = dict(top_k=z, a=20, lam=1, min_prob=1e-7, p_start=1.0, p_end=1.0)
    ref = naive_soft_wpmi(P.numpy(), X.numpy(), **params)
    q0 = math.exp(-40) / (math.exp(-40) + 2 * math.e**20 * 1.0)
    assert (1e-7 + q0) ** z == 0.0  # the hazard is real
    S = soft_wpmi(P, X, **params, backend="jit")
    assert torch.isfinite(S).all()
    close(S, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    L = kernels.soft_wpmi_loglik(torch.softmax(20 * P, 1).numpy(), ranked_top_k(X, z)[1].numpy(),
                                 np.ones(z), np.full(z, 1e-7))
    assert np.all(L[:, 0] < -900) and np.isfinite(L).all()


def test_soft_wpmi_kernel_is_closer_to_float64_than_float32_logs():
    # the kernel multiplies in float64: float32 inputs lose only the input rounding
    P, X = make(n=300, m=50, k=40, seed=7)
    params = dict(top_k=100, a=10, lam=1, min_prob=1e-7, p_start=0.998, p_end=0.97)
    ref = naive_soft_wpmi(P.float().double().numpy(), X.float().double().numpy(), **params)
    err = np.abs(soft_wpmi(P.float(), X.float(), **params, backend="jit").double().numpy() - ref).max()
    err_torch = np.abs(soft_wpmi(P.float(), X.float(), **params, backend="torch").double().numpy() - ref).max()
    assert err < err_torch
    assert err <= 1e-6 * np.abs(ref).max()


@pytest.mark.parametrize("backend", ["jit", "torch"])
def test_wpmi_backends_match_naive(backend):
    P, X = make(n=50, m=9, k=37, seed=2)
    for params in (dict(top_k=28, a=2, lam=0.6, min_prob=1e-7), dict(top_k=3, a=10, lam=1, min_prob=1e-4)):
        ref = naive_wpmi(P.numpy(), X.numpy(), **params)
        close(wpmi(P, X, **params, backend=backend), ref, rtol=1e-9, atol=1e-9)
        close(wpmi(P, with_ties(X), **params, backend=backend), naive_wpmi(P.numpy(), with_ties(X).numpy(), **params),
              rtol=1e-9, atol=1e-9)


def test_product_group_keeps_float64_products_in_range():
    assert kernels.product_group(0.002, 1.0, 100) == 100  # defaults: one log per (neuron, concept)
    assert kernels.product_group(1e-7, 1.0, 100) == 41
    assert kernels.product_group(0.0, 1.0, 100) == 1
    assert kernels.product_group(1.0, 1.0, 7) == 7
    for lo in (0.5, 0.002, 1e-7, 1e-30, 1e-200):
        g = kernels.product_group(lo, 1.0, 10_000)
        assert lo**g >= 1e-300 or g == 1
    g = kernels.product_group(1.0, 1e5, 10_000)
    assert (1e5) ** g <= 1e300


def test_results_do_not_depend_on_thread_count():
    import numba

    P, X = make(n=400, m=30, k=70, seed=11, dtype=torch.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = (soft_wpmi(P, X, top_k=50), wpmi(P, X), ranked_top_k(X, 20)[1])
        assert numba.get_num_threads() == 1
        torch.set_num_threads(max(2, before))
        many = (soft_wpmi(P, X, top_k=50), wpmi(P, X), ranked_top_k(X, 20)[1])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_switch_off_and_forced_backend(monkeypatch):
    P, X = make()
    monkeypatch.setenv("DISSECT_STUDY_JIT", "0")
    assert not kernels.available()
    assert kernels.why_unavailable() == "DISSECT_STUDY_JIT=0"
    with pytest.raises(ValueError, match="compiled path is unavailable: DISSECT_STUDY_JIT=0"):
        soft_wpmi(P, X, top_k=5, backend="jit")
    auto = soft_wpmi(P, X, top_k=5)  # falls back to torch silently
    monkeypatch.delenv("DISSECT_STUDY_JIT")
    torch.testing.assert_close(auto, soft_wpmi(P, X, top_k=5, backend="jit"), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="backend must be one of"):
        wpmi(P, X, backend="gpu")


def test_kernel_matches_formula_at_a_glance():
    # one neuron, two images, one concept: L = log(c0 + r0 q0) + log(c1 + r1 q1)
    q = np.array([[0.25], [0.5]], np.float64)
    idx = np.array([[1, 0]], np.int64)
    r = np.array([0.9, 0.8])
    c = 1 - r + 1e-3
    L = kernels.soft_wpmi_loglik(q, idx, r, c)
    assert L[0, 0] == pytest.approx(math.log(c[0] + r[0] * 0.5) + math.log(c[1] + r[1] * 0.25), rel=1e-14)


def test_finite_check_survives_overflowing_sums_and_catches_bad_values():
    from dissect_study.engine.scores.similarity import _all_finite

    big = torch.full((100, 10), 3e38)  # finite, but the float32 sum overflows to inf
    assert _all_finite(big)
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(50, 4)
        t[17, 2] = bad
        assert not _all_finite(t)
    both = torch.zeros(6, 2)
    both[0, 0], both[1, 1] = float("inf"), -float("inf")  # sums to NaN: still caught
    assert not _all_finite(both)
    P, X = make(n=30)
    soft_wpmi(P, X * 1e300, top_k=5)  # huge but finite activations are accepted


def test_kernels_compile_uncached_where_numba_cannot_cache(monkeypatch):
    import importlib

    import numba.core.dispatcher as dispatcher

    def refuse(self):
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(dispatcher.Dispatcher, "enable_caching", refuse)
    try:
        mod = importlib.reload(kernels)  # must not fail on import
        assert mod._soft_wpmi_products._cache.__class__.__name__ == "NullCache"
        P, X = make()
        ref = naive_soft_wpmi(P.numpy(), X.numpy(), 10, 10, 1, 1e-7, 0.998, 0.97)
        close(soft_wpmi(P, X, top_k=10, backend="jit"), ref, rtol=1e-9, atol=1e-9)
    finally:
        monkeypatch.undo()
        importlib.reload(kernels)


def test_top_k_rows_bucket_ranking_on_skewed_and_signed_zero_columns():
    # the ranking step buckets candidates by value: a far outlier squeezes every other
    # candidate into one bucket, and -0.0 == +0.0 must tie (lower row first), as in torch
    rng = np.random.default_rng(12)
    n, z = 700, 60
    x = rng.random((n, 6)).astype(np.float32)
    x[13, 0] = 1e30  # one outlier: all other candidates share the last bucket
    x[:, 1] = np.where(rng.random(n) < 0.5, -0.0, 0.0)  # signed zeros only
    x[:, 2] = np.exp(rng.standard_normal(n) * 8).astype(np.float32)  # heavy tail across decades
    x[::3, 3] = 0.5  # a tie block that straddles the boundary
    x[:, 4] = -rng.random(n).astype(np.float32)  # all negative
    vals, rows = kernels.top_k_rows(x, z)
    ref_v, ref_r = reference_top_k(x, z)
    assert np.array_equal(rows, ref_r)
    assert np.array_equal(vals, ref_v)
    assert rows[1].tolist() == list(range(z))  # every zero ties: plain row order


def test_vectorised_log_matches_numpy_over_the_float64_range():
    rng = np.random.default_rng(21)
    x = np.concatenate([
        10.0 ** rng.uniform(-307, 307, 4000),  # every binade
        1.0 + rng.uniform(-1e-6, 1e-6, 200),  # log near 0, where relative error would show
        np.sqrt(2.0) * (1.0 + rng.uniform(-1e-12, 1e-12, 200)),  # the mantissa fold point
        2.0 ** np.arange(-1000, 1000, 7.0),  # exact powers of two: mantissa exactly 1
        rng.uniform(1e-270, 1e-260, 200),  # SoftWPMI's products at the defaults
    ])
    x = x[: x.size // 8 * 8].reshape(-1, 8)
    out = np.empty_like(x)
    kernels._log_rows(x, out)
    assert np.abs(out - np.log(x)).max() <= 5e-11


def test_float32_path_matches_naive_on_block_edges():
    # 130 concepts = two full 64-concept blocks and a partial one; Z = 37 leaves a tail of
    # 5 ranks after four sweeps of 8; also a single concept and exactly one block
    for m, z in ((130, 37), (1, 9), (64, 16)):
        P, X = make(n=90, m=m, k=23, seed=m)
        params = dict(top_k=z, a=10, lam=0.7, min_prob=1e-7, p_start=0.998, p_end=0.97)
        ref = naive_soft_wpmi(P.float().double().numpy(), X.float().double().numpy(), **params)
        q = torch.softmax(10 * P.float(), 1).numpy()
        r = 0.998 - np.arange(z) / z * (0.998 - 0.97)
        assert kernels.float32_soft_wpmi_applies(q.dtype, r, 1 - r + 1e-7)
        S = soft_wpmi(P.float(), X.float(), **params, backend="jit")
        assert S.dtype == torch.float32 and S.shape == (23, m) and S.is_contiguous()
        close(S, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))  # one concept: S ~ 0


def test_float32_path_declines_factors_that_would_underflow_float32():
    r = np.ones(10)
    assert not kernels.float32_soft_wpmi_applies(np.float32, r, np.full(10, 1e-12))  # (1e-12)^4 < 1e-38
    assert not kernels.float32_soft_wpmi_applies(np.float64, r, np.full(10, 1e-3))  # float64 input
    assert kernels.float32_soft_wpmi_applies(np.float32, r, np.full(10, 1e-7))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [(0, 0), (137, 29), (299, 63)])
def test_top_k_rows_refuses_non_finite_input_wherever_it_is(bad, where):
    x = np.random.default_rng(5).random((300, 64)).astype(np.float32)
    x[where] = bad
    with pytest.raises(kernels.NonFiniteInput):
        kernels.top_k_rows(x, 10)
    P, X = make(n=300, m=5, k=64)
    X[where] = bad
    for fn in (soft_wpmi, wpmi):
        with pytest.raises(ValueError, match="1 NaN/inf values"):
            fn(P, X, top_k=10, backend="jit")


def test_wide_vector_features_only_on_avx512_and_never_over_the_user():
    host = "+64bit,+avx2,+avx512f,+fma"
    assert kernels.wide_vector_features(host, {}) == host + ",-prefer-256-bit"
    assert kernels.wide_vector_features("+64bit,+avx2,-avx512f", {}) is None  # no AVX-512
    assert kernels.wide_vector_features(host, {"NUMBA_CPU_FEATURES": "+avx2"}) is None  # user's choice
    assert kernels.wide_vector_features(host, {"DISSECT_STUDY_WIDE_VECTORS": "0"}) is None  # opt-out
    assert kernels.wide_vector_features(host + ",-prefer-256-bit", {}) is None  # already there
    assert kernels.vector_width() in ("512-bit preferred", "LLVM default")


def test_vectorised_exp_and_blocked_softmax_match_float64():
    rng = np.random.default_rng(8)
    y = -np.concatenate([rng.uniform(0, 800, 4000), rng.uniform(0, 1e-6, 800), np.arange(0, 740, 0.37)[:2000]])
    y = y[: y.size // 8 * 8].reshape(-1, 8)
    out = np.empty_like(y)
    kernels._exp_rows(y, out)
    ref = np.exp(np.maximum(y, -700.0))  # below -700 the kernel floors (0 once in float32)
    assert (np.abs(out - ref) / ref).max() <= 1e-9
    for m, a in ((763, 10.0), (7, 10.0), (70, -3.0), (16, 0.0), (130, 400.0)):
        P = rng.standard_normal((50, m)).astype(np.float32) * 0.1
        P[3, m // 2] = 2.0  # a peaked row: most of its posteriors are tiny
        qb = np.full((-(-m // 64), 50, 64), np.nan, np.float32)
        kernels._blocked_softmax(P, a, qb)
        q = qb.transpose(1, 0, 2).reshape(50, -1)
        x = a * P.astype(np.float64)
        e = np.exp(x - x.max(1, keepdims=True))
        ref = (e / e.sum(1, keepdims=True)).astype(np.float32)
        np.testing.assert_allclose(q[:, :m], ref, rtol=3e-7, atol=1e-37)
        assert np.all(q[:, m:] == 0.0)  # padding concepts: q = 0, so their factor is exactly c


def test_top_k_rows_exactly_cap_candidates_keeps_them_all():
    # found in review: with exactly cap = 8 z candidates, later non-candidate visits used
    # to overwrite the last kept one (here the unique maximum, row 35)
    n, z = 40, 2  # 8 blocks of 5 rows, cap = 16
    x = np.zeros((n, 1), np.float32)
    x[[r for b in range(7) for r in range(5 * b, 5 * b + 2)] + [32], 0] = 1.0  # 15 ones
    x[35, 0] = 5.0  # 16 entries reach the bound
    vals, rows = kernels.top_k_rows(x, z)
    assert rows[0].tolist() == [35, 0] and vals[0].tolist() == [5.0, 1.0]
    rng = np.random.default_rng(30)
    for dtype in (np.float32, np.float64):  # heavy tails put the count on every side of cap
        for _ in range(60):
            n, z = int(rng.integers(20, 300)), int(rng.integers(1, 12))
            x = np.exp(rng.standard_normal((n, 7)) * 15).astype(dtype)
            assert np.array_equal(kernels.top_k_rows(x, z)[1], reference_top_k(x, z)[1])


@pytest.mark.parametrize("column", [[0.0, 1e-310, 0.0], [1e308, -1e308, 0.0], [5e-324, 0.0, -5e-324]])
def test_top_k_rows_float64_extreme_spans_stay_exact(column):
    # found in review: a candidate span below ~1e-306 (its reciprocal overflows) or above
    # float64's range made the ranking's bucket index NaN and indexed out of bounds
    x = np.array(column, np.float64)[:, None]
    for z in (1, 2, 3):
        vals, rows = kernels.top_k_rows(x, z)
        ref_v, ref_r = reference_top_k(x, z)
        assert np.array_equal(rows, ref_r) and np.array_equal(vals, ref_v)
    P = torch.randn(3, 4, dtype=torch.float64)
    S = soft_wpmi(P, torch.from_numpy(x), top_k=3, backend="jit")
    assert torch.isfinite(S).all()
