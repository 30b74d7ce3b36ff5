"""Per-neuron labels and per-layer thresholds from a similarity matrix (docs/METHOD.md §4, §5.1).

Pure functions over tensors; the engine turns their outputs into the typed DuckDB
tables (``labels``, ``top_images``, ``layer_thresholds``).  Every ranking here breaks
ties by the lower index (concept or probe image), so stored labels are reproducible.

NaN rows of S mean "this neuron has no defined score" (see engine/scores/similarity.py): they
get NaN scores and index -1 from ``top_concepts`` and are left out of every tau.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from dissect_study.dsl.vocabulary import THRESHOLD_STATISTICS
from dissect_study.engine.scores.similarity import all_finite, constant_columns, ranked_top_k

#: the statistics a study may choose for tau_l (dsl/vocabulary.py THRESHOLD_STATISTICS)
TAU_STATISTICS = THRESHOLD_STATISTICS  # the language names them; one tuple


def _check_s(S: Tensor, fn: str) -> None:
    if not isinstance(S, Tensor) or S.dim() != 2 or S.shape[0] == 0 or S.shape[1] == 0:
        shape = tuple(S.shape) if isinstance(S, Tensor) else type(S).__name__
        raise ValueError(f"{fn}: S must be a non-empty neurons x concepts matrix, got {shape}.")


def _check_k(k: int, fn: str) -> int:
    if int(k) != k or k < 1:
        raise ValueError(f"{fn}: k must be a positive integer, got {k!r}.")
    return int(k)


def top_concepts(S: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
    """The k best concepts per neuron: (scores K x k, concept indices K x k), best first.

    k is clamped to M.  Ties: lower concept index first.  -inf scores rank last.  A NaN
    row (undefined neuron) yields NaN scores and index -1; isolated NaN entries in an
    otherwise defined row rank last, like -inf.
    """
    _check_s(S, "top_concepts")
    k = min(_check_k(k, "top_concepts"), S.shape[1])
    nan = torch.isnan(S)
    ranked = torch.where(nan, torch.full_like(S, float("-inf")), S)
    _, idx = ranked_top_k(ranked.T, k)
    scores = torch.gather(S, 1, idx)
    dead = nan.all(1)
    if bool(dead.any()):
        idx[dead] = -1
        scores[dead] = float("nan")
    return scores, idx


class TopImages(NamedTuple):
    """Top probe images per neuron; ``constant`` flags neurons whose ranking is arbitrary."""

    acts: Tensor  # K x k activations, descending
    idx: Tensor  # K x k probe row indices
    constant: Tensor  # bool (K,): all activations equal -> idx is just the first k images


def top_images(X: Tensor, k: int = 5) -> TopImages:
    """The k most activating probe images per neuron (lower image index first on ties).

    k is clamped to N.  ``constant`` marks dead/constant neurons (docs/METHOD.md §4.2): their
    "top images" are the first k probe rows and should be shown as such, not as evidence.
    """
    if not isinstance(X, Tensor) or X.dim() != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError("top_images: X must be a non-empty images x neurons matrix.")
    k = _check_k(k, "top_images")
    if not all_finite(X):
        raise ValueError("top_images: X contains NaN/inf activations; check the target's precision and inputs.")
    acts, idx = ranked_top_k(X, k)
    return TopImages(acts, idx, constant_columns(X))


def _top1(S: Tensor) -> Tensor:
    s = S[~torch.isnan(S).all(1)]
    s = torch.where(torch.isnan(s), torch.full_like(s, float("-inf")), s)
    top = s.max(dim=1).values
    return top[torch.isfinite(top)]


def layer_tau(S: Tensor, statistic: str = "mean_top1") -> float:
    """tau_l of one layer (docs/METHOD.md §5.1).

    * ``mean_top1`` (default; what the paper's figures use): mean over neurons of max_m S_km;
    * ``mean_all`` (the paper's text): mean of every finite entry of S;
    * ``median_top1`` (Dorszewski et al.): median over neurons of max_m S_km
      (``torch.median``: the lower of the two middle values for an even count).
    NaN rows (undefined neurons) and non-finite entries are left out; a layer with no
    finite score gives NaN.  Computed in float64.
    """
    _check_s(S, "layer_tau")
    if statistic not in TAU_STATISTICS:
        raise ValueError(
            f"layer_tau: unknown threshold statistic {statistic!r}; choose one of {', '.join(TAU_STATISTICS)}."
        )
    s = S.detach().double()
    if statistic == "mean_all":
        vals = s[torch.isfinite(s)]
        return float(vals.mean()) if vals.numel() else float("nan")
    top = _top1(s)
    if top.numel() == 0:
        return float("nan")
    return float(top.mean() if statistic == "mean_top1" else top.median())


@dataclass(frozen=True)
class LayerThreshold:
    """tau_l together with the statistic that produced it (the store keeps both)."""

    tau: float
    statistic: str


def layer_threshold(S: Tensor, statistic: str = "mean_top1") -> LayerThreshold:
    """``layer_tau`` packaged with its statistic, so a tau is never stored without it."""
    return LayerThreshold(layer_tau(S, statistic), statistic)


def layer_taus(S: Tensor) -> dict[str, float]:
    """tau_l under every statistic, so the report can show how much the choice matters."""
    return {stat: layer_tau(S, stat) for stat in TAU_STATISTICS}


def topk_image_union(X_by_layer: dict[str, Tensor], k: int) -> Tensor:
    """Sorted probe row indices that are among some neuron's top-k images in some layer.

    The planner runs the dissector only on these rows for the top-k-only similarities,
    ``soft_wpmi`` and ``wpmi`` (family "topk" in dsl/vocabulary.py): their S reads row i of P only if
    image i is in a neuron's top-Z set, and q (the concept softmax) is per image, so rows
    of P outside the union may hold anything (e.g. zeros) without changing S.  Use k =
    the similarity's effective top_k.  ``rank_reorder`` is top-k-only as well with
    k = floor(N * top_fraction).  Not valid for ``cos``, ``cos_cubed`` (every row
    contributes) or ``mammi`` (the representative set has no fixed size; use
    ``similarity.representative_mask(X).any(1)`` instead).  Ties use the same rule as
    the similarity (lower index first), so the union is exactly the set it reads.
    """
    k = _check_k(k, "topk_image_union")
    parts: list[Tensor] = []
    for layer, X in X_by_layer.items():
        if not isinstance(X, Tensor) or X.dim() != 2:
            raise ValueError(f"topk_image_union: activations of layer {layer!r} must be an images x neurons matrix.")
        _, idx = ranked_top_k(X, k)
        parts.append(idx.reshape(-1).cpu())
    if not parts:
        return torch.empty(0, dtype=torch.long)
    return torch.unique(torch.cat(parts), sorted=True)
