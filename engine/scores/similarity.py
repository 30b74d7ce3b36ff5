"""Neuron x concept similarity functions (docs/METHOD.md §1.1, §3), batched over neurons.

Inputs everywhere: ``clip_feats`` = P (N probe images x M concepts, the dissector's
image/text cosines) and ``target_feats`` = X (N images x K neurons, pooled target
activations).  Every function returns S (K x M): neurons as rows, concepts as columns;
the label of neuron k is ``argmax_m S[k, m]``.

Why this module exists instead of the reference code: CLIP-Dissect loops over neurons in
Python (one gather + five small ops per neuron).  Here each function processes all
neurons at once.  On CPU the top-k family (``soft_wpmi``, ``wpmi``) and the top-k
selection run as compiled kernels (``engine/kernels.py``: one pass per neuron, one log per
(neuron, concept)); elsewhere (CUDA, or ``DISSECT_STUDY_JIT=0``) each function processes a
*chunk* of neurons per torch call, so peak extra memory is bounded by the chunk size (the
(chunk, Z, M) gather), not by K.  ``backend="torch"`` / ``"jit"`` force a path.  Nothing
here hard-codes a device: tensors stay where the caller put them.

Conventions shared by all functions (documented once here):

* **Dtype.**  Work happens in float64 if either input is float64, else float32; sums
  over images are accumulated in float64.  ``compute_similarity`` returns float32.
* **Top-k tie-break.**  "The Z images with the largest activation" is made unique by
  preferring the lower image index among equal activations (``ranked_top_k``).  The
  same rule is used by ``labels.top_images`` and ``labels.topk_image_union`` so the
  planner's image subset always matches what the similarity reads.
* **Degenerate neurons.**  A neuron whose score is undefined gets a row of NaN
  ("no label"): an all-zero neuron under ``cos``, a neuron whose top activations are
  all equal under ``rank_reorder`` (B_k = 0), a neuron with an empty representative
  set under ``mammi``.  ``labels`` skips NaN rows.  Constant neurons under the top-k
  functions keep finite scores (their top-k set is the first Z images by the
  tie-break); ``compute_similarity`` counts them in its notes.
* **Errors.**  Shape mismatches, non-finite inputs, ``N < top_k`` and out-of-range
  parameters raise ``ValueError`` with a one-paragraph message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from dissect_study.engine.scores import kernels

#: bytes of the per-chunk working tensor; ~8 MB keeps the gather cache-resident on CPU
DEFAULT_CHUNK_BYTES = 8 * 2**20


# ----------------------------------------------------------------------------- helpers
def _work_dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check_matrix(t: Tensor, name: str, fn: str, finite: bool = True) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.dim() != 2:
        raise ValueError(
            f"{fn}: {name} must be a 2-D matrix (images x columns), got shape {tuple(t.shape)}. "
            "Pool spatial activations before computing similarities."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{fn}: {name} is empty (shape {tuple(t.shape)}); the probe or layer has no data.")
    if finite:
        _check_finite(t, name, fn)


def _check_finite(t: Tensor, name: str, fn: str) -> None:
    if not _all_finite(t):
        n_bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{fn}: {name} contains {n_bad} NaN/inf values. Check the model's precision "
            "(bf16 overflow) and the probe images; similarities are undefined on non-finite input."
        )


def _all_finite(t: Tensor) -> bool:
    """Whether every entry is finite, cheaply: a finite sum implies finite entries.

    NaN and +-inf propagate through a sum, so a finite sum proves the matrix finite in one
    vectorised reduction; only a non-finite sum (bad input, or overflow of huge but finite
    values) pays for the exact element-wise test.  At the paper's scale this is ~10x
    cheaper than ``torch.isfinite(t).all()``, which materialises a boolean matrix.
    """
    if not t.is_floating_point():
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


_X_NAME = "target_feats (X, images x neurons)"


def _dtype_np(dtype: torch.dtype) -> np.dtype:
    """numpy's dtype for a torch floating dtype (the kernels speak numpy)."""
    return np.dtype({torch.float32: np.float32, torch.float64: np.float64}.get(dtype, np.float64))


