"""Neuron x concept similarity functions (docs/METHOD.md §1.1, §3), batched over neurons.

Inputs everywhere: ``clip_feats`` = P (N probe images x M concepts, the dissector's
image/text cosines) and ``target_feats`` = X (N images x K neurons, pooled target
activations).  Every function returns S (K x M): neurons as rows, concepts as columns;
the label of neuron k is ``argmax_m S[k, m]``.

Why this module exists instead of the reference code: CLIP-Dissect loops over neurons in
Python (one gather and five small ops per neuron).  Here each function handles many
neurons per torch call.  There is one implementation per function, in torch, for every
device: scoring a layer takes tens to hundreds of milliseconds on a CPU, while the model
passes that produce P and X take minutes to hours, so device-specific kernels would buy
little and cost a second implementation to keep correct.  Tensors stay where the caller
put them.  Each function registers itself in ``engine.registry.SIMILARITIES`` under the
name (and aliases) that ``dsl/vocabulary.py`` gives it.

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
  parameters raise ``SimilarityError`` with a one-paragraph message.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dissect_study.dsl.vocabulary import Function, lookup_similarity
from dissect_study.engine.registry import SIMILARITIES
from dissect_study.errors import DissectStudyError

logger = logging.getLogger(__name__)

#: bytes of the largest temporary of the chunked functions (cos, cos_cubed, rank_reorder)
DEFAULT_CHUNK_BYTES = 8 * 2**20
#: elements of each (neurons x concepts) tensor SoftWPMI updates once per rank, on a CPU.
#: A step's few such tensors (0.6 MiB) stay in L2 across its Z updates, and each torch call
#: on them is below torch's intra-op grain (32,768 elements), so it runs on the calling
#: thread: the steps run side by side in a thread pool, with no barrier per call.
_CPU_RANK_STEP_ELEMS = 2**15
#: the same on an accelerator, where every update is a kernel launch: in practice all neurons
_DEVICE_RANK_STEP_ELEMS = 2**26


class SimilarityError(DissectStudyError, ValueError):
    """Input a similarity function cannot score: shapes, NaN/inf values, parameters out of range.

    A ``ValueError`` as well, since every such case is a bad argument value.
    """


# ----------------------------------------------------------------------------- helpers
def _work_dtype(*ts: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _check_matrix(t: Tensor, name: str, fn: str) -> None:
    if not isinstance(t, Tensor):
        raise SimilarityError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.dim() != 2:
        raise SimilarityError(
            f"{fn}: {name} must be a 2-D matrix (images x columns), got shape {tuple(t.shape)}. "
            "Pool spatial activations before computing similarities."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise SimilarityError(f"{fn}: {name} is empty (shape {tuple(t.shape)}); the probe or layer has no data.")
    if not all_finite(t):
        n_bad = int((~torch.isfinite(t)).sum())
        raise SimilarityError(
            f"{fn}: {name} contains {n_bad} NaN/inf values. Check the model's precision "
            "(bf16 overflow) and the probe images; similarities are undefined on non-finite input."
        )


def all_finite(t: Tensor) -> bool:
    """Whether every entry is finite, cheaply: a finite sum implies finite entries.

    NaN and +-inf propagate through a sum, so a finite sum proves the matrix finite in one
    vectorised reduction; only a non-finite sum (bad input, or overflow of huge but finite
    values) pays for the exact element-wise test, which materialises a boolean matrix.
    """
    if not t.is_floating_point():
        return True
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_pair(clip_feats: Tensor, target_feats: Tensor, fn: str) -> torch.dtype:
    """Validate P and X (shapes, devices, finiteness); the dtype to work in."""
    _check_matrix(clip_feats, "clip_feats (P, images x concepts)", fn)
    _check_matrix(target_feats, "target_feats (X, images x neurons)", fn)
    if clip_feats.shape[0] != target_feats.shape[0]:
        raise SimilarityError(
            f"{fn}: clip_feats has {clip_feats.shape[0]} image rows but target_feats has "
            f"{target_feats.shape[0]}; row i of both must be the same probe image."
        )
    if clip_feats.device != target_feats.device:
        raise SimilarityError(f"{fn}: clip_feats is on {clip_feats.device} but target_feats on {target_feats.device}.")
    return _work_dtype(clip_feats, target_feats)


def _check_top_k(top_k: int, n: int, fn: str) -> int:
    if int(top_k) != top_k or top_k < 1:
        raise SimilarityError(f"{fn}: top_k must be a positive integer, got {top_k!r}.")
    if n < top_k:
        raise SimilarityError(
            f"{fn}: the probe has N = {n} images but top_k = {top_k}; top_k cannot exceed N. "
            f"Use top_k <= {n} (compute_similarity clamps it to N and records a note)."
        )
    return int(top_k)


def _chunk(k: int, per_neuron_elems: int, itemsize: int, chunk_neurons: int | None) -> int:
    """Neurons per step: ``chunk_neurons``, else as many as fit ``DEFAULT_CHUNK_BYTES``."""
    if chunk_neurons is not None:
        return _explicit_chunk(k, chunk_neurons)
    return max(1, min(k, DEFAULT_CHUNK_BYTES // max(1, per_neuron_elems * itemsize)))


def _explicit_chunk(k: int, chunk_neurons: int) -> int:
    if int(chunk_neurons) != chunk_neurons or chunk_neurons < 1:
        raise SimilarityError(f"chunk_neurons must be a positive integer, got {chunk_neurons!r}.")
    return min(int(chunk_neurons), k)


def ranked_top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per column of ``values`` (N x K): the k largest entries, descending, as (K x k) rows.

    Among equal values the lower row index comes first, so the result is unique and
    reproducible across devices and chunkings (``torch.topk`` leaves tie order
    unspecified).  One ``torch.topk`` of k + 1 entries finds every column whose order is
    not unique: equal neighbours within its top k, a (k+1)-th value equal to the k-th (a
    tie across the boundary), or NaN; only those columns are re-ranked by a stable sort.
    NaN ranks above every number, as in ``torch.sort``.  k is clamped to N.
    """
    n = values.shape[0]
    k = min(int(k), n)
    cols = values.T.contiguous()  # (K, N): topk along contiguous memory is about twice as fast
    kk = min(k + 1, n)
    vals, idx = torch.topk(cols, kk, dim=1)
    ties = torch.isnan(vals).any(1)
    if kk > k:
        ties |= vals[:, k] == vals[:, k - 1]
    if k > 1:
        ties |= (vals[:, 1:k] == vals[:, : k - 1]).any(1)
    vals, idx = vals[:, :k], idx[:, :k]
    if bool(ties.any()):
        tied = torch.nonzero(ties).flatten()
        sub = cols[tied]
        order = torch.sort(sub, dim=1, descending=True, stable=True).indices[:, :k]
        idx[tied] = order
        vals[tied] = torch.gather(sub, 1, order)
    return vals.contiguous(), idx.contiguous()


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
        raise SimilarityError(
            f"{fn}: image embeddings are {image_emb.shape[1]}-d but text embeddings are "
            f"{text_emb.shape[1]}-d; both must come from the same dissector's projection heads."
        )
    img = torch.nn.functional.normalize(image_emb.float(), dim=1, eps=eps)
    txt = torch.nn.functional.normalize(text_emb.to(img.device).float(), dim=1, eps=eps)
    return img @ txt.T


