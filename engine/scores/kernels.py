"""Compiled CPU kernels for the top-k similarity family (SoftWPMI, WPMI) and top-k selection.

Why compiled code: at the paper's scale (N = 4,095 images, M = 763 concepts, K = 2,048
neurons, Z = 100) SoftWPMI evaluates K * Z * M = 156 M factors.  In torch every
elementwise step (gather, multiply-add, log, sum) is a separate pass over memory, so a
batched torch version is no faster than the reference's per-neuron loop, which is
itself vectorised over its Z x M block (both are bound by the same passes).  Here:

* ``soft_wpmi_float32`` (the default CPU path, float32 inputs): two fused kernels.
  ``_blocked_softmax`` writes q = softmax(a P) straight into blocks of 64 concepts;
  ``_soft_wpmi_blocked`` runs one task per block, so the block of q (1 MiB at N = 4,095)
  stays in L2 while every neuron's Z rows are gathered from it.  Factors are multiplied
  four at a time in float32 and then in float64 (0.002**100 = 1e-270 is still a normal
  float64), so there is one log per (neuron, concept) instead of one per factor; the
  column sums of the products give the neuron prior exactly; a vectorised log writes the
  float32 scores.  About 5e-7 of max |S| from the float64 formula (a float32 loop of
  logs is ~3e-5 off).
* ``soft_wpmi_loglik``: the general float64-product kernel (float64 inputs, and the
  parameter corners where float32 groups could underflow).  Products are cut into
  groups whose worst case stays inside float64's range (``product_group``), so no
  parameter choice can underflow.
* ``wpmi_loglik``: L_km = sum_j logq[i_j(k), m], accumulated in float64.
* ``top_k_rows``: per column of X, the Z largest entries with the engine's tie-break
  (value descending, lower image index first), exact, without a transpose: block maxima
  (one streaming read of X, which also checks it for NaN/inf) give a provable lower bound
  on each column's Z-th largest value, only blocks that reach the bound are re-read, and
  the ~1.4 Z candidates per column are ranked by a stable bucket pass.

numba calls libm for ``np.exp``/``np.log`` one element at a time; ``_exp_nonpositive`` and
``_log_positive`` are written as plain arithmetic on the float64 bit pattern so LLVM
vectorises them, and are tested against numpy over the whole range.  On AVX-512 hosts
numba is told to prefer 512-bit vectors (``wide_vector_features``).

Numba compiles these on first use (about 10 s on a 2-core CPU, once per input dtype),
then caches them on disk beside this file or in numba's user cache (0.3 s to load in a
new process).  Everything is deterministic: each result is computed by one thread in a
fixed order, so results do not depend on the thread count.  The kernels release the GIL,
so progress bars and other Python threads keep running.  The torch code in
``engine/similarity.py`` remains the path for CUDA tensors, for machines where numba is
unavailable, and when ``DISSECT_STUDY_JIT=0`` is set (tests compare both paths).
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

log = logging.getLogger(__name__)

try:  # numba is a declared dependency; a broken install degrades to the torch path
    import numba
    from numba import njit, prange

    _IMPORT_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - exercised only on a broken install
    numba = None  # type: ignore[assignment]
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        return lambda f: f

    prange = range  # type: ignore[assignment]

_OFF = ("0", "false", "no", "off")


def wide_vector_features(host_features: str, environ: dict[str, str]) -> str | None:
    """The LLVM feature string that lets numba vectorise with 512-bit registers, or None.

    LLVM tunes every AVX-512 Intel CPU since Skylake-SP to *prefer* 256-bit vectors
    (old chips lost clock speed on 512-bit code), so numba's loops use half the
    register width the hardware has.  Adding ``-prefer-256-bit`` to the host's own features
    -- the switch numba's test-suite uses -- makes the SoftWPMI kernel ~1.3x faster on a
    recent Xeon.  Nothing changes when the host lacks AVX-512, when the user set
    ``NUMBA_CPU_FEATURES`` themselves, or when ``DISSECT_STUDY_WIDE_VECTORS=0``.
    """
    if environ.get("NUMBA_CPU_FEATURES") is not None:
        return None
    if environ.get("DISSECT_STUDY_WIDE_VECTORS", "1").strip().lower() in _OFF:
        return None
    features = host_features.split(",")
    if "+avx512f" not in features or "-prefer-256-bit" in features:
        return None
    return host_features + ",-prefer-256-bit"


def _prefer_wide_vectors() -> None:
    """Apply ``wide_vector_features`` to numba's configuration, before anything compiles.

    Process-wide, like every numba setting: it applies to all numba code compiled in this
    process if numba has compiled nothing yet, and to nothing if it already has.
    """
    if numba is None or numba.config.CPU_FEATURES is not None:
        return
    from numba.core.codegen import get_host_cpu_features

    features = wide_vector_features(get_host_cpu_features(), dict(os.environ))
    if features is not None:
        numba.config.CPU_FEATURES = features


_prefer_wide_vectors()


def vector_width() -> str:
    """'512-bit preferred', 'LLVM default', or why not known: for benchmarks and logs."""
    if numba is None:
        return "numba unavailable"
    try:
        from numba.core.registry import cpu_target

        features = cpu_target.target_context.codegen()._tm_features  # private: report only
    except Exception:  # pragma: no cover - numba internals moved
        return "unknown"
    return "512-bit preferred" if "-prefer-256-bit" in features.split(",") else "LLVM default"


def _compiled(**options):
    """``njit(parallel=True, nogil=True, cache=True, ...)``, uncached where caching is impossible.

    Numba refuses ``cache=True`` at decoration time, i.e. on import, when it finds no
    writable cache location (a read-only install with an unwritable home): then every
    process compiles afresh (about 11 s for SoftWPMI on 2 cores) instead of the import failing.
    """

    def decorate(func):
        try:
            return njit(parallel=True, nogil=True, cache=True, **options)(func)
        except RuntimeError:
            log.info("numba cannot cache %s here; it will be compiled in every process", func.__name__)
            return njit(parallel=True, nogil=True, cache=False, **options)(func)

    return decorate


def available() -> bool:
    """True when the compiled CPU path may be used (numba importable, not disabled)."""
    if numba is None:
        return False
    return os.environ.get("DISSECT_STUDY_JIT", "1").strip().lower() not in _OFF


def why_unavailable() -> str | None:
    if numba is None:
        return f"numba could not be imported ({_IMPORT_ERROR})"
    if not available():
        return "DISSECT_STUDY_JIT=0"
    return None


def _threads() -> None:
    """Use as many threads as torch does, so `--threads`-style settings apply to both."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


