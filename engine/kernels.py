"""Compiled CPU kernels for the top-k similarity family (SoftWPMI, WPMI) and top-k selection.

Why compiled code: at the paper's scale (N = 4,095 images, M = 763 concepts, K = 2,048
neurons, Z = 100) SoftWPMI evaluates K * Z * M = 156 M factors.  In torch every
elementwise step (gather, multiply-add, log, sum) is a separate pass over memory, so a
batched torch version is no faster than the reference's per-neuron loop, which is
itself vectorised over its Z x M block (both are bound by the same passes).  The kernels
here make one pass per neuron, keeping the running product in registers/L1:

* ``soft_wpmi_loglik``: L_km = log prod_j (c_j + r_j q[i_j(k), m]) with the product in
  float64 (0.002**100 = 1e-270 is still a normal float64), so there is **one log per
  (neuron, concept)** instead of one per factor.  Products are cut into groups whose
  worst case stays inside float64's range (``product_group``), so no parameter choice can
  underflow.  The result is float64-exact to ~1e-14 of the float64 formula, far closer
  than a float32 loop of logs (~3e-5).
* ``wpmi_loglik``: L_km = sum_j logq[i_j(k), m], accumulated in float64.
* ``top_k_rows``: per column of X, the Z largest entries with the engine's tie-break
  (value descending, lower image index first), exact, in one read of X without a
  transpose: block maxima give a provable lower bound on each column's Z-th largest
  value, so only a few per cent of the entries are ever collected as candidates.

Numba compiles these on first use (about 11 s on a 2-core CPU for SoftWPMI's kernels, once
per input dtype), then caches them on disk beside this file or in numba's user cache
(0.3 s to load in a new process).  Everything is deterministic: each neuron is computed by one
thread in a fixed order, so results do not depend on the thread count.  The kernels
release the GIL, so progress bars and other Python threads keep running.  The torch code in
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
    return os.environ.get("DISSECT_STUDY_JIT", "1").strip().lower() not in ("0", "false", "no", "off")


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
    """
    q = np.ascontiguousarray(q)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    r = np.ascontiguousarray(r, dtype=np.float64)
    c = np.ascontiguousarray(c, dtype=np.float64)
    z = idx.shape[1]
    # factor = c_j + r_j q with 0 <= q <= 1
    lo = float(np.minimum(c, c + r).min())
    hi = float(np.maximum(c, c + r).max())
    group = product_group(lo, hi, z)
    out = np.empty((idx.shape[0], q.shape[1]), np.float64)
    _threads()
    if group >= z:  # the default: one product per (neuron, concept), then a vectorised log
        _soft_wpmi_products(q, idx, r, c, out)
        np.log(out, out=out)
    else:
        _soft_wpmi_loglik(q, idx, r, c, group, out)
    return out


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
_TOP_K_TILE = 256  # columns per task: each row slice is 1 KiB of float32, a page per row visit
_BISECTIONS = 12  # bound refinement steps; each halves the bound's distance to the ideal
_SORT_BUCKETS = 64


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
    for b in range(nb + 1):
        counts[b] = 0
    for p in range(cnt):
        b = int((np.float64(hi) - np.float64(vals[p])) * scale)  # 0 for the largest value
        b = b if b < nb - 1 else nb - 1
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
def _top_k_rows(x, z, tile, out_v, out_i):  # pragma: no cover - compiled
    n, n_cols = x.shape
    n_tiles = (n_cols + tile - 1) // tile
    n_blocks = min(n, 2 * z)
    cap = min(n, 8 * z)
    for t in prange(n_tiles):
        k0 = t * tile
        w = min(n_cols, k0 + tile) - k0
        # 1. per column, the maximum of each of n_blocks row blocks (rows read contiguously)
        bmax = np.empty((n_blocks, w), x.dtype)
        for b in range(n_blocks):
            i0 = (b * n) // n_blocks
            i1 = ((b + 1) * n) // n_blocks
            bm = bmax[b]
            first = x[i0, k0:k0 + w]
            for a in range(w):
                bm[a] = first[a]
            for i in range(i0 + 1, i1):
                row = x[i, k0:k0 + w]  # 1-D views with loop-variable indices: no wrap-around checks
                for a in range(w):  # a select, not a conditional store: vectorises
                    v = row[a]
                    cur = bm[a]
                    bm[a] = v if v > cur else cur
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
        for _ in range(_BISECTIONS):
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
        bound = lo
        # 3. candidates >= bound, in ascending row order
        cand_v = np.empty((w, cap), x.dtype)
        cand_i = np.empty((w, cap), np.int64)
        count = np.zeros(w, np.int64)
        for i in range(n):
            row = x[i, k0:k0 + w]
            for a in range(w):
                v = row[a]
                if v >= bound[a]:
                    cnt = count[a]
                    if cnt < cap:
                        cand_v[a, cnt] = v
                        cand_i[a, cnt] = i
                    count[a] = cnt + 1
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
            # many ties at the bound: re-read the column, then a stable sort (rare)
            vals = np.empty(cnt, x.dtype)
            rows = np.empty(cnt, np.int64)
            o = 0
            for i in range(n):
                v = x[i, k0 + a]
                if v >= bound[a]:
                    vals[o] = v
                    rows[o] = i
                    o += 1
            order = np.argsort(-vals, kind="mergesort")  # rows ascending, so ties stay in row order
            for p in range(z):
                out_v[k0 + a, p] = vals[order[p]]
                out_i[k0 + a, p] = rows[order[p]]


def top_k_rows(x: np.ndarray, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``x`` (N x K, finite): the z largest values and their row indices.

    Returns (values, rows), each K x z, in rank order: value descending, and among equal
    values the lower row first.  ``x`` must be finite (callers check) and 1 <= z <= N.
    """
    x = np.ascontiguousarray(x)
    n, k = x.shape
    if not 1 <= z <= n:
        raise ValueError(f"top_k_rows: need 1 <= z <= N = {n}, got z = {z}.")
    out_v = np.empty((k, z), x.dtype)
    out_i = np.empty((k, z), np.int64)
    _threads()
    # wide tiles read each row slice in one go; keep >= 4 tiles per thread for balance
    tile = max(32, min(_TOP_K_TILE, -(-k // (4 * numba.get_num_threads())) // 16 * 16))
    _top_k_rows(x, int(z), tile, out_v, out_i)
    bad = np.flatnonzero(out_i[:, 0] < 0)
    if bad.size:  # a broken invariant (non-finite input slipped through): refuse, never guess
        raise RuntimeError(f"top_k_rows: selection failed for columns {bad[:5].tolist()}; is the input finite?")
    return out_v, out_i