# ----------------------------------------------------------------------------- top-k family
def _pmi_prior(log_lik: Tensor, lam: float) -> Tensor:
    """S = L - lam * (logsumexp_k L - log K): PMI against the layer's neuron prior (docs/METHOD.md §3.1, steps 5-6)."""
    k = log_lik.shape[0]
    prior = torch.logsumexp(log_lik, dim=0, keepdim=True) - math.log(k)
    return log_lik - lam * prior


#: products of SoftWPMI factors stay inside [1/x, x] before a log is taken (float32's
#: normal range is 1.2e-38 .. 3.4e38, float64's 2.2e-308 .. 1.8e308)
_PRODUCT_LIMIT = {torch.float32: 1e30, torch.float64: 1e290}


@dataclass(frozen=True)
class SoftFactors:
    """SoftWPMI's factor of rank j, c_j + r_j q, as ``scale_j * (offset_j + slope_j * q)``.

    Where every c_j > 0 (min_prob > 0 or p_start < 1) the factor is divided by c_j:
    offset 1, slope r_j / c_j.  Then ``log_scale`` = sum_j log c_j is the same for every
    (neuron, concept) and cancels in S when lam = 1; the factors are >= 1, and the log of
    a product of them is small for the many concepts with q << c, so float32 loses less
    to rounding than with the raw factor.  Otherwise (a factor that can be 0) the raw
    factor is used: offset c_j, slope r_j, scale 1.

    ``group`` factors are multiplied before one log: the most for which a product of
    factors in [min, max] stays within ``_PRODUCT_LIMIT`` of the dtype (1 where a factor
    can be 0, so log 0 = -inf appears as the formula says).
    """

    offset: tuple[float, ...]
    slope: tuple[float, ...]
    log_scale: float
    group: int


