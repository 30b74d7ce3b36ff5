"""Which probe rows a dissector must embed: the "cheapest pass" (docs/METHOD.md §10).

Top-k-only similarities (``soft_wpmi``, ``wpmi``) read row i of P only if image i is
among some neuron's top-k images (``labels.topk_image_union``), so on a large probe the
dissector's image pass -- the expensive one, ~3 s per image for Mammo-CLIP's B5 at
1520 x 912 on a 2-core CPU -- can skip every other image.  This module decides when that
is safe and worth it, as a pure function so every rule is testable without models:

* only when **every** dissection sharing the pass is top-k-only;
* never with a **train-mode** dissector (reference parity): BatchNorm then normalises
  with batch statistics, so embedding a subset would change the embeddings themselves;
* never when a dissection needs every row (the calibration bench on a ground-truth probe);
* only on probes over ``MIN_PROBE_IMAGES`` and only when the union (plus the sanity
  sample) is at most ``MAX_FRACTION`` of the probe: otherwise a full pass costs about the
  same and its cache entry can be reused by any other study.

The zero-shot sanity check then runs on a fixed random sample of ``SANITY_SAMPLE`` rows
only, never on the union, whose make-up depends on the targets and layers.
``benchmarks/bench_cheapest_pass.py`` measures what this saves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

#: probes up to this many images are always embedded whole
MIN_PROBE_IMAGES = 2000
#: rows of the fixed random sample the zero-shot sanity check uses
SANITY_SAMPLE = 512
#: a union covering more than this share of the probe buys too little to lose cache reuse
MAX_FRACTION = 0.9


@dataclass(frozen=True)
class RowUser:
    """One dissection that reads the dissector pass, reduced to what the choice needs."""

    name: str  #: for messages, e.g. the target's name
    similarity: str
    family: str  #: registry family: "topk", "stats" or "full"
    top_k: int  #: the top_k the similarity will use (registry default if the study gives none)
    acts: Mapping[str, Tensor] = field(repr=False)  #: layer -> (images x neurons) activations
    kept: Sequence[int] = field(repr=False)  #: probe row of each activation row
    top_images: int = 5
    train_mode: bool = False
    needs_all_rows: str | None = None  #: why this dissection needs every row, if it does


@dataclass(frozen=True)
class RowChoice:
    rows: list[int]  #: probe rows to embed, ascending
    sanity_rows: list[int] | None  #: rows for the zero-shot check (None: every embedded row)
    reduced: bool
    reason: str  #: one line for the run log


def choose_rows(
    rows: Sequence[int],
    users: Sequence[RowUser],
    *,
    min_probe: int | None = None,
    sanity_sample: int | None = None,
    max_fraction: float | None = None,
    seed: int = 0,
) -> RowChoice:
    """The probe rows the dissector embeds for ``users`` (every row, or the top-k union).

    Thresholds default to the module constants, read at call time.
    """
    from dissect_study.engine.scores.labels import topk_image_union

    min_probe = MIN_PROBE_IMAGES if min_probe is None else min_probe
    sanity_sample = SANITY_SAMPLE if sanity_sample is None else sanity_sample
    max_fraction = MAX_FRACTION if max_fraction is None else max_fraction

    rows = sorted(rows)
    n = len(rows)

    def full(reason: str) -> RowChoice:
        return RowChoice(rows=rows, sanity_rows=None, reduced=False, reason=reason)

    if n <= min_probe:
        return full(f"all {n} images (probes up to {min_probe} images are embedded whole)")
    for u in users:
        if u.family != "topk":
            return full(f"all {n} images ({u.similarity} for {u.name} reads every image)")
    for u in users:
        if u.train_mode:
            return full(
                f"all {n} images (train-mode dissector: BatchNorm uses batch statistics, "
                "so embedding a subset would change the embeddings)"
            )
    for u in users:
        if u.needs_all_rows:
            return full(f"all {n} images ({u.needs_all_rows})")
    wanted: set[int] = set()
    k_used = []
    for u in users:
        k = min(max(int(u.top_k), int(u.top_images)), len(u.kept))
        k_used.append(k)
        union = topk_image_union(dict(u.acts), k)
        wanted.update(u.kept[i] for i in union.tolist())
    rng = np.random.default_rng(seed)
    sample = sorted(rng.choice(rows, size=min(sanity_sample, n), replace=False).tolist())
    chosen = sorted(wanted.union(sample))
    if len(chosen) > max_fraction * n:
        return full(
            f"all {n} images (the top-k union plus the sanity sample is {len(chosen)} images, "
            f"{len(chosen) / n:.0%} of the probe: a full pass costs about the same and its cache is reusable)"
        )
    ks = "/".join(str(k) for k in sorted(set(k_used)))
    return RowChoice(
        rows=chosen,
        sanity_rows=sample,
        reduced=True,
        reason=f"{len(chosen)} of {n} images (top-k-only similarity: the union of every neuron's "
        f"top-{ks} images, {len(wanted)}, plus a {len(sample)}-image sample for the zero-shot check)",
    )