def _check_pair(clip_feats: Tensor, target_feats: Tensor, fn: str, finite_target: bool = True) -> torch.dtype:
    """Validate P and X; ``finite_target=False`` leaves X's NaN/inf check to ``_pair_top_k``."""
    _check_matrix(clip_feats, "clip_feats (P, images x concepts)", fn)
    _check_matrix(target_feats, _X_NAME, fn, finite=finite_target)
    if clip_feats.shape[0] != target_feats.shape[0]:
        raise ValueError(
            f"{fn}: clip_feats has {clip_feats.shape[0]} image rows but target_feats has "
            f"{target_feats.shape[0]}; row i of both must be the same probe image."
        )
    if clip_feats.device != target_feats.device:
        raise ValueError(f"{fn}: clip_feats is on {clip_feats.device} but target_feats on {target_feats.device}.")
    return _work_dtype(clip_feats, target_feats)


def _check_top_k(top_k: int, n: int, fn: str) -> int:
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"{fn}: top_k must be a positive integer, got {top_k!r}.")
    if n < top_k:
        raise ValueError(
            f"{fn}: the probe has N = {n} images but top_k = {top_k}; top_k cannot exceed N. "
            f"Use top_k <= {n} (compute_similarity clamps it to N and records a note)."
        )
    return int(top_k)


def _check_top_k_of_pair(top_k: int, target_feats: Tensor, fn: str) -> int:
    """``_check_top_k`` for a pair whose X finiteness is checked late: NaN/inf is still reported first."""
    try:
        return _check_top_k(top_k, target_feats.shape[0], fn)
    except ValueError:
        _check_finite(target_feats, _X_NAME, fn)
        raise


