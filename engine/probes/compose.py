"""Probes made from probes: unions (mixed domains) and seeded sub-samples.

Sampling is deterministic *by construction*, not by a random stream: every
item gets the rank sha256(seed, image_id, occurrence) and the lowest ranks win.
The draw therefore never changes with numpy/Python versions, an image keeps its
rank when others are added to the folder, and a larger draw from the same probe
contains every image of a smaller one.  Balanced
sampling gives every value of the attribute an equal share, water-filling the
share of small groups into the others, so `sample 300 balanced by density` on
VinDr's test split (A has only 20 images) takes all 20 A and 93-94 of B/C/D.
Chosen items keep the source probe's order (activation rows and P rows are
matched by position, and the order is part of the manifest hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import Probe, ProbeItem
from dissect_study.engine.probes.folder import attribute_counts
from dissect_study.engine.registry import PROBES


# --------------------------------------------------------------------------- union
class UnionProbe(Probe):
    """Several probes concatenated in the order given; ids become "<probe>:<id>"."""

    def __init__(self, name: str, parts: list[tuple[str, Probe]]) -> None:
        self.name = name
        self._parts = parts
        self._index: list[tuple[int, int]] = []
        self._items: list[ProbeItem] = []
        for p_idx, (pname, probe) in enumerate(parts):
            for i, it in enumerate(probe.items):
                self._index.append((p_idx, i))
                self._items.append(ProbeItem(f"{pname}:{it.image_id}", it.path, {**it.attributes, "probe": pname}))

    @property
    def items(self) -> list[ProbeItem]:
        return self._items

    def load(self, index: int) -> np.ndarray:
        p_idx, i = self._index[index]
        return self._parts[p_idx][1].load(i)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "union",
            "n_images": len(self._items),
            "parts": [p.describe() for _, p in self._parts],
            "counts": attribute_counts(self._items),
        }


@PROBES.register("union")
def build_union(name: str, params: dict[str, Any], ctx: Any) -> UnionProbe:
    """`probe X = union(a, b, ...)`: the probes named, already built and held in `ctx.probes`."""
    probes: dict[str, Probe] = ctx.probes
    refs = list(params.get("refs") or [])
    if len(refs) < 1:
        raise ProbeError(f"probe {name}: union() needs at least one probe name, e.g. union(imagenette, vindr_test).")
    dup = sorted({r for r in refs if refs.count(r) > 1})
    if dup:
        raise ProbeError(f"probe {name}: union() names {', '.join(dup)} more than once; list each probe once.")
    missing = [r for r in refs if r not in probes]
    if missing:
        raise ProbeError(
            f"probe {name}: union() refers to {', '.join(missing)}, which is not built yet; "
            f"built probes: {', '.join(probes) or 'none'} (a study's plan builds members first)."
        )
    return UnionProbe(name, [(r, probes[r]) for r in refs])


# --------------------------------------------------------------------------- sampling
def _sample_fields(sample: Any) -> tuple[int, str | None, int]:
    get = sample.get if isinstance(sample, dict) else (lambda k, d=None: getattr(sample, k, d))
    n, by, seed = get("n"), get("balanced_by"), get("seed", 0)
    if n is None or int(n) < 1:
        raise ProbeError(f"sample: n={n!r} must be a positive number of images.")
    return int(n), (str(by) if by else None), int(seed or 0)


def item_ranks(items: list[ProbeItem], seed: int) -> list[int]:
    """Deterministic pseudo-random rank per item from (seed, image_id, occurrence of that id)."""
    seen: dict[str, int] = {}
    ranks = []
    for it in items:
        k = seen.get(it.image_id, 0)
        seen[it.image_id] = k + 1
        h = hashlib.sha256(f"{seed}\x00{it.image_id}\x00{k}".encode()).digest()
        ranks.append(int.from_bytes(h[:8], "big"))
    return ranks


def balanced_quotas(sizes: dict[str, int], n: int, seed: int) -> dict[str, int]:
    """Equal shares of n over groups, capped by group size, leftovers water-filled.

    When n is not divisible, the groups that get one extra image are chosen by
    a seeded hash of the group key (not by alphabetical order).
    """
    quota = {k: 0 for k in sizes}
    remaining = min(n, sum(sizes.values()))
    active = [k for k in sorted(sizes) if sizes[k] > 0]
    while remaining > 0 and active:
        share = remaining // len(active)
        if share == 0:
            order = sorted(active, key=lambda k: hashlib.sha256(f"{seed}\x00group\x00{k}".encode()).digest())
            for k in order[:remaining]:
                quota[k] += 1
            break
        for k in active:
            take = min(share, sizes[k] - quota[k])
            quota[k] += take
            remaining -= take
        active = [k for k in active if quota[k] < sizes[k]]
    return quota


def _group_key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def sample_indices(items: list[ProbeItem], n: int, balanced_by: str | None = None, seed: int = 0) -> list[int]:
    """Indices (ascending) of the sampled items; all of them when n >= len(items) and unbalanced."""
    ranks = item_ranks(items, seed)
    if balanced_by is None:
        if n >= len(items):
            return list(range(len(items)))
        return sorted(sorted(range(len(items)), key=lambda i: (ranks[i], i))[:n])
    lacking = [i for i, it in enumerate(items) if it.attributes.get(balanced_by) is None]
    if lacking:
        known = sorted({k for it in items for k in it.attributes})
        example = ", ".join(items[i].image_id for i in lacking[:3])
        raise ProbeError(
            f"sample ... balanced by {balanced_by}: {len(lacking)} of {len(items)} images have no "
            f"{balanced_by!r} attribute (e.g. {example}). Attributes present: {', '.join(known) or 'none'}. "
            "Balance by one of those, or give every image the attribute (for a union, `probe` names the part)."
        )
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(_group_key(it.attributes[balanced_by]), []).append(i)
    quotas = balanced_quotas({k: len(v) for k, v in groups.items()}, n, seed)
    chosen: list[int] = []
    for k, idx in groups.items():
        chosen.extend(sorted(idx, key=lambda i: (ranks[i], i))[: quotas[k]])
    return sorted(chosen)


class SubsetProbe(Probe):
    """A probe restricted to some of its items (in source order)."""

    def __init__(self, base: Probe, indices: list[int], sample_info: dict[str, Any]) -> None:
        self.name = base.name
        self.base = base
        self.indices = list(indices)
        self._items = [base.items[i] for i in self.indices]
        self._sample_info = sample_info

    @property
    def items(self) -> list[ProbeItem]:
        return self._items

    def load(self, index: int) -> np.ndarray:
        return self.base.load(self.indices[index])

    def describe(self) -> dict[str, Any]:
        d = dict(self.base.describe())
        d.update(
            {
                "name": self.name,
                "n_images": len(self._items),
                "n_images_before_sample": len(self.base),
                "sample": self._sample_info,
                "counts": attribute_counts(self._items),
            }
        )
        if d.get("n_unique_ids") is not None:
            d["n_unique_ids"] = len({it.image_id for it in self._items})
        return d


def apply_sample(probe: Probe, sample: Any, log: Callable[[str], None] | None = None) -> Probe:
    """The DSL's `sample N [balanced by ATTR] [seed S]` applied to a built probe."""
    n, by, seed = _sample_fields(sample)
    try:
        idx = sample_indices(probe.items, n, by, seed)
    except ProbeError as exc:
        raise ProbeError(f"probe {probe.name}: {exc}") from None
    if n > len(probe) and log:
        log(f"probe {probe.name}: sample {n} asked for more images than the probe has ({len(probe)}); using all.")
    elif by is not None and len(idx) < n and log:
        log(f"probe {probe.name}: balanced sample gave {len(idx)} of {n} images.")
    info = {"n": n, "balanced_by": by, "seed": seed}
    return SubsetProbe(probe, idx, info)