def soft_factors(z: int, min_prob: float, p_start: float, p_end: float, dtype: torch.dtype) -> SoftFactors:
    """The factors of ``soft_wpmi``'s ranks 0..z-1, computed in float64 (see ``SoftFactors``)."""
    r = [p_start - (j / z) * (p_start - p_end) for j in range(z)]
    c = [1.0 - rj + min_prob for rj in r]
    if min(c) > 0:
        offset, slope, log_scale = [1.0] * z, [rj / cj for rj, cj in zip(r, c)], math.fsum(map(math.log, c))
    else:
        offset, slope, log_scale = c, r, 0.0
    lo = min(min(o, o + s) for o, s in zip(offset, slope))
    hi = max(max(o, o + s) for o, s in zip(offset, slope))
    log_limit = math.log(_PRODUCT_LIMIT[dtype])
    group = z
    if lo <= 0:
        group = 1
    elif lo < 1:
        group = min(group, int(log_limit / -math.log(lo)))
    if hi > 1:
        group = min(group, int(log_limit / math.log(hi)))
    return SoftFactors(tuple(offset), tuple(slope), log_scale, max(1, group))


@SIMILARITIES.register("soft_wpmi")
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
) -> Tensor:
    """CLIP-Dissect's SoftWPMI (docs/METHOD.md §3.1), batched over neurons.

    q = softmax(a P) over concepts; for neuron k with top-Z images i_0..i_{Z-1} (descending,
    lower index first on ties), L_km = sum_j log(1 + r_j (q_{i_j m} - 1) + min_prob) with
    r_j = p_start - (j/Z)(p_start - p_end); S = L - lam (logsumexp_k L - log K).

    The factor is evaluated as (1 - r_j + min_prob) + r_j q, the same number without the
    catastrophic cancellation of 1 + r(q - 1) in float32 (r ~ 0.998; that form is off by
    ~2e-3 of max|S| at the paper's scale), and rescaled as ``soft_factors`` describes.
    A step of neurons keeps one running product per (neuron, concept): rank by rank, the
    rank's image rows of q are gathered for all neurons of the step and multiplied in
    (two torch calls per rank), and every ``group`` ranks the product's log is added to a
    float64 sum.  So there is one log per group of factors, not one per factor, and the
    K x Z x M factors never exist at once.  ``chunk_neurons`` sets the step; by default
    a step's tensors fit a CPU core's L2 cache (and the steps run on ``torch.get_num_threads()``
    threads), or a step takes every neuron on an accelerator.  Each step is computed
    the same way on any thread, so the result does not depend on the thread count.
    """
    fn = "soft_wpmi"
    dtype = _check_pair(clip_feats, target_feats, fn)
    n, m = clip_feats.shape
    z = _check_top_k(top_k, n, fn)
    if not (0 <= p_end <= 1 and 0 <= p_start <= 1):
        raise SimilarityError(f"{fn}: p_start and p_end must lie in [0, 1], got p_start={p_start}, p_end={p_end}.")
    if min_prob < 0:
        raise SimilarityError(f"{fn}: min_prob must be >= 0, got {min_prob}.")
    dev = clip_feats.device
    ranks = ranked_top_k(target_feats.to(dtype), z)[1].T.contiguous()  # (Z, K): row j = every neuron's rank-j image
    q = torch.softmax(a * clip_feats.to(dtype), dim=1)
    fac = soft_factors(z, min_prob, p_start, p_end, dtype)
    k_total = ranks.shape[1]
    log_lik = torch.empty(k_total, m, dtype=torch.float64, device=dev)
    on_cpu = dev.type == "cpu"
    if chunk_neurons is not None:
        step = _explicit_chunk(k_total, chunk_neurons)
    else:
        step = max(1, min(k_total, (_CPU_RANK_STEP_ELEMS if on_cpu else _DEVICE_RANK_STEP_ELEMS) // m))
    spans = [(s, min(s + step, k_total)) for s in range(0, k_total, step)]

    def run(span: tuple[int, int]) -> None:
        _soft_wpmi_log_lik(q, ranks[:, span[0] : span[1]], fac, log_lik[span[0] : span[1]])

    workers = min(len(spans), torch.get_num_threads()) if on_cpu else 1
    logger.debug(
        "soft_wpmi: %d neurons x %d concepts in steps of %d on %d thread(s), %d factors per log",
        k_total,
        m,
        step,
        workers,
        fac.group,
    )
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, spans))
    else:
        for span in spans:
            run(span)
    S = _pmi_prior(log_lik, lam)
    if lam != 1:
        S += (1 - lam) * fac.log_scale  # the rescaling's constant, where the prior does not cancel it
    return S.to(dtype)