def _chunk(k: int, per_neuron_elems: int, itemsize: int, chunk_neurons: int | None) -> int:
    if chunk_neurons is not None:
        if chunk_neurons < 1:
            raise ValueError(f"chunk_neurons must be >= 1, got {chunk_neurons}.")
        return min(int(chunk_neurons), k)
    return max(1, min(k, DEFAULT_CHUNK_BYTES // max(1, per_neuron_elems * itemsize)))


BACKENDS = ("auto", "torch", "jit")


def _use_jit(backend: str, *ts: Tensor) -> bool:
    """Whether to run the compiled CPU kernels (``engine/kernels.py``) for these tensors.

    ``auto`` uses them for CPU float32/float64 tensors when numba is available; ``torch``
    never; ``jit`` always, and says why when it cannot.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    if backend == "torch":
        return False
    ok_tensors = all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in ts)
    if backend == "jit":
        if not kernels.available():
            raise ValueError(f"backend='jit' requested but the compiled path is unavailable: {kernels.why_unavailable()}.")
        if not ok_tensors:
            raise ValueError("backend='jit' needs CPU float32/float64 tensors; use backend='auto' or 'torch' on CUDA.")
        return True
    return ok_tensors and kernels.available()


def ranked_top_k(values: Tensor, k: int, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Per column of ``values`` (N x K): the k largest entries, descending, as (K x k) rows.

    Among equal values the lower row index comes first, so the result is unique and
    reproducible across devices and chunkings (``torch.topk`` leaves tie order
    unspecified).  On CPU this is an exact compiled selection (``kernels.top_k_rows``,
    finite input); otherwise columns without ties take the ``topk`` result unchanged and
    only columns with a tie inside the top k or at its boundary are re-ranked by a
    stable sort.
    """
    return _ranked_top_k(values, k, backend)


def _pair_top_k(target_feats: Tensor, z: int, jit: bool, fn: str) -> Tensor:
    """Each neuron's top-z image rows (K x Z) for a top-k similarity, X checked for NaN/inf.

    The compiled selection checks finiteness while it reads X, which saves the top-k family
    a separate pass over the largest input; the torch path checks first.
    """
    if jit:
        try:
            return torch.from_numpy(kernels.top_k_rows(target_feats.detach().numpy(), z)[1])
        except kernels.NonFiniteInput:
            _check_finite(target_feats, _X_NAME, fn)  # raises the standard error
            raise  # pragma: no cover - the kernel and _all_finite disagree
    _check_finite(target_feats, _X_NAME, fn)
    return _ranked_top_k(target_feats, z, "torch")[1]


def _ranked_top_k(values: Tensor, k: int, backend: str) -> tuple[Tensor, Tensor]:
    """``ranked_top_k``; on the compiled path NaN/inf input raises ``kernels.NonFiniteInput``
    (the kernel checks as it reads), which the public wrapper answers with the torch path."""
    n = values.shape[0]
    k = min(int(k), n)
    if _use_jit(backend, values):
        try:
            v, i = kernels.top_k_rows(values.detach().numpy(), k)
            return torch.from_numpy(v), torch.from_numpy(i)
        except kernels.NonFiniteInput:
            pass  # NaN ranks first in torch.topk; keep that documented behaviour
    vals, idx = torch.topk(values, k, dim=0)  # (k, K), descending
    boundary = vals[-1:]  # (1, K)
    ties = (values >= boundary).sum(0) > k
    if k > 1:
        ties |= (vals[1:] == vals[:-1]).any(0)
    if bool(ties.any()):
        cols = torch.nonzero(ties).flatten()
        sub = values[:, cols]
        order = torch.sort(sub, dim=0, descending=True, stable=True).indices[:k]
        idx[:, cols] = order
        vals[:, cols] = torch.gather(sub, 0, order)
    return vals.T.contiguous(), idx.T.contiguous()


def constant_columns(values: Tensor) -> Tensor:
    """Bool (K,): columns of ``values`` (N x K) whose entries are all equal (dead neurons)."""
    return (values == values[:1]).all(0)


# ----------------------------------------------------------------------------- P
def concept_activation_matrix(image_emb: Tensor, text_emb: Tensor, eps: float = 1e-12) -> Tensor:
    """P (N x M) = cosine of every probe image embedding with every concept embedding.

    docs/METHOD.md §1.1: both sides are the dissector's *projected* embeddings, L2-normalised
    along the feature axis, with no logit scale or temperature.  Prompt handling (raw
    concept string, or a MAMMI template prefix) happens before the text embedding is
    computed; this function only sees vectors.  ``eps`` guards zero vectors (their
    cosines become 0 instead of NaN).  Returns float32 on the inputs' device.
    """
    fn = "concept_activation_matrix"
    _check_matrix(image_emb, "image_emb (N x d)", fn)
    _check_matrix(text_emb, "text_emb (M x d)", fn)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"{fn}: image embeddings are {image_emb.shape[1]}-d but text embeddings are "
            f"{text_emb.shape[1]}-d; both must come from the same dissector's projection heads."
        )
    img = torch.nn.functional.normalize(image_emb.float(), dim=1, eps=eps)
    txt = torch.nn.functional.normalize(text_emb.to(img.device).float(), dim=1, eps=eps)
    return img @ txt.T


# ----------------------------------------------------------------------------- top-k family
def _pmi_prior(log_lik: Tensor, lam: float, inplace: bool = False) -> Tensor:
    """S = L - lam * (logsumexp_k L - log K): PMI against the layer's neuron prior (docs/METHOD.md §3.1, steps 5-6).

    ``inplace`` overwrites ``log_lik`` (the kernels' private output) instead of allocating.
    """
    k = log_lik.shape[0]
    prior = torch.logsumexp(log_lik, dim=0, keepdim=True) - math.log(k)
    return log_lik.sub_(lam * prior) if inplace else log_lik - lam * prior


def soft_wpmi(
    clip_feats: Tensor,
    target_feats: Tensor,
    top_k: int = 100,
    a: float = 10,
    lam: float = 1,
    min_prob: float = 1e-7,
    p_start: float = 0.998,
    p_end: float = 0.97,
    chunk_neurons: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """CLIP-Dissect's SoftWPMI (docs/METHOD.md §3.1), batched over neurons.

    q = softmax(a P) over concepts; for neuron k with top-Z images i_0..i_{Z-1} (descending,
    lower index first on ties), L_km = sum_j log(1 + r_j (q_{i_j m} - 1) + min_prob) with
    r_j = p_start - (j/Z)(p_start - p_end); S = L - lam (logsumexp_k L - log K).

    The factor is evaluated as (1 - r_j + min_prob) + r_j q, the same number without the
    catastrophic cancellation of 1 + r(q - 1) in float32 (r ~ 0.998; that form is off by
    ~2e-3 of max|S| at the paper's scale).  On CPU the compiled kernels multiply the
    factors (four at a time in float32, then in float64, for float32 inputs at the
    defaults: ``kernels.soft_wpmi_float32``; in float64 otherwise) and take one log per
    (neuron, concept).  The torch path (CUDA) multiplies groups of up to 10 factors in the
    input dtype before one log (``_product_group`` keeps the product far from underflow)
    and accumulates the sum over the Z images in float64.  ``chunk_neurons`` bounds the
    torch path's memory.
    """
    fn = "soft_wpmi"
    dtype = _check_pair(clip_feats, target_feats, fn, finite_target=False)
    n, m = clip_feats.shape
    z = _check_top_k_of_pair(top_k, target_feats, fn)
    if not (0 <= p_end <= 1 and 0 <= p_start <= 1):
        raise ValueError(f"{fn}: p_start and p_end must lie in [0, 1], got p_start={p_start}, p_end={p_end}.")
    if min_prob < 0:
        raise ValueError(f"{fn}: min_prob must be >= 0, got {min_prob}.")
    dev = clip_feats.device
    jit = _use_jit(backend, clip_feats, target_feats)
    idx = _pair_top_k(target_feats.to(dtype), z, jit, fn)  # (K, Z)
    r64 = p_start - torch.arange(z, dtype=torch.float64, device=dev) / z * (p_start - p_end)
    c64 = 1.0 - r64 + min_prob
    if jit and kernels.float32_soft_wpmi_applies(_dtype_np(dtype), r64.numpy(), c64.numpy()):
        # float32 at the defaults: softmax, products, prior and scores in two fused kernels
        P32 = clip_feats.detach().to(dtype).numpy()
        return torch.from_numpy(kernels.soft_wpmi_float32(P32, a, idx.numpy(), r64.numpy(), c64.numpy(), lam))
    q = torch.softmax(a * clip_feats.to(dtype), dim=1)
    if jit:  # float64, or factors that could underflow float32 groups
        log_lik = kernels.soft_wpmi_loglik(q.numpy(), idx.numpy(), r64.numpy(), c64.numpy())
        return _pmi_prior(torch.from_numpy(log_lik), lam, inplace=True).to(dtype)
    group = _product_group(float(c64.min()), min_prob)
    pad = -z % group  # padded ranks get r = 0, c = 1: factor exactly 1, log 0
    zp = z + pad
    if pad:
        r64 = torch.cat([r64, r64.new_zeros(pad)])
        c64 = torch.cat([c64, c64.new_ones(pad)])
        idx = torch.cat([idx, idx.new_zeros(idx.shape[0], pad)], dim=1)
    r = r64.to(dtype).view(1, zp, 1)
    c = c64.to(dtype).view(1, zp, 1)
    k_total = idx.shape[0]
    step = _chunk(k_total, zp * m, q.element_size(), chunk_neurons)
    log_lik = torch.empty(k_total, m, dtype=torch.float64, device=dev)
    for s in range(0, k_total, step):
        rows = idx[s : s + step]
        g = q.index_select(0, rows.reshape(-1)).view(rows.shape[0], zp, m)
        g = torch.addcmul(c, g, r)
        if group > 1:  # log of a product of `group` factors = sum of their logs, 1/group the logs
            g = g.view(rows.shape[0], zp // group, group, m).prod(dim=2)
        g.log_()
        log_lik[s : s + step] = g.sum(1, dtype=torch.float64)
    return _pmi_prior(log_lik, lam).to(dtype)


def _product_group(min_factor: float, min_prob: float) -> int:
    """How many SoftWPMI factors may be multiplied before one log without float32 underflow.

    Every factor lies in [min_factor, 1 + min_prob].  A product of G factors stays above
    1e-30 (float32's normal range ends at 1.2e-38) when G <= ln(1e-30) / ln(min_factor):
    10 for the defaults (min factor 0.002), 4 for p_start = 1 with min_prob = 1e-7, 1 (no
    grouping) when a factor can be 0 or exceed 2.
    """
    if min_factor <= 0 or min_prob > 1:
        return 1
    if min_factor >= 1:
        return 10
    return max(1, min(10, int(math.log(1e-30) / math.log(min_factor))))


def wpmi(
    clip_feats: Tensor,
    target_feats: Tensor,
    top_k: int = 28,
    a: float = 2,
    lam: float = 0.6,
    min_prob: float = 1e-7,
    chunk_neurons: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """CLIP-Dissect's WPMI (docs/METHOD.md §3.2): L_km = sum over the top-Z images of log(q_im + min_prob).

    The sum is accumulated in float64 (compiled gather-sum on CPU, chunked torch elsewhere).
    """
    fn = "wpmi"
    dtype = _check_pair(clip_feats, target_feats, fn, finite_target=False)
    n, m = clip_feats.shape
    z = _check_top_k_of_pair(top_k, target_feats, fn)
    if min_prob < 0:
        raise ValueError(f"{fn}: min_prob must be >= 0, got {min_prob}.")
    logq = torch.log(torch.softmax(a * clip_feats.to(dtype), dim=1) + min_prob)
    jit = _use_jit(backend, clip_feats, target_feats)
    idx = _pair_top_k(target_feats.to(dtype), z, jit, fn)
    if jit:
        log_lik = kernels.wpmi_loglik(logq.numpy(), idx.numpy())
        return _pmi_prior(torch.from_numpy(log_lik), lam, inplace=True).to(dtype)
    k_total = idx.shape[0]
    step = _chunk(k_total, z * m, logq.element_size(), chunk_neurons)
    log_lik = torch.empty(k_total, m, dtype=torch.float64, device=clip_feats.device)
    for s in range(0, k_total, step):
        rows = idx[s : s + step]
        g = logq.index_select(0, rows.reshape(-1)).view(rows.shape[0], z, m)
        log_lik[s : s + step] = g.sum(1, dtype=torch.float64)
    return _pmi_prior(log_lik, lam).to(dtype)


# ----------------------------------------------------------------------------- cosine family
def cos_similarity(clip_feats: Tensor, target_feats: Tensor, chunk_neurons: int | None = None) -> Tensor:
    """Cosine of each activation column with each concept column over the probe (docs/METHOD.md §3.4).

    No centring.  An all-zero neuron has no direction: its row is NaN (the reference
    divides by zero too).  A zero concept column (impossible for real cosines) scores 0.
    Only X^T P and the column norms are needed, so the planner can accumulate them
    over image shards ("sufficient statistics" family).
    """
    fn = "cos_similarity"
    dtype = _check_pair(clip_feats, target_feats, fn)
    p = clip_feats.to(dtype)
    x = target_feats.to(dtype)
    p_hat = p / p.norm(dim=0, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    x_norm = x.norm(dim=0)
    k_total = x.shape[1]
    step = _chunk(k_total, x.shape[0], x.element_size(), chunk_neurons)
    out = torch.empty(k_total, p.shape[1], dtype=dtype, device=p.device)
    for s in range(0, k_total, step):
        out[s : s + step] = x[:, s : s + step].T @ p_hat
    out /= x_norm.unsqueeze(1)
    out[x_norm == 0] = float("nan")
    return out


def _centre_cube(t: Tensor, min_norm: float) -> Tensor:
    t = t - t.mean(dim=0, keepdim=True)
    t = t**3
    return t / t.norm(dim=0, keepdim=True).clamp_min(min_norm)


def cos_similarity_cubed(
    clip_feats: Tensor, target_feats: Tensor, min_norm: float = 1e-3, chunk_neurons: int | None = None
) -> Tensor:
    """Cosine of centred, element-wise cubed columns (docs/METHOD.md §3.5); norms floored at ``min_norm``.

    A constant neuron centres to zero and therefore scores 0 for every concept (as in the
    reference); ``compute_similarity`` flags it.
    """
    fn = "cos_similarity_cubed"
    dtype = _check_pair(clip_feats, target_feats, fn)
    if min_norm <= 0:
        raise ValueError(f"{fn}: min_norm must be > 0, got {min_norm}.")
    p_t = _centre_cube(clip_feats.to(dtype), min_norm)
    x = target_feats.to(dtype)
    k_total = x.shape[1]
    step = _chunk(k_total, x.shape[0], x.element_size(), chunk_neurons)
    out = torch.empty(k_total, p_t.shape[1], dtype=dtype, device=p_t.device)
    for s in range(0, k_total, step):
        out[s : s + step] = _centre_cube(x[:, s : s + step], min_norm).T @ p_t
    return out


# ----------------------------------------------------------------------------- rank reorder
def rank_reorder(
    clip_feats: Tensor,
    target_feats: Tensor,
    p: float = 3,
    top_fraction: float = 0.05,
    scale_p: float = 0.5,
    n_permutations: int = 5,
    seed: int = 0,
    chunk_neurons: int | None = None,
) -> Tensor:
    """CLIP-Dissect's rank-reorder score (docs/METHOD.md §3.3), deterministic and NaN-safe.

    n = floor(N * top_fraction) top images of neuron k (activations a, descending; lower
    index first on ties); C = P on those rows; c_m = mean of column m of C; rho_m(i) = the
    ascending rank of C_im in column m (ties: lower row first); reorg_im = a_up[rho_m(i)]
    with a_up = a ascending; err_km = mean_i |a_i - reorg_im|^p / B_k with
    B_k = mean over ``n_permutations`` permutations pi of mean_i |a_up - a_up[pi]|^p;
    S_km = -err_km / c_m^scale_p.

    Deviations from the reference, each to remove a failure mode:
    * permutations come from a ``torch.Generator`` seeded with ``seed``, drawn once for
      all K neurons on the CPU (same result for any chunking or device);
    * c_m <= 0 (the concept is on average *dissimilar* to the neuron's top images; the
      fractional power would give NaN) -> S_km = -inf: such a concept is never the label;
    * B_k = 0 (the top-n activations are all equal, so any order is as good as any
      other) -> the whole row is NaN (no label).
    Only the top-n images enter, so this function is in fact top-k-only with k = n.
    """
    fn = "rank_reorder"
    dtype = _check_pair(clip_feats, target_feats, fn)
    n_img, m = clip_feats.shape
    if not 0 < top_fraction <= 1:
        raise ValueError(f"{fn}: top_fraction must lie in (0, 1], got {top_fraction}.")
    n = int(math.floor(n_img * top_fraction))
    if n < 1:
        raise ValueError(
            f"{fn}: floor(N * top_fraction) = floor({n_img} * {top_fraction}) = 0 images per neuron; "
            f"use top_fraction >= {1 / n_img:.4g} or a larger probe."
        )
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"{fn}: n_permutations must be a positive integer, got {n_permutations!r}.")
    dev = clip_feats.device
    pf = clip_feats.to(dtype)
    acts, idx = ranked_top_k(target_feats.to(dtype), n)  # (K, n) descending
    k_total = acts.shape[0]
    a_up = acts.flip(1)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    perms = torch.argsort(torch.rand(k_total, int(n_permutations), n, generator=gen), dim=2).to(dev)
    permuted = torch.gather(a_up.unsqueeze(1).expand(-1, int(n_permutations), -1), 2, perms)
    base = (a_up.unsqueeze(1) - permuted).abs().pow(p).mean(dim=(1, 2))  # (K,)
    step = _chunk(k_total, 3 * n * m, 8, chunk_neurons)
    out = torch.empty(k_total, m, dtype=dtype, device=dev)
    for s in range(0, k_total, step):
        rows = idx[s : s + step]
        c = rows.shape[0]
        cmat = pf.index_select(0, rows.reshape(-1)).view(c, n, m)
        mean_c = cmat.mean(dim=1)  # (c, M)
        order = torch.sort(cmat, dim=1, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(n, device=dev).view(1, n, 1).expand(c, n, m))
        reorg = torch.gather(a_up[s : s + step].unsqueeze(2).expand(c, n, m), 1, ranks)
        err = (acts[s : s + step].unsqueeze(2) - reorg).abs().pow(p).mean(dim=1)  # (c, M)
        b = base[s : s + step].unsqueeze(1)
        err = err / b
        scale = mean_c.clamp_min(torch.finfo(dtype).tiny).pow(scale_p)
        score = -err / scale
        score = torch.where(mean_c > 0, score, torch.full_like(score, float("-inf")))
        score[base[s : s + step] == 0] = float("nan")
        out[s : s + step] = score
    return out


# ----------------------------------------------------------------------------- MAMMI
def representative_mask(target_feats: Tensor, alpha: float = 93) -> Tensor:
    """Bool (N x K): image o is representative of neuron i iff X_oi > tau_i (strict).

    tau_i = max_i - (1 - alpha/100)(max_i - min_i) (docs/METHOD.md §3.6).  A constant neuron
    selects nothing; alpha = 100 selects nothing for any neuron (tau = max, strict >).
    """
    if not 0 <= alpha <= 100:
        raise ValueError(f"mammi: alpha is a percentage in [0, 100], got {alpha}.")
    x = target_feats
    hi = x.max(dim=0).values
    lo = x.min(dim=0).values
    tau = hi - (1 - alpha / 100) * (hi - lo)
    return x > tau


def mammi_adaptive(
    clip_feats: Tensor,
    target_feats: Tensor,
    template_feats: Tensor | None = None,
    alpha: float = 93,
    beta: float = 0.95,
) -> Tensor:
    """MAMMI/WWW adaptive cosine (docs/METHOD.md §3.6), all neurons in one matrix product.

    s_ij = (1/n_i) sum_{o in R_i} [P_oj - template_o], R_i = the representative images of
    neuron i (``representative_mask``), template_o = cos(image o, template embedding)
    (``template_feats``, shape (N,); None means no template, i.e. 0).  This is the
    paper's **mean**; the MAMMI code sums, which selects the same concepts whenever the
    best score is positive but makes scores depend on n_i.  A neuron with an empty
    representative set (constant neuron, alpha = 100) gets a row of NaN.  ``beta`` does
    not change S; it is accepted so the registry's parameters pass straight through and
    is used by ``mammi_select``.
    """
    fn = "mammi_adaptive"
    dtype = _check_pair(clip_feats, target_feats, fn)
    if not 0 <= beta <= 1:
        raise ValueError(f"{fn}: beta must lie in [0, 1], got {beta}.")
    pf = clip_feats.to(dtype)
    if template_feats is not None:
        t = template_feats.to(device=pf.device, dtype=dtype).reshape(-1)
        if t.shape[0] != pf.shape[0]:
            raise ValueError(
                f"{fn}: template_feats has {t.shape[0]} entries but the probe has {pf.shape[0]} images; "
                "pass cos(image_o, template embedding) for every probe image."
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{fn}: template_feats contains NaN/inf values.")
        pf = pf - t.unsqueeze(1)
    mask = representative_mask(target_feats.to(dtype), alpha).to(dtype)  # (N, K)
    counts = mask.sum(0)  # (K,)
    s = (mask.T @ pf) / counts.clamp_min(1).unsqueeze(1)
    s[counts == 0] = float("nan")
    return s


def mammi_select(S: Tensor, beta: float = 0.95) -> list[list[int]]:
    """MAMMI concept selection: concepts with s_ij > beta * max_j s_ij (strict), best first.

    Ties are ordered by lower concept index.  A neuron whose best score is <= 0 (the
    threshold would not be below the maximum) or whose row is NaN selects nothing.
    """
    if not 0 <= beta <= 1:
        raise ValueError(f"mammi_select: beta must lie in [0, 1], got {beta}.")
    if S.dim() != 2:
        raise ValueError(f"mammi_select: S must be K x M, got shape {tuple(S.shape)}.")
    s = S.detach().to("cpu", torch.float64)
    out: list[list[int]] = []
    for row in s:  # K Python lists are the output; the per-row work is tiny
        best = row.max()
        if not bool(torch.isfinite(best)) or best <= 0 or bool(torch.isnan(row).any()):
            out.append([])
            continue
        keep = torch.nonzero(row > beta * best).flatten()
        order = torch.sort(row[keep], descending=True, stable=True).indices
        out.append(keep[order].tolist())
    return out


# ----------------------------------------------------------------------------- dispatch
SIMILARITY_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "soft_wpmi": soft_wpmi,
    "wpmi": wpmi,
    "cos": cos_similarity,
    "cos_cubed": cos_similarity_cubed,
    "rank_reorder": rank_reorder,
    "mammi": mammi_adaptive,
}

#: functions whose S depends on P only through each neuron's top-k rows (see labels.topk_image_union)
TOPK_ONLY = ("soft_wpmi", "wpmi")


@dataclass
class SimilarityResult:
    """S (K x M, float32) plus what the engine must report about how it was computed."""

    S: Tensor
    top_k_used: int | None
    notes: list[str] = field(default_factory=list)


def _resolve(name: str) -> str:
    from dissect_study.dsl.vocabulary import SIMILARITIES, lookup_similarity

    f = lookup_similarity(name)
    if f is None or f.name not in SIMILARITY_FUNCTIONS:
        known = ", ".join(sorted(SIMILARITIES))
        raise ValueError(f"Unknown similarity function {name!r}. Known functions: {known}.")
    return f.name


def _params(canonical: str, params: dict[str, Any]) -> dict[str, Any]:
    from dissect_study.dsl.vocabulary import SIMILARITIES

    spec = SIMILARITIES[canonical]
    out = {p.name: p.default for p in spec.params}
    for key, value in params.items():
        p = spec.param(key)
        if p is None:
            allowed = ", ".join(spec.param_names) or "(none)"
            raise ValueError(f"Similarity {canonical!r} has no parameter {key!r}. Allowed: {allowed}.")
        out[p.name] = value
    return out


def compute_similarity(
    name: str,
    P: Tensor,
    X: Tensor,
    params: dict[str, Any] | None = None,
    template_feats: Tensor | None = None,
    chunk_neurons: int | None = None,
) -> SimilarityResult:
    """Run similarity ``name`` (canonical or alias, see engine/registry.py) with defaults.

    The engine-facing entry point: fills registry defaults, clamps ``top_k`` to N with a
    note (the paper used Z = N = 84 on its EMBED subset), counts constant and
    undefined (NaN-row) neurons in ``notes``, and returns S as float32.
    """
    canonical = _resolve(name)
    kw = _params(canonical, dict(params or {}))
    notes: list[str] = []
    n = P.shape[0] if P.dim() == 2 else 0
    top_k_used: int | None = None
    if "top_k" in kw:
        top_k_used = int(kw["top_k"])
        if 0 < n < top_k_used:
            notes.append(
                f"{canonical}: top_k = {top_k_used} exceeds the probe's N = {n} images; used top_k = N = {n}."
            )
            top_k_used = n
        kw["top_k"] = top_k_used
    if canonical == "mammi":
        template = kw.pop("template", "") or ""
        if template and template_feats is None:
            notes.append(
                f"mammi: template {template!r} given but no template_feats; the adaptive cosine "
                "subtracted nothing (the engine must pass cos(image, template embedding))."
            )
        S = mammi_adaptive(P, X, template_feats=template_feats, **kw)
    else:
        if template_feats is not None:
            notes.append(f"{canonical}: template_feats ignored (only mammi uses a template).")
        S = SIMILARITY_FUNCTIONS[canonical](P, X, chunk_neurons=chunk_neurons, **kw)
    n_const = int(constant_columns(X).sum())
    if n_const:
        notes.append(f"{n_const} of {X.shape[1]} neurons are constant over the probe; their labels are meaningless.")
    n_nan = int(torch.isnan(S).all(1).sum())
    if n_nan:
        notes.append(f"{n_nan} neurons have no defined score under {canonical} (NaN rows; no label).")
    return SimilarityResult(S=S.float(), top_k_used=top_k_used, notes=notes)