# ----------------------------------------------------------------------------- SoftWPMI
def product_group(min_factor: float, max_factor: float, z: int) -> int:
    """How many factors may be multiplied in float64 before taking a log.

    Every factor lies in [min_factor, max_factor]; a product of G of them stays within
    [1e-290, 1e290] (float64's normal range is 2.2e-308 .. 1.8e308) when
    G <= 290 ln 10 / |ln f| for both bounds.  For the defaults (min factor 0.002) that is
    107 >= Z = 100: a single log per (neuron, concept).  A zero factor (p_start = 1 with
    min_prob = 0) gives G = 1 and log 0 = -inf, as the formula does.
    """
    g = z
    limit = 290 * math.log(10)
    if min_factor <= 0:
        return 1
    if min_factor < 1:
        g = min(g, int(limit / -math.log(min_factor)))
    if max_factor > 1:
        g = min(g, int(limit / math.log(max_factor)))
    return max(1, g)


@njit(inline="always", nogil=True)
def _multiply_factors(prod, q, idx_k, r, c, j0, j1):  # pragma: no cover - compiled
    """prod[m] *= prod over j in [j0, j1) of (c_j + r_j q[idx_k[j], m]), in float64."""
    m_total = prod.shape[0]
    j = j0
    # four factors per sweep over the concepts: one load/store of `prod` per four
    while j + 4 <= j1:
        q0 = q[idx_k[j]]
        q1 = q[idx_k[j + 1]]
        q2 = q[idx_k[j + 2]]
        q3 = q[idx_k[j + 3]]
        r0, r1, r2, r3 = r[j], r[j + 1], r[j + 2], r[j + 3]
        c0, c1, c2, c3 = c[j], c[j + 1], c[j + 2], c[j + 3]
        for m in range(m_total):
            prod[m] *= ((c0 + r0 * q0[m]) * (c1 + r1 * q1[m])) * ((c2 + r2 * q2[m]) * (c3 + r3 * q3[m]))
        j += 4
    while j < j1:
        row = q[idx_k[j]]
        rj = r[j]
        cj = c[j]
        for m in range(m_total):
            prod[m] *= cj + rj * row[m]
        j += 1


@_compiled()
def _soft_wpmi_products(q, idx, r, c, out):  # pragma: no cover - compiled
    """out[k, m] = prod_j (c_j + r_j q[idx[k, j], m]): the whole product, when it cannot underflow."""
    n_neurons, z = idx.shape
    for k in prange(n_neurons):
        prod = out[k]
        prod[:] = 1.0
        _multiply_factors(prod, q, idx[k], r, c, 0, z)