def _soft_wpmi_log_lik(q: Tensor, ranks: Tensor, fac: SoftFactors, out: Tensor) -> None:
    """out (c x M, float64) = L without ``log_scale`` for the c neurons whose rank-j images are ranks[j]."""
    c, m = out.shape
    prod = torch.ones(c, m, dtype=q.dtype, device=q.device)
    rows, logs = torch.empty_like(prod), torch.empty_like(prod)
    out.zero_()
    for j in range(ranks.shape[0]):
        torch.index_select(q, 0, ranks[j], out=rows)
        if fac.offset[j] == 1.0:
            prod.addcmul_(rows, prod, value=fac.slope[j])  # prod *= 1 + slope q, in one pass
        else:
            prod.mul_(rows.mul_(fac.slope[j]).add_(fac.offset[j]))
        if (j + 1) % fac.group == 0 or j == ranks.shape[0] - 1:
            out.add_(torch.log(prod, out=logs))
            prod.fill_(1.0)


@SIMILARITIES.register("wpmi")
def wpmi(
    clip_feats: Tensor,
    target_feats: Tensor,
    top_k: int = 28,
    a: float = 2,
    lam: float = 0.6,
    min_prob: float = 1e-7,
) -> Tensor:
    """CLIP-Dissect's WPMI (docs/METHOD.md §3.2): L_km = sum over the top-Z images of log(q_im + min_prob).

    The gather-and-sum over each neuron's Z rows is one ``embedding_bag`` call.  It sums in
    the input dtype, so log q is first centred on log(1/M + min_prob), the value of a
    uniform posterior (added back as Z times it, in float64): the summands are then small
    and a float32 sum stays close to the float64 one.  The centre is a constant, not a
    statistic of P, so S still reads P only through the neurons' top-k rows, bit for bit
    (the cheapest pass relies on that).
    """
    fn = "wpmi"
    dtype = _check_pair(clip_feats, target_feats, fn)
    n = clip_feats.shape[0]
    z = _check_top_k(top_k, n, fn)
    if min_prob < 0:
        raise SimilarityError(f"{fn}: min_prob must be >= 0, got {min_prob}.")
    logq = torch.log(torch.softmax(a * clip_feats.to(dtype), dim=1) + min_prob)
    centre = math.log(1.0 / clip_feats.shape[1] + min_prob)
    idx = ranked_top_k(target_feats.to(dtype), z)[1]
    log_lik = F.embedding_bag(idx, logq - centre, mode="sum").double() + z * centre
    return _pmi_prior(log_lik, lam).to(dtype)


