"""The `phantom(...)` probe: synthetic mammograms rendered on demand.

Attributes are sampled for every item up front (cheap, size-independent);
pixels are rendered only when `load(i)` is called, deterministically from
(seed, index, height), so two passes over the probe (dissector and target)
see identical images without storing them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from dissect_study.engine.phantom.generator import RENDER_VERSION, render, sample_scene, scene_attributes, width_for
from dissect_study.engine.phantom.reports import make_report
from dissect_study.engine.probes.base import Probe, ProbeItem
from dissect_study.engine.registry import PROBES


class PhantomProbe(Probe):
    """`n` phantoms of stream `seed` at `height` pixels (width = round(height*912/1520))."""

    has_ground_truth = True

    def __init__(self, n: int, seed: int = 0, height: int = 320, name: str = "phantom"):
        if n < 1:
            raise ValueError(f"phantom probe '{name}': n must be at least 1, got {n}")
        if height < 32:
            raise ValueError(f"phantom probe '{name}': height must be at least 32 pixels, got {height}")
        self.name = name
        self.n, self.seed, self.height = int(n), int(seed), int(height)
        self.width = width_for(self.height)
        self._scenes = [sample_scene(self.seed, i) for i in range(self.n)]
        items = []
        for i, sc in enumerate(self._scenes):
            attrs = scene_attributes(sc, self.height)
            attrs["report"] = make_report(attrs, seed=self.seed)
            items.append(
                ProbeItem(
                    image_id=f"phantom-s{self.seed}-{i:06d}",
                    path=f"phantom://seed={self.seed}/index={i}/height={self.height}",
                    attributes=attrs,
                )
            )
        self._items = items

    @property
    def items(self) -> list[ProbeItem]:
        return self._items

    def load(self, index: int) -> np.ndarray:
        return render(self._scenes[index], self.height)

    def manifest_sha256(self) -> str:
        """The items' hash and the renderer's version: a rendering change keeps every id,
        path and attribute, yet activations cached from the old pixels must not be reused."""
        return hashlib.sha256(f"{super().manifest_sha256()} render {RENDER_VERSION}".encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "n_images": self.n,
            "source": "phantom (synthetic)",
            "seed": self.seed,
            "height": self.height,
            "width": self.width,
        }


@PROBES.register("phantom")
def build_probe(name: str, params: dict[str, Any], ctx: Any = None) -> PhantomProbe:
    """Factory for `probe X = phantom(n=..., seed=..., height=...)` (params validated by the checker)."""
    return PhantomProbe(
        n=int(params.get("n", 400)), seed=int(params.get("seed", 0)), height=int(params.get("height", 320)), name=name
    )