@_compiled()
def _soft_wpmi_loglik(q, idx, r, c, group, out):  # pragma: no cover - compiled
    """out[k, m] = sum over groups of `group` ranks of log(prod of the group's factors)."""
    n_neurons, z = idx.shape
    m_total = q.shape[1]
    for k in prange(n_neurons):
        acc = np.zeros(m_total, np.float64)
        prod = np.empty(m_total, np.float64)
        for g0 in range(0, z, group):
            prod[:] = 1.0
            _multiply_factors(prod, q, idx[k], r, c, g0, min(z, g0 + group))
            for m in range(m_total):
                acc[m] += np.log(prod[m])
        out[k] = acc


def soft_wpmi_loglik(q: np.ndarray, idx: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """L (K x M, float64): L_km = sum_j log(c_j + r_j q[idx[k, j], m]).

    ``q`` (N x M) is the concept posterior, ``idx`` (K x Z) each neuron's top images in
    rank order, ``r`` and ``c`` (Z,) the rank weights and 1 - r + min_prob, in float64.
    The general path: float64 inputs, and the parameter corners ``soft_wpmi_float32``
    declines.
    """
    q = np.ascontiguousarray(q)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    r = np.ascontiguousarray(r, dtype=np.float64)
    c = np.ascontiguousarray(c, dtype=np.float64)
    z = idx.shape[1]
    group = product_group(*_factor_range(r, c), z)
    out = np.empty((idx.shape[0], q.shape[1]), np.float64)
    _threads()
    if group >= z:  # one float64 product per (neuron, concept), then a vectorised log
        _soft_wpmi_products(q, idx, r, c, out)
        _log_inplace(out)
    else:
        _soft_wpmi_loglik(q, idx, r, c, group, out)
    return out


def _factor_range(r: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """Smallest and largest possible factor c_j + r_j q over 0 <= q <= 1."""
    return float(np.minimum(c, c + r).min()), float(np.maximum(c, c + r).max())


def float32_soft_wpmi_applies(dtype, r: np.ndarray, c: np.ndarray) -> bool:
    """Whether ``soft_wpmi_float32`` computes inputs of this dtype and rank weights (else ``soft_wpmi_loglik``)."""
    lo, hi = _factor_range(np.asarray(r, np.float64), np.asarray(c, np.float64))
    return np.dtype(dtype) == np.float32 and product_group(lo, hi, len(r)) >= len(r) and _float32_groups_safe(lo, hi)


def soft_wpmi_float32(
    p: np.ndarray, a: float, idx: np.ndarray, r: np.ndarray, c: np.ndarray, lam: float
) -> np.ndarray:
    """SoftWPMI scores S (K x M, float32) from float32 P, each neuron's ranked top images and the rank weights.

    The CPU fast path at the paper's scale, fused end to end: the softmax q = softmax(a P)
    is written straight into concept blocks (``_blocked_softmax``), and one kernel per
    block forms the products, the exact neuron prior and the float32 scores
    (``_soft_wpmi_blocked``).  Callers check ``float32_soft_wpmi_applies`` first.
    """
    if not float32_soft_wpmi_applies(p.dtype, r, c):
        raise ValueError("soft_wpmi_float32: inputs outside the float32 path (see float32_soft_wpmi_applies)")
    p = np.ascontiguousarray(p)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    n, m = p.shape
    k = idx.shape[0]
    _threads()
    qb = np.empty((-(-m // _CONCEPT_BLOCK), n, _CONCEPT_BLOCK), np.float32)
    _blocked_softmax(p, float(a), qb)
    S = np.empty((k, m), np.float32)
    _soft_wpmi_blocked(qb, idx, np.asarray(r, np.float32), np.asarray(c, np.float32), float(lam), S)
    return S


def _log_inplace(a: np.ndarray) -> None:
    """a = log(a), multithreaded (torch's vectorised log; numpy's runs on one core)."""
    import torch

    torch.log_(torch.from_numpy(a))


# Concepts per task of the float32 SoftWPMI kernel.  One block of q holds every probe
# image's 64 concept posteriors (N * 256 bytes: 1 MiB at N = 4,095), so the Z * K random
# row reads of a block hit L2 instead of L3/DRAM and one page covers 16 rows.  A compile-time
# constant, so the inner loop is fully unrolled into whole vectors.
_CONCEPT_BLOCK = 64


_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000  # the exponent bits of 1.0
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


@njit(inline="always", nogil=True)
def _log_positive(x, out, scratch):  # pragma: no cover - compiled
    """out[a] = log(x[a]) for positive normal float64 x, in loops LLVM vectorises.

    numba calls libm's scalar log, ~20 ns an entry; at K x M = 1.6 M entries that pass
    cost more than the products.  Here x = 2^e m is split by its bits (``scratch`` is the
    int64 view through which the mantissa gets the exponent of 1.0), m is folded into
    [sqrt(1/2), sqrt(2)), and log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, is
    summed to s^11: the truncation error is below 2e-11, far under float32's resolution
    of the scores this feeds.  Tested against numpy's log over the whole float64 range.
    """
    bits = x.view(np.int64)
    for a in range(x.shape[0]):
        scratch[a] = (bits[a] & _MANTISSA) | _ONE_BITS
    mant = scratch.view(np.float64)
    for a in range(x.shape[0]):
        m = mant[a]
        e = np.float64(((bits[a] >> 52) & 0x7FF) - 1023)
        big = m > _SQRT2
        m = m * 0.5 if big else m
        e = e + 1.0 if big else e
        s = (m - 1.0) / (m + 1.0)
        s2 = s * s
        p = 2.0 / 11.0
        p = p * s2 + 2.0 / 9.0
        p = p * s2 + 2.0 / 7.0
        p = p * s2 + 2.0 / 5.0
        p = p * s2 + 2.0 / 3.0
        p = p * s2 + 2.0
        out[a] = e * _LN2 + s * p


_LOG2E = 1.0 / math.log(2.0)
_LN2_HI = 0.693145751953125  # ln 2 split in two: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = math.log(2.0) - 0.693145751953125
_EXP_FLOOR = -700.0  # exp(-700) ~ 1e-304: still a normal float64, and 0 once rounded to float32


@njit(inline="always", nogil=True)
def _exp_nonpositive(y, out, scratch):  # pragma: no cover - compiled
    """out[a] = exp(y[a]) for y <= 0 (float64), in loops LLVM vectorises; see ``_log_positive``.

    y = k ln 2 + f with |f| <= ln 2 / 2 (Cody-Waite: ln 2 in two parts so k ln 2 is exact),
    exp f by its Taylor series to f^8 (truncation below 3e-10 relative, far under the
    float32 the softmax is stored in), times 2^k built from its exponent bits.  y below
    -700 is raised to -700, whose exp rounds to 0 in float32 as the true value does.
    """
    for a in range(y.shape[0]):
        v = y[a]
        v = v if v > _EXP_FLOOR else _EXP_FLOOR
        ki = np.int64(v * _LOG2E - 0.5)  # v <= 0: truncation of x - 1/2 rounds x to nearest
        kf = np.float64(ki)
        f = (v - kf * _LN2_HI) - kf * _LN2_LO
        p = 1.0 / 40320.0
        p = p * f + 1.0 / 5040.0
        p = p * f + 1.0 / 720.0
        p = p * f + 1.0 / 120.0
        p = p * f + 1.0 / 24.0
        p = p * f + 1.0 / 6.0
        p = p * f + 0.5
        p = p * f + 1.0
        p = p * f + 1.0
        out[a] = p
        scratch[a] = (ki + 1023) << 52
    scale = scratch.view(np.float64)
    for a in range(y.shape[0]):
        out[a] *= scale[a]


@_compiled(fastmath={"reassoc", "nsz", "contract"})  # reassoc: the row sums vectorise
def _blocked_softmax(x, a_scale, qb):  # pragma: no cover - compiled
    """qb[t, i, :] = softmax(a x[i])[t B : (t + 1) B], zero past the last concept.

    The concept posterior computed straight into the concept-blocked layout the SoftWPMI
    kernel reads: one read of P and one write of q, where torch's softmax plus a strided
    copy made four passes over N x M.  Chunks of 64 rows per task.
    """
    n, m = x.shape
    bw = qb.shape[2]
    n_chunks = (n + 63) // 64
    for ch in prange(n_chunks):
        y = np.empty(m, np.float64)
        e = np.empty(m, np.float64)
        scratch = np.empty(m, np.int64)
        lanes = np.empty(16, np.float64)
        for i in range(ch * 64, min(n, ch * 64 + 64)):
            row = x[i]
            for a in range(m):
                y[a] = a_scale * np.float64(row[a])
            # the row maximum through 16 running maxima: an elementwise loop, which
            # vectorises, where a scalar max reduction would not
            for l in range(16):
                lanes[l] = y[0]
            for a0 in range(0, m - 15, 16):
                for l in range(16):
                    v = y[a0 + l]
                    lanes[l] = v if v > lanes[l] else lanes[l]
            mx = lanes[0]
            for l in range(1, 16):
                mx = lanes[l] if lanes[l] > mx else mx
            for a in range(m - m % 16, m):
                mx = y[a] if y[a] > mx else mx
            for a in range(m):  # a x - max as one multiply-add: one rounding, not two
                y[a] = a_scale * np.float64(row[a]) - mx
            _exp_nonpositive(y, e, scratch)
            total = 0.0
            for a in range(m):
                total += e[a]
            inv = 1.0 / total
            for t in range(qb.shape[0]):
                m0 = t * bw
                w = min(m - m0, bw)
                dst = qb[t, i]
                for a in range(w):
                    dst[a] = np.float32(e[m0 + a] * inv)
                for a in range(w, bw):
                    dst[a] = 0.0


@_compiled()
def _exp_rows(y, out):  # pragma: no cover - compiled
    """out = exp(y) row by row with ``_exp_nonpositive`` (for tests; y <= 0, 2-D)."""
    for i in prange(y.shape[0]):
        scratch = np.empty(y.shape[1], np.int64)
        _exp_nonpositive(y[i], out[i], scratch)


@_compiled()
def _log_rows(x, out):  # pragma: no cover - compiled
    """out = log(x) row by row with ``_log_positive`` (for tests; x positive normal, 2-D)."""
    for i in prange(x.shape[0]):
        scratch = np.empty(x.shape[1], np.int64)
        _log_positive(x[i], out[i], scratch)


@_compiled(fastmath={"contract"})
def _soft_wpmi_blocked(qb, idx, r, c, lam, out):  # pragma: no cover - compiled
    """out[k, m] = log prod_j (c_j + r_j q[idx[k, j], m]) - lam (lse_m - log K), float32.

    One task per block of ``_CONCEPT_BLOCK`` concepts, q read from its block qb[t] (L2
    resident).  Groups of four factors multiply in float32 (``_float32_groups_safe``),
    pairs of groups in float64 into the running product: half the arithmetic of an
    all-float64 product.  The block's K x B products go to a buffer of the task;
    once all neurons are done, their column sums give the neuron prior exactly (lse_m =
    log sum_k prod_km, no K x M logsumexp), and one vectorised log-and-subtract writes the
    float32 scores: the K x M float64 intermediate never reaches memory as a whole.
    ``contract`` lets c + r q fuse into one multiply-add.
    """
    nb = qb.shape[0]
    n_neurons, z = idx.shape
    m_total = out.shape[1]
    log_k = np.log(np.float64(n_neurons))
    for t in prange(nb):
        qt = qb[t]
        buf = np.empty((n_neurons, _CONCEPT_BLOCK), np.float64)  # K x B: 1 MiB at K = 2,048
        tot = np.zeros(_CONCEPT_BLOCK, np.float64)
        for k in range(n_neurons):
            acc = buf[k]
            for a in range(_CONCEPT_BLOCK):
                acc[a] = 1.0
            j = 0
            while j + 8 <= z:  # 2-D indexing, no row views: nothing is allocated or refcounted
                i0, i1, i2, i3 = idx[k, j], idx[k, j + 1], idx[k, j + 2], idx[k, j + 3]
                i4, i5, i6, i7 = idx[k, j + 4], idx[k, j + 5], idx[k, j + 6], idx[k, j + 7]
                r0, r1, r2, r3 = r[j], r[j + 1], r[j + 2], r[j + 3]
                r4, r5, r6, r7 = r[j + 4], r[j + 5], r[j + 6], r[j + 7]
                c0, c1, c2, c3 = c[j], c[j + 1], c[j + 2], c[j + 3]
                c4, c5, c6, c7 = c[j + 4], c[j + 5], c[j + 6], c[j + 7]
                for a in range(_CONCEPT_BLOCK):
                    g = ((c0 + r0 * qt[i0, a]) * (c1 + r1 * qt[i1, a])) * ((c2 + r2 * qt[i2, a]) * (c3 + r3 * qt[i3, a]))
                    h = ((c4 + r4 * qt[i4, a]) * (c5 + r5 * qt[i5, a])) * ((c6 + r6 * qt[i6, a]) * (c7 + r7 * qt[i7, a]))
                    acc[a] *= np.float64(g) * np.float64(h)
                j += 8
            while j < z:
                ij = idx[k, j]
                rj = r[j]
                cj = c[j]
                for a in range(_CONCEPT_BLOCK):
                    acc[a] *= np.float64(cj + rj * qt[ij, a])
                j += 1
            for a in range(_CONCEPT_BLOCK):
                tot[a] += acc[a]
        m0 = t * _CONCEPT_BLOCK
        w = min(m_total - m0, _CONCEPT_BLOCK)
        prior = np.empty(_CONCEPT_BLOCK, np.float64)
        for a in range(_CONCEPT_BLOCK):
            prior[a] = lam * (np.log(tot[a]) - log_k)
        logs = np.empty(_CONCEPT_BLOCK, np.float64)
        scratch = np.empty(_CONCEPT_BLOCK, np.int64)
        for k in range(n_neurons):
            _log_positive(buf[k], logs, scratch)
            row = out[k]
            for a in range(w):
                row[m0 + a] = np.float32(logs[a] - prior[a])


def _float32_groups_safe(lo: float, hi: float) -> bool:
    """Whether four factors in [lo, hi] multiply in float32 without leaving its normal range.

    1e-9 ** 4 = 1e-36 and 1e9 ** 4 = 1e36 are inside float32's 1.2e-38 .. 3.4e38.  The
    defaults' factors lie in [0.002, 1]; only r = 1 with min_prob < 1e-9 fails this.
    """
    return lo >= 1e-9 and hi <= 1e9


# ----------------------------------------------------------------------------- WPMI
@_compiled()
def _gather_sum(table, idx, out):  # pragma: no cover - compiled
    n_neurons, z = idx.shape
    m_total = table.shape[1]
    for k in prange(n_neurons):
        acc = np.zeros(m_total, np.float64)
        j = 0
        while j + 4 <= z:
            t0 = table[idx[k, j]]
            t1 = table[idx[k, j + 1]]
            t2 = table[idx[k, j + 2]]
            t3 = table[idx[k, j + 3]]
            for m in range(m_total):
                acc[m] += (np.float64(t0[m]) + t1[m]) + (np.float64(t2[m]) + t3[m])
            j += 4
        while j < z:
            row = table[idx[k, j]]
            for m in range(m_total):
                acc[m] += row[m]
            j += 1
        for m in range(m_total):
            out[k, m] = acc[m]


def wpmi_loglik(logq: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """L (K x M, float64): L_km = sum_j logq[idx[k, j], m], accumulated in float64."""
    logq = np.ascontiguousarray(logq)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    out = np.empty((idx.shape[0], logq.shape[1]), np.float64)
    _threads()
    _gather_sum(logq, idx, out)
    return out


# ----------------------------------------------------------------------------- top-k
_TOP_K_TILE = 1024  # columns per task at most: a 4 KiB row slice is one page the prefetcher streams
_BISECTIONS = 12  # bound refinement steps; each halves the bound's distance to the ideal
_MAX_BISECTIONS = 80  # on heavy-tailed columns, until at most 2 z block maxima reach the bound
_SORT_BUCKETS = 64
_BLOCKS_PER_Z = 4


@njit(inline="always", nogil=True)
def _rank_candidates(vals, rows, z, out_v, out_i, sv, sr, bucket, counts):  # pragma: no cover - compiled
    """Write the z largest of ``vals`` (rows ascending) into out_v/out_i in rank order.

    Rank order is value descending, lower row first on ties.  A bucket pass by value
    (monotone in the value, stable in row order) followed by an insertion sort inside the
    leading buckets costs O(count) for the ~1.4 z candidates a column has, where a
    comparison sort of them was the selection's largest cost.  Equal values share a bucket
    and the insertion sort only moves past strictly smaller values, so ties keep row order.
    """
    cnt = vals.shape[0]
    hi = vals[0]
    lo = vals[0]
    for p in range(1, cnt):
        v = vals[p]
        hi = v if v > hi else hi
        lo = v if v < lo else lo
    nb = counts.shape[0] - 1
    span = np.float64(hi) - np.float64(lo)
    scale = (nb - 1) / span if span > 0 else 0.0
    if not (np.isfinite(span) and np.isfinite(scale)):
        # float64 extremes: a span that overflows, or one so small (< 1e-306) that its
        # reciprocal does; (hi - v) * scale would be NaN and index anywhere.  One bucket:
        # the insertion sort alone ranks them, still exactly.
        scale = 0.0
    for b in range(nb + 1):
        counts[b] = 0
    for p in range(cnt):
        d = (np.float64(hi) - np.float64(vals[p])) * scale if scale > 0 else 0.0
        b = int(d)  # 0 for the largest value; d is finite and >= 0 here
        b = b if b < nb - 1 else nb - 1
        b = b if b > 0 else 0
        bucket[p] = b
        counts[b + 1] += 1
    for b in range(nb):
        counts[b + 1] += counts[b]  # counts[b] = first slot of bucket b
    for p in range(cnt):
        b = bucket[p]
        s = counts[b]
        sv[s] = vals[p]
        sr[s] = rows[p]
        counts[b] = s + 1  # afterwards counts[b] = end of bucket b
    start = 0
    for b in range(nb):
        end = counts[b]
        if start >= z:
            break
        for p in range(start + 1, end):  # stable insertion sort, value descending
            v = sv[p]
            r = sr[p]
            s = p
            while s > start and sv[s - 1] < v:
                sv[s] = sv[s - 1]
                sr[s] = sr[s - 1]
                s -= 1
            sv[s] = v
            sr[s] = r
        start = end
    for p in range(z):
        out_v[p] = sv[p]
        out_i[p] = sr[p]


@_compiled()
def _block_maxima(x, n_blocks, bmax, finite):  # pragma: no cover - compiled
    """bmax[b, col] = max of x over row block b; finite[b] = whether block b is free of NaN/inf.

    Each task streams whole rows (contiguous memory, which the hardware prefetches at full
    bandwidth: a tile of columns would read 1 KiB per 8 KiB row and pay DRAM latency on
    every row).  v - v is 0 for finite v and NaN for NaN or +-inf, so ``probe`` is the
    finiteness check of x at almost no cost: callers need not scan x separately.
    """
    n, n_cols = x.shape
    for b in prange(n_blocks):
        i0 = (b * n) // n_blocks
        i1 = ((b + 1) * n) // n_blocks
        bm = bmax[b]
        first = x[i0]
        probe = np.zeros(n_cols, x.dtype)
        for a in range(n_cols):
            bm[a] = first[a]
            probe[a] = first[a] - first[a]
        for i in range(i0 + 1, i1):
            row = x[i]
            for a in range(n_cols):  # a select, not a conditional store: vectorises
                v = row[a]
                cur = bm[a]
                bm[a] = v if v > cur else cur
                probe[a] += v - v
        total = 0.0
        for a in range(n_cols):
            total += probe[a]
        finite[b] = total == 0.0


@_compiled()
def _top_k_rows(x, z, tile, all_bmax, out_v, out_i):  # pragma: no cover - compiled
    """Stages 2-4 of ``top_k_rows`` per tile of columns, from the block maxima (stage 1)."""
    n, n_cols = x.shape
    n_tiles = (n_cols + tile - 1) // tile
    n_blocks = all_bmax.shape[0]
    cap = min(n, 8 * z)
    for t in prange(n_tiles):
        k0 = t * tile
        w = min(n_cols, k0 + tile) - k0
        bmax = np.ascontiguousarray(all_bmax[:, k0:k0 + w])  # C layout: the loops below vectorise
        # 2. a lower bound on each column's z-th largest value: any t with at least z block
        # maxima >= t will do (the blocks are disjoint, so z distinct entries reach t).
        # Bisection between the smallest block maximum (all n_blocks >= z reach it) and the
        # largest keeps that invariant and runs vectorised across the tile's columns.
        lo = bmax[0].copy()
        hi = bmax[0].copy()
        for b in range(1, n_blocks):
            bm = bmax[b]
            for a in range(w):
                v = bm[a]
                lo[a] = v if v < lo[a] else lo[a]
                hi[a] = v if v > hi[a] else hi[a]
        mid = np.empty(w, x.dtype)
        reach = np.empty(w, np.int32)
        at_lo = np.full(w, np.int32(n_blocks))  # block maxima >= lo, per column
        for step in range(_MAX_BISECTIONS):
            # after the first _BISECTIONS steps, go on only while some column's bound is
            # still loose: on heavy-tailed columns the z-th block maximum can sit many
            # halvings below the largest, and a loose bound floods the candidate buffers
            if step >= _BISECTIONS and at_lo.max() <= 2 * z:
                break
            for a in range(w):
                mid[a] = lo[a] + (hi[a] - lo[a]) * 0.5
                reach[a] = 0
            for b in range(n_blocks):
                bm = bmax[b]
                for a in range(w):
                    reach[a] += np.int32(bm[a] >= mid[a])
            for a in range(w):
                ok = reach[a] >= z
                lo[a] = mid[a] if ok else lo[a]
                hi[a] = hi[a] if ok else mid[a]
                at_lo[a] = reach[a] if ok else at_lo[a]
        bound = lo
        # 3. candidates >= bound, in ascending row order.  A block whose maximum in a
        # column is below the bound holds no candidate there, and only ~z of the n_blocks
        # blocks reach it per column, so each block visits just its active columns.
        # cap + 1 slots: every visit writes, and once cap candidates are kept the spare
        # slot takes the writes, so the kept ones are never overwritten
        cand_v = np.empty((w, cap + 1), x.dtype)
        cand_i = np.empty((w, cap + 1), np.int64)
        count = np.zeros(w, np.int64)
        active = np.empty(w, np.int64)
        for b in range(n_blocks):
            bm = bmax[b]
            n_active = 0
            for a in range(w):  # branch-free compaction of the active columns
                active[n_active] = a
                n_active += bm[a] >= bound[a]
            if n_active == 0:
                continue
            r0 = (b * n) // n_blocks
            r1 = ((b + 1) * n) // n_blocks
            for u in range(n_active):  # column by column: the count stays in a register
                a = active[u]
                bnd = bound[a]
                cnt = count[a]
                cv = cand_v[a]
                ci = cand_i[a]
                for i in range(r0, r1):  # branch-free: ~1 in 7 visits is a candidate
                    v = x[i, k0 + a]
                    slot = cnt if cnt < cap else cap  # past cap only the count matters
                    cv[slot] = v
                    ci[slot] = i
                    cnt += v >= bnd
                count[a] = cnt
        # 4. exact top z among the candidates: value descending, lower row first on ties
        sv = np.empty(cap, x.dtype)
        sr = np.empty(cap, np.int64)
        bucket = np.empty(cap, np.int64)
        counts = np.empty(_SORT_BUCKETS + 1, np.int64)
        for a in range(w):
            cnt = count[a]
            if cnt < z:  # impossible for finite input (see the bound); never write out of range
                out_i[k0 + a, 0] = -1
                continue
            if cnt <= cap:
                _rank_candidates(cand_v[a, :cnt], cand_i[a, :cnt], z, out_v[k0 + a], out_i[k0 + a],
                                 sv, sr, bucket, counts)
                continue
            # more than cap candidates (ties at the bound, or a heavy tail that keeps the
            # bisected bound low): re-read the column, then a stable sort
            vals = np.empty(cnt, x.dtype)
            rows = np.empty(cnt, np.int64)
            o = 0
            for i in range(n):
                v = x[i, k0 + a]
                if v >= bound[a] and o < cnt:  # equal counts for finite x; never past the buffer
                    vals[o] = v
                    rows[o] = i
                    o += 1
            order = np.argsort(-vals, kind="mergesort")  # rows ascending, so ties stay in row order
            for p in range(z):
                out_v[k0 + a, p] = vals[order[p]]
                out_i[k0 + a, p] = rows[order[p]]


class NonFiniteInput(ValueError):
    """``top_k_rows`` found NaN or +-inf in its input (which it checks as it reads it)."""


def top_k_rows(x: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x`` (N x K): the z largest values and their row indices.

    Returns (values, rows), each K x z, in rank order: value descending, and among equal
    values the lower row first.  Needs 1 <= z <= N; raises ``NonFiniteInput`` when ``x``
    holds NaN or +-inf (checked during the first read, so callers need not scan x first).
    """
    x = np.ascontiguousarray(x)
    n, k = x.shape
    if not 1 <= z <= n:
        raise ValueError(f"top_k_rows: need 1 <= z <= N = {n}, got z = {z}.")
    out_v = np.empty((k, z), x.dtype)
    out_i = np.empty((k, z), np.int64)
    _threads()
    # wide tiles: long contiguous row slices; one tile per thread at the paper's scale
    tile = max(32, min(_TOP_K_TILE, -(-k // numba.get_num_threads()) // 16 * 16))
    n_blocks = min(n, _BLOCKS_PER_Z * z)  # >= z, as the bound's bisection needs
    bmax = np.empty((n_blocks, k), x.dtype)
    finite = np.zeros(n_blocks, np.bool_)
    _block_maxima(x, n_blocks, bmax, finite)
    if not finite.all():
        raise NonFiniteInput("top_k_rows: the input holds NaN or inf values.")
    _top_k_rows(x, int(z), tile, bmax, out_v, out_i)
    bad = np.flatnonzero(out_i[:, 0] < 0)
    if bad.size:  # a broken invariant: refuse, never guess
        raise RuntimeError(f"top_k_rows: selection failed for columns {bad[:5].tolist()}.")
    return out_v, out_i