# ----------------------------------------------------------------------------- cosine family
@SIMILARITIES.register("cos", aliases=("cos_similarity",))
def cos_similarity(clip_feats: Tensor, target_feats: Tensor) -> Tensor:
    """Cosine of each activation column with each concept column over the probe (docs/METHOD.md §3.4).

    No centring.  An all-zero neuron has no direction: its row is NaN (the reference
    divides by zero too).  A zero concept column (impossible for real cosines) scores 0.
    Only X^T P and the column norms are needed, so the planner can accumulate them
    over image shards ("sufficient statistics" family).  One matrix product: it
    allocates nothing beyond S, so there is nothing to chunk.
    """
    fn = "cos_similarity"
    dtype = _check_pair(clip_feats, target_feats, fn)
    p = clip_feats.to(dtype)
    x = target_feats.to(dtype)
    p_hat = p / p.norm(dim=0, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    x_norm = x.norm(dim=0)
    out = x.T @ p_hat
    out /= x_norm.unsqueeze(1)
    out[x_norm == 0] = float("nan")
    return out


def _centre_cube(t: Tensor, min_norm: float) -> Tensor:
    t = t - t.mean(dim=0, keepdim=True)
    t = t**3
    return t / t.norm(dim=0, keepdim=True).clamp_min(min_norm)


@SIMILARITIES.register("cos_cubed", aliases=("cos_similarity_cubed",))
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
        raise SimilarityError(f"{fn}: min_norm must be > 0, got {min_norm}.")
    p_t = _centre_cube(clip_feats.to(dtype), min_norm)
    x = target_feats.to(dtype)
    k_total = x.shape[1]
    step = _chunk(k_total, x.shape[0], x.element_size(), chunk_neurons)
    out = torch.empty(k_total, p_t.shape[1], dtype=dtype, device=p_t.device)
    for s in range(0, k_total, step):
        out[s : s + step] = _centre_cube(x[:, s : s + step], min_norm).T @ p_t
    return out


# ----------------------------------------------------------------------------- rank reorder
@SIMILARITIES.register("rank_reorder")
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
        raise SimilarityError(f"{fn}: top_fraction must lie in (0, 1], got {top_fraction}.")
    n = int(math.floor(n_img * top_fraction))
    if n < 1:
        raise SimilarityError(
            f"{fn}: floor(N * top_fraction) = floor({n_img} * {top_fraction}) = 0 images per neuron; "
            f"use top_fraction >= {1 / n_img:.4g} or a larger probe."
        )
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise SimilarityError(f"{fn}: n_permutations must be a positive integer, got {n_permutations!r}.")
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
        cmat = pf.index_select(0, rows.reshape(-1)).view(c, n, m).transpose(1, 2).contiguous()  # (c, M, n)
        mean_c = cmat.mean(dim=2)  # (c, M)
        # sum_i |a_i - a_up[rho(i)]|^p = sum_t |a_sigma(t) - a_up[t]|^p with sigma = argsort of C's
        # column (its inverse is rho): no rank scatter, and sorting along contiguous memory
        sigma = torch.argsort(cmat, dim=2, stable=True)
        a_sigma = torch.gather(acts[s : s + step].unsqueeze(1).expand(c, m, n), 2, sigma)
        err = (a_sigma - a_up[s : s + step].unsqueeze(1)).abs().pow(p).mean(dim=2)  # (c, M)
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
        raise SimilarityError(f"mammi: alpha is a percentage in [0, 100], got {alpha}.")
    x = target_feats
    hi = x.max(dim=0).values
    lo = x.min(dim=0).values
    tau = hi - (1 - alpha / 100) * (hi - lo)
    return x > tau


@SIMILARITIES.register("mammi", aliases=("mammi_adaptive",))
def mammi_adaptive(
    clip_feats: Tensor,
    target_feats: Tensor,
    template_feats: Tensor | None = None,
    alpha: float = 93,
) -> Tensor:
    """MAMMI/WWW adaptive cosine (docs/METHOD.md §3.6), all neurons in one matrix product.

    s_ij = (1/n_i) sum_{o in R_i} [P_oj - template_o], R_i = the representative images of
    neuron i (``representative_mask``), template_o = cos(image o, template embedding)
    (``template_feats``, shape (N,); None means no template, i.e. 0).  This is the
    paper's **mean**; the MAMMI code sums, which selects the same concepts whenever the
    best score is positive but makes scores depend on n_i.  A neuron with an empty
    representative set (constant neuron, alpha = 100) gets a row of NaN.  MAMMI's
    concept selection (scores above beta times the best) reads S afterwards; it is not
    part of S (the calibration bench applies it).
    """
    fn = "mammi_adaptive"
    dtype = _check_pair(clip_feats, target_feats, fn)
    pf = clip_feats.to(dtype)
    if template_feats is not None:
        t = template_feats.to(device=pf.device, dtype=dtype).reshape(-1)
        if t.shape[0] != pf.shape[0]:
            raise SimilarityError(
                f"{fn}: template_feats has {t.shape[0]} entries but the probe has {pf.shape[0]} images; "
                "pass cos(image_o, template embedding) for every probe image."
            )
        if not bool(torch.isfinite(t).all()):
            raise SimilarityError(f"{fn}: template_feats contains NaN/inf values.")
        pf = pf - t.unsqueeze(1)
    mask = representative_mask(target_feats.to(dtype), alpha).to(dtype)  # (N, K)
    counts = mask.sum(0)  # (K,)
    s = (mask.T @ pf) / counts.clamp_min(1).unsqueeze(1)
    s[counts == 0] = float("nan")
    return s


# ----------------------------------------------------------------------------- dispatch
@dataclass
class SimilarityResult:
    """S (K x M, float32) plus what the engine must report about how it was computed."""

    S: Tensor
    top_k_used: int | None
    notes: list[str] = field(default_factory=list)
    #: what makes the labels degenerate (the run records these as warnings, not notes)
    warnings: list[str] = field(default_factory=list)


def _params(spec: Function | None, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The study's parameters under their canonical names, over the vocabulary's defaults."""
    if spec is None:  # an implementation a plugin registered without vocabulary: no defaults to fill
        return dict(params)
    out = {p.name: p.default for p in spec.params}
    for key, value in params.items():
        p = spec.param(key)
        if p is None:
            allowed = ", ".join(spec.param_names) or "(none)"
            raise SimilarityError(f"Similarity {name!r} has no parameter {key!r}. Allowed: {allowed}.")
        out[p.name] = value
    return out


def _implementation_parameters(impl: Callable[..., Tensor]) -> frozenset[str]:
    """Keyword parameters an implementation accepts (besides P and X)."""
    return frozenset(list(inspect.signature(impl).parameters)[2:])


def compute_similarity(
    name: str,
    P: Tensor,
    X: Tensor,
    params: dict[str, Any] | None = None,
    template_feats: Tensor | None = None,
    chunk_neurons: int | None = None,
) -> SimilarityResult:
    """Run similarity ``name`` (canonical or alias) with the vocabulary's defaults.

    The engine-facing entry point: looks the implementation up in ``SIMILARITIES``
    (an unknown name raises ``RegistryError`` with a suggestion), fills defaults from
    ``dsl/vocabulary.py``, clamps ``top_k`` to N with a note (the paper used Z = N = 84
    on its EMBED subset), counts constant and undefined (NaN-row) neurons in ``notes``,
    and returns S as float32.  ``template`` is the engine's (it turns it into
    ``template_feats``); a vocabulary parameter the implementation does not take cannot
    change S and is dropped, with a note when the study set it away from its default.
    """
    impl = SIMILARITIES.get(name)
    spec = lookup_similarity(name)
    canonical = spec.name if spec is not None else name
    kw = _params(spec, canonical, dict(params or {}))
    accepted = _implementation_parameters(impl)
    notes: list[str] = []
    template = kw.pop("template", "") or ""
    for key in [k for k in kw if k not in accepted]:
        value = kw.pop(key)
        p = spec.param(key) if spec is not None else None
        if p is None or value != p.default:
            notes.append(f"{canonical}: {key} = {value!r} does not change the scores; ignored.")
    n = P.shape[0] if P.dim() == 2 else 0
    top_k_used: int | None = None
    if "top_k" in kw:
        top_k_used = int(kw["top_k"])
        if 0 < n < top_k_used:
            notes.append(f"{canonical}: top_k = {top_k_used} exceeds the probe's N = {n} images; used top_k = N = {n}.")
            top_k_used = n
        kw["top_k"] = top_k_used
    if "template_feats" in accepted:
        if template and template_feats is None:
            notes.append(
                f"{canonical}: template {template!r} given but no template_feats; the adaptive cosine "
                "subtracted nothing (the engine must pass cos(image, template embedding))."
            )
        kw["template_feats"] = template_feats
    elif template_feats is not None:
        notes.append(f"{canonical}: template_feats ignored (only mammi uses a template).")
    if "chunk_neurons" in accepted:
        kw["chunk_neurons"] = chunk_neurons
    S = impl(P, X, **kw)
    n_const = int(constant_columns(X).sum())
    if n_const:
        notes.append(f"{n_const} of {X.shape[1]} neurons are constant over the probe; their labels are meaningless.")
    n_nan = int(torch.isnan(S).all(1).sum())
    if n_nan:
        notes.append(f"{n_nan} neurons have no defined score under {canonical} (NaN rows; no label).")
    S32 = S.float()
    warnings = []
    n_flat = int((S32 == S32[:, :1]).all(1).sum()) if S32.shape[1] > 1 else 0
    if 2 * (n_flat - n_const) > S32.shape[0]:  # constant neurons are already noted
        warnings.append(
            f"{canonical}: {n_flat} of {S32.shape[0]} neurons score every concept alike, so their labels are "
            f"arbitrary; check the function's parameters ({', '.join(f'{k}={v}' for k, v in sorted(kw.items()) if not isinstance(v, Tensor)) or 'defaults'})."
        )
    return SimilarityResult(S=S32, top_k_used=top_k_used, notes=notes, warnings=warnings)
